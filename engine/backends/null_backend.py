"""A backend that answers instantly with fixed outputs, to measure everything except the model.

It is never chosen by ``auto``; it must be asked for by name, and it says so in every description.
"""

from __future__ import annotations

from typing import ClassVar, Sequence

import numpy as np

from engine.backends.base import Backend
from engine.modeling import HeadSpec
from engine.tokenize import EncodedBatch


class NullBackend(Backend):
    """Uniform probabilities for every head: the cost of the pipeline around a zero-cost model."""

    name: ClassVar[str] = "null"
    _returns_probabilities: ClassVar[bool] = True

    def __init__(self, heads: Sequence[HeadSpec], max_batch_size: int, max_seq_len: int, model_id: str = "null") -> None:
        super().__init__(heads, max_batch_size, max_seq_len, model_id)
        self.precision = "none"

    def _infer_impl(self, batch: EncodedBatch) -> dict[str, np.ndarray]:
        return {h.name: np.full((batch.size, len(h.labels)), 1.0 / len(h.labels), dtype=np.float32) for h in self.heads}
