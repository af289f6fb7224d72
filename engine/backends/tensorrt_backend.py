"""TensorRT 10.x: the ``tensorrt`` backend runs a bundle's serialized engine (``model.plan``).

It uses the tensor-name API only (``num_io_tensors``, ``get_tensor_name``, ``get_tensor_mode``,
``set_input_shape``, ``set_tensor_address``, ``execute_async_v3``) on a CUDA stream of its own.
The engine holds one optimization profile per sequence-length bucket; each batch runs on the
profile whose (batch, seq) ranges cover it, preferring the one with the shortest max length (its
kernels were tuned nearest that shape). Device buffers are torch CUDA tensors, so nothing beyond
torch and tensorrt is needed (no pycuda / cuda-python).

tensorrt is imported in the factory, never at module import.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import structlog

from engine.backends.base import Backend
from engine.bundle import EngineBundle, is_bundle
from engine.errors import BackendUnavailable, InferenceInputError, ModelFormatError
from engine.heads import HeadSpec
from engine.settings import EngineSettings
from engine.tokenize import EncodedBatch

log = structlog.get_logger(__name__)


def _import_tensorrt() -> Any:
    try:
        import tensorrt as trt
    except ImportError as exc:
        raise BackendUnavailable(
            "tensorrt", "python package 'tensorrt' is not installed (pip install 'finpulse[gpu]')"
        ) from exc
    import torch

    if not torch.cuda.is_available():
        raise BackendUnavailable("tensorrt", "no CUDA GPU visible (torch.cuda.is_available() is False)")
    return trt


class TensorRTBackend(Backend):
    """A deserialized TensorRT engine with one execution context and one CUDA stream."""

    name: ClassVar[str] = "tensorrt"

    def __init__(
        self,
        engine_path: str | Path,
        heads: Sequence[HeadSpec],
        output_names: Sequence[str],
        max_batch_size: int,
        max_seq_len: int,
        model_id: str,
        precision: str = "fp16",
        device_id: int = 0,
    ) -> None:
        trt = _import_tensorrt()
        import torch

        self._trt = trt
        self._torch = torch
        self._device = torch.device("cuda", device_id)
        torch.cuda.set_device(self._device)
        self._logger = trt.Logger(trt.Logger.WARNING)
        runtime = trt.Runtime(self._logger)
        path = Path(engine_path)
        self._engine = runtime.deserialize_cuda_engine(path.read_bytes())
        if self._engine is None:
            raise ModelFormatError(
                path,
                f"TensorRT {trt.__version__} cannot deserialize this engine (built by another TensorRT version or for "
                "another GPU?)",
            )
        self._context = self._engine.create_execution_context()
        self._stream = torch.cuda.Stream(device=self._device)
        self.engine_path = path
        self.trt_version = str(trt.__version__)

        names = [self._engine.get_tensor_name(i) for i in range(self._engine.num_io_tensors)]
        self._inputs = [n for n in names if self._engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        engine_outputs = [n for n in names if self._engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        if sorted(self._inputs) != ["attention_mask", "input_ids"]:
            raise ModelFormatError(path, f"engine inputs {self._inputs} are not input_ids/attention_mask")
        missing = [o for o in output_names if o not in engine_outputs]
        if missing:
            raise ModelFormatError(
                path, f"manifest heads do not match the engine outputs: {missing} not among {engine_outputs}"
            )
        self._outputs = list(output_names)
        self._dtypes = {n: self._torch_dtype(self._engine.get_tensor_dtype(n)) for n in self._inputs + self._outputs}

        # (min, max) per profile, read back from the engine rather than trusted from the manifest.
        self._profiles: list[tuple[tuple[int, int], tuple[int, int], tuple[int, int]]] = []
        for p in range(self._engine.num_optimization_profiles):
            mn, opt, mx = self._engine.get_tensor_profile_shape(self._inputs[0], p)
            self._profiles.append((tuple(mn), tuple(opt), tuple(mx)))
        engine_batch = max(p[2][0] for p in self._profiles)
        engine_seq = max(p[2][1] for p in self._profiles)
        if max_seq_len > engine_seq:
            raise BackendUnavailable(
                self.name,
                f"engine profiles cover sequences up to {engine_seq} but max_seq_len is {max_seq_len}; rebuild with "
                "longer --seq-buckets",
            )
        if max_batch_size > engine_batch:
            log.warning("tensorrt_batch_capped", requested=max_batch_size, engine_max=engine_batch)
        super().__init__(heads, min(max_batch_size, engine_batch), max_seq_len, model_id)
        self.device = f"cuda:{device_id} ({torch.cuda.get_device_name(self._device)})"
        self.precision = precision
        self._active_profile: int | None = None

    def _torch_dtype(self, dt: Any) -> Any:
        trt, torch = self._trt, self._torch
        table = {trt.int64: torch.int64, trt.int32: torch.int32, trt.float32: torch.float32, trt.float16: torch.float16}
        if dt not in table:
            raise ModelFormatError(self.engine_path, f"unsupported engine tensor dtype {dt}")
        return table[dt]

    def select_profile(self, batch: int, seq: int) -> int:
        """Index of the profile covering (batch, seq) with the smallest max length."""
        best: int | None = None
        for i, (mn, _opt, mx) in enumerate(self._profiles):
            covers = mn[0] <= batch <= mx[0] and mn[1] <= seq <= mx[1]
            if covers and (best is None or mx[1] < self._profiles[best][2][1]):
                best = i
        if best is None:
            raise InferenceInputError(f"no TensorRT profile covers batch {batch} x seq {seq}: {self._profiles}")
        return best

    def _infer_impl(self, batch: EncodedBatch) -> dict[str, np.ndarray]:
        torch = self._torch
        ctx = self._context
        b, s = batch.size, batch.seq_len
        profile = self.select_profile(b, s)
        with torch.cuda.stream(self._stream):
            if profile != self._active_profile:
                ctx.set_optimization_profile_async(profile, self._stream.cuda_stream)
                self._active_profile = profile
            buffers: dict[str, Any] = {}
            host = {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask}
            for name in self._inputs:
                t = torch.from_numpy(host[name]).pin_memory().to(self._device, non_blocking=True).to(self._dtypes[name])
                buffers[name] = t.contiguous()
                if not ctx.set_input_shape(name, (b, s)):
                    raise InferenceInputError(
                        f"TensorRT refused input shape {(b, s)} for {name!r} on profile {profile}"
                    )
                ctx.set_tensor_address(name, buffers[name].data_ptr())
            for name in self._outputs:
                shape = tuple(ctx.get_tensor_shape(name))
                buffers[name] = torch.empty(shape, dtype=self._dtypes[name], device=self._device)
                ctx.set_tensor_address(name, buffers[name].data_ptr())
            if not ctx.execute_async_v3(self._stream.cuda_stream):
                raise RuntimeError(f"TensorRT execute_async_v3 failed for batch {(b, s)}")
            outs = [buffers[n].float().to("cpu") for n in self._outputs]
        self._stream.synchronize()
        # Not strict: a missing head is reported by Backend._check_outputs as an InferenceOutputError.
        return {h.name: o.numpy() for h, o in zip(self.heads, outs, strict=False)}

    def describe(self) -> dict[str, Any]:
        return {
            **super().describe(),
            "engine_file": self.engine_path.name,
            "tensorrt": self.trt_version,
            "profiles": [{"min": list(mn), "opt": list(opt), "max": list(mx)} for mn, opt, mx in self._profiles],
            "active_profile": self._active_profile,
        }

    def close(self) -> None:
        self._context = None
        self._engine = None


def create(model_dir: Path, settings: EngineSettings) -> Backend:
    """The TensorRT backend on a bundle's serialized engine; ``BackendUnavailable`` without tensorrt or a GPU."""
    model_dir = Path(model_dir)
    if not is_bundle(model_dir):
        raise ModelFormatError(
            model_dir, "backend 'tensorrt' needs an engine bundle (build one with `finpulse build-engine --tensorrt`)"
        )
    bundle = EngineBundle.load(model_dir)
    entry = bundle.manifest.tensorrt
    if entry is None:
        raise BackendUnavailable(
            "tensorrt", f"bundle {model_dir} has no TensorRT engine (rebuild with --tensorrt on a GPU machine)"
        )
    _import_tensorrt()  # fail on a missing package/GPU before hashing a large engine file
    path = bundle.file("tensorrt")
    built_with = bundle.manifest.versions.get("tensorrt")
    backend = TensorRTBackend(
        path,
        bundle.heads,
        [h.output for h in bundle.manifest.heads],
        settings.max_batch_size,
        settings.max_seq_len,
        bundle.manifest.model_id,
        precision=entry.precision,
        device_id=settings.device_id,
    )
    if built_with and built_with != backend.trt_version:
        log.warning("tensorrt_version_differs", built_with=built_with, running=backend.trt_version)
    return backend
