"""Creating the model for training: plainly, or partitioned at creation under ZeRO-3."""
from __future__ import annotations

import contextlib

import torch


def build_model(config, ds_config: dict, zero_stage: int, seed: int):
    """A freshly initialised ``SpikeLMForCausalLM`` for ``config``, identical for every ZeRO stage.

    The modules are created with initialisation switched off, then each module's weights are
    initialised (``_init_weights``) in ``model.modules()`` order from ``torch.manual_seed(seed)``.
    Under ZeRO stage 3 the creation happens inside ``deepspeed.zero.Init``, so parameters are
    partitioned across ranks as they are made and no rank ever holds the whole model; each
    module's parameters are gathered for its initialisation on rank 0 and scattered back
    (``GatheredParameters(modifier_rank=0)``). Same seed, same weights, whatever the stage.
    """
    from transformers import initialization as hf_init

    from ..models import SpikeLMForCausalLM

    zero3 = zero_stage == 3
    if zero3:
        import deepspeed

        creation = deepspeed.zero.Init(config_dict_or_path=ds_config)
    else:
        creation = contextlib.nullcontext()
    with creation, hf_init.no_init_weights():
        model = SpikeLMForCausalLM(config)
    rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
    torch.manual_seed(seed)
    for module in model.modules():
        params = list(module.parameters(recurse=False))
        gather = deepspeed.zero.GatheredParameters(params, modifier_rank=0) if zero3 and params \
            else contextlib.nullcontext()
        with gather, torch.no_grad():
            if rank == 0 or not zero3:
                for p in params:
                    p._is_hf_initialized = False
                model._init_weights(module)
    return model
