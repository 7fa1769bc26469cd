"""Tokenizers: train a byte-level BPE with `tokenizers`, or load an HF tokenizer directory.

Both return a `transformers.PreTrainedTokenizerFast` (in transformers 5 this is the
`tokenizers`-backed class `TokenizersBackend`), which is saved next to the model with
`save_pretrained` and reloaded with `load_tokenizer` / `AutoTokenizer.from_pretrained`.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from .loading import load_documents

from ..hub.ids import is_hub_id

__all__ = ["train_bpe_tokenizer", "train_bpe_tokenizer_from_iterator", "load_tokenizer"]

#: Files whose presence marks a directory as an HF tokenizer directory.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model")

_NUM_BYTES = 256  # size of the byte-level initial alphabet


def _check_train_args(vocab_size: int, model_max_length: int, eos_token: str) -> None:
    if not isinstance(vocab_size, int) or vocab_size < _NUM_BYTES + 1:
        raise ValueError(
            f"vocab_size={vocab_size!r} is too small: a byte-level BPE needs at least "
            f"{_NUM_BYTES + 1} entries (256 byte symbols + the eos token); use e.g. 4096"
        )
    if not isinstance(model_max_length, int) or model_max_length < 1:
        raise ValueError(f"model_max_length must be a positive integer, got {model_max_length!r}")
    if not eos_token:
        raise ValueError("eos_token must be a non-empty string, e.g. '<|endoftext|>'")


def _new_byte_level_bpe() -> Tokenizer:
    tok = Tokenizer(models.BPE())
    # GPT-2 style: split with the byte-level regex, map every byte to a printable symbol;
    # no normalizer, no prefix space, so decode(encode(text)) == text for any UTF-8 text.
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    return tok


def _trainer(vocab_size: int, eos_token: str) -> trainers.BpeTrainer:
    return trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[eos_token],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )


def _wrap(tok: Tokenizer, model_max_length: int, eos_token: str) -> PreTrainedTokenizerFast:
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token=eos_token,
        pad_token=eos_token,
        model_max_length=model_max_length,
        clean_up_tokenization_spaces=False,
    )


def train_bpe_tokenizer_from_iterator(
    texts: Iterable[str],
    vocab_size: int,
    model_max_length: int,
    eos_token: str = "<|endoftext|>",
    length: int | None = None,
) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer on an iterable of strings (e.g. a `datasets` column).

    Same tokenizer as `train_bpe_tokenizer`; use this to train on exactly the training split
    (`load_text_splits(...)[0]["text"]`) so the validation text stays unseen.

    Args:
        texts: the training strings, iterated once, in order (the result is deterministic
            for the same sequence).
        vocab_size: final vocabulary size including the 256 byte symbols and `eos_token`
            (the trainer may stop earlier when no pair is left to merge).
        model_max_length: stored as `tokenizer.model_max_length` (the model's context).
        eos_token: special token; id 0. Also used as `pad_token`.
        length: number of strings, only used for progress reporting.

    Returns:
        `PreTrainedTokenizerFast` with `eos_token == pad_token == eos_token`, no bos/unk
        token, no post-processor (calling it adds no special tokens).

    Raises:
        ValueError: `vocab_size` < 257, `model_max_length` < 1 or empty `eos_token`.
    """
    _check_train_args(vocab_size, model_max_length, eos_token)
    tok = _new_byte_level_bpe()
    tok.train_from_iterator(texts, trainer=_trainer(vocab_size, eos_token), length=length)
    return _wrap(tok, model_max_length, eos_token)


def train_bpe_tokenizer(
    files: list[str],
    vocab_size: int,
    model_max_length: int,
    eos_token: str = "<|endoftext|>",
    text_field: str = "text",
) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer (GPT-2 style) on local text files.

    Byte-level: the 256 byte symbols are always in the vocabulary (`initial_alphabet =
    ByteLevel.alphabet()`), so every UTF-8 string encodes without unknown tokens and
    `tokenizer.decode(tokenizer(text, add_special_tokens=False)["input_ids"]) == text`.
    Training is deterministic: the same files and arguments give the same vocab and merges.

    Args:
        files: local files, read with the same loaders as `load_text_splits` (.txt/.text/.md
            line by line; .json/.jsonl/.parquet rows, using `text_field`; optionally
            compressed .gz/.bz2/.xz), in the given order.
        vocab_size: final vocabulary size (>= 257) including bytes and `eos_token`.
        model_max_length: stored as `tokenizer.model_max_length`.
        eos_token: the end-of-document special token (id 0), also set as `pad_token`.
        text_field: column holding the text in json/parquet files.

    Returns:
        `PreTrainedTokenizerFast` (transformers 5: `TokenizersBackend`); save it with
        `save_pretrained(dir)` and reload with `load_tokenizer(dir)`.

    Raises:
        FileNotFoundError: a file does not exist (named in the message).
        ValueError: bad `vocab_size`/`model_max_length`/`eos_token`, unknown file extension,
            missing `text_field`, or no text at all in the files.
    """
    _check_train_args(vocab_size, model_max_length, eos_token)
    if isinstance(files, (str, os.PathLike)):
        files = [files]
    files = [os.fspath(f) for f in files]
    ds = load_documents(files, text_field=text_field)  # validates files, raises on empty corpus
    tok = _new_byte_level_bpe()

    def texts() -> Iterator[str]:
        for batch in ds.iter(batch_size=1000):
            yield from batch["text"]

    tok.train_from_iterator(texts(), trainer=_trainer(vocab_size, eos_token), length=len(ds))
    return _wrap(tok, model_max_length, eos_token)


def _hub_offline() -> bool:
    try:
        from huggingface_hub import constants

        return bool(constants.is_offline_mode())
    except Exception:  # pragma: no cover - very old huggingface_hub
        return os.environ.get("HF_HUB_OFFLINE", "").upper() in {"1", "ON", "YES", "TRUE"}


def load_tokenizer(name_or_path: str) -> PreTrainedTokenizerFast:
    """Load a fast tokenizer from a local directory (or a Hub repo id) via `AutoTokenizer`.

    Args:
        name_or_path: a directory written by `save_pretrained` (holding `tokenizer.json`
            and/or `tokenizer_config.json`), or a Hugging Face Hub repo id such as `"gpt2"`
            (used only when no such local path exists; needs the Hub or its local cache).

    Returns:
        The `PreTrainedTokenizerFast` (`tokenizers`-backed) stored there.

    Raises:
        ValueError: the path is a file, a directory without tokenizer files, a missing local
            path, an unloadable tokenizer, a tokenizer that is not `tokenizers`-backed, or a
            Hub id that cannot be fetched (the message says when offline mode is on).
    """
    name = os.fspath(name_or_path)
    path = Path(name).expanduser()
    expected = ", ".join(TOKENIZER_FILES)
    if path.exists():
        if not path.is_dir():
            raise ValueError(
                f"{name!r} is a file, not a tokenizer directory; pass the directory written by "
                f"tokenizer.save_pretrained() (it holds one of: {expected})"
            )
        present = sorted(p.name for p in path.iterdir())
        if not any((path / f).exists() for f in TOKENIZER_FILES):
            raise ValueError(
                f"{name!r} is not a tokenizer directory: it contains none of {expected} "
                f"(found: {present[:20]}); pass the directory written by tokenizer.save_pretrained()"
            )
        try:
            tok = AutoTokenizer.from_pretrained(str(path))
        except (OSError, ValueError, TypeError, KeyError) as e:
            raise ValueError(f"could not load a tokenizer from directory {name!r}: {e}") from e
    elif not is_hub_id(name):
        raise ValueError(
            f"tokenizer directory {name!r} does not exist; pass a directory written by "
            f"tokenizer.save_pretrained() or a Hugging Face Hub repo id"
        )
    else:
        try:
            tok = AutoTokenizer.from_pretrained(name)
        except (OSError, ValueError) as e:
            why = (
                "the Hugging Face Hub is unreachable: offline mode is on (HF_HUB_OFFLINE=1)"
                if _hub_offline()
                else "loading it from the Hugging Face Hub failed (no network, or no such repo)"
            )
            raise ValueError(
                f"could not load tokenizer {name!r}: it is not a local directory, and {why}; "
                f"it is not in the local Hub cache either. Pass a local tokenizer directory "
                f"(written by save_pretrained) or train one with train_bpe_tokenizer(). ({e})"
            ) from e
    if not isinstance(tok, PreTrainedTokenizerFast):
        raise ValueError(
            f"{name!r} holds a {type(tok).__name__}, not a fast (tokenizers-backed) tokenizer; "
            f"save it with a tokenizer.json or convert it to a fast tokenizer first"
        )
    return tok
