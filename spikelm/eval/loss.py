"""Token-weighted next-token loss: the one definition used by training-time validation
(``spikelm.train.trainer``), ``spikelm eval`` (``spikelm.eval.perplexity``) and the token
counts behind instruction fine-tuning's per-token step weighting."""
from __future__ import annotations

import torch

IGNORE_INDEX = -100
"""Target id of positions without a loss (``torch.nn.functional.cross_entropy``'s default)."""


def count_targets(targets: torch.Tensor) -> torch.Tensor:
    """Number of positions of ``targets`` (int64, any shape) that carry a loss (``!= -100``), as
    a 0-d int64 tensor on the targets' device (no host sync)."""
    return (targets != IGNORE_INDEX).sum()


def token_nll_sum(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(sum of -log p(target), number of targets)`` over the labelled positions.

    Args:
        logits: ``[B, L, V]`` scores (any float dtype; the loss is taken in fp32).
        targets: ``[B, L]`` int64 next-token ids aligned with ``logits``; ``-100`` marks
            positions without a target (prompt, padding, unscored window context).
    Returns:
        0-d tensors on the logits' device: the fp32 sum of the negative log-likelihoods in
        nats, and the int64 count of labelled positions. The mean loss in nats/token is
        ``sum / count``; bits per byte is ``sum / (ln 2 * bytes)``.
    Raises:
        ValueError: ``logits`` and ``targets`` disagree in ``[B, L]``.
    """
    if logits.shape[:-1] != targets.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and targets {tuple(targets.shape)} disagree in [B, L]")
    nll = torch.nn.functional.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1),
                                            reduction="sum", ignore_index=IGNORE_INDEX)
    return nll, count_targets(targets)


def batch_nll_sum(model, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`token_nll_sum` of a causal LM on one batch (``spikelm.data.batches.make_batch``
    form: ``input_ids [B, L]``, optional ``attention_mask [B, L]``, and ``shift_labels`` (already
    shifted) or ``labels`` aligned with the inputs). The caller chooses eval mode and no_grad.

    Raises:
        ValueError: as :func:`token_nll_sum`.
    """
    from ..data.batches import batch_targets

    targets, pos = batch_targets(batch)
    logits = model(input_ids=batch["input_ids"], attention_mask=batch.get("attention_mask"),
                   use_cache=False).logits[:, pos]
    return token_nll_sum(logits, targets)
