"""Checkpoint in, engine bundle out: copy, export, validate, quantize, TensorRT, manifest.

Bundle layout (read by ``engine.bundle.EngineBundle``)::

    manifest.json        heads, labels, output names, files + sha256, versions, validation figures
    tokenizer.json       the fast tokenizer the engine uses
    checkpoint/          the source checkpoint (for the torch and cuda backends)
    model.onnx           fp32, dynamic batch and sequence axes (with ONNX Runtime's attention fusion by default)
    model.int8.onnx      optional: INT8 (onnxruntime.quantization, blockwise or dynamic)
    model.plan           optional: TensorRT engine (fp16, or int8 with calibration)

The bundle is built in a temporary sibling directory and renamed into place at the end, so a failed
build leaves nothing behind and a reader never sees a half-written bundle.
"""

from __future__ import annotations

import shutil
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog

from build_engine import optimize as optimize_mod
from build_engine import quantize as quantize_mod
from build_engine import tensorrt_build
from build_engine.errors import EngineBuildError
from build_engine.export import export_onnx
from build_engine.manifest import checkpoint_sha256, collect_versions, write_manifest
from build_engine.quantize import Int8Method
from build_engine.settings import BuildSettings
from build_engine.validate import (
    BUILTIN_TEXTS,
    ValidationReport,
    run_all,
    torch_runner,
    validate_onnx,
    validation_batches,
)
from engine.bundle import Manifest
from engine.errors import ModelFormatError
from engine.modeling import load_model
from engine.settings import DEFAULT_MAX_SEQ_LEN
from engine.tokenize import BatchTokenizer

log = structlog.get_logger(__name__)

ONNX_FILE = "model.onnx"
PLAIN_ONNX_FILE = "model.plain.onnx"  # build-time only when fusing: what TensorRT is built from
# Training leftovers that never belong in a serving bundle.
_IGNORED_CHECKPOINT_FILES = (
    "optimizer.pt",
    "scheduler.pt",
    "rng_state*.pth",
    "training_args.bin",
    "trainer_state.json",
)


@dataclass(frozen=True)
class BuildOptions:
    """Everything a build can be asked for; defaults come from ``BuildSettings`` (env FINPULSE_BUILD_*)."""

    int8: bool = False
    fuse: bool = True
    tensorrt: bool = False
    fp16: bool = True
    calibration_file: Path | None = None
    max_batch: int = 256
    opt_batch: int = 64
    seq_buckets: tuple[int, ...] = (16, 32, 64, 128)
    max_seq_len: int = DEFAULT_MAX_SEQ_LEN
    tolerance: float = 1e-4
    int8_min_agreement: float = 0.99
    int8_method: Int8Method = "blockwise"
    int8_block_size: int = 128
    exporter: str = "torchscript"
    opset: int = 18
    validation_texts: int = 256
    timing_cache: Path | None = None
    workspace_mib: int = 2048
    calibration_batch: int = 32
    overwrite: bool = False

    @classmethod
    def from_settings(cls, settings: BuildSettings | None = None, **overrides: Any) -> BuildOptions:
        """Options from ``BuildSettings`` with explicit overrides (``None`` overrides are ignored)."""
        s = settings or BuildSettings()
        base: dict[str, Any] = {
            "fp16": s.fp16,
            "fuse": s.fuse,
            "max_batch": s.max_batch,
            "opt_batch": s.opt_batch,
            "seq_buckets": tuple(s.seq_buckets),
            "max_seq_len": s.max_seq_len,
            "tolerance": s.tolerance,
            "int8_min_agreement": s.int8_min_agreement,
            "int8_method": s.int8_method,
            "int8_block_size": s.int8_block_size,
            "exporter": s.exporter,
            "opset": s.opset,
            "validation_texts": s.validation_texts,
            "timing_cache": s.timing_cache,
            "workspace_mib": s.workspace_mib,
            "calibration_batch": s.calibration_batch,
        }
        base.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**base)


@dataclass
class BuildReport:
    """What a build produced: the bundle, its manifest and per-stage timings."""

    bundle: Path
    manifest: Manifest
    seconds: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        mf = self.manifest
        files = {
            k: getattr(mf, k).model_dump() for k in ("onnx", "onnx_int8", "tensorrt") if getattr(mf, k) is not None
        }
        return {
            "bundle": str(self.bundle),
            "model_id": mf.model_id,
            "heads": {h.name: {"output": h.output, "labels": h.labels} for h in mf.heads},
            "files": files,
            "validation": mf.validation,
            "tensorrt_profiles": mf.tensorrt_profiles,
            "versions": mf.versions,
            "seconds": {k: round(v, 2) for k, v in self.seconds.items()},
        }


def _check_options(opts: BuildOptions) -> None:
    if opts.tolerance < 0:
        raise EngineBuildError(f"tolerance must be >= 0, got {opts.tolerance}", stage="options")
    if not 0.0 <= opts.int8_min_agreement <= 1.0:
        raise EngineBuildError(f"int8_min_agreement must be in [0, 1], got {opts.int8_min_agreement}", stage="options")
    if opts.calibration_file is not None and not opts.tensorrt:
        raise EngineBuildError("--calibration is for TensorRT INT8 and needs --tensorrt", stage="options")
    if opts.tensorrt:
        # Fail before a minute of export/validation when the TensorRT build cannot happen here.
        tensorrt_build.require_tensorrt()


def _stage(seconds: dict[str, float], name: str, t0: float) -> float:
    now = time.perf_counter()
    seconds[name] = now - t0
    return now


def build_bundle(
    checkpoint_dir: str | Path,
    out_dir: str | Path,
    options: BuildOptions | None = None,
    validation_texts: Sequence[str] | None = None,
) -> BuildReport:
    """Build an engine bundle at ``out_dir`` from a finpulse or single-head HF checkpoint.

    ``validation_texts``: real texts to validate on (the first ``options.validation_texts`` are
    used); without them a small built-in set is used and the manifest says so. Raises
    ``ModelFormatError`` for an unreadable checkpoint, ``EngineBuildError`` when a stage fails
    (validation errors name the output and the max abs diff), ``BackendUnavailable`` when
    ``tensorrt`` is asked for where TensorRT or a GPU is missing.
    """
    opts = options or BuildOptions()
    _check_options(opts)
    src = Path(checkpoint_dir)
    out = Path(out_dir)
    if out.exists() and not opts.overwrite:
        raise EngineBuildError(f"{out} already exists (pass overwrite / --force to replace it)", stage="options")
    if not src.is_dir():
        raise ModelFormatError(src, "checkpoint directory not found")
    texts_source = "given" if validation_texts else "builtin"
    texts = list(validation_texts or BUILTIN_TEXTS)[: opts.validation_texts]

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.building-{uuid.uuid4().hex[:8]}"
    seconds: dict[str, float] = {}
    t0 = t_start = time.perf_counter()
    try:
        loaded = load_model(src)  # raises ModelFormatError for anything that is not a classifier checkpoint
        source_sha = checkpoint_sha256(src)
        ckpt = tmp / "checkpoint"
        shutil.copytree(src, ckpt, ignore=shutil.ignore_patterns(*_IGNORED_CHECKPOINT_FILES))
        # from_model_dir writes tokenizer.json into the copy when only slow vocab files exist.
        tokenizer = BatchTokenizer.from_model_dir(ckpt, max_seq_len=opts.max_seq_len)
        shutil.copy2(ckpt / "tokenizer.json", tmp / "tokenizer.json")
        t0 = _stage(seconds, "load_copy", t0)

        # The plain export stays outside the bundle unless it is what ONNX Runtime will run; TensorRT
        # always builds from it (the fused graph has ONNX Runtime-only operators).
        plain_path = tmp / (PLAIN_ONNX_FILE if opts.fuse else ONNX_FILE)
        exported = export_onnx(loaded.model, plain_path, exporter=opts.exporter, opset=opts.opset)  # type: ignore[arg-type]
        t0 = _stage(seconds, "export", t0)

        batches = validation_batches(tokenizer, texts, max_batch=min(64, opts.max_batch))
        reference = run_all(torch_runner(loaded.model, exported.output_names), batches)
        reports: dict[str, ValidationReport] = {
            "onnx": validate_onnx(
                exported.path,
                loaded.model,
                exported.output_names,
                tokenizer,
                texts,
                precision="fp32",
                tolerance=opts.tolerance,
                reference=reference,
                batches=batches,
            )
        }
        serving_path = exported.path
        fusion_info: dict[str, Any] | None = None
        t0 = _stage(seconds, "validate_fp32", t0)
        if opts.fuse:
            cfg = loaded.model.config
            fused = optimize_mod.fuse_for_onnxruntime(
                exported.path, tmp / ONNX_FILE, num_heads=int(cfg.num_attention_heads), hidden_size=int(cfg.hidden_size)
            )
            reports["onnx_fused"] = validate_onnx(
                fused.path,
                loaded.model,
                exported.output_names,
                tokenizer,
                texts,
                precision="fp32",
                tolerance=opts.tolerance,
                reference=reference,
                batches=batches,
            )
            serving_path = fused.path
            fusion_info = {"tool": "onnxruntime.transformers.optimizer", "fused_ops": fused.fused_ops}
            t0 = _stage(seconds, "fuse", t0)
        files: dict[str, tuple[Path, str]] = {"onnx": (serving_path, "fp32")}

        if opts.int8:
            q = quantize_mod.quantize_int8(
                serving_path, tmp / quantize_mod.INT8_FILE, method=opts.int8_method, block_size=opts.int8_block_size
            )
            reports["onnx_int8"] = validate_onnx(
                q.path,
                loaded.model,
                exported.output_names,
                tokenizer,
                texts,
                precision="int8",
                tolerance=None,
                min_agreement=opts.int8_min_agreement,
                reference=reference,
                batches=batches,
            )
            files["onnx_int8"] = (q.path, "int8")
            quant_info = q.describe()
            t0 = _stage(seconds, "int8", t0)

        profiles: list[dict[str, Any]] = []
        if opts.tensorrt:
            trt_result, trt_report = _build_tensorrt(
                tmp, exported.path, loaded, exported.output_names, tokenizer, texts, opts, reference, batches
            )
            files["tensorrt"] = (trt_result.path, trt_result.precision)
            reports["tensorrt"] = trt_report
            profiles = trt_result.profiles
            t0 = _stage(seconds, "tensorrt", t0)
        if opts.fuse:
            plain_path.unlink(missing_ok=True)

        validation: dict[str, Any] = {"texts_source": texts_source, **{k: r.as_dict() for k, r in reports.items()}}
        validation["exporter"] = exported.exporter
        validation["opset"] = exported.opset
        if fusion_info is not None:
            validation["fusion"] = fusion_info
        if opts.int8:
            validation["quantization"] = quant_info
        manifest = write_manifest(
            tmp,
            model_id=loaded.model_id,
            heads=loaded.heads,
            output_names=exported.output_names,
            max_seq_len=opts.max_seq_len,
            files=files,
            source_sha256=source_sha,
            validation=validation,
            tensorrt_profiles=profiles,
            versions=collect_versions(),
        )
        _move_into_place(tmp, out, opts.overwrite)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _stage(seconds, "manifest", t0)
    seconds["total"] = time.perf_counter() - t_start
    log.info("bundle_built", bundle=str(out), files=sorted(files), seconds=round(seconds["total"], 1))
    return BuildReport(bundle=out, manifest=manifest, seconds=seconds)


def _build_tensorrt(
    tmp: Path,
    onnx_path: Path,
    loaded: Any,
    output_names: dict[str, str],
    tokenizer: BatchTokenizer,
    texts: Sequence[str],
    opts: BuildOptions,
    reference: Any,
    batches: Any,
) -> tuple[tensorrt_build.TensorRTBuildResult, ValidationReport]:
    from build_engine.validate import compare
    from engine.backends.tensorrt_backend import TensorRTBackend

    int8_batches = None
    if opts.calibration_file is not None:
        calib_texts = tensorrt_build.read_calibration_texts(opts.calibration_file)
        int8_batches = tensorrt_build.calibration_batches(tokenizer, calib_texts, opts.calibration_batch)
    result = tensorrt_build.build_tensorrt_engine(
        onnx_path,
        tmp / tensorrt_build.TENSORRT_FILE,
        max_batch=opts.max_batch,
        opt_batch=opts.opt_batch,
        seq_buckets=opts.seq_buckets,
        max_seq_len=opts.max_seq_len,
        fp16=opts.fp16,
        int8_batches=int8_batches,
        timing_cache=opts.timing_cache,
        workspace_mib=opts.workspace_mib,
    )
    heads = loaded.heads
    backend = TensorRTBackend(
        result.path,
        heads,
        [output_names[h.name] for h in heads],
        opts.max_batch,
        opts.max_seq_len,
        loaded.model_id,
        precision=result.precision,
    )
    try:
        # Reduced precision: judged by label agreement (like INT8), logit diffs reported.
        candidate = [{output_names[k]: v for k, v in backend._infer_impl(b).items()} for b in batches]
    finally:
        backend.close()
    if result.precision == "fp32":
        report = compare(reference, candidate, batches, precision="fp32", tolerance=opts.tolerance)
    else:
        report = compare(
            reference, candidate, batches, precision=result.precision, min_agreement=opts.int8_min_agreement
        )
    return result, report


def _move_into_place(tmp: Path, out: Path, overwrite: bool) -> None:
    if out.exists():
        if not overwrite:
            raise EngineBuildError(f"{out} appeared during the build", stage="manifest")
        old = out.parent / f".{out.name}.old-{uuid.uuid4().hex[:8]}"
        out.rename(old)
        tmp.rename(out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(out)
