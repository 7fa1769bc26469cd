"""Streaming training data: each rank reads only its shards, the batches do not depend on the
number of ranks, and the data position is a function of the step.

A corpus too large to tokenize up front is read as a `datasets` ``IterableDataset``
(``load_dataset(..., streaming=True)``) and split into ``S`` fixed *streams* with
``datasets.distributed.split_dataset_by_node(ds, rank=i, world_size=S)``: stream ``i`` holds
whole data files (when the number of files is a multiple of ``S``), else every ``S``-th
record (a document of json/parquet/Hub data, a paragraph of a text file), so a stream
tokenizes only its part of the corpus. Each stream is tokenized on the fly (``eos`` after
every json/parquet/Hub record; text paragraphs run on), packed into blocks of
``block_size + 1`` tokens overlapping by one token (as ``packing.pack_blocks``), and
shuffled with a seeded buffer.

Global batch of optimizer step ``s`` (``G`` blocks): blocks ``s*G/S ... (s+1)*G/S - 1`` of
every stream. Rank ``r`` of ``W`` owns the streams ``i`` with ``i % W == r``, so it reads only
those; which rank computes which block depends on ``W``, the set of blocks in every global
batch does not (the averaged gradient is the same up to summation order). Hence ``S`` must
be a multiple of every world size the run will use and divide ``G``. A stream that ends
starts its next epoch (shuffle seed + epoch).

Resume: the position of every stream is ``step * G / S`` blocks. The streams are replayed
to that point (read and tokenized again, then dropped), which is exact and needs no saved
state, at the cost of re-reading the consumed data once per resume.
"""
from __future__ import annotations

from typing import Iterator

import torch

from ..hub.ids import is_hub_id
from .loading import _accepted_list, _format_of


def open_stream(files: list[str], text_field: str = "text"):
    """A streaming ``datasets.IterableDataset`` of records ``{"text": str, "doc_end": bool}``.

    Args:
        files: local .txt/.jsonl/.json/.parquet files (one format), or one Hugging Face Hub
            dataset name (its "train" split).
        text_field: the text column of json/parquet/Hub data.
    Raises:
        ValueError: no files, mixed or unknown formats.
        FileNotFoundError: a missing local file.
    """
    import os

    from datasets import load_dataset

    if not files:
        raise ValueError("data.train_files is empty; give local text/jsonl/parquet files or a Hub dataset name")
    if len(files) == 1 and is_hub_id(files[0]):
        ds = load_dataset(files[0], split="train", streaming=True)
        return ds.map(lambda ex: {"text": ex[text_field], "doc_end": True},
                      remove_columns=[c for c in (ds.column_names or []) if c not in ("text",)])
    fmts = {_format_of(f) for f in files}
    if None in fmts or len(fmts) != 1:
        raise ValueError(f"streaming needs files of one accepted format ({_accepted_list()}), got {files}")
    for f in files:
        if not os.path.exists(f):
            raise FileNotFoundError(f"training file {f} does not exist")
    fmt = fmts.pop()
    if fmt == "text":
        # paragraphs (split at blank lines, which the builder drops: put them back), so that a
        # stream of a single file holds every S-th paragraph, not every S-th line
        ds = load_dataset("text", data_files=files, split="train", streaming=True, sample_by="paragraph")
        return ds.map(lambda ex: {"text": ex["text"] + "\n\n", "doc_end": False})
    ds = load_dataset(fmt, data_files=files, split="train", streaming=True)

    def to_doc(ex):
        if text_field not in ex:
            raise ValueError(f"streamed record has no field {text_field!r} (fields: {sorted(ex)}); "
                             "set data.text_field")
        return {"text": ex[text_field] or "", "doc_end": True}

    return ds.map(to_doc)


TOKENIZE_BATCH = 256
"""Records tokenized per call of the tokenizer."""


class StreamingBlocks:
    """The rank's micro-batches of streamed blocks, step by step (see the module docstring).

    Same interface as ``schedule.BatchOrder`` + the rows it indexes, for the training loop:
    ``rank_micro_batches(step, rank, world_size, micro_batch)`` returns lists of positions
    into ``self`` (``self[i]`` is a ``LongTensor [block_size + 1]`` of the current step), and
    ``global_batch`` / ``epoch_of``.

    Args:
        dataset: from :func:`open_stream` (records "text", "doc_end").
        tokenizer: a `transformers` tokenizer with an eos token.
        block_size: tokens per training sequence L.
        num_streams: S (``data.stream_shards``).
        global_batch: G blocks per optimizer step (micro x accumulation x world size).
        rank, world_size: this process and the number of ranks W.
        seed: shuffle seed (the recipe's ``train.seed``).
        shuffle_buffer: blocks in each stream's shuffle buffer (0: no shuffling).
    Raises:
        ValueError: S not a multiple of W, G not a multiple of S, block_size < 1.
    """

    def __init__(self, dataset, tokenizer, block_size: int, num_streams: int, global_batch: int,
                 rank: int, world_size: int, seed: int, shuffle_buffer: int = 1000):
        if block_size < 1:
            raise ValueError(f"block_size must be >= 1, got {block_size}")
        if num_streams < 1 or num_streams % world_size:
            raise ValueError(f"data.stream_shards ({num_streams}) must be a multiple of the number of ranks "
                             f"({world_size}): each rank owns whole streams; use a multiple of the largest world "
                             "size the run will use")
        if global_batch % num_streams:
            raise ValueError(f"the global batch ({global_batch} blocks = micro_batch_size x grad_accum x ranks) must "
                             f"be a multiple of data.stream_shards ({num_streams}): every stream gives the same "
                             "number of blocks per step")
        eos = getattr(tokenizer, "eos_token_id", None)
        if eos is None:
            raise ValueError("the tokenizer has no eos token; streaming packs documents separated by eos")
        self.dataset, self.tokenizer, self.eos = dataset, tokenizer, int(eos)
        self.block_size, self.num_streams, self.global_batch = block_size, num_streams, global_batch
        self.rank, self.world_size, self.seed, self.shuffle_buffer = rank, world_size, seed, shuffle_buffer
        self.per_stream = global_batch // num_streams
        self.streams = list(range(rank, num_streams, world_size))
        self._iters = {i: self._blocks(i) for i in self.streams}
        self._next_step = 0
        self._rows: list[torch.Tensor] = []

    # -- one stream -------------------------------------------------------------------------
    def _documents(self, stream: int, epoch: int):
        from datasets.distributed import split_dataset_by_node

        part = split_dataset_by_node(self.dataset, rank=stream, world_size=self.num_streams)
        if hasattr(part, "set_epoch"):
            part.set_epoch(epoch)
        return part

    def _unshuffled(self, stream: int, epoch: int) -> Iterator[list[int]]:
        L = self.block_size
        buf: list[int] = []
        # records are tokenized in batches (one call of the fast tokenizer per batch)
        for batch in self._documents(stream, epoch).iter(batch_size=TOKENIZE_BATCH):
            enc = self.tokenizer(batch["text"], add_special_tokens=False, verbose=False)["input_ids"]
            for ids, end in zip(enc, batch["doc_end"]):
                buf.extend(ids)
                if end:
                    buf.append(self.eos)
                start = 0
                while len(buf) - start >= L + 1:
                    yield buf[start:start + L + 1]
                    start += L  # overlap by one token: every token is a target exactly once
                del buf[:start]  # once per record, so a long document is not copied per block

    def _blocks(self, stream: int) -> Iterator[torch.Tensor]:
        import random

        epoch = 0
        while True:
            rng = random.Random(f"spikelm-stream-{self.seed}-{stream}-{epoch}")
            pool: list[list[int]] = []
            produced = False
            for block in self._unshuffled(stream, epoch):
                produced = True
                if self.shuffle_buffer <= 1:
                    yield torch.tensor(block, dtype=torch.long)
                    continue
                pool.append(block)
                if len(pool) >= self.shuffle_buffer:
                    j = rng.randrange(len(pool))
                    pool[j], pool[-1] = pool[-1], pool[j]
                    yield torch.tensor(pool.pop(), dtype=torch.long)
            rng.shuffle(pool)
            for block in pool:
                yield torch.tensor(block, dtype=torch.long)
            if not produced:
                raise ValueError(f"stream {stream} of {self.num_streams} holds no complete block of "
                                 f"{self.block_size + 1} tokens: use fewer data.stream_shards or more data")
            epoch += 1

    # -- the loop's interface ---------------------------------------------------------------
    def _take(self) -> list[torch.Tensor]:
        return [next(self._iters[i]) for i in self.streams for _ in range(self.per_stream)]

    def rank_micro_batches(self, step: int, rank: int, world_size: int, micro_batch: int) -> list[list[int]]:
        """Positions (into ``self``) of the micro-batches ``rank`` computes at ``step``; steps
        must come in increasing order (a first call at step k replays the streams to k)."""
        if (rank, world_size) != (self.rank, self.world_size):
            raise ValueError("StreamingBlocks serves the rank and world size it was built for")
        if step < self._next_step:
            raise ValueError(f"streamed data moves forward only: step {step} after step {self._next_step - 1}")
        while self._next_step < step:  # resume: replay the consumed blocks
            self._take()
            self._next_step += 1
        self._rows = self._take()
        self._next_step = step + 1
        n = len(self._rows)
        return [list(range(i, min(i + micro_batch, n))) for i in range(0, n, micro_batch)]

    def __getitem__(self, i: int) -> torch.Tensor:
        return self._rows[i]

    def __len__(self) -> int:
        return len(self._rows)

    def epoch_of(self, step: int) -> None:
        """Unknown for a stream (its length is not known): None."""
        return None
