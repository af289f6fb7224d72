"""Backend selection: explicit, logged, never a silent fallback.

``load_classifier(settings)`` resolves the model directory (engine bundle or HF checkpoint), picks
the backend named by ``settings.backend`` and fails with ``BackendUnavailable`` when it cannot run.
Only ``auto`` walks the preference list (tensorrt, cuda, onnxruntime-int8, onnxruntime, torch), and every backend it
skips is logged with its reason and kept in ``TextClassifier.describe()['skipped']``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import structlog

from engine.backends.base import Backend
from engine.bundle import EngineBundle, is_bundle
from engine.classifier import TextClassifier
from engine.errors import BackendUnavailable, ModelFormatError
from engine.settings import EngineSettings
from engine.tokenize import BatchTokenizer

log = structlog.get_logger(__name__)

BackendFactory = Callable[[Path, EngineSettings], Backend]
# On CPU the validated INT8 model comes first: it is the fastest CPU path (see BENCHMARKS.md) and a
# bundle only carries one that agreed with fp32 on >= 99% of labels at build time.
AUTO_ORDER: tuple[str, ...] = ("tensorrt", "cuda", "onnxruntime-int8", "onnxruntime", "torch")


def _checkpoint_dir(model_dir: Path) -> Path:
    return EngineBundle.load(model_dir).checkpoint_path if is_bundle(model_dir) else model_dir


def _torch_factory(model_dir: Path, settings: EngineSettings) -> Backend:
    from engine.backends.torch_backend import TorchCPUBackend
    from engine.modeling import load_model

    return TorchCPUBackend(load_model(_checkpoint_dir(model_dir)), settings.max_batch_size, settings.max_seq_len, settings.num_threads)


def _null_factory(model_dir: Path, settings: EngineSettings) -> Backend:
    from engine.backends.null_backend import NullBackend

    if is_bundle(model_dir):
        heads = EngineBundle.load(model_dir).heads
    else:
        from engine.modeling import CONFIG_HEADS_KEY, HeadSpec, read_config

        cfg = read_config(model_dir)
        if CONFIG_HEADS_KEY not in cfg:
            raise ModelFormatError(model_dir, "null backend needs a finpulse checkpoint or bundle for its head labels")
        heads = tuple(HeadSpec.from_config(h) for h in cfg[CONFIG_HEADS_KEY])
    return NullBackend(heads, settings.max_batch_size, settings.max_seq_len, model_id=f"null({model_dir.name})")


_FACTORIES: dict[str, BackendFactory] = {"torch": _torch_factory, "null": _null_factory}


def register_backend(name: str, factory: BackendFactory) -> None:
    """Make a backend selectable by name (GPU/ONNX backends register themselves on import)."""
    _FACTORIES[name] = factory


def _load_optional_backends() -> None:
    # Import lazily: each module registers its factory; a missing package only matters once chosen.
    import importlib

    for mod in ("engine.backends.onnxruntime_backend", "engine.backends.cuda_backend", "engine.backends.tensorrt_backend"):
        try:
            importlib.import_module(mod)
        except ModuleNotFoundError as exc:
            if exc.name == mod:
                continue
            raise


def available_backends() -> list[str]:
    _load_optional_backends()
    return sorted(_FACTORIES)


def create_backend(name: str, model_dir: Path, settings: EngineSettings) -> Backend:
    """Build exactly the named backend or raise ``BackendUnavailable``."""
    _load_optional_backends()
    factory = _FACTORIES.get(name)
    if factory is None:
        raise BackendUnavailable(name, f"unknown backend; known: {sorted(_FACTORIES)}")
    return factory(model_dir, settings)


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
