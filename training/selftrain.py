"""Self-training: labels for unlabelled in-domain text from confident teachers, added to the gold rows.

The StockNet tweets are in-domain (cashtags, bull and bear slang) and unlabelled. Trained models (one
or a seed ensemble) score a fixed sample of them; the rows where the teachers' mean calibrated
probability of one class reaches a threshold join the student's training rows with that class as
their label. Validation texts and their near copies never enter the pool (``training.overlap``),
so the validation score cannot be inflated by a teacher's memory of it.

The sample is drawn with a fixed seed, not the student's, so one cached teacher pass
(``teacher_probabilities``) serves every student seed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import structlog

from training.data import read_records
from training.distill import teacher_probabilities
from training.overlap import exclude_validation, normalise_text

log = structlog.get_logger(__name__)

#: the pool's sampling seed: fixed, so every student seed shares one cached teacher pass
POOL_SEED = 0


@dataclass
class PseudoLabels:
    """The confident rows of one head: texts, label ids, the teachers' probabilities, and what was left out."""

    task: str
    labels: tuple[str, ...]
    texts: list[str]
    label_ids: np.ndarray
    probs: np.ndarray
    report: dict[str, Any] = field(default_factory=dict)


def unlabelled_pool(
    corpus: Path, validation: list[str], *, size: int, near_copy: float
) -> tuple[list[str], dict[str, int]]:
    """Up to ``size`` distinct corpus texts with no (near) copy among ``validation``, sampled with ``POOL_SEED``.

    Returns the pool and counts of what was read, repeated and left out.
    """
    texts = [r.text for r in read_records(corpus) if r.text.strip()]
    seen: set[str] = set()
    unique: list[str] = []
    for t in texts:
        key = normalise_text(t)
        if key and key not in seen:
            seen.add(key)
            unique.append(t)
    rng = np.random.default_rng(POOL_SEED)
    # Draw a margin above ``size`` before the (costly) validation check, then keep the first ``size`` left.
    order = rng.permutation(len(unique))[: min(len(unique), int(size * 1.1) + 100)]
    candidates = [unique[i] for i in order]
    exclusion = exclude_validation(candidates, validation, near_copy)
    pool = exclusion.kept[:size]
    counts = {
        "read": len(texts),
        "distinct": len(unique),
        "checked": len(candidates),
        "validation_copies_left_out": exclusion.exact + exclusion.near,
        "pool": len(pool),
    }
    return pool, counts


def pseudo_label(
    teachers: list[Path],
    task: str,
    labels: tuple[str, ...],
    pool: list[str],
    *,
    threshold: float,
    max_seq_len: int,
    batch_size: int = 128,
    bf16: bool = False,
    cache_dir: Path | None = None,
) -> PseudoLabels:
    """The rows of ``pool`` whose teachers' mean probability of one ``task`` class is at least ``threshold``."""
    probs = teacher_probabilities(
        teachers, task, labels, pool, max_seq_len=max_seq_len, batch_size=batch_size, bf16=bf16, cache_dir=cache_dir
    )
    keep = np.flatnonzero(probs.max(axis=1) >= threshold) if len(pool) else np.zeros(0, dtype=np.int64)
    ids = probs[keep].argmax(axis=1).astype(np.int64) if len(keep) else np.zeros(0, dtype=np.int64)
    per_class = np.bincount(ids, minlength=len(labels))
    report = {
        "scored": len(pool),
        "kept": len(keep),
        "threshold": threshold,
        "per_class": dict(zip(labels, map(int, per_class), strict=True)),
    }
    log.info("pseudo_labels", task=task, **report)
    return PseudoLabels(
        task=task, labels=labels, texts=[pool[i] for i in keep], label_ids=ids, probs=probs[keep], report=report
    )
