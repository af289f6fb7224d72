"""``finpulse bench engine``: what the engine's batching buys, per backend, on real tweets.

For each backend, in one run:

(a) per_event       tokenize one text padded to 128 tokens, one forward pass per text (the textbook way)
(a') per_event_unpadded  one text at its own length, one forward pass per text (what a
                    ``transformers`` text-classification pipeline does when called per message)
(b) fixed_padding   batches of 64 texts in arrival order, every text padded to 128
(c) engine          TextClassifier: one tokenizer call, length-sorted batches padded to the bucket

Each mode reports texts/s (wall clock, tokenization included), p50/p99 latency of the backend call
per batch, padding overhead (padded tokens / real tokens), and achieved FLOP/s against the
machine's fp32 matmul rate. FLOPs are counted for the encoder only (heads, embeddings, softmax and
layer norms are < 1% for BERT-family models):

    per text of n real tokens:  2 * P_mm * n  +  4 * L * h * n^2
    P_mm = L * (4 h^2 + 2 h i)  (Q, K, V, output projections and the two FFN matrices per layer)
    4 L h n^2                   (Q K^T and attention x V, 2 n^2 h FLOPs each per layer)

"useful" FLOPs use each text's real length; "executed" FLOPs use the padded (batch, seq) shapes.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import click
import numpy as np
import structlog

from engine.backends.base import Backend
from engine.bundle import EngineBundle, is_bundle
from engine.classifier import TextClassifier
from engine.errors import BackendUnavailable, EngineError, ModelFormatError
from engine.heads import read_config
from engine.runtime import create_backend
from engine.settings import DEFAULT_MAX_SEQ_LEN, EngineSettings
from engine.tokenize import BatchTokenizer, EncodedBatch
from finpulse.cpu import usable_cores
from finpulse.paths import default_data_dir
from finpulse.stats import percentiles
from training.data import sentiment_texts
from training.settings import SENTIMENT_SUBDIR

log = structlog.get_logger(__name__)

# cuda and tensorrt are tried too; where they cannot run, the JSON says why ("skipped").
DEFAULT_BACKENDS = ("torch", "onnxruntime", "onnxruntime-int8", "cuda", "tensorrt")
FLOP_FORMULA = "per text of n real tokens: 2*P_mm*n + 4*L*h*n^2, P_mm = L*(4h^2 + 2hi); encoder only"


# --- model arithmetic ---------------------------------------------------------------------------
@dataclass(frozen=True)
class ModelShape:
    """The numbers the FLOP estimate needs, read from the checkpoint's config and weights."""

    layers: int
    hidden: int
    intermediate: int
    params_total: int

    @property
    def params_encoder_matmul(self) -> int:
        return self.layers * (4 * self.hidden * self.hidden + 2 * self.hidden * self.intermediate)

    def flops_text(self, n: np.ndarray | int) -> np.ndarray | int:
        """Encoder FLOPs for texts of ``n`` tokens each."""
        return 2 * self.params_encoder_matmul * n + 4 * self.layers * self.hidden * n * n

    def flops_padded(self, batch: int, seq: int) -> int:
        return int(batch * self.flops_text(seq))

    @classmethod
    def from_checkpoint(cls, ckpt: Path) -> ModelShape:
        from safetensors import safe_open

        cfg = read_config(ckpt)
        total = 0
        weights = ckpt / "model.safetensors"
        if weights.is_file():
            with safe_open(str(weights), framework="pt") as f:
                for key in f.keys():  # noqa: SIM118 - safe_open is not a dict
                    total += int(np.prod(f.get_slice(key).get_shape()))
        return cls(int(cfg["num_hidden_layers"]), int(cfg["hidden_size"]), int(cfg["intermediate_size"]), total)


# --- timing helpers -------------------------------------------------------------------------------
class TimedBackend(Backend):
    """Delegates to a backend and records the wall time of every ``infer`` call."""

    name: ClassVar[str] = "timed"

    def __init__(self, inner: Backend) -> None:
        super().__init__(inner.heads, inner.max_batch_size, inner.max_seq_len, inner.model_id)
        self.inner = inner
        self.device, self.precision = inner.device, inner.precision
        self.latencies: list[float] = []

    def infer(self, batch: EncodedBatch) -> dict[str, np.ndarray]:
        t0 = time.perf_counter()
        out = self.inner.infer(batch)
        self.latencies.append(time.perf_counter() - t0)
        return out

    def _infer_impl(self, batch: EncodedBatch) -> dict[str, np.ndarray]:  # pragma: no cover - infer() is overridden
        return self.inner._infer_impl(batch)

    def describe(self) -> dict[str, Any]:
        return self.inner.describe()


@dataclass
class ModeResult:
    """One measurement mode on one backend."""

    texts: int
    wall_s: float
    latencies: list[float]
    real_tokens: int
    padded_tokens: int
    useful_flops: float
    executed_flops: float
    policy: dict[str, Any]
    probs: dict[str, np.ndarray] = field(default_factory=dict, repr=False)

    def as_dict(self, peak_flops: float) -> dict[str, Any]:
        lat = np.asarray(self.latencies) * 1000.0
        infer_s = float(np.sum(self.latencies))
        useful = self.useful_flops / self.wall_s
        return {
            "texts": self.texts,
            "texts_per_s": round(self.texts / self.wall_s, 2),
            "wall_s": round(self.wall_s, 3),
            "infer_s": round(infer_s, 3),
            "batches": len(self.latencies),
            "batch_latency_ms": percentiles(lat, (50, 99)),
            "real_tokens": self.real_tokens,
            "padded_tokens": self.padded_tokens,
            "padding_overhead": round(self.padded_tokens / max(self.real_tokens, 1), 3),
            "useful_gflop_per_s": round(useful / 1e9, 2),
            "executed_gflop_per_s": round(self.executed_flops / max(infer_s, 1e-9) / 1e9, 2),
            "useful_fraction_of_matmul_peak": round(useful / peak_flops, 4),
            "batch_policy": self.policy,
        }


def _merge(results: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    return {k: np.concatenate([r[k] for r in results]) for k in results[0]}


def run_per_event(
    backend: Backend, tokenizer: BatchTokenizer, texts: Sequence[str], shape: ModelShape, pad_to: int
) -> ModeResult:
    """(a) one text, padded to ``pad_to``, one forward per text."""
    timed = TimedBackend(backend)
    lengths = tokenizer.tokenize(texts).lengths
    outs = []
    t0 = time.perf_counter()
    for text in texts:
        outs.append(timed.infer(tokenizer.encode_fixed([text], pad_to)))
    wall = time.perf_counter() - t0
    return ModeResult(
        len(texts),
        wall,
        timed.latencies,
        int(lengths.sum()),
        len(texts) * pad_to,
        float(np.sum(shape.flops_text(lengths))),
        float(len(texts) * shape.flops_padded(1, pad_to)),
        {"batch_size": 1, "padding": f"fixed {pad_to}", "sort_by_length": False},
        _merge(outs),
    )


def run_per_event_unpadded(
    backend: Backend, tokenizer: BatchTokenizer, texts: Sequence[str], shape: ModelShape
) -> ModeResult:
    """(a') one text at its own length (no padding at all), one forward per text."""
    timed = TimedBackend(backend)
    lengths = tokenizer.tokenize(texts).lengths
    outs = []
    t0 = time.perf_counter()
    for text in texts:
        ids = tokenizer.tokenize([text]).ids[0]
        arr = np.asarray([ids], dtype=np.int64)
        outs.append(timed.infer(EncodedBatch(input_ids=arr, attention_mask=np.ones_like(arr))))
    wall = time.perf_counter() - t0
    return ModeResult(
        len(texts),
        wall,
        timed.latencies,
        int(lengths.sum()),
        int(lengths.sum()),
        float(np.sum(shape.flops_text(lengths))),
        float(np.sum(shape.flops_text(lengths))),
        {"batch_size": 1, "padding": "none", "sort_by_length": False},
        _merge(outs),
    )


def run_fixed(
    backend: Backend, tokenizer: BatchTokenizer, texts: Sequence[str], shape: ModelShape, batch: int, pad_to: int
) -> ModeResult:
    """(b) arrival-order batches of ``batch`` texts, all padded to ``pad_to``."""
    timed = TimedBackend(backend)
    lengths = tokenizer.tokenize(texts).lengths
    outs = []
    executed = 0.0
    t0 = time.perf_counter()
    for start in range(0, len(texts), batch):
        enc = tokenizer.encode_fixed(list(texts[start : start + batch]), pad_to)
        executed += shape.flops_padded(enc.size, enc.seq_len)
        outs.append(timed.infer(enc))
    wall = time.perf_counter() - t0
    return ModeResult(
        len(texts),
        wall,
        timed.latencies,
        int(lengths.sum()),
        len(texts) * pad_to,
        float(np.sum(shape.flops_text(lengths))),
        executed,
        {"batch_size": batch, "padding": f"fixed {pad_to}", "sort_by_length": False},
        _merge(outs),
    )


def run_engine(
    backend: Backend,
    tokenizer: BatchTokenizer,
    texts: Sequence[str],
    shape: ModelShape,
    max_batch: int,
    max_tokens: int,
) -> ModeResult:
    """(c) the engine: TextClassifier with length-sorted, bucket-padded batches."""
    timed = TimedBackend(backend)
    clf = TextClassifier(tokenizer, timed, max_batch_size=max_batch, max_tokens_per_batch=max_tokens)
    t0 = time.perf_counter()
    probs = clf.classify(texts)
    wall = time.perf_counter() - t0
    tok = tokenizer.tokenize(texts)
    executed = 0.0
    for idx in clf.plan(tok):
        executed += shape.flops_padded(len(idx), tokenizer.padded_len(int(tok.lengths[idx].max())))
    stats = clf.stats.as_dict()
    policy = clf.describe()["batch_policy"]
    return ModeResult(
        len(texts),
        wall,
        timed.latencies,
        int(stats["real_tokens"]),
        int(stats["padded_tokens"]),
        float(np.sum(shape.flops_text(tok.lengths))),
        executed,
        policy,
        probs,
    )


# --- machine --------------------------------------------------------------------------------------
def machine_info() -> dict[str, Any]:
    """The shared machine description plus usable/physical cores and load (such machines are often shared)."""
    import psutil
    import torch

    from bench.common import machine_info as common_machine_info

    info = common_machine_info()
    info.update(
        {
            "cores_usable": usable_cores(),
            "cores_physical": psutil.cpu_count(logical=False),
            "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
            "load_avg_1m_at_start": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
            "torch": torch.__version__,
        }
    )
    return info


def matmul_peak(threads: int, n: int = 2048, reps: int = 5) -> dict[str, Any]:
    """Best-of-``reps`` fp32 matmul FLOP/s with torch on CPU: the machine's practical compute ceiling."""
    import torch

    prev = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        gen = torch.Generator().manual_seed(0)
        a = torch.randn(n, n, generator=gen)
        b = torch.randn(n, n, generator=gen)
        torch.mm(a, b)
        times = []
        for _ in range(reps):
            t0 = time.perf_counter()
            torch.mm(a, b)
            times.append(time.perf_counter() - t0)
    finally:
        torch.set_num_threads(prev)
    best = min(times)
    return {
        "n": n,
        "reps": reps,
        "threads": threads,
        "best_s": round(best, 4),
        "gflop_per_s": round(2 * n**3 / best / 1e9, 2),
    }


# --- orchestration --------------------------------------------------------------------------------
def load_texts(data_dir: Path, n: int) -> tuple[list[str], Path]:
    """The first ``n`` texts of the sentiment validation set."""
    path = data_dir / SENTIMENT_SUBDIR / "valid.csv"
    if not path.is_file():
        raise click.UsageError(f"{path} not found: pass --data-dir or set FINPULSE_DATA_DIR")
    return sentiment_texts(data_dir, n), path


def _bench_one(
    name: str,
    bundle: Path,
    settings: EngineSettings,
    tokenizer: BatchTokenizer,
    texts: list[str],
    event_texts: list[str],
    shape: ModelShape,
    peak: float,
    fixed_batch: int,
    max_seq_len: int,
    max_batch: int,
    max_tokens: int,
    repeat: int,
) -> dict[str, Any]:
    try:
        backend = create_backend(name, bundle, settings)
    except (BackendUnavailable, ModelFormatError) as exc:
        log.warning("bench_backend_skipped", backend=name, reason=exc.reason)
        return {"skipped": exc.reason}
    with backend:
        backend.warmup((16, 32, 64, 128))
        modes: dict[str, ModeResult] = {}
        runs = {
            "per_event": lambda: run_per_event(backend, tokenizer, event_texts, shape, max_seq_len),
            "per_event_unpadded": lambda: run_per_event_unpadded(backend, tokenizer, event_texts, shape),
            "fixed_padding": lambda: run_fixed(backend, tokenizer, texts, shape, fixed_batch, max_seq_len),
            "engine": lambda: run_engine(backend, tokenizer, texts, shape, max_batch, max_tokens),
        }
        for mode, fn in runs.items():
            best: ModeResult | None = None
            for _ in range(repeat):
                r = fn()
                if best is None or r.wall_s < best.wall_s:
                    best = r
            assert best is not None
            modes[mode] = best
            log.info("bench_mode_done", backend=name, mode=mode, texts_per_s=round(best.texts / best.wall_s, 1))
        out: dict[str, Any] = {"describe": backend.describe()}
    out.update({m: r.as_dict(peak) for m, r in modes.items()})
    tps = {m: r.texts / r.wall_s for m, r in modes.items()}
    out["ratios"] = {
        "engine_over_per_event": round(tps["engine"] / tps["per_event"], 2),
        "engine_over_per_event_unpadded": round(tps["engine"] / tps["per_event_unpadded"], 2),
        "engine_over_fixed_padding": round(tps["engine"] / tps["fixed_padding"], 2),
    }
    out["_probs"] = modes["engine"].probs
    return out


def _agreement(ref: dict[str, np.ndarray], got: dict[str, np.ndarray]) -> dict[str, Any]:
    return {
        h: {
            "argmax_agreement": round(float((ref[h].argmax(1) == got[h].argmax(1)).mean()), 4),
            "max_abs_prob_diff": float(np.abs(ref[h] - got[h]).max()),
        }
        for h in ref
    }


def _log_to_stderr() -> None:
    # stdout carries the JSON result; structlog's default would print logs there too.
    if not structlog.is_configured():
        structlog.configure(logger_factory=structlog.PrintLoggerFactory(file=sys.stderr))


@click.command("engine")
@click.option(
    "--model",
    "model_dir",
    required=True,
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="Engine bundle, or a checkpoint (a temporary bundle with INT8 is built from it first).",
)
@click.option("--texts", "n_texts", default=2000, show_default=True, help="Real texts from the sentiment valid set.")
@click.option("--per-event-texts", default=200, show_default=True, help="Texts for the slow one-by-one mode (a).")
@click.option(
    "--backends",
    default=None,
    help=f"Comma-separated (default {','.join(DEFAULT_BACKENDS)}; those that cannot run here are reported as skipped).",
)
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    envvar="FINPULSE_DATA_DIR",
    default=default_data_dir,
    help="Data folder (default: FINPULSE_DATA_DIR, else ../shared/data).",
)
@click.option("--threads", type=int, default=None, help="CPU threads per backend (default: all usable cores).")
@click.option("--fixed-batch", default=64, show_default=True)
@click.option(
    "--max-seq-len",
    default=DEFAULT_MAX_SEQ_LEN,
    show_default=True,
    help="Longest sequence; modes (a) and (b) pad every text to it.",
)
@click.option("--max-batch", default=64, show_default=True, help="Engine max batch size (mode c).")
@click.option(
    "--max-tokens",
    default=None,
    type=int,
    help="Engine padded-token budget per call (mode c); default: FINPULSE_ENGINE_MAX_TOKENS_PER_BATCH.",
)
@click.option("--repeat", default=1, show_default=True, help="Run each mode this many times and keep the fastest.")
@click.option("--int8-min-agreement", type=float, default=None, help="For the temporary bundle build (default 0.99).")
@click.option(
    "--out", "out_file", type=click.Path(dir_okay=False, path_type=Path), default=None, help="Also write the JSON here."
)
def bench_engine_cmd(
    model_dir: Path,
    n_texts: int,
    per_event_texts: int,
    backends: str | None,
    data_dir: Path | None,
    threads: int | None,
    fixed_batch: int,
    max_seq_len: int,
    max_batch: int,
    max_tokens: int | None,
    repeat: int,
    int8_min_agreement: float | None,
    out_file: Path | None,
) -> None:
    """Per-event vs fixed-padding vs engine batching, per backend; prints one JSON object."""
    _log_to_stderr()
    if max_tokens is None:
        # Mode (c) measures the engine as the worker runs it: the engine's own setting.
        max_tokens = EngineSettings().max_tokens_per_batch
    t_start = time.perf_counter()
    data = data_dir
    if data is None:
        raise click.UsageError("no data folder: pass --data-dir or set FINPULSE_DATA_DIR")
    texts, text_file = load_texts(data, n_texts)
    event_texts = texts[: min(per_event_texts, len(texts))]
    n_threads = threads or usable_cores()

    with tempfile.TemporaryDirectory(prefix="finpulse-bench-") as tmp:
        build_summary: dict[str, Any] | None = None
        bundle = model_dir
        if not is_bundle(model_dir):
            from build_engine.builder import BuildOptions, build_bundle

            try:
                report = build_bundle(
                    model_dir,
                    Path(tmp) / "bundle",
                    BuildOptions.from_settings(
                        None, int8=True, int8_min_agreement=int8_min_agreement, max_seq_len=max_seq_len
                    ),
                    validation_texts=texts,
                )
            except EngineError as exc:
                click.echo(f"error: building a bundle from {model_dir} failed: {exc}", err=True)
                sys.exit(1)
            bundle = report.bundle
            build_summary = report.as_dict()
        eb = EngineBundle.load(bundle)
        shape = ModelShape.from_checkpoint(eb.checkpoint_path)
        tokenizer = BatchTokenizer(eb.tokenizer_path, max_seq_len=max_seq_len, pad_multiple=16)
        names = [b.strip() for b in backends.split(",") if b.strip()] if backends else list(DEFAULT_BACKENDS)
        settings = EngineSettings(
            max_batch_size=max(fixed_batch, max_batch), max_seq_len=max_seq_len, num_threads=n_threads
        )

        machine = machine_info()
        peak = matmul_peak(n_threads)
        results: dict[str, Any] = {}
        for name in names:
            log.info("bench_backend_start", backend=name)
            results[name] = _bench_one(
                name,
                bundle,
                settings,
                tokenizer,
                texts,
                event_texts,
                shape,
                peak["gflop_per_s"] * 1e9,
                fixed_batch,
                max_seq_len,
                max_batch,
                max_tokens,
                repeat,
            )
        ref = results.get("torch", {}).get("_probs")
        for name, res in results.items():
            probs = res.pop("_probs", None)
            if ref is not None and probs is not None and name != "torch":
                res["engine_vs_torch"] = _agreement(ref, probs)

    machine["load_avg_1m_at_end"] = round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None
    result = {
        "bench": "engine",
        "model": {
            "model_id": eb.manifest.model_id,
            "bundle": str(model_dir),
            "built_temp_bundle": build_summary is not None,
            "layers": shape.layers,
            "hidden": shape.hidden,
            "intermediate": shape.intermediate,
            "params_total": shape.params_total,
            "params_encoder_matmul": shape.params_encoder_matmul,
            "heads": {h.name: len(h.labels) for h in eb.heads},
        },
        "data": {
            "file": str(text_file),
            "texts": len(texts),
            "per_event_texts": len(event_texts),
            "per_event_note": (
                f"mode (a) runs on the first {len(event_texts)} texts only (one forward per text is slow); "
                "its texts/s is comparable, its totals are not"
            )
            if len(event_texts) < len(texts)
            else None,
            "mean_tokens": round(float(tokenizer.tokenize(texts).lengths.mean()), 2),
        },
        "machine": machine,
        "matmul_peak": peak,
        "flop_formula": FLOP_FORMULA,
        "threads": n_threads,
        "backends": results,
        "build": build_summary,
        "seconds": round(time.perf_counter() - t_start, 1),
    }
    text = json.dumps(result, indent=2, default=_json_default)
    click.echo(text)
    if out_file is not None:
        out_file.parent.mkdir(parents=True, exist_ok=True)
        out_file.write_text(text + "\n")


def _json_default(obj: object) -> object:
    if isinstance(obj, (np.floating, np.integer)):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


if __name__ == "__main__":
    bench_engine_cmd()
