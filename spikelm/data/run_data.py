"""The data of a training run: a recipe's ``data:`` section -> texts -> train/validation splits.

Two steps, because the tokenizer sits between them (a BPE is trained on the train text):
:func:`read_texts` (files resolved, documents loaded, validation split off; nothing tokenized)
and :func:`build_splits` (blocks or instruction rows of ``data.block_size`` tokens).
"""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class RunTexts:
    """The files and loaded documents of a run (``datasets.Dataset`` with a ``text`` column).

    ``train`` is None when streaming (read later as a stream) or for instruction data (jsonl
    records are read by :func:`build_splits`); ``val`` is None for instruction data."""

    train_files: list[str]
    val_files: list[str] | None
    train: object | None
    val: object | None


@dataclass
class RunSplits:
    """Train and validation rows of a run, for ``spikelm.data.batches.make_batch``.

    Attributes:
        train: ``PackedBlocks`` / ``StreamingBlocks`` (text), ``InstructionDataset`` or
            ``ClassificationRows``.
        val: ``PackedBlocks``, ``InstructionDataset`` or ``ClassificationRows``.
        val_bytes_per_token: UTF-8 bytes per validation target token (for bits per byte; NaN
            for classification, which has no next-token targets).
        unit: what a row is, for the log. warnings: skipped-record messages (instructions).
    """

    train: object
    val: object
    val_bytes_per_token: float
    unit: str
    warnings: list[str] = field(default_factory=list)


def read_texts(recipe) -> RunTexts:
    """Resolve ``data.train_files`` / ``val_files`` (``builtin:`` corpora included) and load the
    text documents (streaming: the validation files only).

    Raises:
        FileNotFoundError / ValueError: missing or unreadable files, an empty corpus, a bad
            ``text_field`` (``spikelm.data.loading``'s messages).
    """
    from ..recipes import resolve_data_files
    from .loading import load_documents, load_text_splits

    d = recipe.data
    train_files, val_files = resolve_data_files(d.train_files), resolve_data_files(d.val_files)
    if d.format != "text":
        return RunTexts(train_files, val_files, None, None)
    if d.streaming:
        return RunTexts(train_files, val_files, None,
                        load_documents(val_files, d.text_field, "validation", on_bad_record=d.on_bad_record))
    train, val = load_text_splits(train_files, val_files, d.val_fraction, d.text_field, on_bad_record=d.on_bad_record)
    return RunTexts(train_files, val_files, train, val)


def build_splits(recipe, texts: RunTexts, tok, rank: int, world: int) -> RunSplits:
    """Tokenize ``texts`` into the run's splits: packed blocks of ``data.block_size + 1`` tokens
    (a stream of them with ``data.streaming``, each rank reading its share of
    ``data.stream_shards`` streams), or instruction rows (``spikelm.finetune.splits``).

    Raises:
        ValueError: a corpus too small for one block, a global batch that is not a multiple of
            the stream count, or bad instruction records.
    """
    from .packing import PackedBlocks, corpus_stats, pack_blocks

    d, t = recipe.data, recipe.train
    if d.format == "classification":
        from .classification import classification_splits

        train, val, warnings = classification_splits(recipe, texts.train_files, texts.val_files, tok)
        return RunSplits(train, val, float("nan"), "labelled rows", warnings)
    if d.format != "text":
        from ..finetune.splits import instruction_splits, target_bytes_per_token

        train, val, warnings = instruction_splits(recipe, texts.train_files, texts.val_files, tok)
        unit = "padded instruction rows" if d.packing == "pad" else "packed instruction rows"
        return RunSplits(train, val, target_bytes_per_token(val, tok), unit, warnings)
    if d.streaming:
        from .streaming import StreamingBlocks, open_stream

        train = StreamingBlocks(open_stream(texts.train_files, d.text_field), tok, d.block_size, d.stream_shards,
                                t.micro_batch_size * t.grad_accum * world, rank, world, t.seed, d.shuffle_buffer)
    else:
        train = PackedBlocks(pack_blocks(texts.train, tok, d.block_size))
    val = PackedBlocks(pack_blocks(texts.val, tok, d.block_size))
    return RunSplits(train, val, corpus_stats(texts.val, tok)["bytes_per_token"], "blocks")
