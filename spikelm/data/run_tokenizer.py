"""The tokenizer of a training run: resumed, the model's own, the recipe's, or trained on the
train split (rank 0) and broadcast to the other ranks."""
from __future__ import annotations

from pathlib import Path


def _with_max_length(tok, block_size: int):
    """``tok`` with ``model_max_length`` = the block size when the saved one is unset (None or
    transformers' "very large" sentinel)."""
    if tok.model_max_length is None or tok.model_max_length > 10**8:
        tok.model_max_length = block_size
    return tok


def _has_tokenizer(d: Path) -> bool:
    return (d / "tokenizer.json").is_file() or (d / "tokenizer_config.json").is_file()


def build_run_tokenizer(recipe, run_dir: Path, resume: bool, rank: int, train_text, model_dir: Path | None = None,
                        model_config=None):
    """The run's tokenizer, in memory (nothing is written here).

    On resume: the one saved in ``run_dir/tokenizer``. Starting from weights (``model_dir``,
    with its ``model_config``): the recipe's ``data.tokenizer`` if set, else the model
    directory's own. Else the recipe's ``data.tokenizer``, or a byte-level BPE trained on the
    train split only (never the validation text) on rank 0 and broadcast to the other ranks.

    Raises:
        ValueError: starting from weights, the model directory has no tokenizer and none is
            set, the recipe's tokenizer differs from the model directory's (vocabulary), or
            it has more tokens than the model's ``vocab_size``.
    """
    import torch.distributed as dist
    from transformers import PreTrainedTokenizerFast

    from . import load_tokenizer, train_bpe_tokenizer_from_iterator

    saved = run_dir / "tokenizer"
    if resume and saved.is_dir():
        return load_tokenizer(str(saved))
    if model_dir is not None:
        own = load_tokenizer(str(model_dir)) if _has_tokenizer(model_dir) else None
        if recipe.data.tokenizer is None and own is None:
            raise ValueError(f"model.init_from {model_dir} holds no tokenizer; set data.tokenizer to the one the "
                             "model was trained with")
        tok = own if recipe.data.tokenizer is None else load_tokenizer(recipe.data.tokenizer)
        if own is not None and tok is not own and tok.get_vocab() != own.get_vocab():
            raise ValueError(f"data.tokenizer {recipe.data.tokenizer!r} does not match the tokenizer of "
                             f"model.init_from {model_dir} ({len(tok)} vs {len(own)} tokens, different "
                             "vocabularies); leave data.tokenizer unset to use the model's")
        if len(tok) > model_config.vocab_size:
            raise ValueError(f"the tokenizer has {len(tok)} tokens but the model in {model_dir} only "
                             f"{model_config.vocab_size} embeddings; use the model's tokenizer")
        return _with_max_length(tok, recipe.data.block_size)
    if recipe.data.tokenizer is not None:
        return _with_max_length(load_tokenizer(recipe.data.tokenizer), recipe.data.block_size)
    payload = [None]
    if rank == 0:
        tok = train_bpe_tokenizer_from_iterator(train_text["text"], recipe.data.vocab_size,
                                                recipe.data.block_size, length=len(train_text))
        payload = [(tok.backend_tokenizer.to_str(), tok.eos_token, tok.model_max_length)]
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.broadcast_object_list(payload, src=0)
    if rank == 0:
        return tok
    from tokenizers import Tokenizer

    spec, eos, max_len = payload[0]
    return PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(spec), eos_token=eos, pad_token=eos,
                                   model_max_length=max_len, clean_up_tokenization_spaces=False)
