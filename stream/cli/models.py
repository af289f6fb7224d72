"""Which model the worker runs: the one the settings name, else the cached default model's bundle."""

from __future__ import annotations

from pathlib import Path

import structlog

from engine.bundle import is_bundle
from engine.errors import ModelFormatError
from engine.settings import EngineSettings
from stream.settings import StreamSettings

log = structlog.get_logger(__name__)


def default_checkpoint_dir(settings: StreamSettings) -> Path:
    return settings.default_model_dir / "default"


def default_bundle_dir(settings: StreamSettings) -> Path:
    return settings.default_model_dir / "default.bundle"


def resolve_model_dir(settings: StreamSettings, engine: EngineSettings) -> Path:
    """``FINPULSE_ENGINE_MODEL_DIR`` when set; else the default bundle, else the default checkpoint."""
    if engine.model_dir is not None:
        return Path(engine.model_dir)
    for cand in (default_bundle_dir(settings), default_checkpoint_dir(settings)):
        if cand.is_dir() and (is_bundle(cand) or (cand / "config.json").is_file()):
            return cand
    raise ModelFormatError(
        settings.default_model_dir,
        "no model: set FINPULSE_ENGINE_MODEL_DIR, or run `make demo` / `finpulse model ensure` to train the default "
        "model",
    )


def bundle_is_current(bundle: Path, checkpoint: Path) -> bool:
    """The bundle exists, was built from exactly this checkpoint (hash of its files) and with the
    current build recipe (a cached bundle from before ONNX Runtime fusion is rebuilt once)."""
    from build_engine.manifest import checkpoint_sha256
    from build_engine.settings import BuildSettings
    from engine.bundle import EngineBundle

    if not is_bundle(bundle):
        return False
    try:
        mf = EngineBundle.load(bundle).manifest
    except ModelFormatError:
        return False
    if BuildSettings().fuse and "fusion" not in mf.validation:
        return False
    return mf.source_sha256 == checkpoint_sha256(checkpoint)


def ensure_default_model(settings: StreamSettings, build_bundle: bool = True, quick: bool = True) -> Path:
    """Train (first use only) the default model and build its engine bundle; return the bundle (or checkpoint)."""
    from training.default_model import ensure_default_model as train_default

    ckpt = train_default(default_checkpoint_dir(settings), quick=quick, progress=True)
    if not build_bundle:
        return ckpt
    bundle = default_bundle_dir(settings)
    if not bundle_is_current(bundle, ckpt):
        from build_engine.builder import BuildOptions
        from build_engine.builder import build_bundle as build
        from build_engine.errors import EngineBuildError

        texts = _validation_texts(settings)
        log.info("building_engine_bundle", checkpoint=str(ckpt), bundle=str(bundle), validation_texts=len(texts))
        try:
            build(ckpt, bundle, BuildOptions.from_settings(int8=True, overwrite=True), validation_texts=texts or None)
        except EngineBuildError as exc:
            if exc.stage != "validate" or exc.agreement is None:
                raise
            # INT8 that disagrees with fp32 is not shipped; the bundle is still usable in fp32.
            log.warning("int8_rejected", reason=str(exc), output=exc.output, agreement=exc.agreement)
            build(ckpt, bundle, BuildOptions.from_settings(int8=False, overwrite=True), validation_texts=texts or None)
    return bundle


def _validation_texts(settings: StreamSettings) -> list[str]:
    """Real texts for export and INT8 validation (a sample of both validation sets), when the data folder is there."""
    from build_engine.cli import default_validation_files, real_validation_texts
    from build_engine.settings import BuildSettings

    files = default_validation_files(settings.data_dir)
    return real_validation_texts(files, BuildSettings().validation_texts) if files else []
