"""Loss, perplexity and bits per byte of a saved causal LM on text files.

One code path for spikelm models and plain Hugging Face causal LMs, so a spiking model and
its ANN baseline are measured the same way. Text is packed into windows of ``block_size + 1``
tokens overlapping by one, so every token but the first is scored exactly once, with the
preceding tokens of its window as context. Bits per byte (Gao et al. 2020, The Pile) =
``total nats / (ln 2 * UTF-8 bytes)``, comparable across tokenizers.
"""
from __future__ import annotations

import math
from pathlib import Path

import torch


@torch.no_grad()
def evaluate_files(model_dir: str | Path, files: list[str], block_size: int | None = None, batch_size: int = 16,
                   text_field: str = "text", device: str | None = None) -> dict:
    """Evaluate ``model_dir`` on ``files``.

    Returns:
        ``{"loss": nats/token, "bpb", "perplexity", "tokens": scored tokens, "bytes": UTF-8
        bytes those tokens cover, "spike_rates": {site: rate} (spikelm models only)}``.
    Raises:
        FileNotFoundError: missing model directory or data file.
        ValueError: not a model directory, or data shorter than one window.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import spikelm  # noqa: F401  (registers the Auto classes)

    from ..data import PackedBlocks, corpus_stats, load_documents, pack_blocks

    d = Path(model_dir)
    if not (d / "config.json").is_file():
        raise FileNotFoundError(f"{d} is not a Hugging Face model directory (no config.json)")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    tok = AutoTokenizer.from_pretrained(str(d))
    model = AutoModelForCausalLM.from_pretrained(str(d)).to(device).eval()
    ctx = getattr(model.config, "context_length", None) or getattr(model.config, "max_position_embeddings", None)
    block_size = block_size or ctx or 1024
    docs = load_documents(list(files), text_field=text_field, what="evaluation")
    blocks = PackedBlocks(pack_blocks(docs, tok, block_size))
    stats = corpus_stats(docs, tok)
    total, count = 0.0, 0
    rates: dict[str, float] = {}
    for s in range(0, len(blocks), batch_size):
        x = torch.stack([blocks[i] for i in range(s, min(s + batch_size, len(blocks)))]).to(device)
        logits = model(input_ids=x[:, :-1], use_cache=False).logits.float()
        total += torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1),
                                                   reduction="sum").item()
        count += x[:, 1:].numel()
        if hasattr(model, "model") and hasattr(model.model, "spike_rates"):
            for k, v in model.model.spike_rates().items():
                rates[k] = rates.get(k, 0.0) + v * x.shape[0]
    loss = total / count
    n_bytes = count * stats["bytes_per_token"]
    return {"loss": loss, "bpb": total / (math.log(2) * n_bytes), "perplexity": math.exp(min(loss, 50)),
            "tokens": count, "bytes": int(round(n_bytes)),
            "spike_rates": {k: v / len(blocks) for k, v in rates.items()}}
