"""``train.compile``: ``torch.compile`` each block of the model (torchtitan's per-block pattern).

Compiling block by block, not the whole model, keeps compile time to one graph per distinct
block (the layers of one kind share their compiled code), leaves the embedding, the LM head
and the loss to eager code, and composes with DeepSpeed's engine, LoRA and activation
checkpointing. ``nn.Module.compile`` compiles in place, so parameter names, ``state_dict``,
checkpoints and the Hugging Face export are those of the eager model. The recurrent kernels
are custom ops (``spikelm.kernels.custom_op``), so every layout compiles without a graph break
(``tests/train/test_compile.py`` checks each with ``fullgraph=True``).
"""
from __future__ import annotations

from torch import nn

BLOCK_LISTS = ("model.blocks", "model.layers", "rwkv.blocks")
"""Where the block list of each supported causal LM lives: spikelm, transformers' Llama family,
transformers' RWKV."""


def block_list(model: nn.Module) -> nn.ModuleList:
    """The ``nn.ModuleList`` of transformer/recurrent blocks of a (possibly peft-wrapped) causal LM.

    Raises:
        ValueError: the model has none of :data:`BLOCK_LISTS`.
    """
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    for path in BLOCK_LISTS:
        mod = base
        for name in path.split("."):
            mod = getattr(mod, name, None)
        if isinstance(mod, nn.ModuleList):
            return mod
    raise ValueError(f"train.compile: {type(base).__name__} has no block list at {', '.join(BLOCK_LISTS)}")


def compile_blocks(model: nn.Module, fullgraph: bool = False) -> int:
    """Compile every block of ``model`` in place (``nn.Module.compile``); returns how many.

    ``fullgraph=True`` makes a graph break an error (the tests); training uses the default, where
    an unforeseen break costs speed, not the run.
    Raises:
        ValueError: no block list (:func:`block_list`).
    """
    blocks = block_list(model)
    for block in blocks:
        block.compile(fullgraph=fullgraph)
    return len(blocks)
