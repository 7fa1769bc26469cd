"""Our kernels as ``torch.library`` custom ops, so ``torch.compile`` traces a model through them
without a graph break (and without unrolling their time loops).

Each recurrent op (WKV-4, LIF, GLA, and adaptive spiking on its Triton path) is eager code
with a Python loop over time or a Triton launch, which Dynamo would either unroll (a graph of
``L`` steps: minutes of compile time) or break on. :func:`opaque_op` registers such an op as a
pair of custom ops, ``spikelm::<name>`` and ``spikelm::<name>_backward``, each with a fake
(meta) function so that Dynamo and AOTAutograd know the output shapes without running it.

    wkv4_op = opaque_op("wkv4", _wkv4_eager, fake=lambda w, u, k, v, *s: ...)
    y, aa, bb, pp = wkv4_op(w, u, k, v, aa, bb, pp)      # under torch.compile

* ``spikelm::<name>`` runs ``impl`` (the same dispatch eager code uses: Triton or the torch
  path) under ``no_grad``; it saves only its inputs.
* ``spikelm::<name>_backward`` recomputes ``impl`` with autograd on and takes
  ``torch.autograd.grad`` of it: the gradients are those of eager code exactly (the same
  autograd Functions with their hand-written backward kernels run), at the cost of one more
  forward of this op per backward (the op's forward only: the matmuls and the elementwise code
  around it are compiled and not recomputed). That trade (a custom op keeps no autograd graph
  between forward and backward) is the documented pattern of ``torch.library.register_autograd``
  with ``custom_op`` (PyTorch "Custom Python operators" tutorial).

Eager code does not go through these ops (``torch.compiler.is_compiling()`` is False there),
so eager training keeps the saved-tensor backward of each kernel.

The positional arguments of ``impl`` are tensors, None, or constants (bool, int, float, str);
tensors travel as ``Tensor[]`` and the rest as a JSON string (the op schema is fixed; JSON
keeps None, bools and floats exact: floats print with ``repr`` precision).
"""
from __future__ import annotations

import json
from collections.abc import Callable, Sequence

import torch

__all__ = ["OPS", "opaque_op"]

OPS: dict[str, Callable] = {}
"""The registered ops by name (``spikelm::<name>``)."""


@torch.compiler.assume_constant_result
def _encode(consts: tuple) -> str:
    """The JSON of the argument list with each tensor replaced by ``{"tensor": i}`` (evaluated
    once at trace time: Dynamo does not trace ``json``, and the constants are Python values of
    the traced program, so the string is a constant too)."""
    return json.dumps(list(consts))


def _split(args: Sequence) -> tuple[list[torch.Tensor], str]:
    """``args`` -> (the tensor arguments in order; the JSON of the arguments, tensors as indices)."""
    tensors = [a for a in args if isinstance(a, torch.Tensor)]
    marks, i = [], 0
    for a in args:
        if isinstance(a, torch.Tensor):
            marks.append({"tensor": i})
            i += 1
        else:
            marks.append(a)
    return tensors, _encode(tuple(marks))


def _join(tensors: Sequence[torch.Tensor], consts: str) -> list:
    """Inverse of :func:`_split`."""
    return [tensors[a["tensor"]] if isinstance(a, dict) else a for a in json.loads(consts)]


def opaque_op(name: str, impl: Callable[..., Sequence[torch.Tensor]],
              fake: Callable[..., Sequence[torch.Tensor]]) -> Callable[..., tuple[torch.Tensor, ...]]:
    """Register ``impl`` as the custom op ``spikelm::<name>`` with its backward (module docstring).

    Args:
        name: the op's name (``spikelm::<name>``, ``spikelm::<name>_backward``); unique.
        impl: ``impl(*args) -> tuple of tensors``, differentiable in its floating tensor
            arguments through ``torch.autograd.Function`` nodes (our kernels' Functions): inside a
            custom op the autograd dispatch keys are off, so plain aten ops record no graph there
            and their gradient would be missing (zeros); tensor code without such a Function is
            left to the compiler to trace instead.
        fake: ``fake(*args) -> tuple of tensors`` with the shapes, dtypes and devices of
            ``impl``'s outputs (``torch.empty`` / ``new_empty``; called on fake tensors).
    Returns:
        ``call(*args) -> tuple of tensors``: the op, callable eagerly and under ``torch.compile``.
    Raises:
        ValueError: ``name`` registered already.
    """
    if name in OPS:
        raise ValueError(f"custom op spikelm::{name} is registered already")

    @torch.library.custom_op(f"spikelm::{name}", mutates_args=())
    def forward_op(tensors: list[torch.Tensor], consts: str) -> list[torch.Tensor]:
        with torch.no_grad():
            # outputs contiguous (the fake says so), and never an input itself (a custom op may not alias)
            return [o.clone() if any(o is t for t in tensors) else o.contiguous() for o in impl(*_join(tensors, consts))]

    @forward_op.register_fake
    def _(tensors, consts):
        return [torch.empty(o.shape, dtype=o.dtype, device=o.device) for o in fake(*_join(tensors, consts))]

    @torch.library.custom_op(f"spikelm::{name}_backward", mutates_args=())
    def backward_op(tensors: list[torch.Tensor], consts: str, needs: list[bool],
                    grads: list[torch.Tensor | None]) -> list[torch.Tensor]:
        with torch.enable_grad():
            leaves = [t.detach().requires_grad_(n) for t, n in zip(tensors, needs)]
            outs = impl(*_join(leaves, consts))
            pairs = [(o, g) for o, g in zip(outs, grads) if g is not None and o.requires_grad]
            wanted = [t for t, n in zip(leaves, needs) if n]
            got = torch.autograd.grad([o for o, _ in pairs], wanted, [g for _, g in pairs], allow_unused=True) \
                if pairs and wanted else [None] * len(wanted)
        it = iter(got)
        result = []
        for t, n in zip(tensors, needs):
            g = next(it) if n else None
            result.append(torch.zeros(t.shape, dtype=t.dtype, device=t.device) if n and g is None
                          else g.contiguous() if n else torch.empty(0, device=t.device))
        return result

    @backward_op.register_fake
    def _(tensors, consts, needs, grads):
        return [torch.empty(t.shape, dtype=t.dtype, device=t.device) if n else torch.empty(0, device=t.device)
                for t, n in zip(tensors, needs)]

    def setup_context(ctx, inputs, output):
        tensors, consts = inputs
        ctx.save_for_backward(*tensors)
        ctx.consts = consts

    def backward(ctx, grads):
        tensors = list(ctx.saved_tensors)
        # every floating input gets its gradient (autograd drops those nobody asked for): under
        # AOTAutograd the saved tensors carry no requires_grad to tell them apart
        needs = [t.is_floating_point() for t in tensors]
        out = backward_op(tensors, ctx.consts, needs, list(grads))
        return [g if n else None for g, n in zip(out, needs)], None

    forward_op.register_autograd(backward, setup_context=setup_context)

    def call(*args) -> tuple[torch.Tensor, ...]:
        tensors, consts = _split(args)
        return tuple(forward_op(tensors, consts))

    call.__name__ = name
    call.__doc__ = f"The custom op ``spikelm::{name}`` over ``{getattr(impl, '__name__', impl)}`` (see ``opaque_op``)."
    OPS[name] = call
    return call
