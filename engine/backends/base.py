"""The one small interface every runtime implements.

``Backend.infer`` is the public entry point: it validates the batch, calls the runtime-specific
``_infer_impl`` and checks that what comes back matches what went in, one row per input row, one
output per head. Subclasses only write ``_infer_impl`` (and optionally ``_warmup``/``close``).
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from types import TracebackType
from typing import Any, ClassVar

import numpy as np

from engine.errors import InferenceInputError, InferenceOutputError
from engine.heads import HeadSpec
from engine.tokenize import EncodedBatch


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax in float32, stable for large logits."""
    z = logits.astype(np.float32, copy=False)
    z = z - z.max(axis=1, keepdims=True)
    np.exp(z, out=z)
    z /= z.sum(axis=1, keepdims=True)
    return z


class Backend(abc.ABC):
    """A runtime that maps token ids to per-head class probabilities."""

    name: ClassVar[str] = "abstract"

    def __init__(self, heads: Sequence[HeadSpec], max_batch_size: int, max_seq_len: int, model_id: str) -> None:
        self.heads: tuple[HeadSpec, ...] = tuple(heads)
        self.max_batch_size = int(max_batch_size)
        self.max_seq_len = int(max_seq_len)
        self.model_id = model_id
        self.device = "cpu"
        self.precision = "fp32"

    # --- public API ------------------------------------------------------------------------
    def infer(self, batch: EncodedBatch) -> dict[str, np.ndarray]:
        """Probabilities per head, each of shape (batch, n_labels), rows in input order."""
        self._check_inputs(batch)
        raw = self._infer_impl(batch)
        return self._check_outputs(batch, raw)

    def warmup(self, seq_lens: Sequence[int] = (16, 32, 64)) -> None:
        """Run a few dummy batches so the first real batch does not pay for lazy initialisation."""
        for seq in seq_lens:
            seq = min(seq, self.max_seq_len)
            ids = np.ones((min(4, self.max_batch_size), seq), dtype=np.int64)
            self.infer(EncodedBatch(input_ids=ids, attention_mask=np.ones_like(ids)))

    def describe(self) -> dict[str, Any]:
        """What runs: reported in logs, the health endpoint and every benchmark."""
        return {
            "backend": self.name,
            "device": self.device,
            "precision": self.precision,
            "model_id": self.model_id,
            "heads": {h.name: list(h.labels) for h in self.heads},
            "max_batch_size": self.max_batch_size,
        }

    def close(self) -> None:  # noqa: B027 - a no-op default on purpose: most backends hold nothing to release
        """Release runtime resources (sessions, CUDA contexts)."""

    def __enter__(self) -> Backend:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # --- backend-specific ---------------------------------------------------------------------
    @abc.abstractmethod
    def _infer_impl(self, batch: EncodedBatch) -> dict[str, np.ndarray]:
        """Return logits (or probabilities if ``_returns_probabilities``) per head name."""

    _returns_probabilities: ClassVar[bool] = False

    # --- checks ----------------------------------------------------------------------------------
    def _check_inputs(self, batch: EncodedBatch) -> None:
        ids, mask = batch.input_ids, batch.attention_mask
        if not isinstance(ids, np.ndarray) or not isinstance(mask, np.ndarray):
            raise InferenceInputError("input_ids and attention_mask must be numpy arrays")
        if ids.ndim != 2 or ids.shape != mask.shape:
            raise InferenceInputError(f"expected two 2-D arrays of one shape, got {ids.shape} and {mask.shape}")
        if ids.dtype != np.int64 or mask.dtype != np.int64:
            raise InferenceInputError(f"expected int64 inputs, got {ids.dtype} and {mask.dtype}")
        b, seq = ids.shape
        if b < 1:
            raise InferenceInputError("empty batch")
        if b > self.max_batch_size:
            raise InferenceInputError(f"batch of {b} exceeds max_batch_size {self.max_batch_size}")
        if seq < 1 or seq > self.max_seq_len:
            raise InferenceInputError(f"sequence length {seq} outside 1..{self.max_seq_len}")
        if not bool((mask[:, 0] == 1).all()):
            raise InferenceInputError("every row needs at least one unmasked token ([CLS] first)")

    def _check_outputs(self, batch: EncodedBatch, raw: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        expected = {h.name for h in self.heads}
        if set(raw) != expected:
            raise InferenceOutputError(f"{self.name}: heads {sorted(raw)} != expected {sorted(expected)}")
        out: dict[str, np.ndarray] = {}
        for head in self.heads:
            arr = np.asarray(raw[head.name])
            if arr.shape != (batch.size, len(head.labels)):
                raise InferenceOutputError(
                    f"{self.name}: head {head.name!r} returned shape {arr.shape} for a batch of {batch.size} "
                    f"(expected {(batch.size, len(head.labels))})"
                )
            if self._returns_probabilities:
                probs = arr.astype(np.float32, copy=False)
            else:
                # The head's fitted temperature: one division here serves every backend alike.
                probs = softmax(arr / np.float32(head.temperature) if head.temperature != 1.0 else arr)
            if not np.isfinite(probs).all():
                raise InferenceOutputError(f"{self.name}: head {head.name!r} produced non-finite values")
            out[head.name] = probs
        return out
