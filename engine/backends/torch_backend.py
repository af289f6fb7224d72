"""PyTorch on CPU: the reference backend every other backend is checked against."""

from __future__ import annotations

import os
from typing import ClassVar

import numpy as np

from engine.backends.base import Backend
from engine.modeling import LoadedModel
from engine.tokenize import EncodedBatch


class TorchCPUBackend(Backend):
    """Runs the PyTorch model in fp32 on CPU under ``inference_mode``."""

    name: ClassVar[str] = "torch"

    def __init__(self, loaded: LoadedModel, max_batch_size: int, max_seq_len: int, num_threads: int | None = None) -> None:
        import torch

        super().__init__(loaded.heads, max_batch_size, max_seq_len, loaded.model_id)
        self._torch = torch
        threads = num_threads or os.cpu_count() or 1
        torch.set_num_threads(threads)
        self.threads = threads
        self._model = loaded.model.eval().to("cpu")

    def _infer_impl(self, batch: EncodedBatch) -> dict[str, np.ndarray]:
        torch = self._torch
        with torch.inference_mode():
            logits = self._model(torch.from_numpy(batch.input_ids), torch.from_numpy(batch.attention_mask))
        return {h.name: t.float().numpy() for h, t in zip(self.heads, logits)}

    def describe(self) -> dict[str, object]:
        return {**super().describe(), "threads": self.threads}
