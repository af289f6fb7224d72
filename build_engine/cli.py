"""``finpulse build-engine``: build an engine bundle from a checkpoint and print a JSON summary."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import click
import structlog

from build_engine.settings import BuildSettings
from engine.errors import EngineError
from engine.settings import DEFAULT_MAX_SEQ_LEN

log = structlog.get_logger(__name__)


def _parse_buckets(raw: str | None) -> tuple[int, ...] | None:
    if raw is None:
        return None
    try:
        buckets = tuple(int(x) for x in raw.split(",") if x.strip())
    except ValueError as exc:
        raise click.BadParameter(f"expected comma-separated integers, got {raw!r}") from exc
    if not buckets or min(buckets) < 1:
        raise click.BadParameter(f"expected positive lengths, got {raw!r}")
    return buckets


def _read_texts(path: Path) -> list[str]:
    """A ``.csv`` file's ``text`` column, or one text per non-empty line."""
    if path.suffix.lower() == ".csv":
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            if "text" not in (reader.fieldnames or []):
                raise click.BadParameter(f"{path} has no 'text' column")
            return [r["text"] for r in reader if r["text"].strip()]
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


VALIDATION_FILES: tuple[str, ...] = (
    "twitter-financial-news-sentiment/valid.csv",
    "twitter-financial-news-topic/valid.csv",
)


def default_validation_files(data_dir: Path | None) -> list[Path]:
    """The validation files of both heads' data sets under ``data_dir`` (those that exist)."""
    if data_dir is None:
        return []
    return [p for p in (Path(data_dir) / name for name in VALIDATION_FILES) if p.is_file()]


def real_validation_texts(files: list[Path], n: int, seed: int = 0) -> list[str]:
    """A seeded sample of ``n`` texts from ``files`` together (the files are sorted by label, so never the first n).

    Both heads' validation sets feed it, so INT8 agreement is judged on texts of both kinds.
    """
    import random

    texts = [t for f in files for t in _read_texts(f)]
    return random.Random(seed).sample(texts, min(n, len(texts)))


def _log_to_stderr() -> None:
    # stdout carries the JSON summary; structlog's default would print logs there too.
    if not structlog.is_configured():
        structlog.configure(logger_factory=structlog.PrintLoggerFactory(file=sys.stderr))


@click.command("build-engine")
@click.argument("checkpoint_dir", type=click.Path(path_type=Path))
@click.option("--out", "out_dir", required=True, type=click.Path(path_type=Path), help="Bundle directory to create.")
@click.option("--int8", is_flag=True, help="Also write model.int8.onnx (INT8 for ONNX Runtime on CPU).")
@click.option(
    "--int8-method",
    type=click.Choice(["blockwise", "dynamic"]),
    help="blockwise (default; keeps labels) or dynamic (faster, loses labels).",
)
@click.option("--tensorrt", is_flag=True, help="Also build a TensorRT engine (needs tensorrt and an NVIDIA GPU).")
@click.option("--fp16/--no-fp16", default=None, help="TensorRT FP16 kernels (default on).")
@click.option(
    "--calibration",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Build the TensorRT engine in INT8, calibrated on these texts (.csv text column or one per line); needs "
    "--tensorrt.",
)
@click.option("--max-batch", type=int, help="Largest TensorRT batch (default 256).")
@click.option("--seq-buckets", help="Sequence-length buckets, e.g. 16,32,64,128 (one TensorRT profile each).")
@click.option(
    "--max-seq-len",
    type=int,
    help=f"Longest sequence (tokens) the bundle is validated and built for (default {DEFAULT_MAX_SEQ_LEN}).",
)
@click.option("--tolerance", type=float, help="Max abs logit diff ONNX Runtime fp32 vs PyTorch (default 1e-4).")
@click.option("--int8-min-agreement", type=float, help="Min argmax agreement per head for INT8/FP16 (default 0.99).")
@click.option(
    "--exporter",
    type=click.Choice(["dynamo", "torchscript"]),
    help="ONNX exporter (default torchscript, whose graph ONNX Runtime can fuse).",
)
@click.option(
    "--fuse/--no-fuse",
    default=None,
    help="ONNX Runtime attention/LayerNorm/GELU fusion of the served file (default on).",
)
@click.option(
    "--validation-texts",
    "validation_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Texts to validate on (.csv text column or one per line); default: a sample of both validation sets.",
)
@click.option(
    "--timing-cache",
    type=click.Path(path_type=Path),
    help="TensorRT timing cache file (loaded if present, saved after).",
)
@click.option("--force", is_flag=True, help="Replace an existing bundle directory.")
def build_engine_cmd(
    checkpoint_dir: Path,
    out_dir: Path,
    int8: bool,
    tensorrt: bool,
    fp16: bool | None,
    calibration: Path | None,
    max_batch: int | None,
    seq_buckets: str | None,
    max_seq_len: int | None,
    tolerance: float | None,
    int8_min_agreement: float | None,
    int8_method: str | None,
    exporter: str | None,
    fuse: bool | None,
    validation_file: Path | None,
    timing_cache: Path | None,
    force: bool,
) -> None:
    """Export CHECKPOINT_DIR to ONNX (and optionally INT8 / TensorRT), validate it and write a bundle."""
    # Imported here: the builder needs torch and onnx (the [build] extra), listing the command does not.
    from build_engine.builder import BuildOptions, build_bundle

    _log_to_stderr()
    settings = BuildSettings()
    options = BuildOptions.from_settings(
        settings,
        int8=int8,
        tensorrt=tensorrt,
        fp16=fp16,
        calibration_file=calibration,
        max_batch=max_batch,
        seq_buckets=_parse_buckets(seq_buckets),
        max_seq_len=max_seq_len,
        tolerance=tolerance,
        int8_min_agreement=int8_min_agreement,
        int8_method=int8_method,
        exporter=exporter,
        fuse=fuse,
        timing_cache=timing_cache,
        overwrite=force,
    )
    vfiles = [validation_file] if validation_file else default_validation_files(settings.data_dir)
    texts = real_validation_texts(vfiles, options.validation_texts) if vfiles else None
    if texts is None:
        log.warning(
            "validation_on_builtin_texts", reason="no --validation-texts and no data folder (FINPULSE_DATA_DIR)"
        )
    try:
        report = build_bundle(checkpoint_dir, out_dir, options, validation_texts=texts)
    except EngineError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
    summary = report.as_dict()
    summary["validation_files"] = [str(f) for f in vfiles]
    click.echo(json.dumps(summary, indent=2))
