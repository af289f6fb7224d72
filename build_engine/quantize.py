"""INT8 quantization of the served ONNX model with onnxruntime.quantization; two methods.

- ``blockwise`` (the default): every MatMul becomes ``MatMulNBits`` with 8-bit symmetric weights in
  blocks of ``block_size`` input channels, run with ``accuracy_level=4`` (int8 compute): activations
  are quantized per block of the same size at run time. Fused Attention and the heads stay fp32.
  On the MiniLM models here it kept 99.8-99.9% of labels (measured, see BENCHMARKS.md).
- ``dynamic``: weights of MatMul/Gemm/Attention become int8 per output channel and each activation
  tensor gets one scale at run time. Faster, but one scale per tensor loses the outliers of the
  feed-forward activations: it kept only 97-98.7% of sentiment and 93-97% of topic labels, under the
  99% bar.

No calibration data is needed for either. The result is validated by label agreement, not by a
logit tolerance (see ``build_engine.validate``).
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import structlog

from build_engine.errors import EngineBuildError

log = structlog.get_logger(__name__)

INT8_FILE = "model.int8.onnx"
Int8Method = Literal["blockwise", "dynamic"]
INT8_METHODS: tuple[str, ...] = ("blockwise", "dynamic")


@dataclass(frozen=True)
class QuantizeResult:
    """The quantized file and what it cost."""

    path: Path
    seconds: float
    size_bytes: int
    source_size_bytes: int
    method: str
    per_channel: bool
    block_size: int | None = None

    def describe(self) -> dict[str, Any]:
        """What the manifest records about the quantization."""
        if self.method == "blockwise":
            return {
                "method": "onnxruntime MatMulNBits (weights int8 per block, int8 compute)",
                "bits": 8,
                "block_size": self.block_size,
                "accuracy_level": BLOCKWISE_ACCURACY_LEVEL,
                "weight_type": "int8 symmetric",
            }
        return {"method": "onnxruntime dynamic", "weight_type": "QInt8", "per_channel": self.per_channel}


#: MatMulNBits accuracy level 4: activations quantized to int8 per block, int8 dot products.
BLOCKWISE_ACCURACY_LEVEL = 4


def quantize_int8(
    src: str | Path,
    dst: str | Path,
    *,
    method: Int8Method = "blockwise",
    block_size: int = 128,
    per_channel: bool = True,
) -> QuantizeResult:
    """Write an INT8-quantized copy of ``src`` to ``dst`` (see the module doc); ``EngineBuildError`` on failure."""
    if method not in INT8_METHODS:
        raise EngineBuildError(f"unknown int8 method {method!r}; known: {INT8_METHODS}", stage="options")
    src_p, dst_p = Path(src), Path(dst)
    t0 = time.perf_counter()
    try:
        if method == "blockwise":
            _write_blockwise(src_p, dst_p, block_size)
        else:
            _write_dynamic(src_p, dst_p, per_channel)
    except EngineBuildError:
        raise
    except Exception as exc:  # noqa: BLE001 - the quantizers raise many unrelated types
        raise EngineBuildError(
            f"{method} INT8 quantization failed: {type(exc).__name__}: {exc}", stage="quantize"
        ) from exc
    result = QuantizeResult(
        dst_p,
        time.perf_counter() - t0,
        dst_p.stat().st_size,
        src_p.stat().st_size,
        method,
        per_channel=per_channel if method == "dynamic" else False,
        block_size=block_size if method == "blockwise" else None,
    )
    log.info(
        "onnx_quantized",
        path=str(dst_p),
        method=method,
        mb=round(result.size_bytes / 1e6, 1),
        source_mb=round(result.source_size_bytes / 1e6, 1),
    )
    return result


def _write_blockwise(src_p: Path, dst_p: Path, block_size: int) -> None:
    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    if block_size < 16 or block_size & (block_size - 1):
        raise EngineBuildError(f"int8 block size must be a power of two >= 16, got {block_size}", stage="options")
    quantizer = MatMulNBitsQuantizer(
        onnx.load(str(src_p)),
        bits=8,
        block_size=block_size,
        is_symmetric=True,
        accuracy_level=BLOCKWISE_ACCURACY_LEVEL,
    )
    quantizer.process()
    quantizer.model.save_model_to_file(str(dst_p))


def _write_dynamic(src_p: Path, dst_p: Path, per_channel: bool) -> None:
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with tempfile.TemporaryDirectory(prefix="finpulse-quant-") as tmp:
        # The dynamo exporter records value_info for initializers; the quantizer turns Gemm into
        # MatMul with a transposed weight and then trips over the stale [out, in] shape. Shapes are
        # re-inferred by the quantizer anyway, so drop them from a scratch copy.
        model = onnx.load(str(src_p))
        del model.graph.value_info[:]
        scratch = Path(tmp) / "stripped.onnx"
        onnx.save(model, str(scratch))
        quantize_dynamic(
            str(scratch),
            str(dst_p),
            weight_type=QuantType.QInt8,
            per_channel=per_channel,
            # Shape inference cannot see through ONNX Runtime's fused (contrib) ops;
            # every tensor in these models that it misses is float32.
            extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
        )
