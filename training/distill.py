"""Knowledge distillation: soft targets from trained teachers (one model or a seed ensemble) for a student.

An ensemble of a few seeds of the same recipe scores clearly above any one of them (MODEL_CARD.md);
distillation trains one student, at one model's serving cost, towards the ensemble's averaged,
calibrated probabilities on the training texts, alongside the gold labels.

The teachers' probabilities are computed once per run, in the teachers' own tokenization and
temperature, on the rows the student trains on (never on validation or calibration rows), and can be
cached on disk so that several student seeds share one teacher pass.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import structlog
import torch

from engine.modeling import load_model
from engine.tokenize import BatchTokenizer
from training.evaluate import predict_logits

log = structlog.get_logger(__name__)


class DistillError(ValueError):
    """A teacher cannot teach this student: missing head, other labels, unreadable model."""


def teacher_identity(path: Path) -> dict[str, Any]:
    """What distinguishes one teacher from another: its id and training hash, not where it lies."""
    cfg = json.loads((path / "config.json").read_text())
    return {
        "model_id": cfg.get("finpulse_model_id", path.name),
        "config_hash": (cfg.get("finpulse_training") or {}).get("config_hash"),
    }


def distillation_loss(logits: torch.Tensor, target: torch.Tensor, row_weights: torch.Tensor) -> torch.Tensor:
    """KL(target || softmax(logits)) per row, averaged with ``row_weights`` (the gold class's loss weight)."""
    per_row = torch.nn.functional.kl_div(torch.nn.functional.log_softmax(logits, dim=-1), target, reduction="none").sum(
        dim=-1
    )
    return (per_row * row_weights).sum() / row_weights.sum()


def rdrop_loss(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """R-Drop's consistency term: the symmetric KL between two predictions of the same rows, mean per row."""
    la, lb = torch.nn.functional.log_softmax(a, dim=-1), torch.nn.functional.log_softmax(b, dim=-1)
    kl_ab = torch.nn.functional.kl_div(lb, la, log_target=True, reduction="batchmean")  # KL(a || b)
    kl_ba = torch.nn.functional.kl_div(la, lb, log_target=True, reduction="batchmean")  # KL(b || a)
    return 0.5 * (kl_ab + kl_ba)


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    out: np.ndarray = e / e.sum(axis=1, keepdims=True)
    return out


def _cache_key(teachers: list[Path], task: str, labels: tuple[str, ...], texts: list[str], max_seq_len: int) -> str:
    return hashlib.sha256(
        json.dumps(
            {"teachers": [teacher_identity(t) for t in teachers], "task": task, "labels": labels, "len": max_seq_len},
            sort_keys=True,
        ).encode()
        + "\n".join(texts).encode()
    ).hexdigest()[:16]


def teacher_probabilities(
    teachers: list[Path],
    task: str,
    labels: tuple[str, ...],
    texts: list[str],
    *,
    max_seq_len: int,
    batch_size: int = 128,
    bf16: bool = False,
    cache_dir: Path | None = None,
) -> np.ndarray:
    """The teachers' mean calibrated probabilities for ``texts`` on head ``task``: float32 (len(texts), len(labels)).

    With ``cache_dir``, each teacher's pass is cached on its own (and the mean of an ensemble too), so an
    ensemble reuses the passes of its members run alone or in other ensembles: a 12-layer pass over
    tens of thousands of texts is most of an hour on a small CPU.

    Raises ``DistillError`` when a teacher has no such head or orders its labels differently.
    """

    def cache_file(members: list[Path]) -> Path | None:
        if cache_dir is None:
            return None
        return cache_dir / f"{task}-{_cache_key(members, task, labels, texts, max_seq_len)}.npy"

    def load(path: Path | None) -> np.ndarray | None:
        if path is None or not path.is_file():
            return None
        log.info("teacher_probabilities_cached", task=task, path=str(path))
        arr: np.ndarray = np.load(path)
        return arr

    def save(path: Path | None, probs: np.ndarray) -> None:
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            np.save(path, probs)

    whole = cache_file(teachers)
    got = load(whole)
    if got is not None:
        return got
    total = np.zeros((len(texts), len(labels)), dtype=np.float64)
    for path in teachers:
        own = cache_file([path]) if len(teachers) > 1 else None
        one = load(own)
        if one is None:
            loaded = load_model(path)
            names = loaded.model.head_names
            if task not in names:
                raise DistillError(f"teacher {path} has no {task!r} head (heads: {', '.join(names)})")
            spec = loaded.model.head_specs[names.index(task)]
            if tuple(spec.labels) != tuple(labels):
                raise DistillError(f"teacher {path} orders the {task} labels {spec.labels}, the student {labels}")
            tok = BatchTokenizer.from_model_dir(path, max_seq_len=max_seq_len)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                logits = predict_logits(loaded.model, tok, texts, batch_size=batch_size)[names.index(task)]
            one = _softmax(logits.astype(np.float64) / spec.temperature).astype(np.float32)
            log.info("teacher_done", task=task, teacher=loaded.model_id, rows=len(texts))
            save(own, one)
        total += one
    probs = (total / len(teachers)).astype(np.float32)
    save(whole, probs)
    return probs
