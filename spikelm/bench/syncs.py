"""Count host syncs: the calls that read a tensor's value on the host (``.item()``, ``.tolist()``,
``.cpu()``, ``.numpy()``, ``float()/int()/bool()`` of a tensor).

On CUDA each of them waits for the device to finish everything queued before it, so a training
step that makes one per micro-batch runs the GPU in lock-step with Python. On CPU they cost
nothing, but they are the same calls, so counting them on CPU tells what a GPU run would do.

    with HostSyncCounter() as syncs:
        trainer.train()
    syncs.total, syncs.by_site        # {("item", "spikelm/train/trainer.py:211"): 20, ...}

``torch.optim``'s reads of its step counter (``_get_value``) are not counted: AdamW keeps that
counter as a CPU tensor unless ``capturable=True``, so the read never waits for the device.
On CUDA, ``torch.cuda.set_sync_debug_mode("error")`` is the device-side check (see
``tests/train/test_host_syncs.py``).
"""
from __future__ import annotations

import collections
import os
import traceback

import torch

METHODS = ("item", "tolist", "cpu", "numpy", "__float__", "__int__", "__bool__", "__index__")
"""The ``torch.Tensor`` methods that read a value on the host."""

NOT_SYNCS = ("torch/optim/optimizer.py",)
"""Callers whose reads are of CPU tensors by construction (module docstring)."""


def _site(stack) -> str:
    """``file:line`` of the caller: relative to the working directory where it lies below it, after
    ``site-packages/`` for an installed package."""
    frame = stack[-1]
    path = frame.filename.replace("\\", "/")
    cwd = os.getcwd().replace("\\", "/") + "/"
    if "site-packages/" in path:
        path = path.split("site-packages/", 1)[1]
    elif path.startswith(cwd):
        path = path[len(cwd):]
    return f"{path}:{frame.lineno}"


class HostSyncCounter:
    """Context manager that patches the host-reading ``torch.Tensor`` methods (:data:`METHODS`) and
    counts the calls by ``(method, "file:line")`` of the caller.

    Attributes:
        by_site: ``collections.Counter`` of ``(method, site) -> calls``.
        total: the number of counted calls.
    Not thread-safe (it patches ``torch.Tensor`` for the whole process); nestable only sequentially.
    """

    def __init__(self):
        self.by_site: collections.Counter = collections.Counter()
        self._saved: dict = {}

    @property
    def total(self) -> int:
        return sum(self.by_site.values())

    def _wrap(self, name: str):
        original = getattr(torch.Tensor, name)
        counter = self.by_site

        def counted(tensor, *args, **kwargs):
            stack = traceback.extract_stack(limit=2)[:-1]
            site = _site(stack)
            if not any(s in site for s in NOT_SYNCS):
                counter[(name, site)] += 1
            return original(tensor, *args, **kwargs)

        counted.__name__ = name
        return original, counted

    def __enter__(self) -> HostSyncCounter:
        for name in METHODS:
            original, counted = self._wrap(name)
            self._saved[name] = original
            setattr(torch.Tensor, name, counted)
        return self

    def __exit__(self, *exc) -> None:
        for name, original in self._saved.items():
            setattr(torch.Tensor, name, original)
        self._saved.clear()

    def report(self) -> str:
        """One line per site, most calls first (``"  20 item  spikelm/train/trainer.py:211"``)."""
        return "\n".join(f"{n:5d} {m:10s} {s}" for (m, s), n in self.by_site.most_common())
