"""ONNX -> TensorRT engine build, written against the TensorRT 10.x Python API.

- ``trt.Builder`` + ``create_network(0)``: networks are explicit-batch by default in 10.x (the
  EXPLICIT_BATCH flag is deprecated and ignored), so no flag is passed.
- ``trt.OnnxParser`` reads ``model.onnx``; int64 inputs are kept (TensorRT 10 has INT64 I/O).
- One optimization profile per sequence-length bucket: min (1, previous bucket + 1), opt
  (opt_batch, bucket), max (max_batch, bucket). The engine pads every batch to a multiple of 16
  (``pad_multiple``), so each padded length falls into exactly one profile and kernels are tuned for
  the lengths that really occur instead of one 1..128 range.
- FP16 via ``BuilderFlag.FP16``; optional INT8 via ``BuilderFlag.INT8`` and an entropy calibrator fed
  with real texts from a file. TensorRT 10.1+ deprecates this implicit (calibrator) quantization in
  favour of explicit Q/DQ models; it still works in 10.x and needs no extra tooling, hence its use.
- A timing cache file is loaded when present and saved after every build, so rebuilding the same
  model (or a similar one) on the same GPU skips most kernel timing.

tensorrt is imported lazily: this module imports on machines without it, and every entry point
raises ``BackendUnavailable`` when the package or a GPU is missing.
"""

from __future__ import annotations

import csv
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import structlog

from build_engine.errors import EngineBuildError
from engine.errors import BackendUnavailable
from engine.settings import DEFAULT_MAX_SEQ_LEN
from engine.tokenize import BatchTokenizer, EncodedBatch

log = structlog.get_logger(__name__)

TENSORRT_FILE = "model.plan"
CALIBRATION_CACHE = "calibration.cache"


def require_tensorrt() -> ModuleType:
    """Import TensorRT 10.x and check for a CUDA GPU, or raise ``BackendUnavailable`` saying which is missing."""
    try:
        import tensorrt as trt
    except ImportError as exc:
        raise BackendUnavailable(
            "tensorrt",
            "python package 'tensorrt' is not installed (pip install 'finpulse[gpu]' on a machine with an NVIDIA GPU)",
        ) from exc
    major = int(str(trt.__version__).split(".")[0])
    if major < 10:
        raise BackendUnavailable("tensorrt", f"TensorRT {trt.__version__} found; finpulse needs TensorRT 10.x")
    import torch

    if not torch.cuda.is_available():
        raise BackendUnavailable("tensorrt", "no CUDA GPU visible (torch.cuda.is_available() is False)")
    return trt


@dataclass(frozen=True)
class ShapeProfile:
    """min/opt/max (batch, seq) of one optimization profile; the same for both inputs."""

    min: tuple[int, int]
    opt: tuple[int, int]
    max: tuple[int, int]

    def covers(self, batch: int, seq: int) -> bool:
        return self.min[0] <= batch <= self.max[0] and self.min[1] <= seq <= self.max[1]

    def as_dict(self, index: int) -> dict[str, Any]:
        return {"index": index, "min": list(self.min), "opt": list(self.opt), "max": list(self.max)}


def plan_profiles(max_batch: int, opt_batch: int, seq_buckets: Sequence[int], max_seq_len: int) -> list[ShapeProfile]:
    """One profile per sequence bucket, together covering batch 1..max_batch and seq 1..max_seq_len."""
    if max_batch < 1 or opt_batch < 1:
        raise EngineBuildError(f"max_batch ({max_batch}) and opt_batch ({opt_batch}) must be >= 1", stage="tensorrt")
    buckets = sorted({min(int(b), max_seq_len) for b in seq_buckets if int(b) >= 1})
    if not buckets or buckets[-1] < max_seq_len:
        # Without this the engine would reject the longest (truncated) texts at run time.
        buckets.append(max_seq_len)
    opt_b = min(opt_batch, max_batch)
    profiles: list[ShapeProfile] = []
    lo = 1
    for b in buckets:
        profiles.append(ShapeProfile(min=(1, lo), opt=(opt_b, b), max=(max_batch, b)))
        lo = b + 1
    return profiles


def read_calibration_texts(path: str | Path) -> list[str]:
    """Texts from a ``.csv`` (its ``text`` column) or any other file (one text per non-empty line)."""
    p = Path(path)
    if not p.is_file():
        raise EngineBuildError(f"calibration file {p} not found", stage="tensorrt")
    if p.suffix.lower() == ".csv":
        with open(p, newline="") as f:
            reader = csv.DictReader(f)
            if "text" not in (reader.fieldnames or []):
                raise EngineBuildError(f"{p} has no 'text' column", stage="tensorrt")
            return [row["text"] for row in reader if row["text"].strip()]
    return [line.strip() for line in p.read_text().splitlines() if line.strip()]


def calibration_batches(
    tokenizer: BatchTokenizer, texts: Sequence[str], batch: int, max_batches: int = 64
) -> list[EncodedBatch]:
    """Fixed-shape (batch, max_seq_len) batches: the calibration profile has a single shape."""
    if len(texts) < batch:
        raise EngineBuildError(f"INT8 calibration needs at least {batch} texts, got {len(texts)}", stage="tensorrt")
    n = min(len(texts) // batch, max_batches)
    return [tokenizer.encode_fixed(list(texts[i * batch : (i + 1) * batch]), tokenizer.max_seq_len) for i in range(n)]


@dataclass
class TensorRTBuildResult:
    """The serialized engine and how it was built."""

    path: Path
    precision: str
    profiles: list[dict[str, Any]]
    seconds: float
    tensorrt_version: str
    timing_cache: str | None
    timing_cache_reused: bool
    warnings: list[str] = field(default_factory=list)


def _make_logger(trt: ModuleType) -> Any:
    class _TrtLog(trt.ILogger):  # type: ignore[name-defined]  # trt is a module passed in at run time
        """Forwards TensorRT messages to structlog and keeps errors for the exception text."""

        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.errors: list[str] = []
            self.warnings: list[str] = []

        def log(self, severity: Any, msg: str) -> None:
            if severity in (trt.ILogger.INTERNAL_ERROR, trt.ILogger.ERROR):
                self.errors.append(msg)
                log.error("tensorrt", msg=msg)
            elif severity == trt.ILogger.WARNING:
                self.warnings.append(msg)
                log.warning("tensorrt", msg=msg)

    return _TrtLog()


def _make_calibrator(trt: ModuleType, batches: Sequence[EncodedBatch], cache_file: Path) -> Any:
    import torch

    batch_size = batches[0].size

    class _Calibrator(trt.IInt8EntropyCalibrator2):  # type: ignore[name-defined]  # trt is passed in at run time
        """Feeds real token batches to TensorRT's INT8 calibration from CUDA tensors owned by torch."""

        def __init__(self) -> None:
            trt.IInt8EntropyCalibrator2.__init__(self)
            self._it = iter(batches)
            self._alive: list[torch.Tensor] = []  # keep device buffers alive until the next call

        def get_batch_size(self) -> int:
            return batch_size

        def get_batch(self, names: list[str]) -> list[int] | None:
            b = next(self._it, None)
            if b is None:
                return None
            tensors = {
                "input_ids": torch.from_numpy(b.input_ids).cuda(),
                "attention_mask": torch.from_numpy(b.attention_mask).cuda(),
            }
            self._alive = list(tensors.values())
            return [int(tensors[n].data_ptr()) for n in names]

        def read_calibration_cache(self) -> bytes | None:
            return cache_file.read_bytes() if cache_file.is_file() else None

        def write_calibration_cache(self, cache: Any) -> None:
            cache_file.write_bytes(bytes(cache))

    return _Calibrator()


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def build_tensorrt_engine(
    onnx_path: str | Path,
    out_path: str | Path,
    *,
    max_batch: int = 256,
    opt_batch: int = 64,
    seq_buckets: Sequence[int] = (16, 32, 64, 128),
    max_seq_len: int = DEFAULT_MAX_SEQ_LEN,
    fp16: bool = True,
    int8_batches: Sequence[EncodedBatch] | None = None,
    timing_cache: str | Path | None = None,
    workspace_mib: int = 2048,
) -> TensorRTBuildResult:
    """Build and serialize a TensorRT engine for ``onnx_path``.

    ``int8_batches`` (see ``calibration_batches``) turns on INT8 with an entropy calibrator.
    Raises ``BackendUnavailable`` without TensorRT or a GPU, ``EngineBuildError`` when parsing or
    building fails (with TensorRT's own error messages).
    """
    trt = require_tensorrt()
    t0 = time.perf_counter()
    out = Path(out_path)
    trt_log = _make_logger(trt)
    builder = trt.Builder(trt_log)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, trt_log)
    if not parser.parse_from_file(str(onnx_path)):
        errs = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise EngineBuildError(f"TensorRT cannot parse {Path(onnx_path).name}: {errs}", stage="tensorrt")

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_mib) << 20)
    if fp16:
        config.set_flag(trt.BuilderFlag.FP16)
    input_names = [network.get_input(i).name for i in range(network.num_inputs)]
    profiles = plan_profiles(max_batch, opt_batch, seq_buckets, max_seq_len)
    for p in profiles:
        prof = builder.create_optimization_profile()
        for name in input_names:
            prof.set_shape(name, p.min, p.opt, p.max)
        if config.add_optimization_profile(prof) < 0:
            raise EngineBuildError(f"TensorRT rejected optimization profile {p}", stage="tensorrt")

    precision = "fp16" if fp16 else "fp32"
    if int8_batches:
        config.set_flag(trt.BuilderFlag.INT8)
        shape = (int8_batches[0].size, int8_batches[0].seq_len)
        calib_prof = builder.create_optimization_profile()
        for name in input_names:
            calib_prof.set_shape(name, shape, shape, shape)
        config.set_calibration_profile(calib_prof)
        config.int8_calibrator = _make_calibrator(trt, int8_batches, out.parent / CALIBRATION_CACHE)
        precision = "int8"

    cache_path = Path(timing_cache) if timing_cache else None
    reused = bool(cache_path and cache_path.is_file())
    cache_bytes = cache_path.read_bytes() if cache_path is not None and reused else b""
    cache = config.create_timing_cache(cache_bytes)
    if not config.set_timing_cache(cache, ignore_mismatch=False):
        # A cache from another GPU/TensorRT version is refused; start a fresh one and say so.
        log.warning("tensorrt_timing_cache_rejected", path=str(cache_path))
        reused = False
        config.set_timing_cache(config.create_timing_cache(b""), ignore_mismatch=False)

    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise EngineBuildError(f"TensorRT build failed: {trt_log.errors or 'no error message'}", stage="tensorrt")
    _write_atomic(out, bytes(serialized))
    if cache_path is not None:
        _write_atomic(cache_path, bytes(config.get_timing_cache().serialize()))
    result = TensorRTBuildResult(
        path=out,
        precision=precision,
        profiles=[p.as_dict(i) for i, p in enumerate(profiles)],
        seconds=time.perf_counter() - t0,
        tensorrt_version=str(trt.__version__),
        timing_cache=str(cache_path) if cache_path else None,
        timing_cache_reused=reused,
        warnings=list(trt_log.warnings[-20:]),
    )
    log.info(
        "tensorrt_built",
        path=str(out),
        precision=precision,
        profiles=len(profiles),
        seconds=round(result.seconds, 1),
        timing_cache_reused=reused,
    )
    return result
