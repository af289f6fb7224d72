"""PyTorch on an NVIDIA GPU in fp16: the ``cuda`` backend.

Loads the checkpoint (a bundle's ``checkpoint/`` or a plain checkpoint directory), casts it to
half precision and runs it under ``inference_mode``. Inputs are copied through pinned host memory
so the host-to-device copy is asynchronous on the backend's own stream.

CUDA graphs are not used. The engine pads every batch to a multiple of 16 tokens, so graphs could be
captured per (batch, seq) bucket with static input buffers; that adds one capture per bucket shape
(up to max_batch x buckets of them) and memory for each, and could not be measured on the CPU-only
development machines, so it is left for when a GPU is at hand to show the launch overhead matters.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import structlog

from engine.backends.base import Backend
from engine.bundle import EngineBundle, is_bundle
from engine.errors import BackendUnavailable
from engine.modeling import LoadedModel
from engine.settings import EngineSettings
from engine.tokenize import EncodedBatch

log = structlog.get_logger(__name__)


class CudaTorchBackend(Backend):
    """The PyTorch model in fp16 on one GPU."""

    name: ClassVar[str] = "cuda"

    def __init__(self, loaded: LoadedModel, max_batch_size: int, max_seq_len: int, device_id: int = 0) -> None:
        import torch

        super().__init__(loaded.heads, max_batch_size, max_seq_len, loaded.model_id)
        self._torch = torch
        self._device = torch.device("cuda", device_id)
        self.gpu_name = torch.cuda.get_device_name(self._device)
        self.device = f"cuda:{device_id} ({self.gpu_name})"
        self.precision = "fp16"
        self._model = loaded.model.eval().half().to(self._device)
        self._stream = torch.cuda.Stream(device=self._device)

    def _infer_impl(self, batch: EncodedBatch) -> dict[str, np.ndarray]:
        torch = self._torch
        with torch.inference_mode(), torch.cuda.stream(self._stream):
            ids = torch.from_numpy(batch.input_ids).pin_memory().to(self._device, non_blocking=True)
            mask = torch.from_numpy(batch.attention_mask).pin_memory().to(self._device, non_blocking=True)
            logits = self._model(ids, mask)
            host = [t.float().to("cpu", non_blocking=False) for t in logits]
        self._stream.synchronize()
        # Not strict: a missing head is reported by Backend._check_outputs as an InferenceOutputError.
        return {h.name: t.numpy() for h, t in zip(self.heads, host, strict=False)}

    def describe(self) -> dict[str, Any]:
        torch = self._torch
        return {
            **super().describe(),
            "gpu": self.gpu_name,
            "torch_cuda": torch.version.cuda,
            "cuda_graphs": False,
        }

    def close(self) -> None:
        self._model = None  # type: ignore[assignment]
        self._torch.cuda.empty_cache()


def create(model_dir: Path, settings: EngineSettings) -> Backend:
    """The fp16 torch backend on the GPU ``settings.device_id``; ``BackendUnavailable`` without one."""
    import torch

    if not torch.cuda.is_available():
        raise BackendUnavailable(
            CudaTorchBackend.name, "torch.cuda.is_available() is False: no NVIDIA GPU/driver visible to this process"
        )
    if settings.device_id >= torch.cuda.device_count():
        raise BackendUnavailable(
            CudaTorchBackend.name, f"device_id {settings.device_id} but only {torch.cuda.device_count()} GPU(s)"
        )
    from engine.modeling import load_model

    ckpt = EngineBundle.load(model_dir).checkpoint_path if is_bundle(model_dir) else Path(model_dir)
    return CudaTorchBackend(load_model(ckpt), settings.max_batch_size, settings.max_seq_len, settings.device_id)
