"""Model inputs of a training/validation split, by row index."""
from __future__ import annotations

import torch


def make_batch(rows, indices, device) -> dict:
    """Model inputs of the rows ``indices`` of a split (``PackedBlocks`` or ``InstructionDataset``).

    Text blocks (``[block_size + 1]`` token ids): ``input_ids = block[:-1]`` and
    ``labels = shift_labels = block[1:]`` (already shifted: the model does not shift again).
    Instruction rows (dicts of ``[block_size]`` tensors): ``input_ids``, ``attention_mask`` and
    ``labels`` aligned with the inputs (-100 on prompt and padding; the model shifts them).
    Returns a dict of ``[B, L]`` int64 tensors on ``device``, for ``model(**batch)``; to a CUDA
    device they are copied from pinned memory without waiting (``non_blocking``), so building
    the next batch overlaps the device's work on the current one.
    """
    items = [rows[i] for i in indices]
    if isinstance(items[0], dict):
        return {k: _to(torch.stack([it[k] for it in items]), device) for k in ("input_ids", "attention_mask", "labels")}
    x = _to(torch.stack(items), device)
    targets = x[:, 1:].contiguous()
    return {"input_ids": x[:, :-1], "labels": targets, "shift_labels": targets}


def _to(t: torch.Tensor, device) -> torch.Tensor:
    """``t`` on ``device``: pinned and asynchronous to CUDA, a plain copy (or ``t``) elsewhere."""
    if torch.device(device).type == "cuda":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


def batch_targets(batch: dict) -> tuple[torch.Tensor, slice]:
    """``(targets [B, L'], positions)``: the next-token targets of a batch and the slice of the
    logits (along L) that predict them; -100 marks positions without a target."""
    if "shift_labels" in batch:
        return batch["shift_labels"], slice(None)
    return batch["labels"][:, 1:], slice(None, -1)
