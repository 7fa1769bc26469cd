"""spikelm's compute kernels, installed as the import package ``spikelm.kernels``.

Each op lives in its own folder: ``naive.py`` (the pure-torch statement of the formula,
used by tests), a fast torch path for CPU, optional Triton kernels for CUDA, and an
``__init__.py`` whose public function validates its input and dispatches by device
(see ``spikelm.kernels.dispatch``).
"""
