"""Dataset loader of the shipped task ``shakespeare_cloze`` (``custom_dataset: !function
shakespeare_tasks.load_cloze`` in ``shakespeare_cloze.yaml``): reads the jsonl next to this file,
so no Hub access is needed."""
import json
from pathlib import Path

import datasets

HERE = Path(__file__).resolve().parent


def load_cloze(**kwargs) -> datasets.DatasetDict:
    """``{"test": rows}``: ``context`` (str), ``choices`` (4 str), ``label`` (int, the true one)."""
    rows = [json.loads(line) for line in (HERE / "shakespeare_cloze.jsonl").read_text().splitlines() if line.strip()]
    return datasets.DatasetDict({"test": datasets.Dataset.from_list(rows)})
