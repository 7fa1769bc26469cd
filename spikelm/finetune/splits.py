"""Training and validation splits of instruction data (``data.format: instructions``)."""
from __future__ import annotations


def target_bytes_per_token(rows, tok) -> float:
    """UTF-8 bytes per target token of an instruction split: the response text (special tokens
    such as the closing eos decode to nothing) over the number of labelled targets."""
    n_bytes = n_tok = 0
    for i in range(len(rows)):
        labels = rows[i]["labels"][1:]
        ids = labels[labels != -100].tolist()
        n_tok += len(ids)
        n_bytes += len(tok.decode(ids, skip_special_tokens=True).encode("utf-8"))
    return n_bytes / max(n_tok, 1)


def instruction_splits(recipe, train_files: list[str], val_files: list[str] | None, tok):
    """``(train, val, warnings)``: :class:`spikelm.finetune.InstructionDataset` rows of
    ``data.block_size`` tokens (``data.packing``) from the jsonl ``train_files`` and ``val_files``
    (None: the last ``data.val_fraction`` of the train records). Gives ``tok`` a chat template
    when it has none (``ensure_chat_template``), so it is saved with the model.

    Raises:
        FileNotFoundError: a missing file. ValueError: a file that is not jsonl, no usable
            record, or fewer than 2 records to split.
    """
    from .instructions import InstructionDataset, ensure_chat_template, read_jsonl

    ensure_chat_template(tok)
    warnings: list[str] = []

    def records(files):
        out = []
        for f in files:
            if not f.endswith(".jsonl"):
                raise ValueError(f"data.format instructions reads .jsonl files, got {f}")
            recs, warns = read_jsonl(f)
            out += recs
            warnings.extend(warns)
        return out

    train_recs = records(train_files)
    if val_files is None:
        if len(train_recs) < 2:
            raise ValueError(f"{len(train_recs)} instruction record(s) in {train_files}: too few to split off a "
                             "validation part; give data.val_files")
        n_val = min(len(train_recs) - 1, max(1, round(len(train_recs) * recipe.data.val_fraction)))
        train_recs, val_recs = train_recs[:-n_val], train_recs[-n_val:]
    else:
        val_recs = records(val_files)
    kw = dict(max_length=recipe.data.block_size, packing=recipe.data.packing)
    train_ds, val_ds = InstructionDataset(train_recs, tok, **kw), InstructionDataset(val_recs, tok, **kw)
    return train_ds, val_ds, warnings + train_ds.warnings + val_ds.warnings
