"""Dataset loaders of the offline test tasks (``custom_dataset: !function spikelm_tiny_tasks.<fn>`` in the
YAML files here): each reads a jsonl shipped next to this file, so no Hub access is needed."""
import json
from pathlib import Path

import datasets

HERE = Path(__file__).resolve().parent


def _load(name: str) -> datasets.DatasetDict:
    rows = [json.loads(line) for line in (HERE / name).read_text().splitlines() if line.strip()]
    return datasets.DatasetDict({"test": datasets.Dataset.from_list(rows)})


def load_mc(**kwargs) -> datasets.DatasetDict:
    """``{"test": rows of tiny_mc.jsonl}``: ``question`` (str), ``choices`` (list of str), ``label`` (int)."""
    return _load("tiny_mc.jsonl")


def load_ll(**kwargs) -> datasets.DatasetDict:
    """``{"test": rows of tiny_ll.jsonl}``: ``context`` (str), ``continuation`` (str)."""
    return _load("tiny_ll.jsonl")
