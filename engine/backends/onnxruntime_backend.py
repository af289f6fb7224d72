"""ONNX Runtime on CPU: ``onnxruntime`` (fp32 ``model.onnx``) and ``onnxruntime-int8`` (``model.int8.onnx``).

Both read an engine bundle: input/output names come from its manifest, and the ONNX file's sha256
is checked against it before a session is created. onnxruntime itself is imported only when a
backend is built, so importing this module stays cheap.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import structlog

from engine.backends.base import Backend
from engine.bundle import EngineBundle, is_bundle
from engine.errors import BackendUnavailable, ModelFormatError
from engine.settings import EngineSettings
from engine.tokenize import EncodedBatch
from finpulse.cpu import usable_cores

log = structlog.get_logger(__name__)


class OnnxRuntimeBackend(Backend):
    """One ONNX Runtime CPU session (ORT_ENABLE_ALL, intra-op threads = settings or all cores)."""

    name: ClassVar[str] = "onnxruntime"
    file_kind: ClassVar[str] = "onnx"

    def __init__(
        self,
        bundle: EngineBundle,
        max_batch_size: int,
        max_seq_len: int,
        num_threads: int | None = None,
        allow_spinning: bool = True,
    ) -> None:
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise BackendUnavailable(self.name, "python package 'onnxruntime' is not installed") from exc
        mf = bundle.manifest
        super().__init__(bundle.heads, max_batch_size, max_seq_len, mf.model_id)
        entry = getattr(mf, self.file_kind)
        if entry is None:
            raise ModelFormatError(
                bundle.root,
                f"bundle has no {self.file_kind} file (rebuild it with `finpulse build-engine`"
                + (" --int8)" if self.file_kind == "onnx_int8" else ")"),
            )
        path = bundle.file(self.file_kind)  # verifies sha256: a corrupted file never reaches ORT
        self.precision = entry.precision
        self.model_path = path
        if max_seq_len > mf.max_seq_len:
            # ONNX has dynamic axes, so longer inputs run, but validation only covered mf.max_seq_len.
            log.warning("seq_len_beyond_validated", backend=self.name, requested=max_seq_len, validated=mf.max_seq_len)
        self.threads = int(num_threads or usable_cores())
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.intra_op_num_threads = self.threads
        so.inter_op_num_threads = 1  # one graph, no parallel branches worth a second pool
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        # Spinning keeps idle pool threads hot between ops; inside the worker they would burn the cores
        # the event loop needs for Kafka and Redis between batches.
        self.allow_spinning = allow_spinning
        so.add_session_config_entry("session.intra_op.allow_spinning", "1" if allow_spinning else "0")
        try:
            self._session = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        except Exception as exc:  # noqa: BLE001 - ORT raises untyped errors for unreadable graphs
            raise ModelFormatError(path, f"ONNX Runtime cannot load the model ({exc})") from exc
        self._ort_version = str(ort.__version__)
        self._input_names = list(mf.inputs)
        self._output_names = [h.output for h in mf.heads]
        self._check_interface(path)

    def _check_interface(self, path: Path) -> None:
        sess_in = {i.name: i for i in self._session.get_inputs()}
        sess_out = {o.name: o for o in self._session.get_outputs()}
        if set(sess_in) != set(self._input_names):
            raise ModelFormatError(
                path, f"manifest inputs {self._input_names} do not match ONNX inputs {sorted(sess_in)}"
            )
        for name in self._input_names:
            if sess_in[name].type != "tensor(int64)":
                raise ModelFormatError(path, f"ONNX input {name!r} is {sess_in[name].type}, expected tensor(int64)")
        missing = [o for o in self._output_names if o not in sess_out]
        if missing:
            raise ModelFormatError(
                path,
                f"manifest heads do not match the ONNX outputs: {missing} not among ONNX outputs {sorted(sess_out)}",
            )
        for head, out_name in zip(self.heads, self._output_names, strict=True):
            out = sess_out[out_name]
            width = out.shape[-1] if out.shape else None
            if isinstance(width, int) and width != len(head.labels):
                raise ModelFormatError(
                    path,
                    f"manifest head {head.name!r} has {len(head.labels)} labels but ONNX output {out.name!r} has "
                    f"width {width}",
                )

    def _infer_impl(self, batch: EncodedBatch) -> dict[str, np.ndarray]:
        feed = {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask}
        outs = self._session.run(self._output_names, {k: feed[k] for k in self._input_names})
        # Not strict: a missing head is reported by Backend._check_outputs as an InferenceOutputError.
        return {h.name: np.asarray(o) for h, o in zip(self.heads, outs, strict=False)}

    def describe(self) -> dict[str, Any]:
        return {
            **super().describe(),
            "providers": self._session.get_providers(),
            "threads": self.threads,
            "graph_optimization": "ORT_ENABLE_ALL",
            "allow_spinning": self.allow_spinning,
            "model_file": self.model_path.name,
            "onnxruntime": self._ort_version,
        }

    def close(self) -> None:
        self._session = None


class OnnxRuntimeInt8Backend(OnnxRuntimeBackend):
    """The dynamically INT8-quantized model of the bundle, same CPU session setup."""

    name: ClassVar[str] = "onnxruntime-int8"
    file_kind: ClassVar[str] = "onnx_int8"


def _load_bundle(name: str, model_dir: Path) -> EngineBundle:
    if not is_bundle(model_dir):
        raise ModelFormatError(
            model_dir,
            f"backend {name!r} needs an engine bundle with manifest.json (build one with `finpulse build-engine`)",
        )
    return EngineBundle.load(model_dir)


def create(model_dir: Path, settings: EngineSettings) -> Backend:
    """The fp32 ONNX Runtime backend on an engine bundle."""
    bundle = _load_bundle(OnnxRuntimeBackend.name, Path(model_dir))
    return OnnxRuntimeBackend(
        bundle, settings.max_batch_size, settings.max_seq_len, settings.num_threads, settings.ort_allow_spinning
    )


def create_int8(model_dir: Path, settings: EngineSettings) -> Backend:
    """The INT8 ONNX Runtime backend on an engine bundle that carries a validated INT8 model."""
    bundle = _load_bundle(OnnxRuntimeInt8Backend.name, Path(model_dir))
    return OnnxRuntimeInt8Backend(
        bundle, settings.max_batch_size, settings.max_seq_len, settings.num_threads, settings.ort_allow_spinning
    )
