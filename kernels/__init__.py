"""spikelm's compute kernels, installed as the import package ``spikelm.kernels``.

Each op lives in its own folder: ``naive.py`` (the pure-torch statement of the formula,
used by tests), a fast torch path for CPU, optional Triton kernels for CUDA, and an
``__init__.py`` whose public function validates its input and dispatches by device and the
kernel backend (:func:`set_backend`, :func:`use_backend`, or the ops' ``backend=`` argument;
the rule is in ``spikelm.kernels.dispatch``). ``triton_utils`` holds what the Triton modules
share; ``bench_harness`` what the benchmarks share.
"""
from .dispatch import BACKENDS, TritonUnavailableError, get_backend, set_backend, use_backend

__all__ = ["BACKENDS", "TritonUnavailableError", "get_backend", "set_backend", "use_backend"]
