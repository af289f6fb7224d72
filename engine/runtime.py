"""Backend selection: explicit, logged, never a silent fallback.

``load_classifier(settings)`` resolves the model directory (engine bundle or HF checkpoint), picks
the backend named by ``settings.backend`` and fails with ``BackendUnavailable`` when it cannot run.
Only ``auto`` walks the preference list (tensorrt, cuda, onnxruntime-int8, onnxruntime, torch), and every backend it
skips is logged with its reason and kept in ``TextClassifier.describe()['skipped']``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from types import MappingProxyType

import structlog

from engine.backends.base import Backend
from engine.bundle import EngineBundle, is_bundle
from engine.classifier import TextClassifier
from engine.errors import BackendUnavailable, ModelFormatError
from engine.settings import EngineSettings
from engine.tokenize import BatchTokenizer
from finpulse.extras import missing_extra

log = structlog.get_logger(__name__)

BackendFactory = Callable[[Path, EngineSettings], Backend]
# On CPU the validated INT8 model comes first: it is the fastest CPU path (see BENCHMARKS.md) and a
# bundle only carries one that agreed with fp32 on >= 99% of labels at build time.
AUTO_ORDER: tuple[str, ...] = ("tensorrt", "cuda", "onnxruntime-int8", "onnxruntime", "torch")
#: Backends whose packages come with the ``gpu`` extra.
GPU_BACKENDS: frozenset[str] = frozenset({"tensorrt", "cuda"})


# One function per backend, each importing its module only when that backend is built: importing
# the engine stays cheap (no onnxruntime, torch or tensorrt), and the backend modules never import
# this one back, so the table below is the whole registry and has no import cycle.
def _tensorrt(model_dir: Path, settings: EngineSettings) -> Backend:
    from engine.backends.tensorrt_backend import create

    return create(model_dir, settings)


def no_nvidia_driver() -> str | None:
    """Why no NVIDIA GPU can be visible to this process, or None when one may be.

    Checked before the ``cuda`` backend's module is imported, since that module imports torch. On a CPU
    machine importing torch alone cost a worker ~490 MB of resident memory (`auto` 655 MB against
    167 MB for ONNX Runtime INT8 named directly), only for ``torch.cuda.is_available()`` to say no.
    With no ``/dev/nvidia*`` device node (nor WSL2's ``/dev/dxg``) and no loadable driver library
    (``libcuda.so.1``) CUDA cannot initialise, so torch would say the same.
    """
    import ctypes
    import glob

    if glob.glob("/dev/nvidia[0-9]*") or glob.glob("/dev/dxg"):
        return None
    try:
        ctypes.CDLL("libcuda.so.1")
    except OSError:
        return "no NVIDIA device (/dev/nvidia*) and no driver library (libcuda.so.1); torch not imported"
    return None


def _cuda(model_dir: Path, settings: EngineSettings) -> Backend:
    if (why := no_nvidia_driver()) is not None:
        raise BackendUnavailable("cuda", why)
    from engine.backends.cuda_backend import create

    return create(model_dir, settings)


def _onnxruntime_int8(model_dir: Path, settings: EngineSettings) -> Backend:
    from engine.backends.onnxruntime_backend import create_int8

    return create_int8(model_dir, settings)


def _onnxruntime(model_dir: Path, settings: EngineSettings) -> Backend:
    from engine.backends.onnxruntime_backend import create

    return create(model_dir, settings)


def _torch(model_dir: Path, settings: EngineSettings) -> Backend:
    from engine.backends.torch_backend import create

    return create(model_dir, settings)


def _null(model_dir: Path, settings: EngineSettings) -> Backend:
    from engine.backends.null_backend import create

    return create(model_dir, settings)


BACKENDS: Mapping[str, BackendFactory] = MappingProxyType(
    {
        "tensorrt": _tensorrt,
        "cuda": _cuda,
        "onnxruntime-int8": _onnxruntime_int8,
        "onnxruntime": _onnxruntime,
        "torch": _torch,
        "null": _null,
    }
)


def available_backends() -> list[str]:
    """Every backend name ``FINPULSE_ENGINE_BACKEND`` accepts besides ``auto`` (whether or not it can run here)."""
    return sorted(BACKENDS)


def create_backend(name: str, model_dir: Path, settings: EngineSettings) -> Backend:
    """Build exactly the named backend or raise ``BackendUnavailable``.

    When a package is missing, the reason names the extra that installs it.
    """
    factory = BACKENDS.get(name)
    if factory is None:
        raise BackendUnavailable(name, f"unknown backend; known: {available_backends()}")
    try:
        return factory(Path(model_dir), settings)
    except ModuleNotFoundError as exc:
        missing = missing_extra(exc, f"backend {name!r}", "gpu" if name in GPU_BACKENDS else None)
        if missing is None:
            raise
        raise BackendUnavailable(name, str(missing)) from exc


def load_classifier(settings: EngineSettings | None = None, model_dir: str | Path | None = None) -> TextClassifier:
    """The classifier the settings ask for; ``auto`` logs every backend it passes over and why."""
    settings = settings or EngineSettings()
    path = Path(model_dir or settings.model_dir or "")
    if not str(path) or not path.is_dir():
        raise ModelFormatError(path, "model directory not found (set FINPULSE_ENGINE_MODEL_DIR)")
    tok_path = EngineBundle.load(path).tokenizer_path.parent if is_bundle(path) else path
    tokenizer = BatchTokenizer.from_model_dir(tok_path, settings.max_seq_len, settings.pad_multiple)

    skipped: dict[str, str] = {}
    if settings.backend == "auto":
        backend: Backend | None = None
        for name in AUTO_ORDER:
            try:
                backend = create_backend(name, path, settings)
                break
            except (BackendUnavailable, ModelFormatError) as exc:
                reason = exc.reason
                skipped[name] = reason
                log.warning("backend_skipped", backend=name, reason=reason, model_dir=str(path))
        if backend is None:
            raise BackendUnavailable("auto", f"no backend could run: {skipped}")
    else:
        backend = create_backend(settings.backend, path, settings)

    clf = TextClassifier(tokenizer, backend, settings.max_batch_size, settings.max_tokens_per_batch)
    clf.skipped_backends = skipped
    log.info("backend_selected", requested=settings.backend, skipped=skipped, **backend.describe())
    return clf
