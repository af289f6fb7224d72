"""Classification metrics with numpy: confusion matrix, per-class P/R/F1, macro-F1, accuracy.

Conventions (as scikit-learn's defaults): a ratio with a zero denominator is 0; macro averages
run over the classes that occur in the true labels or the predictions, so a class missing from a
small validation subset (and never predicted) does not pull macro-F1 down.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> np.ndarray:
    """``cm[i, j]``: rows whose true class is ``i`` and predicted class is ``j``."""
    t = np.asarray(y_true, dtype=np.int64)
    p = np.asarray(y_pred, dtype=np.int64)
    if t.shape != p.shape:
        raise ValueError(f"y_true and y_pred differ in shape: {t.shape} vs {p.shape}")
    if t.size and (min(t.min(), p.min()) < 0 or max(t.max(), p.max()) >= n_classes):
        raise ValueError(f"labels outside 0..{n_classes - 1}")
    return np.bincount(t * n_classes + p, minlength=n_classes * n_classes).reshape(n_classes, n_classes)


def _safe_div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    out = np.zeros_like(num, dtype=np.float64)
    np.divide(num, den, out=out, where=den > 0)
    return out


def scores_from_confusion(cm: np.ndarray) -> dict[str, np.ndarray]:
    """Per-class precision, recall, F1 and support from a confusion matrix."""
    cm = np.asarray(cm, dtype=np.float64)
    tp = np.diag(cm)
    predicted = cm.sum(axis=0)
    support = cm.sum(axis=1)
    precision = _safe_div(tp, predicted)
    recall = _safe_div(tp, support)
    f1 = _safe_div(2 * precision * recall, precision + recall)
    return {
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "support": support.astype(np.int64),
        "predicted": predicted.astype(np.int64),
    }


def macro_f1(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> float:
    """Unweighted mean F1 over the classes present in ``y_true`` or ``y_pred``."""
    return float(classification_report(y_true, y_pred, [str(i) for i in range(n_classes)])["macro_f1"])


def accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    t = np.asarray(y_true)
    return float((t == np.asarray(y_pred)).mean()) if t.size else 0.0


def classification_report(y_true: np.ndarray, y_pred: np.ndarray, labels: Sequence[str]) -> dict[str, Any]:
    """Everything ``metrics.json`` and ``finpulse evaluate`` show for one head, JSON-ready."""
    n = len(labels)
    cm = confusion_matrix(y_true, y_pred, n)
    s = scores_from_confusion(cm)
    present = (s["support"] > 0) | (s["predicted"] > 0)
    macro = {k: float(s[k][present].mean()) if present.any() else 0.0 for k in ("precision", "recall", "f1")}
    total = int(cm.sum())
    weights = s["support"] / total if total else np.zeros(n)
    return {
        "n": total,
        "accuracy": float(np.trace(cm) / total) if total else 0.0,
        "macro_f1": macro["f1"],
        "macro_precision": macro["precision"],
        "macro_recall": macro["recall"],
        "weighted_f1": float((s["f1"] * weights).sum()),
        "labels": list(labels),
        "per_class": {
            lab: {
                "precision": float(s["precision"][i]),
                "recall": float(s["recall"][i]),
                "f1": float(s["f1"][i]),
                "support": int(s["support"][i]),
            }
            for i, lab in enumerate(labels)
        },
        "confusion_matrix": cm.astype(int).tolist(),
    }
