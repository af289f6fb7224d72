"""Head refit: each linear head fitted to convergence on the trained encoder's frozen features.

A short multi-task schedule leaves a head short of what its encoder's features allow: the quick
recipe gives the 20-way topic head 35% of 1,800 small steps, and a full-batch refit on the same
training rows lifted its validation macro-F1 by +0.028 to +0.042 on three seeds (MODEL_CARD,
fourteenth session) at the cost of one forward pass over the training rows. After a long schedule
it gains little (+0.002), and it never changes the encoder, so serving speed is untouched.

The refit is full-batch L-BFGS on the head's training rows (never the calibration or validation
rows), with the recipe's class weights and label smoothing, on gold labels only: distillation
targets are not part of it. Pseudo-labelled rows appended to a head's training rows are included,
as they were in training. It starts from the trained head, which only matters if it stops early.
Heads that read the pooler output rather than the mean-pooled last layer are left as they are.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import numpy as np
import structlog
import torch
from torch import nn

from engine.modeling import MultiHeadClassifier
from engine.tokenize import BatchTokenizer, TokenizedTexts
from training.data import TaskData
from training.evaluate import predict_features

log = structlog.get_logger(__name__)


class RefitSplit(Protocol):
    """What the refit reads of a task's split: its name, training rows and (optionally) their tokens."""

    task: str
    train: TaskData
    train_tok: TokenizedTexts | None


def refit_head(
    head: nn.Linear,
    features: np.ndarray,
    labels: np.ndarray,
    weights: np.ndarray,
    label_smoothing: float,
    l2: float = 1e-4,
    max_iter: int = 500,
) -> float:
    """Fit ``head`` (in place, from its current weights) to the frozen ``features`` by full-batch L-BFGS on the
    class-weighted, label-smoothed cross-entropy plus ``l2`` on the weight matrix. Returns the final loss."""
    device = head.weight.device
    x = torch.from_numpy(np.ascontiguousarray(features, dtype=np.float32)).to(device)
    y = torch.from_numpy(np.asarray(labels, dtype=np.int64)).to(device)
    w = torch.from_numpy(np.asarray(weights, dtype=np.float32)).to(device)
    opt = torch.optim.LBFGS(
        head.parameters(), lr=1.0, max_iter=max_iter, history_size=20, line_search_fn="strong_wolfe"
    )

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = nn.functional.cross_entropy(head(x), y, weight=w, label_smoothing=label_smoothing)
        loss = loss + l2 * (head.weight**2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
        return float(closure().detach())


def refit_heads(
    model: MultiHeadClassifier,
    tokenizer: BatchTokenizer,
    splits: Sequence[RefitSplit],
    class_weights: Mapping[str, np.ndarray],
    label_smoothing: float,
    *,
    batch_size: int = 128,
    device: torch.device | str = "cpu",
    bf16: bool = False,
) -> dict[str, dict[str, Any]]:
    """Refit every mean-pooled linear head of ``model`` on its split's training rows (in place).

    ``bf16`` runs the feature pass under bfloat16 autocast (3x faster on a CPU that has it, like the
    training steps themselves); the refit itself is fp32. Returns, per refit head, the rows, the
    final loss and the seconds it took.
    """
    device = torch.device(device)
    pooling = {h.name: h.pooling for h in model.head_specs}
    out: dict[str, dict[str, Any]] = {}
    for sp in splits:
        head = model.heads[sp.task] if sp.task in model.heads else None
        if not isinstance(head, nn.Linear) or pooling.get(sp.task) != "mean" or len(sp.train) == 0:
            log.info("head_refit_skipped", head=sp.task, pooling=pooling.get(sp.task), rows=len(sp.train))
            continue
        t0 = time.perf_counter()
        texts = sp.train_tok if sp.train_tok is not None else sp.train.texts
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            feats = predict_features(model, tokenizer, texts, batch_size=batch_size, device=device)
        loss = refit_head(head, feats, sp.train.label_ids, class_weights[sp.task], label_smoothing)
        out[sp.task] = {"rows": len(sp.train), "loss": round(loss, 5), "seconds": round(time.perf_counter() - t0, 1)}
        log.info("head_refit", head=sp.task, **out[sp.task])
    return out


def head_logits(model: MultiHeadClassifier, task: str, features: np.ndarray) -> np.ndarray:
    """``task``'s logits from mean-pooled ``features`` (eval mode: no dropout), as ``model`` would give them."""
    head = model.heads[task]
    if not isinstance(head, nn.Linear):
        raise TypeError(f"head {task!r} is not a linear layer")
    with torch.inference_mode():
        x = torch.from_numpy(np.ascontiguousarray(features, dtype=np.float32)).to(head.weight.device)
        return head(x).float().cpu().numpy()
