"""Tokenize a document dataset and pack it into overlapping fixed-length blocks.

Both steps are `datasets.Dataset.map` calls, so their results are written to the Arrow
cache next to the source data and found again by fingerprint on the next run.
"""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
from datasets import Dataset, Features, List, Value

__all__ = ["PackedBlocks", "corpus_stats", "pack_blocks", "tokenize_documents"]

TOKENIZED_FEATURES = Features(
    {
        "input_ids": List(Value("int32")),
        "num_bytes": Value("int64"),
        "num_tokens": Value("int32"),
    }
)


def _tokenize_batch(batch: dict, tokenizer, eos_token_id: int) -> dict:
    texts = batch["text"]
    enc = tokenizer(
        texts, add_special_tokens=False, return_attention_mask=False, verbose=False
    )["input_ids"]
    ids_out, num_bytes, num_tokens = [], [], []
    for text, ids, end in zip(texts, enc, batch["doc_end"]):
        num_bytes.append(len(text.encode("utf-8")))
        num_tokens.append(len(ids))
        ids_out.append(ids + [eos_token_id] if end else ids)
    return {"input_ids": ids_out, "num_bytes": num_bytes, "num_tokens": num_tokens}


def _eos_id(tokenizer) -> int:
    eos = getattr(tokenizer, "eos_token_id", None)
    if eos is None:
        raise ValueError(
            f"the tokenizer ({type(tokenizer).__name__}) has no eos_token; set one "
            f"(tokenizer.eos_token = '<|endoftext|>') or use train_bpe_tokenizer()"
        )
    return int(eos)


def _check_text_dataset(ds: Dataset) -> None:
    missing = {"text", "doc_end"} - set(ds.column_names)
    if missing:
        raise ValueError(
            f"expected a dataset with columns 'text' and 'doc_end' (from load_text_splits), "
            f"got columns {ds.column_names}"
        )


def tokenize_documents(ds_text: Dataset, tokenizer, num_proc: int | None = None) -> Dataset:
    """Tokenize every row (batched `map`, cached): no special tokens, EOS after document ends.

    Args:
        ds_text: dataset with "text" (string) and "doc_end" (bool), as from `load_text_splits`.
        tokenizer: a `transformers` tokenizer with `eos_token_id` set.
        num_proc: worker processes for `map` (None: in-process).

    Returns:
        Dataset with, per input row, "input_ids" (list of int32: the row's tokens followed by
        `eos_token_id` when doc_end), "num_bytes" (int64: UTF-8 bytes of the row's text) and
        "num_tokens" (int32: content tokens, EOS excluded).

    Raises:
        ValueError: wrong columns, or a tokenizer without eos token.
    """
    _check_text_dataset(ds_text)
    eos = _eos_id(tokenizer)
    return ds_text.map(
        _tokenize_batch,
        batched=True,
        batch_size=1000,
        fn_kwargs={"tokenizer": tokenizer, "eos_token_id": eos},
        remove_columns=ds_text.column_names,
        features=TOKENIZED_FEATURES,
        num_proc=num_proc,
        desc="Tokenizing",
    )


def _total_tokens(tokenized: Dataset) -> int:
    total = 0
    for table in tokenized.select_columns(["input_ids"]).with_format("arrow").iter(batch_size=65536):
        total += int(pc.sum(pc.list_value_length(table.column("input_ids"))).as_py() or 0)
    return total


def _pack_table(table: pa.Table, block_size: int) -> pa.Table:
    """All rows at once (map with batch_size=None): concatenate, cut overlapping windows."""
    tokens = pc.list_flatten(table.column("input_ids")).to_numpy()
    num_blocks = max((len(tokens) - 1) // block_size, 0)
    windows = np.lib.stride_tricks.sliding_window_view(tokens, block_size + 1)[::block_size][:num_blocks]
    values = pa.array(np.ascontiguousarray(windows, dtype=np.int32).reshape(-1), type=pa.int32())
    return pa.table({"input_ids": pa.FixedSizeListArray.from_arrays(values, block_size + 1)})


def pack_blocks(ds, tokenizer, block_size: int, num_proc: int | None = None) -> Dataset:
    """Tokenize and pack a document dataset into blocks of ``block_size + 1`` token ids.

    The rows are tokenized (no special tokens added by the tokenizer; ``eos_token_id`` after
    every row with doc_end=True), concatenated in order into one stream ``t`` of T tokens, and
    cut into ``num_blocks = (T - 1) // block_size`` blocks that overlap by one token:
    ``block[i] = t[i*block_size : i*block_size + block_size + 1]``. Training on
    ``input = block[:-1]``, ``target = block[1:]`` thus predicts each of ``t[1 : num_blocks *
    block_size + 1]`` exactly once; the tail shorter than a block is dropped. Both `map`
    steps use the `datasets` Arrow cache (default fingerprinting), so a rerun with the same
    data, tokenizer and block_size reads the cached result; row order is deterministic.

    Args:
        ds: dataset with columns "text" and "doc_end" (from `load_text_splits`).
        tokenizer: `transformers` tokenizer with an eos token (e.g. `train_bpe_tokenizer`).
        block_size: tokens per training sequence (the model's context L), >= 1.
        num_proc: processes for the tokenizing `map` (None: in-process).

    Returns:
        Dataset with one column "input_ids": fixed-size lists of ``block_size + 1`` int32
        ids (`PackedBlocks` serves them as int64 tensors).

    Raises:
        ValueError: bad `block_size`, wrong columns, tokenizer without eos, or a corpus of
            fewer than ``block_size + 1`` tokens (the message gives both numbers).
    """
    if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1:
        raise ValueError(f"block_size must be a positive integer, got {block_size!r}")
    tokenized = tokenize_documents(ds, tokenizer, num_proc=num_proc)
    total = _total_tokens(tokenized)
    if total < block_size + 1:
        raise ValueError(
            f"the corpus has {total} tokens (EOS included), fewer than the block_size + 1 = "
            f"{block_size + 1} needed for one block of block_size={block_size}; use a smaller "
            f"block_size or more data"
        )
    features = Features({"input_ids": List(Value("int32"), length=block_size + 1)})
    packed = tokenized.with_format("arrow").map(
        _pack_table,
        batched=True,
        batch_size=None,
        fn_kwargs={"block_size": block_size},
        remove_columns=tokenized.column_names,
        features=features,
        desc=f"Packing into blocks of {block_size}+1",
    )
    return packed.with_format(None)


def corpus_stats(ds_text: Dataset, tokenizer, num_proc: int | None = None) -> dict:
    """Content size of a document dataset in UTF-8 bytes and tokens, for bits per byte.

    Uses the same cached tokenizing `map` as `pack_blocks` (a cache hit after packing).
    EOS tokens are not counted, nor are any bytes for them. Bits per byte of a model with
    mean loss ``nats_per_token`` over these tokens is
    ``nats_per_token * num_tokens / (ln 2 * num_bytes)`` (= ``bits_per_token / bytes_per_token``);
    the EOS tokens a packed evaluation also predicts are one per document.

    Args:
        ds_text: dataset with "text" and "doc_end" (from `load_text_splits`).
        tokenizer: the tokenizer used for packing.
        num_proc: processes for the tokenizing `map`.

    Returns:
        ``{"num_bytes": int, "num_tokens": int, "bytes_per_token": float}``
        (bytes_per_token is nan for an empty dataset).

    Raises:
        ValueError: wrong columns or a tokenizer without eos token.
    """
    tokenized = tokenize_documents(ds_text, tokenizer, num_proc=num_proc)
    num_bytes = num_tokens = 0
    cols = tokenized.select_columns(["num_bytes", "num_tokens"]).with_format("arrow")
    for table in cols.iter(batch_size=65536):
        num_bytes += int(pc.sum(table.column("num_bytes")).as_py() or 0)
        num_tokens += int(pc.sum(table.column("num_tokens")).as_py() or 0)
    return {
        "num_bytes": num_bytes,
        "num_tokens": num_tokens,
        "bytes_per_token": num_bytes / num_tokens if num_tokens else math.nan,
    }


class PackedBlocks(torch.utils.data.Dataset):
    """`torch` view of a packed dataset: item i is block i as a LongTensor.

    Args:
        ds: the output of `pack_blocks` (column "input_ids", equal-length rows).

    Shapes: ``self[i]`` -> int64 tensor ``[block_size + 1]``; ``len(self)`` = number of
    blocks; `__getitems__` (used by `DataLoader` for batched fetches) returns a list of them.

    Raises:
        ValueError: no "input_ids" column, or an empty dataset.
        IndexError: index out of range.
    """

    def __init__(self, ds: Dataset):
        if "input_ids" not in ds.column_names:
            raise ValueError(f"expected a packed dataset with column 'input_ids', got {ds.column_names}")
        if len(ds) == 0:
            raise ValueError("the packed dataset has no blocks")
        self.dataset = ds
        self._ds = ds.with_format("numpy", columns=["input_ids"])
        self.block_size = len(self._ds[0]["input_ids"]) - 1

    def __len__(self) -> int:
        return len(self._ds)

    def _index(self, i: int) -> int:
        n = len(self._ds)
        i = int(i)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"block index out of range: {i} (have {n} blocks)")
        return i

    def __getitem__(self, i: int) -> torch.Tensor:
        row = self._ds[self._index(i)]["input_ids"]
        return torch.from_numpy(np.asarray(row, dtype=np.int64))

    def __getitems__(self, indices: list[int]) -> list[torch.Tensor]:
        rows = np.asarray(self._ds[[self._index(i) for i in indices]]["input_ids"], dtype=np.int64)
        return list(torch.from_numpy(rows))
