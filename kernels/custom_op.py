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
  path) under ``no_grad``.
* ``spikelm::<name>_backward`` computes the input gradients, in one of two ways:

  - **saved-tensor** (``opaque_op(..., backward=, fake_saved=)``): the forward returns, besides
    the outputs, the tensors the kernel's autograd Function saves (non-differentiable outputs
    that autograd keeps for the backward), and the backward op runs the kernel's hand-written
    backward on them: no forward is recomputed. The CPU loops of WKV-4 and LIF
    (``spikelm::wkv4_torch``, ``spikelm::lif_torch``) and the Triton ops of the SpikeGPT block
    (``spikelm::token_shift_mix``, ``spikelm::wkv4_gated``, ``spikelm::lif_residual``) and GLA's
    chunk kernels (``spikelm::gla_chunk``) are registered so.
  - **recompute** (the fallback, no ``backward``): it saves only the inputs, recomputes
    ``impl`` with autograd on and takes ``torch.autograd.grad`` of it: the gradients are those
    of eager code exactly, at the cost of one more forward of this op per backward (the
    documented pattern of ``torch.library.register_autograd`` with ``custom_op``, PyTorch
    "Custom Python operators" tutorial). The other Triton paths (``wkv4``, ``lif_multistep``,
    GLA's ``fused_recurrent`` as ``gla``, ``adaptive_spike``) use it.

Eager code does not go through these ops (``torch.compiler.is_compiling()`` is False there),
so eager training runs each kernel's autograd Function directly.

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


def _fresh(results: Sequence[torch.Tensor], inputs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """``results`` contiguous and sharing memory with no input and no other result (a custom op's
    outputs may not alias, and the fake says they are fresh contiguous tensors): a result that
    does is cloned (e.g. a kernel's saved ``x.to(float32)`` that is ``x`` itself, or an output
    that is a view of a saved tensor)."""
    seen = {t.untyped_storage().data_ptr() for t in inputs if t.numel() > 0}
    out = []
    for o in results:
        ptr = o.untyped_storage().data_ptr() if o.numel() > 0 else None
        o = o.clone(memory_format=torch.contiguous_format) if ptr in seen else o.contiguous()
        if ptr is not None:
            seen.add(o.untyped_storage().data_ptr())
        out.append(o)
    return out


def _empty_like(t: torch.Tensor) -> torch.Tensor:
    return torch.empty(t.shape, dtype=t.dtype, device=t.device)


def opaque_op(name: str, impl: Callable[..., Sequence[torch.Tensor]],
              fake: Callable[..., Sequence[torch.Tensor]], *,
              backward: Callable[..., Sequence[torch.Tensor | None]] | None = None,
              fake_saved: Callable[..., Sequence[torch.Tensor]] | None = None
              ) -> Callable[..., tuple[torch.Tensor, ...]]:
    """Register ``impl`` as the custom op ``spikelm::<name>`` with its backward (module docstring).

    Two kinds of backward:

    * **saved-tensor** (``backward`` given): ``impl(*args)`` returns ``(outputs, saved)``, the
      tensors its backward needs besides the inputs (what the kernel's autograd Function would
      ``save_for_backward``); the op returns both (``saved`` marked non-differentiable), autograd
      keeps ``saved``, and ``spikelm::<name>_backward`` runs ``backward`` on them: the kernel's
      hand-written backward, with no second forward.
    * **recompute** (the fallback, ``backward`` None): ``impl(*args)`` returns the outputs; the
      backward op runs ``impl`` again with autograd on and takes ``torch.autograd.grad`` of it.

    Args:
        name: the op's name (``spikelm::<name>``, ``spikelm::<name>_backward``); unique.
        impl: with ``backward``: ``impl(*args) -> (tuple of output tensors, tuple of saved
            tensors)``, run under ``no_grad``. Without: ``impl(*args) -> tuple of tensors``,
            differentiable in its floating tensor arguments through ``torch.autograd.Function``
            nodes (our kernels' Functions): inside a custom op the autograd dispatch keys are off,
            so plain aten ops record no graph there and their gradient would be missing (zeros);
            tensor code without such a Function is left to the compiler to trace instead.
        fake: ``fake(*args) -> tuple of tensors`` with the shapes, dtypes and devices of the
            outputs (``torch.empty`` / ``new_empty``; called on fake tensors).
        backward: ``backward(args, saved, grads, needs_input_grad) -> one gradient per argument``:
            ``args`` the forward's argument list, ``saved`` its saved tensors, ``grads`` one
            gradient (or None: that output was not used) per output, ``needs_input_grad`` one bool
            per argument (True for every floating tensor: under AOTAutograd there is no telling
            which are leaves that want none). Entries for other arguments are ignored; a None for
            a floating tensor means a zero gradient. Runs under ``no_grad``.
        fake_saved: ``fake_saved(*args) -> tuple of tensors`` like ``fake`` for ``saved``;
            required with ``backward``.
    Returns:
        ``call(*args) -> tuple of tensors``: the op's outputs, callable eagerly and under
        ``torch.compile``.
    Raises:
        ValueError: ``name`` registered already; ``backward`` without ``fake_saved``.
    """
    if name in OPS:
        raise ValueError(f"custom op spikelm::{name} is registered already")
    if backward is not None and fake_saved is None:
        raise ValueError(f"custom op spikelm::{name}: a saved-tensor backward needs fake_saved")

    @torch.library.custom_op(f"spikelm::{name}", mutates_args=())
    def forward_op(tensors: list[torch.Tensor], consts: str) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        with torch.no_grad():
            result = impl(*_join(tensors, consts))
            outs, saved = result if backward is not None else (result, ())
            both = _fresh([*outs, *saved], tensors)
        return both[:len(outs)], both[len(outs):]

    @forward_op.register_fake
    def _(tensors, consts):
        args = _join(tensors, consts)
        return ([_empty_like(o) for o in fake(*args)],
                [_empty_like(o) for o in fake_saved(*args)] if backward is not None else [])

    @torch.library.custom_op(f"spikelm::{name}_backward", mutates_args=())
    def backward_op(tensors: list[torch.Tensor], saved: list[torch.Tensor], consts: str, needs: list[bool],
                    grads: list[torch.Tensor | None]) -> list[torch.Tensor]:
        if backward is not None:
            with torch.no_grad():
                args = _join(tensors, consts)
                marks, i = [], 0  # needs per argument (tensors in order; False for the constants)
                for a in args:
                    marks.append(isinstance(a, torch.Tensor) and needs[i])
                    i += isinstance(a, torch.Tensor)
                per_arg = backward(args, tuple(saved), list(grads), marks)
                got = [g for a, g in zip(args, per_arg) if isinstance(a, torch.Tensor)]
        else:
            with torch.enable_grad():
                leaves = [t.detach().requires_grad_(n) for t, n in zip(tensors, needs)]
                outs = impl(*_join(leaves, consts))
                pairs = [(o, g) for o, g in zip(outs, grads) if g is not None and o.requires_grad]
                wanted = [t for t, n in zip(leaves, needs) if n]
                found = iter(torch.autograd.grad([o for o, _ in pairs], wanted, [g for _, g in pairs],
                                                 allow_unused=True) if pairs and wanted else [None] * len(wanted))
                got = [next(found) if n else None for n in needs]
        result = []
        for t, n, g in zip(tensors, needs, got):
            result.append(torch.zeros(t.shape, dtype=t.dtype, device=t.device) if n and g is None
                          else g.contiguous() if n else torch.empty(0, device=t.device))
        return _fresh(result, [*tensors, *saved, *(g for g in grads if g is not None)])

    @backward_op.register_fake
    def _(tensors, saved, consts, needs, grads):
        return [_empty_like(t) if n else torch.empty(0, device=t.device) for t, n in zip(tensors, needs)]

    def setup_context(ctx, inputs, output):
        tensors, consts = inputs
        _, saved = output
        ctx.mark_non_differentiable(*saved)
        ctx.set_materialize_grads(False)  # an unused output's gradient stays None (no zeros made)
        ctx.save_for_backward(*tensors, *saved)
        ctx.n_inputs = len(tensors)
        ctx.consts = consts

    def autograd_backward(ctx, grads, _saved_grads):
        tensors = list(ctx.saved_tensors)
        tensors, saved = tensors[:ctx.n_inputs], tensors[ctx.n_inputs:]
        # every floating input gets its gradient (autograd drops those nobody asked for): under
        # AOTAutograd the saved tensors carry no requires_grad to tell them apart
        needs = [t.is_floating_point() for t in tensors]
        out = backward_op(tensors, saved, ctx.consts, needs, list(grads))
        return [g if n else None for g, n in zip(out, needs)], None

    forward_op.register_autograd(autograd_backward, setup_context=setup_context)

    def call(*args) -> tuple[torch.Tensor, ...]:
        tensors, consts = _split(args)
        return tuple(forward_op(tensors, consts)[0])

    call.__name__ = name
    call.__doc__ = f"The custom op ``spikelm::{name}`` over ``{getattr(impl, '__name__', impl)}`` (see ``opaque_op``)."
    OPS[name] = call
    return call

