"""PyTorch -> ONNX export of the finpulse classifier.

Inputs are ``input_ids`` and ``attention_mask`` (int64, shape (batch, seq)); there is one float32
output per head, named ``logits_<head>``, with batch and sequence axes dynamic.

Exporters: the TorchScript exporter is the bundle default (deprecated in torch since 2.9 but
working with torch 2.15): its BERT graph is the one ONNX Runtime's transformer optimizer fuses into
one Attention kernel per layer (``build_engine.optimize``), measured 1.17x faster on the CPU, and
it runs about 8x faster than the alternative. The torch.export-based ("dynamo") exporter is the
path PyTorch maintains and exports BERT cleanly too (matches PyTorch to ~3e-7 on MiniLM); choose it
with ``exporter="dynamo"`` where TorchScript tracing fails, at the cost of the attention fusion.
"""

from __future__ import annotations

import contextlib
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import structlog
import torch

from build_engine.errors import EngineBuildError
from engine.modeling import MultiHeadClassifier

log = structlog.get_logger(__name__)

INPUT_NAMES: tuple[str, str] = ("input_ids", "attention_mask")
Exporter = Literal["dynamo", "torchscript"]
EXPORTERS: tuple[str, ...] = ("dynamo", "torchscript")


def output_name(head: str) -> str:
    """ONNX/TensorRT output tensor name holding one head's logits."""
    return f"logits_{head}"


@dataclass(frozen=True)
class ExportResult:
    """What was written and how: enough for the manifest and for validation."""

    path: Path
    input_names: tuple[str, ...]
    output_names: dict[str, str]  # head name -> output tensor name
    opset: int
    exporter: str
    seconds: float


def _example_inputs(model: MultiHeadClassifier) -> tuple[torch.Tensor, torch.Tensor]:
    # Batch 2 and length 16, not 1: torch.export specialises size-1 dims, which would pin them.
    vocab = int(model.config.vocab_size)
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(low=min(5, vocab - 1), high=vocab, size=(2, 16), generator=gen, dtype=torch.int64)
    mask = torch.ones_like(ids)
    mask[1, 10:] = 0
    return ids, mask


def export_onnx(
    model: MultiHeadClassifier,
    out_path: str | Path,
    *,
    exporter: Exporter = "dynamo",
    opset: int = 18,
) -> ExportResult:
    """Export ``model`` (put in eval mode) to a single self-contained ONNX file and check its interface.

    Raises ``EngineBuildError`` (stage ``export``) if the exporter fails or the written graph does not
    have exactly the expected input and output names.
    """
    if exporter not in EXPORTERS:
        raise EngineBuildError(f"unknown exporter {exporter!r}; choose one of {EXPORTERS}", stage="export")
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    model = model.eval()
    heads = model.head_names
    outputs = {h: output_name(h) for h in heads}
    out_names = [outputs[h] for h in heads]
    args = _example_inputs(model)
    max_pos = int(getattr(model.config, "max_position_embeddings", 512))
    t0 = time.perf_counter()
    try:
        # The exporters print progress to stdout; keep stdout clean for the CLI's JSON summary.
        with contextlib.redirect_stdout(sys.stderr), warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            if exporter == "dynamo":
                batch = torch.export.Dim("batch", min=1, max=65536)
                seq = torch.export.Dim("seq", min=1, max=max_pos)
                torch.onnx.export(
                    model,
                    args,
                    str(out),
                    dynamo=True,
                    input_names=list(INPUT_NAMES),
                    output_names=out_names,
                    dynamic_shapes={"input_ids": {0: batch, 1: seq}, "attention_mask": {0: batch, 1: seq}},
                    opset_version=opset,
                    external_data=False,
                    verbose=False,
                    optimize=True,
                )
            else:
                axes = {"input_ids": {0: "batch", 1: "seq"}, "attention_mask": {0: "batch", 1: "seq"}}
                axes.update({name: {0: "batch"} for name in out_names})
                torch.onnx.export(
                    model,
                    args,
                    str(out),
                    dynamo=False,
                    input_names=list(INPUT_NAMES),
                    output_names=out_names,
                    dynamic_axes=axes,
                    opset_version=opset,
                    do_constant_folding=True,
                )
    except Exception as exc:  # noqa: BLE001 - exporters raise many unrelated types; one typed error out
        hint = " (try --exporter torchscript)" if exporter == "dynamo" else ""
        raise EngineBuildError(f"{exporter} export failed: {type(exc).__name__}: {exc}{hint}", stage="export") from exc
    seconds = time.perf_counter() - t0
    check_interface(out, INPUT_NAMES, tuple(out_names))
    log.info(
        "onnx_exported", path=str(out), exporter=exporter, opset=opset, outputs=out_names, seconds=round(seconds, 2)
    )
    return ExportResult(
        path=out, input_names=INPUT_NAMES, output_names=outputs, opset=opset, exporter=exporter, seconds=seconds
    )


def check_interface(path: Path, inputs: tuple[str, ...], outputs: tuple[str, ...]) -> None:
    """Run the ONNX checker and make sure the graph's inputs/outputs are exactly the named ones."""
    import onnx

    try:
        onnx.checker.check_model(str(path))
        graph = onnx.load(str(path), load_external_data=False).graph
    except Exception as exc:  # noqa: BLE001 - onnx raises ValidationError or DecodeError
        raise EngineBuildError(f"{path.name} is not a valid ONNX model: {exc}", stage="export") from exc
    got_in = tuple(i.name for i in graph.input)
    got_out = tuple(o.name for o in graph.output)
    if got_in != inputs or got_out != outputs:
        raise EngineBuildError(
            f"exported graph has inputs {got_in} and outputs {got_out}; expected {inputs} and {outputs}", stage="export"
        )
    int64 = onnx.TensorProto.INT64
    bad = [i.name for i in graph.input if i.type.tensor_type.elem_type != int64]
    if bad:
        raise EngineBuildError(f"inputs {bad} are not int64", stage="export")
