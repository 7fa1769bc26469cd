"""Named model flavours: the architecture sizes recipes refer to by name."""
from __future__ import annotations

from .configuration_spikelm import SpikeLMConfig

FLAVOURS: dict[str, dict] = {
    # tiny, for tests
    "debug": dict(hidden_size=32, num_hidden_layers=2, context_length=64),
    # the CPU default: trains on tiny Shakespeare on 2 cores in minutes
    "shakespeare": dict(hidden_size=256, num_hidden_layers=4, context_length=128),
    # SpikeGPT paper sizes (Zhu et al. 2023, Table 1)
    "spikegpt-45m": dict(hidden_size=512, num_hidden_layers=12, context_length=1024),
    "spikegpt-216m": dict(hidden_size=768, num_hidden_layers=18, context_length=1024),
}


def flavour_config(name: str, **overrides) -> SpikeLMConfig:
    """``SpikeLMConfig`` of a named flavour, with keyword overrides (e.g. ``vocab_size``).

    Raises:
        ValueError: unknown flavour name (the message lists the known ones).
    """
    if name not in FLAVOURS:
        raise ValueError(f"unknown model flavour {name!r}; known flavours: {', '.join(FLAVOURS)}")
    return SpikeLMConfig(**{**FLAVOURS[name], **overrides})
