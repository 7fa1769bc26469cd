"""Knowledge distillation from a teacher causal LM during training (``train.distill_from``).

The student's training loss gains ``alpha(step) * T^2 * KL(p_teacher^T || p_student^T)`` per
target token (Hinton et al. 2015, "Distilling the Knowledge in a Neural Network": soft targets
at temperature ``T``, the ``T^2`` keeping the gradient scale independent of ``T``), with
``p^T = softmax(logits / T)`` over the vocabulary, averaged over the positions that carry a
next-token target. This is how a converted spiking model recovers its ANN's quality with few
tokens (SpikingBrain report, Pan et al. 2025, recovers a converted Qwen2.5-7B with under 2% of
its tokens; the teacher here is that ANN, or any causal LM with the same tokenizer).

With ``train.distill_hidden_weight: beta > 0`` the loss also gains ``beta *`` :func:`hidden_match`:
per layer ``l``, ``||h_s^l - h_t^l||^2 / ||h_t^l||^2`` over the real tokens, averaged over the
layers (the layer outputs and the final normed state, as ``output_hidden_states`` lists them;
the embeddings are left out). This is layer-wise feature distillation (FitNets, Romero et al.
2015, without a regressor, since a converted model keeps its ANN's widths; the normalisation
makes layers of different scales count alike). It needs a teacher of the student's depth and
width.

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


def hidden_match(student_hidden: tuple[torch.Tensor, ...], teacher_hidden: tuple[torch.Tensor, ...],
                 mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean over layers ``l >= 1`` of ``sum ||s_l - t_l||^2 / sum ||t_l||^2`` over the real tokens.

    Args: ``student_hidden``, ``teacher_hidden``: ``output_hidden_states`` tuples of ``[B, L, D]``
    tensors (index 0, the embeddings, is skipped), of equal length and shapes; ``mask [B, L]``
    (1 = token) or None. Returns a 0-dim float32 tensor (0 when the states agree; 1 for a
    student that outputs zeros). Raises ValueError for tuples of other lengths or shapes."""
    if len(student_hidden) != len(teacher_hidden) or any(
            a.shape != b.shape for a, b in zip(student_hidden, teacher_hidden)):
        raise ValueError(f"hidden states differ: student {len(student_hidden)} x "
                         f"{tuple(student_hidden[-1].shape)}, teacher {len(teacher_hidden)} x "
                         f"{tuple(teacher_hidden[-1].shape)}; hidden-state matching needs the student's depth and width")
    w = None if mask is None else mask[..., None].float()
    terms = []
    for s_l, t_l in zip(student_hidden[1:], teacher_hidden[1:]):
        err, ref = (s_l.float() - t_l.float()).square(), t_l.float().square()
        if w is not None:
            err, ref = err * w, ref * w
        terms.append(err.sum() / ref.sum().clamp(min=1e-12))
    return torch.stack(terms).mean()


class Distiller:
    """The teacher of a run and its KL term (module docstring).

    Args:
        teacher_dir: a causal-LM directory (spikelm, a transformers model, a converted one).
        vocab_size: the student's vocabulary (``config.vocab_size``): the teacher's must equal it.
        device, dtype: where and in which dtype the teacher runs.
        weight, temperature, schedule, max_steps: ``alpha`` at step 0, ``T``, :data:`SCHEDULES`.
        hidden_weight: ``beta`` of :func:`hidden_match` (0: off); student_shape: the student's
            ``(num_hidden_layers, hidden_size)``, which the teacher's must equal when ``beta > 0``.
    Raises:
        FileNotFoundError: ``teacher_dir`` is not a directory with a ``config.json``.
        ValueError: a teacher that does not load as a causal LM, a vocabulary of another size,
            or (hidden matching) another depth or width (names both).
    """

    def __init__(self, teacher_dir: str | Path, vocab_size: int, device, dtype, weight: float, temperature: float,
                 schedule: str, max_steps: int, hidden_weight: float = 0.0,
                 student_shape: tuple[int, int] | None = None):
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
        if hidden_weight > 0:
            tc = self.teacher.config
            shape = (getattr(tc, "num_hidden_layers", None), getattr(tc, "hidden_size", None))
            if student_shape is not None and shape != tuple(student_shape):
                raise ValueError(f"train.distill_hidden_weight matches hidden states layer by layer: the teacher {d} has "
                                 f"{shape[0]} layers of width {shape[1]}, the student {student_shape[0]} of width "
                                 f"{student_shape[1]}; use a teacher of the student's shape or distill_hidden_weight 0")
        self.weight, self.temperature, self.schedule, self.max_steps = weight, temperature, schedule, max_steps
        self.hidden_weight = hidden_weight

    def alpha(self, step: int) -> float:
        """The KL weight at optimizer step ``step`` (0-based)."""
        if self.schedule == "linear":
            return self.weight * max(0.0, 1.0 - step / max(self.max_steps, 1))
        return self.weight

    def losses(self, out, batch: dict) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(KL, hidden match or None)`` of the student's output ``out`` on ``batch`` (a
        ``make_batch`` dict) against the teacher, run on the same inputs in inference mode:
        :func:`distill_kl` of the logits, and with ``hidden_weight > 0`` :func:`hidden_match`
        of ``out.hidden_states`` (the student must be run with ``output_hidden_states=True``)."""
        targets, pos = batch_targets(batch)
        mask = batch.get("attention_mask")
        with torch.inference_mode():
            t = self.teacher(input_ids=batch["input_ids"], attention_mask=mask, use_cache=False,
                             output_hidden_states=self.hidden_weight > 0)
        kl = distill_kl(out.logits[:, pos], t.logits[:, pos].clone(), targets, self.temperature)
        if self.hidden_weight <= 0:
            return kl, None
        return kl, hidden_match(out.hidden_states, tuple(h.clone() for h in t.hidden_states), mask)
