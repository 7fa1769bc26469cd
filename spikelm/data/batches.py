"""Model inputs of a training/validation split, by row index."""
from __future__ import annotations

import torch


def make_batch(rows, indices, device) -> dict:
    """Model inputs of the rows ``indices`` of a split (``PackedBlocks`` or ``InstructionDataset``).

    Text blocks (``[block_size + 1]`` token ids): ``input_ids = block[:-1]`` and
    ``labels = shift_labels = block[1:]`` (already shifted: the model does not shift again).
    Instruction rows (dicts of ``[block_size]`` tensors): ``input_ids``, ``attention_mask`` and
    ``labels`` aligned with the inputs (-100 on prompt and padding; the model shifts them).
    Returns a dict of ``[B, L]`` int64 tensors on ``device``, for ``model(**batch)``.
    """
    items = [rows[i] for i in indices]
    if isinstance(items[0], dict):
        return {k: torch.stack([it[k] for it in items]).to(device) for k in ("input_ids", "attention_mask", "labels")}
    x = torch.stack(items).to(device)
    targets = x[:, 1:].contiguous()
    return {"input_ids": x[:, :-1], "labels": targets, "shift_labels": targets}


def batch_targets(batch: dict) -> tuple[torch.Tensor, slice]:
    """``(targets [B, L'], positions)``: the next-token targets of a batch and the slice of the
    logits (along L) that predict them; -100 marks positions without a target."""
    if "shift_labels" in batch:
        return batch["shift_labels"], slice(None)
    return batch["labels"][:, 1:], slice(None, -1)
