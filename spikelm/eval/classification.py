"""Classification metrics from a confusion matrix: accuracy and macro-F1 (the unweighted mean of
the per-class F1 scores, ``2 TP / (2 TP + FP + FN)``; scikit-learn's ``f1_score(average="macro")``
with ``zero_division=0``)."""
from __future__ import annotations

__all__ = ["classification_metrics", "majority_accuracy"]


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
