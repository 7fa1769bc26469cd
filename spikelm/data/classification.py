"""Labelled texts for sequence classification (``data.format: classification``): jsonl or parquet
records ``{text_field: str, label_field: str | int}``, tokenized into right-padded rows.

SpikeGPT reports natural-language understanding (SST-2, SST-5, MR, Subj) by fine-tuning with a
classification head on the last token (Zhu et al. 2023, SpikeGPT, section 4.3); the rows here
feed ``SpikeLMForSequenceClassification``, which pools the last real token of each row.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

__all__ = ["ClassificationRows", "classification_splits", "label_names", "read_labelled"]


def read_labelled(path: str, text_field: str, label_field: str) -> list[tuple[str, object, str]]:
    """``[(text, label, "file:row"), ...]`` of a ``.jsonl`` or ``.parquet`` file.

    Raises:
        FileNotFoundError: no such file. ValueError: another file type, a record without a
            string ``text_field`` or without ``label_field`` (names the record and the fields).
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"labelled file {p} does not exist")
    if p.suffix == ".jsonl":
        from ..finetune.instructions import read_jsonl

        recs, _ = read_jsonl(p, on_error="abort")
        rows = [(r, r.where) for r in recs]
    elif p.suffix == ".parquet":
        import pyarrow.parquet as pq

        rows = [(r, f"{p}:row {i + 1}") for i, r in enumerate(pq.read_table(p).to_pylist())]
    else:
        raise ValueError(f"data.format classification reads .jsonl or .parquet files, got {p}")
    out = []
    for r, where in rows:
        if not isinstance(r.get(text_field), str):
            raise ValueError(f"{where}: no string field {text_field!r} (data.text_field); fields: {sorted(r)}")
        if label_field not in r or isinstance(r[label_field], (bool, float, list, dict)) or r[label_field] is None:
            raise ValueError(f"{where}: no label field {label_field!r} (data.label_field) holding a string or an "
                             f"integer; fields: {sorted(r)}")
        out.append((r[text_field], r[label_field], where))
    if not out:
        raise ValueError(f"{p} holds no labelled record")
    return out


def label_names(records: list[tuple[str, object, str]], given: list[str] | None) -> list[str]:
    """The label names in id order: ``given`` (``data.labels``), else the sorted distinct string
    labels of the train records, else ``"0" .. str(max)`` for integer labels."""
    if given:
        return list(given)
    labels = {lab for _, lab, _ in records}
    if all(isinstance(lab, int) for lab in labels):
        return [str(i) for i in range(max(labels) + 1)]
    return sorted(str(lab) for lab in labels)


def _label_id(label, names: list[str], where: str) -> int:
    if isinstance(label, int):
        if not 0 <= label < len(names):
            raise ValueError(f"{where}: label {label} is outside num_labels {len(names)} (ids 0..{len(names) - 1}: "
                             f"{', '.join(names)})")
        return label
    if label not in names:
        raise ValueError(f"{where}: label {label!r} is not one of the {len(names)} labels {', '.join(names)} "
                         "(data.labels, or the train file's labels)")
    return names.index(label)


@dataclass
class ClassificationRows:
    """Tokenized labelled rows: ``rows[i]`` is ``{"input_ids": [L] int64, "attention_mask": [L]
    int64, "labels": 0-dim int64}``, right-padded with the tokenizer's pad (else eos) id to
    ``L = block_size``; texts longer than that keep their first ``L`` tokens (``truncated``
    counts them). ``names``: the label names in id order."""

    rows: list[dict]
    names: list[str]
    truncated: int

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict:
        return self.rows[i]


def _tokenize(records, tok, names: list[str], block_size: int) -> ClassificationRows:
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    rows, truncated = [], 0
    for text, label, where in records:
        ids = tok(text, add_special_tokens=False)["input_ids"][:block_size] or [pad]
        truncated += len(tok(text, add_special_tokens=False)["input_ids"]) > block_size
        n = len(ids)
        rows.append({"input_ids": torch.tensor(ids + [pad] * (block_size - n), dtype=torch.long),
                     "attention_mask": torch.tensor([1] * n + [0] * (block_size - n), dtype=torch.long),
                     "labels": torch.tensor(_label_id(label, names, where), dtype=torch.long)})
    return ClassificationRows(rows, names, truncated)


def classification_splits(recipe, train_files: list[str], val_files: list[str] | None, tok
                          ) -> tuple[ClassificationRows, ClassificationRows, list[str]]:
    """``(train, val, warnings)`` rows of ``data.train_files`` / ``val_files`` (None: the last
    ``data.val_fraction`` of the train records), ``data.text_field`` / ``label_field`` /
    ``labels``, ``data.block_size`` tokens.

    Raises:
        FileNotFoundError / ValueError: :func:`read_labelled`'s; a label outside the label set
            (an integer >= num_labels, or a name not in ``data.labels``); fewer than 2 records to
            split.
    """
    d = recipe.data
    train = [r for f in train_files for r in read_labelled(f, d.text_field, d.label_field)]
    if val_files is None:
        if len(train) < 2:
            raise ValueError(f"{len(train)} labelled record(s) in {train_files}: too few to split; give data.val_files")
        n_val = min(len(train) - 1, max(1, round(len(train) * d.val_fraction)))
        train, val = train[:-n_val], train[-n_val:]
    else:
        val = [r for f in val_files for r in read_labelled(f, d.text_field, d.label_field)]
    names = label_names(train, d.labels)
    tr, va = _tokenize(train, tok, names, d.block_size), _tokenize(val, tok, names, d.block_size)
    warnings = [f"{s.truncated} {what} text(s) longer than data.block_size={d.block_size} tokens were cut"
                for s, what in ((tr, "train"), (va, "validation")) if s.truncated]
    return tr, va, warnings
