"""Shipped recipes (YAML) and the small corpora they train on, installed as ``spikelm.recipes``."""
from pathlib import Path

RECIPES_DIR = Path(__file__).resolve().parent
"""Folder holding the ``*.yaml`` recipes."""

DATA_DIR = RECIPES_DIR / "data"
"""Folder of the shipped corpora, one sub-folder per ``builtin:NAME``."""
