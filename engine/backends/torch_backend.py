"""PyTorch on CPU: the reference backend every other backend is checked against."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import numpy as np

from engine.backends.base import Backend
from engine.bundle import EngineBundle, is_bundle
from engine.modeling import LoadedModel, load_model
from engine.settings import EngineSettings
from engine.tokenize import EncodedBatch
from finpulse.cpu import usable_cores


class TorchCPUBackend(Backend):
    """Runs the PyTorch model in fp32 on CPU under ``inference_mode``."""

    name: ClassVar[str] = "torch"

    def __init__(
        self, loaded: LoadedModel, max_batch_size: int, max_seq_len: int, num_threads: int | None = None
    ) -> None:
        import torch

        super().__init__(loaded.heads, max_batch_size, max_seq_len, loaded.model_id)
        self._torch = torch
        threads = num_threads or usable_cores()
        torch.set_num_threads(threads)
        self.threads = threads
        self._model = loaded.model.eval().to("cpu")

    def _infer_impl(self, batch: EncodedBatch) -> dict[str, np.ndarray]:
        torch = self._torch
        with torch.inference_mode():
            logits = self._model(torch.from_numpy(batch.input_ids), torch.from_numpy(batch.attention_mask))
        # Not strict: a missing head is reported by Backend._check_outputs as an InferenceOutputError.
        return {h.name: t.float().numpy() for h, t in zip(self.heads, logits, strict=False)}

    def describe(self) -> dict[str, object]:
        return {**super().describe(), "threads": self.threads}


def create(model_dir: Path, settings: EngineSettings) -> Backend:
    """The torch backend on a checkpoint directory, or on the checkpoint inside an engine bundle."""
    checkpoint = EngineBundle.load(model_dir).checkpoint_path if is_bundle(model_dir) else model_dir
    return TorchCPUBackend(load_model(checkpoint), settings.max_batch_size, settings.max_seq_len, settings.num_threads)
