"""The DeepSpeed engine of a run: precision, the DeepSpeed config (the one place the ZeRO stage
is read from), AdamW with its LR schedule, and ``deepspeed.initialize``."""
from __future__ import annotations

import torch

from .config import Recipe
from .schedule import lr_factor


def resolve_precision(precision: str, device: torch.device) -> str:
    """``train.precision`` with ``auto`` resolved: bf16 on CUDA, fp32 elsewhere."""
    if precision == "auto":
        return "bf16" if device.type == "cuda" else "fp32"
    return precision


def deepspeed_config(recipe: Recipe, world_size: int, precision: str) -> dict:
    """The DeepSpeed config a recipe implies (ZeRO stage, batch sizes, clipping, precision,
    offload), with ``train.deepspeed`` merged over it (dicts key by key)."""
    t = recipe.train
    cfg = {
        "train_micro_batch_size_per_gpu": t.micro_batch_size,
        "gradient_accumulation_steps": t.grad_accum,
        "train_batch_size": t.micro_batch_size * t.grad_accum * world_size,
        "gradient_clipping": recipe.optim.grad_clip,
        "zero_optimization": {"stage": t.zero_stage},
        "bf16": {"enabled": precision == "bf16"},
        "fp16": {"enabled": precision == "fp16", "initial_scale_power": 16},
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }
    if t.zero_stage == 3:
        cfg["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] = True
    if t.offload_optimizer:
        cfg["zero_optimization"]["offload_optimizer"] = {"device": "cpu", "pin_memory": True}
        cfg["zero_force_ds_cpu_optimizer"] = False  # our AdamW is a plain torch optimizer
    if t.offload_params:
        cfg["zero_optimization"]["offload_param"] = {"device": "cpu", "pin_memory": True}
    for k, v in t.deepspeed.items():
        if isinstance(v, dict) and isinstance(cfg.get(k), dict):
            cfg[k] = {**cfg[k], **v}
        else:
            cfg[k] = v
    return cfg


def zero_stage(ds_config: dict) -> int:
    """The ZeRO stage of a DeepSpeed config (``train.zero_stage``, or ``train.deepspeed``'s
    ``zero_optimization.stage`` over it): the one value model building, checkpoints and the
    export read."""
    return int(ds_config.get("zero_optimization", {}).get("stage", 0))


def build_optimizer(model, recipe: Recipe) -> torch.optim.AdamW:
    """AdamW over the trainable parameters (with LoRA: the adapters only); weight decay on
    matrices (``dim >= 2``) only. With expert parallelism the expert parameters go into groups
    of their own (DeepSpeed's ``split_params_into_different_moe_groups_for_optimizer``: ZeRO
    partitions them over the expert-data-parallel group)."""
    o = recipe.optim
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    groups = [{"params": decay, "weight_decay": o.weight_decay, "name": "decay"},
              {"params": no_decay, "weight_decay": 0.0, "name": "no_decay"}]
    if any(getattr(p, "allreduce", True) is False for p in decay + no_decay):
        from deepspeed.moe.utils import split_params_into_different_moe_groups_for_optimizer

        groups = [g for g in split_params_into_different_moe_groups_for_optimizer(groups) if g["params"]]
    return torch.optim.AdamW(groups, lr=o.lr, betas=tuple(o.betas), eps=o.eps)


def initialize(model, recipe: Recipe, ds_config: dict):
    """``(engine, scheduler)``: ``deepspeed.initialize`` of ``model`` with AdamW and the
    recipe's LR schedule (``spikelm.train.schedule.lr_factor``), built on the optimizer
    DeepSpeed wraps (ZeRO-3 regroups the parameters).

    Raises:
        ValueError: DeepSpeed rejects the config (its message, and what to fix).
    """
    import deepspeed

    o, t = recipe.optim, recipe.train

    def make_scheduler(opt):
        return torch.optim.lr_scheduler.LambdaLR(
            opt, lambda s: lr_factor(s, o.warmup_steps, t.max_steps, o.min_lr_ratio, o.schedule, o.decay_fraction))

    try:
        engine, _, _, scheduler = deepspeed.initialize(model=model, optimizer=build_optimizer(model, recipe),
                                                       lr_scheduler=make_scheduler, config=ds_config)
    except (AssertionError, ValueError, TypeError, KeyError) as e:  # DeepSpeed's config checks
        raise ValueError(f"DeepSpeed rejected the configuration built from train.* and train.deepspeed "
                         f"({' '.join(str(e).split())[:300] or type(e).__name__}); fix those keys (batch sizes: "
                         "train.micro_batch_size x train.grad_accum x ranks = train_batch_size)") from None
    return engine, scheduler
