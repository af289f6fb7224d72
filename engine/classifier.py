"""Texts in, per-head probabilities out: tokenizer + batch planner + backend.

The planner sorts texts by token length and cuts them into batches bounded by a batch size and a
padded-token budget, so short texts are never padded to long ones; results are scattered back to
input order and counted one for one.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from engine.backends.base import Backend
from engine.errors import InferenceOutputError
from engine.tokenize import BatchTokenizer, TokenizedTexts


def plan_batches(
    lengths: np.ndarray, max_batch_size: int, max_tokens: int, pad_multiple: int, max_seq_len: int
) -> list[np.ndarray]:
    """Indices of each batch: sorted by length, each within ``max_batch_size`` rows and ``max_tokens`` padded tokens.

    A single text longer than the budget still gets a batch of its own (it is truncated to
    ``max_seq_len`` by the tokenizer, so it always fits the model).
    """
    n = int(lengths.size)
    if n == 0:
        return []
    order = np.argsort(lengths, kind="stable")
    batches: list[np.ndarray] = []
    start = 0
    while start < n:
        end = start
        while end < n and end - start < max_batch_size:
            longest = int(lengths[order[end]])
            padded = min(-(-max(longest, 1) // pad_multiple) * pad_multiple, max(max_seq_len, longest))
            if end > start and (end - start + 1) * padded > max_tokens:
                break
            end += 1
        batches.append(order[start:end])
        start = end
    return batches


@dataclass
class EngineStats:
    """Running counters, cheap enough to keep on the hot path (per batch, not per text).

    Latency distributions are not kept here: ``call_observer`` (when set) receives every call's
    duration, and the worker feeds it to a Prometheus histogram.
    """

    texts: int = 0
    calls: int = 0
    real_tokens: int = 0
    padded_tokens: int = 0
    infer_seconds: float = 0.0
    call_observer: Callable[[float], None] | None = field(default=None, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, texts: int, real: int, padded: int, seconds: float) -> None:
        with self._lock:
            self.texts += texts
            self.calls += 1
            self.real_tokens += real
            self.padded_tokens += padded
            self.infer_seconds += seconds
        if self.call_observer is not None:
            self.call_observer(seconds)

    def as_dict(self) -> dict[str, Any]:
        with self._lock:
            pad_ratio = self.padded_tokens / self.real_tokens if self.real_tokens else None
            return {
                "texts": self.texts,
                "calls": self.calls,
                "real_tokens": self.real_tokens,
                "padded_tokens": self.padded_tokens,
                "padding_overhead": pad_ratio,
                "infer_seconds": round(self.infer_seconds, 4),
            }


class TextClassifier:
    """Classifies lists of texts with one backend; thread-safe for one caller at a time per backend."""

    def __init__(
        self,
        tokenizer: BatchTokenizer,
        backend: Backend,
        max_batch_size: int | None = None,
        max_tokens_per_batch: int = 8192,
    ) -> None:
        self.tokenizer = tokenizer
        self.backend = backend
        self.max_batch_size = min(max_batch_size or backend.max_batch_size, backend.max_batch_size)
        self.max_tokens_per_batch = max_tokens_per_batch
        self.stats = EngineStats()
        self.skipped_backends: dict[str, str] = {}

    @property
    def heads(self) -> tuple[Any, ...]:
        return self.backend.heads

    def describe(self) -> dict[str, Any]:
        return {
            **self.backend.describe(),
            "skipped_backends": dict(self.skipped_backends),
            "batch_policy": {
                "max_batch_size": self.max_batch_size,
                "max_tokens_per_batch": self.max_tokens_per_batch,
                "pad_multiple": self.tokenizer.pad_multiple,
                "max_seq_len": self.tokenizer.max_seq_len,
                "sort_by_length": True,
            },
        }

    def plan(self, tok: TokenizedTexts) -> list[np.ndarray]:
        return plan_batches(
            tok.lengths,
            self.max_batch_size,
            self.max_tokens_per_batch,
            self.tokenizer.pad_multiple,
            self.tokenizer.max_seq_len,
        )

    def classify(self, texts: Sequence[str], tokenized: TokenizedTexts | None = None) -> dict[str, np.ndarray]:
        """Probabilities per head, shape (len(texts), n_labels), in input order. Empty in, empty out.

        ``tokenized``: these texts already through :meth:`tokenize` (on another thread, ahead of time).
        """
        return self.classify_tokenized(tokenized if tokenized is not None else self.tokenize(texts))

    def tokenize(self, texts: Sequence[str]) -> TokenizedTexts:
        """Stage one of :meth:`classify`, callable on its own thread: the Rust tokenizer releases the
        GIL, so a caller can tokenize the next batch while :meth:`classify_tokenized` runs this one."""
        if len(texts) == 0:
            return TokenizedTexts(ids=[], lengths=np.zeros(0, dtype=np.int64))
        return self.tokenizer.tokenize(texts)

    def classify_tokenized(self, tok: TokenizedTexts) -> dict[str, np.ndarray]:
        """Stage two of :meth:`classify`: plan, collate and run the backend on tokenized texts."""
        n = len(tok.ids)
        if n == 0:
            return {h.name: np.zeros((0, len(h.labels)), dtype=np.float32) for h in self.heads}
        out = {h.name: np.empty((n, len(h.labels)), dtype=np.float32) for h in self.heads}
        filled = np.zeros(n, dtype=bool)
        for idx in self.plan(tok):
            batch = self.tokenizer.collate(tok, idx)
            t0 = time.perf_counter()
            probs = self.backend.infer(batch)
            self.stats.add(len(idx), int(tok.lengths[idx].sum()), batch.size * batch.seq_len, time.perf_counter() - t0)
            for name, arr in probs.items():
                out[name][idx] = arr
            filled[idx] = True
        if not filled.all():
            raise InferenceOutputError(f"{int((~filled).sum())} of {n} texts got no output")
        return out
