"""Knowledge distillation from a teacher causal LM during training (``train.distill_from``).

The student's training loss gains ``alpha(step) * T^2 * KL(p_teacher^T || p_student^T)`` per
target token (Hinton et al. 2015, "Distilling the Knowledge in a Neural Network": soft targets
at temperature ``T``, the ``T^2`` keeping the gradient scale independent of ``T``), with
``p^T = softmax(logits / T)`` over the vocabulary, averaged over the positions that carry a
next-token target. This is how a converted spiking model recovers its ANN's quality with few
tokens (SpikingBrain report, Pan et al. 2025, recovers a converted Qwen2.5-7B with under 2% of
its tokens; the teacher here is that ANN, or any causal LM with the same tokenizer).

The teacher runs in inference mode (no gradients, eval mode) on every rank, in the student's
precision (bf16 on GPU); it is loaded whole on each rank (not sharded by ZeRO-3).
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from ..data.batches import batch_targets
from ..eval.loss import IGNORE_INDEX

SCHEDULES = ("constant", "linear")
"""``alpha(step)``: ``constant`` (``train.distill_weight`` throughout) or ``linear`` (from the
weight at step 0 down to 0 at ``train.max_steps``: the task loss takes over)."""


def distill_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, targets: torch.Tensor,
               temperature: float = 1.0) -> torch.Tensor:
    """``T^2 * KL(softmax(t / T) || softmax(s / T))`` summed over the vocabulary, averaged over
    the positions whose ``targets`` are not -100.

    Args: ``student_logits``, ``teacher_logits`` ``[B, L, V]`` (any float dtype; computed in
    float32), ``targets [B, L]`` int64, ``temperature`` T > 0. Returns a 0-dim float32 tensor
    (nats per target token; 0 when the distributions agree). Raises ValueError for logits of
    different shapes."""
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(f"student logits {tuple(student_logits.shape)} and teacher logits "
                         f"{tuple(teacher_logits.shape)} differ: the teacher must share the student's vocabulary")
    keep = targets != IGNORE_INDEX
    s = F.log_softmax(student_logits[keep].float() / temperature, dim=-1)
    t = F.log_softmax(teacher_logits[keep].float() / temperature, dim=-1)
    kl = F.kl_div(s, t, log_target=True, reduction="sum") / keep.sum().clamp(min=1)
    return kl * temperature ** 2


class Distiller:
    """The teacher of a run and its KL term (module docstring).

    Args:
        teacher_dir: a causal-LM directory (spikelm, a transformers model, a converted one).
        vocab_size: the student's vocabulary (``config.vocab_size``): the teacher's must equal it.
        device, dtype: where and in which dtype the teacher runs.
        weight, temperature, schedule, max_steps: ``alpha`` at step 0, ``T``, :data:`SCHEDULES`.
    Raises:
        FileNotFoundError: ``teacher_dir`` is not a directory with a ``config.json``.
        ValueError: a teacher that does not load as a causal LM, or a vocabulary of another
            size (names both).
    """

    def __init__(self, teacher_dir: str | Path, vocab_size: int, device, dtype, weight: float, temperature: float,
                 schedule: str, max_steps: int):
        from transformers import AutoModelForCausalLM

        d = Path(teacher_dir)
        if not (d / "config.json").is_file():
            raise FileNotFoundError(f"train.distill_from {d} is not a model directory (no config.json)")
        try:
            teacher = AutoModelForCausalLM.from_pretrained(d, dtype=dtype)
        except (OSError, ValueError, RuntimeError, KeyError) as e:
            raise ValueError(f"train.distill_from {d} does not load as a causal LM "
                             f"({' '.join(str(e).split())[:200]})") from None
        self.teacher = teacher.to(device).eval().requires_grad_(False)
        n = self.teacher.get_output_embeddings().weight.shape[0]
        if n != vocab_size:
            raise ValueError(f"train.distill_from {d} has a vocabulary of {n} tokens, the student {vocab_size}; the "
                             "teacher must use the student's tokenizer (e.g. the ANN the student was converted from)")
        self.weight, self.temperature, self.schedule, self.max_steps = weight, temperature, schedule, max_steps

    def alpha(self, step: int) -> float:
        """The KL weight at optimizer step ``step`` (0-based)."""
        if self.schedule == "linear":
            return self.weight * max(0.0, 1.0 - step / max(self.max_steps, 1))
        return self.weight

    def kl(self, student_logits: torch.Tensor, batch: dict) -> torch.Tensor:
        """:func:`distill_kl` of the student's logits on ``batch`` (a ``make_batch`` dict) against
        the teacher's, run on the same inputs in inference mode."""
        targets, pos = batch_targets(batch)
        with torch.inference_mode():
            t = self.teacher(input_ids=batch["input_ids"], attention_mask=batch.get("attention_mask"),
                             use_cache=False).logits
        return distill_kl(student_logits[:, pos], t[:, pos].clone(), targets, self.temperature)
