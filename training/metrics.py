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


# --- calibration -------------------------------------------------------------------------------------

#: Equal-width confidence bins for the expected calibration error (Guo et al. 2017 use 15).
ECE_BINS = 15


def softmax_t(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Row-wise softmax of ``logits / temperature`` in float64."""
    z = np.asarray(logits, dtype=np.float64) / float(temperature)
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return np.asarray(e / e.sum(axis=1, keepdims=True))


def expected_calibration_error(probs: np.ndarray, y_true: np.ndarray, bins: int = ECE_BINS) -> float:
    """Top-label ECE: the row-weighted gap between confidence and accuracy over equal-width confidence bins."""
    p = np.asarray(probs, dtype=np.float64)
    t = np.asarray(y_true, dtype=np.int64)
    if p.ndim != 2 or p.shape[0] != t.size:
        raise ValueError(f"probs {p.shape} do not match {t.size} labels")
    if t.size == 0:
        return 0.0
    conf = p.max(axis=1)
    correct = (p.argmax(axis=1) == t).astype(np.float64)
    # Bin b holds confidences in (b/bins, (b+1)/bins]; a confidence of exactly 0 cannot occur (>= 1/classes).
    which = np.clip(np.ceil(conf * bins).astype(np.int64) - 1, 0, bins - 1)
    n_bin = np.bincount(which, minlength=bins)
    gap = np.abs(np.bincount(which, weights=correct, minlength=bins) - np.bincount(which, weights=conf, minlength=bins))
    return float(gap.sum() / t.size) if n_bin.sum() else 0.0


def nll(logits: np.ndarray, y_true: np.ndarray, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of the true labels under ``softmax(logits / temperature)``."""
    z = np.asarray(logits, dtype=np.float64) / float(temperature)
    t = np.asarray(y_true, dtype=np.int64)
    if t.size == 0:
        return 0.0
    m = z.max(axis=1, keepdims=True)
    lse = (m + np.log(np.exp(z - m).sum(axis=1, keepdims=True)))[:, 0]
    return float((lse - z[np.arange(t.size), t]).mean())


def fit_temperature(logits: np.ndarray, y_true: np.ndarray, lo: float = 0.05, hi: float = 20.0) -> float:
    """The temperature that minimises the NLL of ``y_true`` (temperature scaling, Guo et al. 2017).

    Written here rather than with scipy (not a direct dependency): in ``b = 1/T`` the NLL is
    convex (log-sum-exp of an affine function minus an affine function), so its derivative,
    ``E_softmax(b*z)[z] - z_true`` averaged over rows, is increasing and a bisection on its sign finds
    the one minimum. The result is clipped to ``[lo, hi]``; no rows gives 1.0.
    """
    z = np.asarray(logits, dtype=np.float64)
    t = np.asarray(y_true, dtype=np.int64)
    if t.size == 0:
        return 1.0
    z_true = z[np.arange(t.size), t]

    def slope(b: float) -> float:
        return float((softmax_t(z, 1.0 / b) * z).sum(axis=1).mean() - z_true.mean())

    b_lo, b_hi = 1.0 / hi, 1.0 / lo
    if slope(b_lo) >= 0:
        return hi
    if slope(b_hi) <= 0:
        return lo
    for _ in range(60):
        mid = 0.5 * (b_lo + b_hi)
        if slope(mid) > 0:
            b_hi = mid
        else:
            b_lo = mid
    return float(1.0 / (0.5 * (b_lo + b_hi)))


def choose_temperature(logits: np.ndarray, y_true: np.ndarray, seed: int = 0) -> tuple[float, float]:
    """The temperature to serve and the one fitted: the NLL fit, kept only when it lowers ECE out of sample.

    Minimum NLL is the fit (``fit_temperature``, on all rows); ECE is what the scores are judged by.
    The two can disagree: a student distilled from a teacher's probabilities is often calibrated
    already, and a few confidently wrong rows then pull the NLL fit away from 1, so that dividing by
    it makes the top-label confidences worse. Whether scaling helps is judged by twofold cross-fitting
    (each random half's fit scored on the other half, the ECE changes weighted by rows), so the rows
    that judge a fit never fitted it; a fit that does not lower the held-out ECE is dropped (1.0
    served) and reported as fitted. Under four rows there are no halves to speak of, and the fit is
    judged on the rows it was fitted on.
    """
    z = np.asarray(logits, dtype=np.float64)
    y = np.asarray(y_true, dtype=np.int64)
    fitted = fit_temperature(z, y)
    if y.size < 4:
        gain = expected_calibration_error(softmax_t(z), y) - expected_calibration_error(softmax_t(z, fitted), y)
        return (fitted if gain >= 0 else 1.0), fitted
    order = np.random.default_rng(seed).permutation(y.size)
    halves = (order[: y.size // 2], order[y.size // 2 :])
    gain = 0.0
    for fit_rows, judge_rows in (halves, halves[::-1]):
        t = fit_temperature(z[fit_rows], y[fit_rows])
        zj, yj = z[judge_rows], y[judge_rows]
        gain += yj.size * (
            expected_calibration_error(softmax_t(zj), yj) - expected_calibration_error(softmax_t(zj, t), yj)
        )
    return (fitted if gain >= 0 else 1.0), fitted


def calibration_report(logits: np.ndarray, y_true: np.ndarray, temperature: float) -> dict[str, float]:
    """ECE and NLL of one head's logits before (T = 1) and after dividing by ``temperature``."""
    return {
        "temperature": float(temperature),
        "ece_before": expected_calibration_error(softmax_t(logits), y_true),
        "ece_after": expected_calibration_error(softmax_t(logits, temperature), y_true),
        "nll_before": nll(logits, y_true),
        "nll_after": nll(logits, y_true, temperature),
    }
