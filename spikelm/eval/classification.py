"""Classification metrics from a confusion matrix: accuracy and macro-F1 (the unweighted mean of
the per-class F1 scores, ``2 TP / (2 TP + FP + FN)``; scikit-learn's ``f1_score(average="macro")``
with ``zero_division=0``)."""
from __future__ import annotations

__all__ = ["classification_metrics", "evaluate_classifier", "is_classifier_dir", "majority_accuracy"]


def classification_metrics(nll_sum: float, confusion: list[list[int]]) -> dict:
    """``{"loss", "accuracy", "macro_f1", "rows", "confusion"}`` of a validation pass.

    Args:
        nll_sum: summed cross-entropy (nats) over the rows.
        confusion: ``confusion[i][j]`` = rows of true label ``i`` predicted as ``j`` (k x k).
    Returns:
        ``loss`` nats per row, ``accuracy`` and ``macro_f1`` in [0, 1] (a class that is neither
        present nor predicted counts F1 0, as scikit-learn's ``zero_division=0``), ``rows``.
    Raises:
        ValueError: a confusion matrix that is not square.
    """
    k = len(confusion)
    if any(len(row) != k for row in confusion):
        raise ValueError(f"confusion matrix must be k x k, got rows of lengths {[len(r) for r in confusion]}")
    rows = sum(map(sum, confusion))
    correct = sum(confusion[i][i] for i in range(k))
    f1s = []
    for c in range(k):
        tp = confusion[c][c]
        fp = sum(confusion[i][c] for i in range(k)) - tp
        fn = sum(confusion[c]) - tp
        f1s.append(2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0)
    return {"loss": nll_sum / max(rows, 1), "accuracy": correct / max(rows, 1),
            "macro_f1": sum(f1s) / max(k, 1), "rows": rows, "confusion": confusion}


def majority_accuracy(labels: list[int]) -> float:
    """Accuracy of always predicting the most frequent label of ``labels`` (the baseline)."""
    from collections import Counter

    return Counter(labels).most_common(1)[0][1] / len(labels) if labels else 0.0


def is_classifier_dir(model_dir: str) -> bool:
    """Whether the Hugging Face directory ``model_dir`` holds a ``*ForSequenceClassification``
    (its ``config.json`` ``architectures``); False for a Hub id or a causal LM."""
    import json
    from pathlib import Path

    path = Path(model_dir) / "config.json"
    if not path.is_file():
        return False
    archs = json.loads(path.read_text()).get("architectures") or []
    return any(a.endswith("ForSequenceClassification") for a in archs)


def evaluate_classifier(model_dir: str, files: list[str], *, text_field: str = "text", label_field: str = "label",
                        batch_size: int = 16, block_size: int | None = None) -> dict:
    """Accuracy and macro-F1 of a saved classifier on labelled ``.jsonl`` / ``.parquet`` files,
    next to the majority-class baseline of the same rows.

    Labels are the model's ``config.id2label`` names (or integer ids below ``num_labels``); each
    text is cut to ``block_size`` tokens (default: the model's context).
    Returns:
        :func:`classification_metrics`' dict plus ``majority_accuracy`` and ``labels`` (names in
        id order).
    Raises:
        FileNotFoundError / ValueError: a missing or malformed file, a label the model does not
            have (``spikelm.data.classification``'s messages).
    """
    import torch
    from transformers import (
        AutoConfig,
        AutoModelForSequenceClassification,
        AutoTokenizer,
    )

    import spikelm  # noqa: F401  (registers the spikelm classes)

    from ..data.batches import make_batch
    from ..data.classification import _tokenize, read_labelled

    # every input is checked (files, fields, labels) before the weights are loaded
    config = AutoConfig.from_pretrained(model_dir)
    tok = AutoTokenizer.from_pretrained(model_dir)
    names = [config.id2label[i] for i in range(config.num_labels)]
    length = block_size or getattr(config, "max_position_embeddings", None) or 512
    records = [r for f in files for r in read_labelled(f, text_field, label_field)]
    rows = _tokenize(records, tok, names, length)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    k = len(names)
    confusion = torch.zeros(k * k, dtype=torch.long)
    nll = 0.0
    with torch.no_grad():
        for s in range(0, len(rows), batch_size):
            batch = make_batch(rows, range(s, min(s + batch_size, len(rows))), "cpu")
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.float()
            nll += float(torch.nn.functional.cross_entropy(logits, batch["labels"], reduction="sum"))
            confusion += torch.bincount(batch["labels"] * k + logits.argmax(-1), minlength=k * k)
    out = classification_metrics(nll, confusion.view(k, k).tolist())
    out["majority_accuracy"] = majority_accuracy([int(r["labels"]) for r in rows.rows])
    out["labels"] = names
    return out
