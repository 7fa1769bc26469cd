"""Load text corpora with `datasets` into (train, validation) datasets of documents.

Every dataset returned here has exactly two columns:

- ``"text"`` (string): a piece of a document; for text files one line *with* its line break,
  for json/jsonl/parquet files (and Hub datasets) one whole row;
- ``"doc_end"`` (bool): True on the last row of each document. A text file is one document,
  each json/parquet row is its own document. `pack_blocks` appends EOS after such rows.

Local files are read with the packaged `datasets` builders ("text", "json", "parquet"), so
they are converted to Arrow once and memory-mapped from the `datasets` cache afterwards.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
from datasets import Dataset, DatasetDict, Features, Value, concatenate_datasets, load_dataset
from datasets.exceptions import DatasetGenerationError

from ..hub.ids import is_hub_id

__all__ = [
    "ACCEPTED_EXTENSIONS",
    "COMPRESSION_EXTENSIONS",
    "load_documents",
    "load_text_splits",
    "split_by_bytes",
    "tiny_shakespeare_path",
]

TEXT_EXTENSIONS = (".txt", ".text", ".md")
JSON_EXTENSIONS = (".json", ".jsonl")
PARQUET_EXTENSIONS = (".parquet",)
#: Extensions accepted for local files, with the `datasets` builder that reads them.
ACCEPTED_EXTENSIONS = {
    **{e: "text" for e in TEXT_EXTENSIONS},
    **{e: "json" for e in JSON_EXTENSIONS},
    **{e: "parquet" for e in PARQUET_EXTENSIONS},
}
#: Compression suffixes that may follow an accepted extension (``corpus.jsonl.gz``).
COMPRESSION_EXTENSIONS = (".gz", ".bz2", ".xz")

FEATURES = Features({"text": Value("string"), "doc_end": Value("bool")})


def _accepted_list() -> str:
    return ", ".join(ACCEPTED_EXTENSIONS) + " (optionally compressed: " + ", ".join(COMPRESSION_EXTENSIONS) + ")"


def _format_of(path: str) -> str | None:
    name = os.path.basename(path).lower()
    for comp in COMPRESSION_EXTENSIONS:
        if name.endswith(comp):
            name = name[: -len(comp)]
            break
    for ext, fmt in ACCEPTED_EXTENSIONS.items():
        if name.endswith(ext):
            return fmt
    return None


def _as_list(files, what: str) -> list[str]:
    if isinstance(files, (str, os.PathLike)):
        files = [files]
    files = [os.fspath(f) for f in files]
    if not files:
        raise ValueError(f"no {what} files given; pass at least one file ({_accepted_list()})")
    return files


def _check_file(path: str, what: str) -> str:
    """Return the `datasets` builder name for `path`, or raise."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{what} file not found: {path!r}")
    if p.is_dir():
        raise ValueError(
            f"{what} path {path!r} is a directory; pass the files themselves ({_accepted_list()})"
        )
    fmt = _format_of(path)
    if fmt is None:
        raise ValueError(
            f"{what} file {path!r} has an unknown extension {''.join(p.suffixes) or '(none)'!r}; "
            f"accepted: {_accepted_list()}"
        )
    return fmt


def _byte_lengths(ds: Dataset, column: str = "text") -> np.ndarray:
    """UTF-8 byte length of every row of `column` (int64 [num_rows]; null counts as 0)."""
    parts = [np.zeros(0, dtype=np.int64)]
    for table in ds.select_columns([column]).with_format("arrow").iter(batch_size=65536):
        lengths = pc.fill_null(pc.binary_length(table.column(column)), 0)
        parts.append(lengths.to_numpy().astype(np.int64, copy=False))
    return np.concatenate(parts)


def _with_doc_end(ds: Dataset, doc_end: np.ndarray) -> Dataset:
    ds = ds.add_column("doc_end", doc_end)
    if ds.features != FEATURES:
        ds = ds.cast(FEATURES)
    return ds


_TEXT_ONLY = Features({"text": Value("string")})


def _builder_load(fmt: str, paths: list[str], **kwargs) -> Dataset:
    """`load_dataset(fmt, data_files=paths, split="train")`, read errors named by file."""
    try:
        return load_dataset(fmt, data_files=paths, split="train", **kwargs)
    except DatasetGenerationError as e:
        cause = e.__cause__ or e
        raise ValueError(
            f"could not read {paths} as {fmt} files: {type(cause).__name__}: {cause}"
        ) from e


def _load_text_file(path: str) -> Dataset:
    ds = _builder_load("text", [path], sample_by="line", keep_linebreaks=True, features=_TEXT_ONLY)
    doc_end = np.zeros(len(ds), dtype=bool)
    if len(ds):
        doc_end[-1] = True  # a text file is one document
    return _with_doc_end(ds, doc_end)


def _nonempty(texts: list[str | None]) -> list[bool]:
    return [bool(t) for t in texts]


BAD_RECORD_POLICIES = ("error", "skip")
MAX_BAD_FRACTION = 0.01
"""Under ``on_bad_record="error"``, the share of records without the text field that is still
skipped (with a warning) rather than refused."""


class DataWarning(UserWarning):
    """Records were skipped while loading (the message counts them and names the files)."""


def _count_bad_records(ds: Dataset, text_field: str, where: str, on_bad_record: str) -> None:
    """Warn about, or refuse, records whose ``text_field`` is missing (null): more than
    :data:`MAX_BAD_FRACTION` of them under ``"error"``; any number is skipped under ``"skip"``."""
    import warnings

    if on_bad_record not in BAD_RECORD_POLICIES:
        raise ValueError(f"on_bad_record must be one of {BAD_RECORD_POLICIES}, got {on_bad_record!r}")
    bad = ds.select_columns([text_field]).with_format("arrow")
    n_bad = sum(t.column(text_field).null_count for t in bad.iter(batch_size=65536))
    if not n_bad or n_bad == len(ds) or not int(_byte_lengths(ds, text_field).sum()):
        return  # nothing skipped, or no text at all: the "empty corpus" error names that
    msg = f"{where}: {n_bad} of {len(ds)} records have no {text_field!r} string"
    if on_bad_record == "error" and n_bad > MAX_BAD_FRACTION * len(ds):
        raise ValueError(f"{msg} (over {MAX_BAD_FRACTION:.0%}); fix the data, pick another data.text_field, or "
                         "set data.on_bad_record: skip to train on the rest")
    warnings.warn(f"{msg}; they are skipped", DataWarning, stacklevel=2)


def _records_to_documents(ds: Dataset, text_field: str, where: str, on_bad_record: str = "error") -> Dataset:
    """Keep `text_field` of a row-per-document dataset as "text"; drop empty rows (records
    without the field counted: :func:`_count_bad_records`); doc_end=True."""
    if text_field not in ds.column_names:
        raise ValueError(
            f"{where}: text field {text_field!r} not found; fields present: {ds.column_names}. "
            f"Pass text_field=<one of them>"
        )
    feature = ds.features[text_field]
    if not (isinstance(feature, Value) and feature.dtype in ("string", "large_string")):
        raise ValueError(f"{where}: field {text_field!r} holds {feature}, not strings; pick a text field")
    _count_bad_records(ds, text_field, where, on_bad_record)
    ds = ds.select_columns([text_field])
    if text_field != "text":
        ds = ds.rename_column(text_field, "text")
    if len(ds) and int((_byte_lengths(ds) == 0).sum()):
        ds = ds.filter(_nonempty, batched=True, input_columns=["text"])
        ds = ds.flatten_indices()
    return _with_doc_end(ds, np.ones(len(ds), dtype=bool))


def _load_record_files(paths: list[str], fmt: str, text_field: str, on_bad_record: str = "error") -> Dataset:
    kwargs = {}
    if fmt == "parquet" and not any(p.lower().endswith(COMPRESSION_EXTENSIONS) for p in paths):
        import pyarrow.parquet as pq

        for p in paths:  # read the text column only; say which file lacks it
            names = pq.read_schema(p).names
            if text_field not in names:
                raise ValueError(
                    f"{p!r}: text field {text_field!r} not found; fields present: {names}. "
                    f"Pass text_field=<one of them>"
                )
        kwargs["columns"] = [text_field]
    ds = _builder_load(fmt, paths, **kwargs)
    where = repr(paths[0]) if len(paths) == 1 else f"files {paths}"
    return _records_to_documents(ds, text_field, where, on_bad_record)


def load_documents(files: list[str], text_field: str = "text", what: str = "train",
                   on_bad_record: str = "error") -> Dataset:
    """Load local files, in order, as one dataset of documents (no splitting).

    Args:
        files: local paths; the extension picks the builder: .txt/.text/.md -> "text"
            (one row per line, line breaks kept; universal newlines, so "\\r\\n" reads as
            "\\n"), .json/.jsonl -> "json", .parquet -> "parquet" (one row = one document);
            each may end in .gz/.bz2/.xz.
        text_field: column holding the text in json/parquet files.
        what: word used in error messages ("train", "validation").
        on_bad_record: json/parquet records without a string ``text_field``: ``"error"``
            refuses more than 1% of them (fewer are skipped with a :class:`DataWarning`),
            ``"skip"`` skips any number (counted in the warning).

    Returns:
        `datasets.Dataset` with columns "text" (string) and "doc_end" (bool), rows in file
        order; empty json/parquet rows are dropped.

    Raises:
        FileNotFoundError: a file does not exist (named).
        ValueError: directory instead of a file, unknown extension (accepted ones listed),
            missing/non-string `text_field` (fields present listed), too many records
            without it, or no text at all.
    """
    files = _as_list(files, what)
    fmts = [_check_file(f, what) for f in files]
    nonempty = [(f, fmt) for f, fmt in zip(files, fmts) if os.path.getsize(f) > 0]
    if not nonempty:
        raise ValueError(f"empty corpus: the {what} files {files} contain no text")
    all_files, files, fmts = files, [f for f, _ in nonempty], [fmt for _, fmt in nonempty]
    parts: list[Dataset] = []
    i = 0
    while i < len(files):  # consecutive json (or parquet) files are loaded in one call
        fmt = fmts[i]
        if fmt == "text":
            parts.append(_load_text_file(files[i]))
            i += 1
            continue
        j = i
        while j < len(files) and fmts[j] == fmt:
            j += 1
        parts.append(_load_record_files(files[i:j], fmt, text_field, on_bad_record))
        i = j
    parts = [p for p in parts if len(p)] or parts[:1]
    ds = parts[0] if len(parts) == 1 else concatenate_datasets(parts)
    if len(ds) == 0 or int(_byte_lengths(ds).sum()) == 0:
        raise ValueError(f"empty corpus: the {what} files {all_files} contain no text")
    return ds


def _single_row(text: str, doc_end: bool) -> Dataset:
    return Dataset.from_dict({"text": [text], "doc_end": [doc_end]}, features=FEATURES)


def _concat(parts: list[Dataset]) -> Dataset:
    parts = [p for p in parts if p is not None]
    return parts[0] if len(parts) == 1 else concatenate_datasets(parts)


def _check_val_fraction(val_fraction) -> None:
    if isinstance(val_fraction, bool) or not isinstance(val_fraction, (int, float)) or not 0.0 < val_fraction < 1.0:
        raise ValueError(
            f"val_fraction must be strictly between 0 and 1, got {val_fraction!r} "
            f"(e.g. 0.1 for a 90/10 split); to use separate validation files pass val_files"
        )


def split_by_bytes(ds: Dataset, val_fraction: float) -> tuple[Dataset, Dataset]:
    """Split a document dataset contiguously by UTF-8 bytes (nanoGPT's 90/10 convention).

    With N the total number of UTF-8 bytes of the "text" column, the train part holds the
    first ``k = int(N * (1 - val_fraction))`` bytes and validation the rest, in order, not
    shuffled. Whole rows go to train while the cumulative byte count stays <= k; the row in
    which the boundary falls is cut at byte k (moved back to the start of a UTF-8 character
    if k falls inside one). For tiny Shakespeare (1,115,394 bytes, ASCII) this gives
    exactly nanoGPT's ``data[:int(n*0.9)]``: 1,003,854 train bytes.

    Args:
        ds: dataset with columns "text" (string) and "doc_end" (bool).
        val_fraction: fraction of bytes for validation, 0 < val_fraction < 1.

    Returns:
        (train, validation) with the same columns. The cut row's train piece has
        doc_end=False (its document continues in validation); its validation piece keeps
        the row's doc_end.

    Raises:
        ValueError: `val_fraction` not in (0, 1), or a corpus too small for both parts
            to get at least one byte.
    """
    _check_val_fraction(val_fraction)
    lengths = _byte_lengths(ds)
    total = int(lengths.sum())
    k = int(total * (1.0 - float(val_fraction)))
    if k <= 0 or k >= total:
        raise ValueError(
            f"corpus of {total} bytes is too small to split with val_fraction={val_fraction}: "
            f"train would get {k} bytes and validation {total - k}; add text or pass val_files"
        )
    cum = np.cumsum(lengths)
    r = int(np.searchsorted(cum, k, side="right"))  # rows [0, r) lie entirely in train
    offset = k - (int(cum[r - 1]) if r > 0 else 0)  # train bytes taken from row r
    n = len(ds)
    whole_train = ds.select(range(r)) if r > 0 else None
    if offset == 0:
        return whole_train, ds.select(range(r, n))
    row = ds[r]
    data = row["text"].encode("utf-8")
    cut = offset
    while cut > 0 and (data[cut] & 0xC0) == 0x80:  # continuation byte: back to a char start
        cut -= 1
    head = _single_row(data[:cut].decode("utf-8"), False) if cut > 0 else None
    tail = _single_row(data[cut:].decode("utf-8"), bool(row["doc_end"]))
    rest = ds.select(range(r + 1, n)) if r + 1 < n else None
    if whole_train is None and head is None:
        raise ValueError(
            f"corpus of {total} bytes is too small to split with val_fraction={val_fraction}; "
            f"add text or pass val_files"
        )
    return _concat([whole_train, head]), _concat([tail, rest])


def _load_hub(name: str, val_fraction: float, text_field: str) -> tuple[Dataset, Dataset]:
    import datasets

    try:
        dd = load_dataset(name)
    except (ConnectionError, FileNotFoundError, OSError) as e:
        offline = bool(datasets.config.HF_HUB_OFFLINE)
        why = (
            "the Hub is unreachable: offline mode is on (HF_HUB_OFFLINE / HF_DATASETS_OFFLINE)"
            if offline or isinstance(e, ConnectionError)
            else "no such dataset on the Hub"
        )
        raise FileNotFoundError(
            f"{name!r} is not a local file, so it was looked up as a Hugging Face Hub dataset "
            f"name, but {why} and it is not in the local datasets cache. Pass local files "
            f"({_accepted_list()}) or go online. ({type(e).__name__}: {e})"
        ) from e
    if not isinstance(dd, DatasetDict) or "train" not in dd:
        splits = list(dd.keys()) if isinstance(dd, DatasetDict) else []
        raise ValueError(f"Hub dataset {name!r} has no 'train' split (splits: {splits})")
    train = _records_to_documents(dd["train"], text_field, f"Hub dataset {name!r} (train)")
    if "validation" in dd:
        val = _records_to_documents(dd["validation"], text_field, f"Hub dataset {name!r} (validation)")
        return train, val
    return split_by_bytes(train, val_fraction)


def load_text_splits(
    train_files: list[str],
    val_files: list[str] | None = None,
    val_fraction: float = 0.1,
    text_field: str = "text",
    on_bad_record: str = "error",
) -> tuple[Dataset, Dataset]:
    """Load a training corpus and its validation part as datasets of documents.

    Args:
        train_files: local files (see `load_documents` for the formats: .txt/.text/.md,
            .json/.jsonl, .parquet, optionally .gz/.bz2/.xz), in order; or a single Hugging
            Face Hub dataset name (e.g. ``["karpathy/tinyshakespeare"]``) when no such local
            path exists: its "train" split is used, and its "validation" split if it has one.
        val_files: local validation files; when None, the train text is split by bytes
            (`split_by_bytes`: first ``1 - val_fraction`` of the UTF-8 bytes train, the rest
            validation, contiguous).
        val_fraction: validation share of the bytes, 0 < val_fraction < 1 (checked always).
        text_field: column holding the text in json/parquet files and Hub datasets.
        on_bad_record: records without a string ``text_field``: see :func:`load_documents`.

    Returns:
        ``(train, validation)``: `datasets.Dataset` s with columns "text" (string) and
        "doc_end" (bool, True on the last row of each document), in corpus order.

    Raises:
        FileNotFoundError: a local file is missing (named), or a Hub name cannot be fetched
            (the message says whether offline mode is on).
        ValueError: `val_fraction` not in (0, 1); directory or unknown extension (accepted
            ones listed); missing `text_field` (fields present listed); empty corpus; a
            corpus too small to split.
    """
    _check_val_fraction(val_fraction)
    train_files = _as_list(train_files, "train")
    if len(train_files) == 1 and is_hub_id(train_files[0]):
        if val_files is not None:
            raise ValueError("val_files cannot be combined with a Hub dataset name; pass local files")
        return _load_hub(train_files[0], val_fraction, text_field)
    train = load_documents(train_files, text_field, what="train", on_bad_record=on_bad_record)
    if val_files is not None:
        val = load_documents(val_files, text_field, what="validation", on_bad_record=on_bad_record)
        return train, val
    return split_by_bytes(train, val_fraction)


def tiny_shakespeare_path() -> str:
    """Path of the bundled tiny Shakespeare corpus (``recipes/data/tinyshakespeare/input.txt``,
    installed as package data of ``spikelm.recipes``; 1,115,394 bytes, see its README.md)."""
    from ..recipes import DATA_DIR

    return str(DATA_DIR / "tinyshakespeare" / "input.txt")
