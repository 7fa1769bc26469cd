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

With ``train.distill_attention_weight: gamma > 0`` it gains ``gamma *`` :func:`attention_transfer`:
each student token mixer (GLA, SWA, ...) is run on the input the teacher's attention layer of
the same depth received, and its output is matched to that layer's output (the same
normalised squared error). This is LoLCATs' attention transfer (Zhang et al. 2024,
"LoLCATs: On Low-Rank Linearizing of Large Language Models", Sec. 3.1: train the linear
attention to reproduce softmax attention's outputs on the teacher's own hidden states), done
here on the training batches and at the same time as the KL, so it uses no tokens of its own:
a layer-local target that does not wait for the errors of the layers below to be fixed.

The teacher runs in inference mode (no gradients, eval mode) on every rank, in the student's
precision (bf16 on GPU). Under ZeRO stage 3 it is sharded like the student: built inside
``deepspeed.zero.Init`` from its safetensors (``spikelm.train.model_init.build_model``, so no
rank holds it whole) and run through a DeepSpeed engine without an optimizer (ZeRO-3's
parameter gathering in module hooks, as DeepSpeed's ZeRO-Inference); other stages load it
whole on each rank.
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


def _nmse(s: torch.Tensor, t: torch.Tensor, w: torch.Tensor | None) -> torch.Tensor:
    """``sum ||s - t||^2 / sum ||t||^2`` over the positions where ``w [B, L, 1]`` is 1 (all: None)."""
    err, ref = (s.float() - t.float()).square(), t.float().square()
    if w is not None:
        err, ref = err * w, ref * w
    return err.sum() / ref.sum().clamp(min=1e-12)


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
    return torch.stack([_nmse(s_l, t_l, w) for s_l, t_l in zip(student_hidden[1:], teacher_hidden[1:])]).mean()


def attention_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The token-mixing layers of a causal LM in depth order: ``layers.{i}.self_attn`` of a
    transformers Llama-family model, ``blocks.{i}.att`` of a spikelm model; ``[]`` for others."""
    found = {}
    for name, mod in model.named_modules():
        parts = name.split(".")
        if len(parts) >= 3 and parts[-3] in ("layers", "blocks") and parts[-2].isdigit() and \
                parts[-1] in ("self_attn", "att"):
            found[int(parts[-2])] = mod
    return [found[i] for i in sorted(found)]


def attention_transfer(student_mixers: list[torch.nn.Module], teacher_io: list[tuple[torch.Tensor, torch.Tensor]],
                       mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean over layers of ``_nmse(mixer_l(x_l), y_l)``: each student token mixer run on the input
    ``x_l [B, L, D]`` of the teacher's attention layer ``l``, against that layer's output
    ``y_l [B, L, D]`` (module docstring). ``mask [B, L]`` (1 = token) or None. Returns a 0-dim
    float32 tensor. Raises ValueError when the layer counts differ."""
    if len(student_mixers) != len(teacher_io):
        raise ValueError(f"attention transfer pairs layers: the student has {len(student_mixers)} token mixers, "
                         f"the teacher {len(teacher_io)} attention layers")
    w = None if mask is None else mask[..., None].float()
    return torch.stack([_nmse(m(x, None, mask)[0], y, w) for m, (x, y) in zip(student_mixers, teacher_io)]).mean()


def _zero3_teacher(d: Path, config, ds_config: dict):
    """The teacher in ``d`` partitioned by ZeRO-3 (module docstring): a DeepSpeed engine without an
    optimizer, in eval mode. Raises ValueError for an architecture the trainer cannot build."""
    import deepspeed

    from .model_init import build_model

    model = build_model(config, ds_config, 3, seed=0, weights_dir=d).requires_grad_(False)
    inference = {k: v for k, v in ds_config.items() if k not in ("optimizer", "scheduler")}
    engine = deepspeed.initialize(model=model, config=inference)[0]
    engine.eval()  # (DeepSpeedEngine.eval returns None)
    return engine


class Distiller:
    """The teacher of a run and its KL term (module docstring).

    Args:
        teacher_dir: a causal-LM directory (spikelm, a transformers model, a converted one).
        vocab_size: the student's vocabulary (``config.vocab_size``): the teacher's must equal it.
        device, dtype: where and in which dtype the teacher runs.
        weight, temperature, schedule, max_steps: ``alpha`` at step 0, ``T``, :data:`SCHEDULES`.
        hidden_weight: ``beta`` of :func:`hidden_match` (0: off); student_shape: the student's
            ``(num_hidden_layers, hidden_size)``, which the teacher's must equal when ``beta > 0``
            or ``gamma > 0``. attention_weight: ``gamma`` of :func:`attention_transfer` (0: off).
        ds_config: the student's DeepSpeed config; with ZeRO stage 3 the teacher is sharded
            (module docstring; a spikelm or Llama-family teacher), else loaded whole.
    Raises:
        FileNotFoundError: ``teacher_dir`` is not a directory with a ``config.json``.
        ValueError: a teacher that does not load as a causal LM, a vocabulary of another size,
            or (hidden matching) another depth or width (names both), or under ZeRO-3 a teacher
            of another architecture.
    """

    def __init__(self, teacher_dir: str | Path, vocab_size: int, device, dtype, weight: float, temperature: float,
                 schedule: str, max_steps: int, hidden_weight: float = 0.0,
                 student_shape: tuple[int, int] | None = None, attention_weight: float = 0.0,
                 ds_config: dict | None = None):
        from transformers import AutoConfig, AutoModelForCausalLM

        from .engine import zero_stage

        d = Path(teacher_dir)
        if not (d / "config.json").is_file():
            raise FileNotFoundError(f"train.distill_from {d} is not a model directory (no config.json)")
        self.sharded = ds_config is not None and zero_stage(ds_config) == 3
        try:
            tc = AutoConfig.from_pretrained(d)
            if self.sharded:
                self.teacher = _zero3_teacher(d, tc, ds_config)
            else:
                teacher = AutoModelForCausalLM.from_pretrained(d, dtype=dtype)
                self.teacher = teacher.to(device).eval().requires_grad_(False)
        except (OSError, ValueError, RuntimeError, KeyError) as e:
            raise ValueError(f"train.distill_from {d} does not load as a causal LM "
                             f"({' '.join(str(e).split())[:200]})") from None
        w = self.teacher.module.get_output_embeddings().weight if self.sharded else \
            self.teacher.get_output_embeddings().weight
        n = getattr(w, "ds_shape", w.shape)[0]
        if n != vocab_size:
            raise ValueError(f"train.distill_from {d} has a vocabulary of {n} tokens, the student {vocab_size}; the "
                             "teacher must use the student's tokenizer (e.g. the ANN the student was converted from)")
        if hidden_weight > 0 or attention_weight > 0:
            shape = (getattr(tc, "num_hidden_layers", None), getattr(tc, "hidden_size", None))
            if student_shape is not None and shape != tuple(student_shape):
                raise ValueError(f"train.distill_hidden_weight / distill_attention_weight match layer by layer: the "
                                 f"teacher {d} has {shape[0]} layers of width {shape[1]}, the student {student_shape[0]} "
                                 f"of width {student_shape[1]}; use a teacher of the student's shape or set them to 0")
        self.teacher_attention = attention_layers(self.teacher) if attention_weight > 0 else []
        if attention_weight > 0 and len(self.teacher_attention) != tc.num_hidden_layers:
            raise ValueError(f"train.distill_attention_weight: the teacher {d} has no layers.N.self_attn / blocks.N.att "
                             "attention modules to match")
        self.weight, self.temperature, self.schedule, self.max_steps = weight, temperature, schedule, max_steps
        self.hidden_weight, self.attention_weight = hidden_weight, attention_weight
        self._student_mixers: tuple[torch.nn.Module, list[torch.nn.Module]] | None = None

    def alpha(self, step: int) -> float:
        """The KL weight at optimizer step ``step`` (0-based)."""
        if self.schedule == "linear":
            return self.weight * max(0.0, 1.0 - step / max(self.max_steps, 1))
        return self.weight

    def losses(self, out, batch: dict, student: torch.nn.Module | None = None) -> dict[str, torch.Tensor]:
        """The distillation terms of the student's output ``out`` on ``batch`` (a ``make_batch``
        dict) against the teacher, run on the same inputs in inference mode: ``"kl"``
        (:func:`distill_kl` of the logits), with ``hidden_weight > 0`` ``"hidden"``
        (:func:`hidden_match` of ``out.hidden_states``: run the student with
        ``output_hidden_states=True``) and with ``attention_weight > 0`` ``"attention"``
        (:func:`attention_transfer` of ``student``'s token mixers, a spikelm causal LM)."""
        targets, pos = batch_targets(batch)
        mask = batch.get("attention_mask")
        io: list[tuple[torch.Tensor, torch.Tensor]] = []

        def grab(mod, args, kwargs, output):
            x = args[0] if args else kwargs["hidden_states"]
            io.append((x, output[0] if isinstance(output, tuple) else output))

        hooks = [m.register_forward_hook(grab, with_kwargs=True) for m in self.teacher_attention]
        try:
            with torch.no_grad() if self.sharded else torch.inference_mode():  # ZeRO-3 gathers into its params
                t = self.teacher(input_ids=batch["input_ids"], attention_mask=mask, use_cache=False,
                                 output_hidden_states=self.hidden_weight > 0)
        finally:
            for h in hooks:
                h.remove()
        terms = {"kl": distill_kl(out.logits[:, pos], t.logits[:, pos].clone(), targets, self.temperature)}
        if self.hidden_weight > 0:
            terms["hidden"] = hidden_match(out.hidden_states, tuple(h.clone() for h in t.hidden_states), mask)
        if self.attention_weight > 0:
            io = [(x.clone(), y.clone()) for x, y in io]  # inference tensors -> ordinary ones
            if self._student_mixers is None or self._student_mixers[0] is not student:  # found once, not per batch
                self._student_mixers = (student, attention_layers(student))
            terms["attention"] = attention_transfer(self._student_mixers[1], io, mask)
        return terms
