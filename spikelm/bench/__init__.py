"""Benchmarks of the training step and of long-context prefill/decode (``python -m spikelm.bench.step``)."""
