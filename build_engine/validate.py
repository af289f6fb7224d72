"""Check an exported engine against the PyTorch model it came from, on real texts.

The same token batches go through PyTorch (the reference) and the candidate runtime: single texts,
length-sorted bucketed batches of several sizes, and one batch padded to ``max_seq_len``, so both
short/long sequences and small/large batches are covered and padding must not change any result.

- fp32: max abs difference of the logits per output must be <= ``tolerance`` (default 1e-4).
- int8 / fp16: argmax label agreement per head must be >= ``min_agreement`` (default 0.99); the max
  abs difference of probabilities and logits is reported alongside.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import structlog

from build_engine.errors import EngineBuildError
from engine.backends.base import softmax
from engine.classifier import plan_batches
from engine.modeling import MultiHeadClassifier
from engine.tokenize import BatchTokenizer, EncodedBatch
from finpulse.cpu import usable_cores

log = structlog.get_logger(__name__)

# Runs one batch and returns logits per output name.
Runner = Callable[[EncodedBatch], Mapping[str, np.ndarray]]

# Used only when the caller has no real texts (no data folder): varied lengths, one past 128 tokens.
BUILTIN_TEXTS: tuple[str, ...] = (
    "Stocks rally",
    "$NVDA up 4% premarket after guidance raise",
    "Treasury yields climb as traders price in another rate hike",
    "Oil prices slip for a third session on demand worries",
    "Regional bank shares tumble after deposit outflows surprise analysts; index futures point lower",
    "Company X reports quarterly revenue of $1.2B vs $1.1B expected, EPS $0.45 vs $0.40 expected",
    "Gold steady near record as dollar weakens",
    "Merger talks between the two chipmakers collapse over regulatory concerns, sources say",
    "Central bank holds rates, signals patience on cuts",
    "Dividend raised 10%",
    " ".join(
        ["Markets digest a long list of earnings, macro data, central bank speeches and geopolitical headlines"] * 12
    ),
    "IPO priced above range; shares open 30% higher in first day of trading",
)


@dataclass
class ValidationReport:
    """Figures of one validation run; stored in the bundle manifest."""

    precision: str
    criterion: str
    texts: int
    batch_shapes: list[list[int]]
    max_abs_diff: dict[str, float] = field(default_factory=dict)
    max_abs_prob_diff: dict[str, float] = field(default_factory=dict)
    agreement: dict[str, float] = field(default_factory=dict)
    # Median top-1 minus top-2 logit of the reference: when it is tiny (random heads), argmax
    # agreement measures noise, not quality; reported so a low agreement can be read correctly.
    reference_margin_p50: dict[str, float] = field(default_factory=dict)
    tolerance: float | None = None
    min_agreement: float | None = None
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def validation_batches(tokenizer: BatchTokenizer, texts: Sequence[str], max_batch: int = 64) -> list[EncodedBatch]:
    """Batches that cover batch size 1, several bucketed sizes and the full ``max_seq_len`` padding."""
    if not texts:
        raise EngineBuildError("no validation texts", stage="validate")
    tok = tokenizer.tokenize(texts)
    n = len(texts)
    batches: list[EncodedBatch] = [tokenizer.collate(tok, [i]) for i in range(min(4, n))]
    # Length-sorted batches the way the engine cuts them, at a few batch sizes.
    for size in (7, max_batch):
        for idx in plan_batches(tok.lengths, size, 1 << 30, tokenizer.pad_multiple, tokenizer.max_seq_len):
            batches.append(tokenizer.collate(tok, idx))
    # One batch of texts padded far past their length: padding must not change the answers.
    batches.append(tokenizer.encode_fixed(list(texts[: min(16, n)]), tokenizer.max_seq_len))
    return batches


def torch_runner(model: MultiHeadClassifier, output_names: Mapping[str, str]) -> Runner:
    """The PyTorch reference as a runner (fp32, CPU, inference mode)."""
    import torch

    model = model.eval()
    names = [output_names[h] for h in model.head_names]

    def run(batch: EncodedBatch) -> dict[str, np.ndarray]:
        with torch.inference_mode():
            logits = model(torch.from_numpy(batch.input_ids), torch.from_numpy(batch.attention_mask))
        return {name: t.float().numpy() for name, t in zip(names, logits, strict=True)}

    return run


def onnxruntime_runner(model_path: str | Path, threads: int | None = None) -> Runner:
    """An ONNX Runtime CPU session set up like the ``onnxruntime`` backend (ORT_ENABLE_ALL)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.intra_op_num_threads = threads or usable_cores()
    try:
        session = ort.InferenceSession(str(model_path), so, providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - ORT raises its own untyped errors
        raise EngineBuildError(f"ONNX Runtime cannot load {Path(model_path).name}: {exc}", stage="validate") from exc
    names = [o.name for o in session.get_outputs()]

    def run(batch: EncodedBatch) -> dict[str, np.ndarray]:
        outs = session.run(names, {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask})
        return dict(zip(names, (np.asarray(o) for o in outs), strict=True))

    return run


def run_all(runner: Runner, batches: Sequence[EncodedBatch]) -> list[dict[str, np.ndarray]]:
    """Run every batch; the result can be reused as the reference for several candidates."""
    return [dict(runner(b)) for b in batches]


def compare(
    reference: Sequence[Mapping[str, np.ndarray]],
    candidate: Sequence[Mapping[str, np.ndarray]],
    batches: Sequence[EncodedBatch],
    *,
    precision: str,
    tolerance: float | None = None,
    min_agreement: float | None = None,
) -> ValidationReport:
    """Compare candidate logits to the reference; raise ``EngineBuildError`` naming the first failing output.

    With ``tolerance`` set the check is the max abs logit difference; with ``min_agreement`` set it is
    the argmax agreement. Both figures (and the max abs probability difference) are always reported.
    """
    if (tolerance is None) == (min_agreement is None):
        raise ValueError("give exactly one of tolerance and min_agreement")
    outputs = list(reference[0])
    report = ValidationReport(
        precision=precision,
        criterion="max_abs_logit_diff" if tolerance is not None else "argmax_agreement",
        texts=0,
        batch_shapes=[[b.size, b.seq_len] for b in batches],
        tolerance=tolerance,
        min_agreement=min_agreement,
    )
    for name in outputs:
        missing = [i for i, c in enumerate(candidate) if name not in c]
        if missing:
            raise EngineBuildError(f"candidate produced no output {name!r}", stage="validate", output=name)
        ref = np.concatenate([np.asarray(r[name], dtype=np.float32) for r in reference])
        got = np.concatenate([np.asarray(c[name], dtype=np.float32) for c in candidate])
        if ref.shape != got.shape:
            raise EngineBuildError(f"shape {got.shape} != reference {ref.shape}", stage="validate", output=name)
        if not np.isfinite(got).all():
            raise EngineBuildError("non-finite values", stage="validate", output=name)
        report.texts = int(ref.shape[0])
        report.max_abs_diff[name] = float(np.abs(ref - got).max())
        report.max_abs_prob_diff[name] = float(np.abs(softmax(ref.copy()) - softmax(got.copy())).max())
        report.agreement[name] = float((ref.argmax(axis=1) == got.argmax(axis=1)).mean())
        top2 = np.sort(ref, axis=1)[:, -2:] if ref.shape[1] > 1 else np.zeros((ref.shape[0], 2), dtype=np.float32)
        report.reference_margin_p50[name] = float(np.median(top2[:, 1] - top2[:, 0]))
    for name in outputs:
        if tolerance is not None and report.max_abs_diff[name] > tolerance:
            raise EngineBuildError(
                f"{precision} max abs logit diff {report.max_abs_diff[name]:.3g} > tolerance {tolerance:g} "
                f"over {report.texts} rows",
                stage="validate",
                output=name,
                max_abs_diff=report.max_abs_diff[name],
                agreement=report.agreement[name],
            )
        if min_agreement is not None and report.agreement[name] < min_agreement:
            raise EngineBuildError(
                f"{precision} argmax agreement {report.agreement[name]:.4f} < {min_agreement:g} over {report.texts} "
                "rows "
                f"(max abs prob diff {report.max_abs_prob_diff[name]:.3g})",
                stage="validate",
                output=name,
                max_abs_diff=report.max_abs_diff[name],
                agreement=report.agreement[name],
            )
    return report


def validate_onnx(
    model_path: str | Path,
    model: MultiHeadClassifier,
    output_names: Mapping[str, str],
    tokenizer: BatchTokenizer,
    texts: Sequence[str],
    *,
    precision: str = "fp32",
    tolerance: float | None = 1e-4,
    min_agreement: float | None = None,
    reference: Sequence[Mapping[str, np.ndarray]] | None = None,
    batches: Sequence[EncodedBatch] | None = None,
) -> ValidationReport:
    """Run ONNX Runtime on ``model_path`` and PyTorch on ``model`` over ``texts``; compare (see ``compare``).

    For INT8 pass ``tolerance=None, min_agreement=0.99``. ``reference``/``batches`` let a caller reuse
    the PyTorch outputs across several candidates.
    """
    t0 = time.perf_counter()
    batches = list(batches) if batches is not None else validation_batches(tokenizer, texts)
    reference = reference if reference is not None else run_all(torch_runner(model, output_names), batches)
    candidate = run_all(onnxruntime_runner(model_path), batches)
    report = compare(
        reference, candidate, batches, precision=precision, tolerance=tolerance, min_agreement=min_agreement
    )
    report.seconds = round(time.perf_counter() - t0, 3)
    log.info(
        "engine_validated",
        file=Path(model_path).name,
        precision=precision,
        rows=report.texts,
        max_abs_diff=report.max_abs_diff,
        agreement=report.agreement,
    )
    return report
