"""Text generation from a saved spikelm model through the Hugging Face pipeline."""
from __future__ import annotations

from pathlib import Path


def check_model_dir(model_dir: str | Path) -> dict:
    """Return the ``config.json`` of a spikelm model (or of a transformers causal LM such as the
    ANN baseline): a local HF directory or a Hub id (:func:`spikelm.hub.resolve_model`).

    Raises:
        FileNotFoundError: the directory, its config.json or its tokenizer does not exist, or a
            Hub id cannot be fetched (offline and not cached, no such repo).
        ValueError: the directory holds another kind of model (names the ``model_type`` found).
    """
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    from .hub.ids import check_tokenizer_files, resolve_model

    name, cfg = resolve_model(model_dir)
    kind = cfg.get("model_type")
    if kind != "spikelm" and kind not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        raise ValueError(f"{name} holds a {kind!r} model, not a causal language model (a spikelm checkpoint, "
                         "or a transformers causal LM such as the llama ANN baseline, is expected)")
    check_tokenizer_files(name)
    return cfg


def load_pipeline(model_dir: str | Path, device: str | None = None):
    """``pipeline("text-generation")`` over a saved spikelm directory or Hub id (model + tokenizer)."""
    import torch
    from transformers import AutoTokenizer, pipeline

    from .hub.ids import load_causal_lm

    import spikelm  # noqa: F401  (registers the Auto classes)

    check_model_dir(model_dir)
    tok = AutoTokenizer.from_pretrained(str(model_dir))
    model = load_causal_lm(model_dir)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    return pipeline("text-generation", model=model.to(device), tokenizer=tok, device=torch.device(device))


def generate_text(model_dir: str | Path, prompt: str, max_new_tokens: int = 200, temperature: float = 0.8,
                  top_k: int = 50, top_p: float = 1.0, greedy: bool = False, seed: int = 0,
                  chat: bool = False) -> str:
    """Prompt + continuation generated with the recurrent state as cache.

    With ``chat=True`` the prompt is one user message rendered by the tokenizer's chat template
    (e.g. a model from ``spikelm finetune``) and only the assistant's reply is returned.

    Raises:
        ValueError: empty prompt, a prompt longer than the context (``max_position_embeddings``;
            ``context_length`` in configs saved before the rename) of a model that is not a spikelm
            one (a spikelm model carries a recurrent state, so any prompt length works: long
            prompts are prefilled in chunks of ``config.prefill_chunk_tokens`` tokens),
            non-positive ``max_new_tokens`` or ``temperature``, ``chat`` with a tokenizer that has
            no chat template; plus :func:`check_model_dir`'s errors.
    """
    from transformers import set_seed

    if not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    if top_k < 0:
        raise ValueError(f"top_k must be >= 0 (0 = no top-k filter), got {top_k}")
    cfg = check_model_dir(model_dir)
    if not prompt:
        raise ValueError("the prompt is empty; give at least one character")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if not greedy and not temperature > 0:
        raise ValueError(f"temperature must be > 0 (use --greedy for greedy decoding), got {temperature}")
    pipe = load_pipeline(model_dir)
    messages = [{"role": "user", "content": prompt}]
    if chat:
        if not pipe.tokenizer.chat_template:
            raise ValueError(f"{model_dir} has no chat template in its tokenizer; drop --chat, or fine-tune it with "
                             "`spikelm finetune` (which saves one)")
        text = pipe.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        n = len(pipe.tokenizer(text, add_special_tokens=False)["input_ids"])
    else:
        n = len(pipe.tokenizer(prompt, add_special_tokens=False)["input_ids"])
    ctx = cfg.get("max_position_embeddings") or cfg.get("context_length")  # the latter: older spikelm configs
    if ctx and n > ctx and cfg.get("model_type") != "spikelm":
        raise ValueError(f"the prompt is {n} tokens but the model's context is {ctx} tokens; shorten the prompt")
    set_seed(seed)
    kw = dict(do_sample=False) if greedy else dict(do_sample=True, temperature=temperature, top_k=top_k, top_p=top_p)
    if chat:
        out = pipe(messages, max_new_tokens=max_new_tokens, **kw)
        return out[0]["generated_text"][-1]["content"]
    out = pipe(prompt, max_new_tokens=max_new_tokens, return_full_text=True, **kw)
    return out[0]["generated_text"]
