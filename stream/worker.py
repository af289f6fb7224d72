"""Start one worker process: load the engine, make sure topics exist, run the Faust app.

The model path comes resolved from the caller (the CLI), so the worker needs no model-resolution or
training code."""

from __future__ import annotations

import asyncio
from pathlib import Path

import structlog

from engine.runtime import load_classifier
from engine.settings import EngineSettings
from stream.settings import StreamSettings
from stream.topics import ensure_topics

log = structlog.get_logger(__name__)


def topic_plan(settings: StreamSettings) -> dict[str, int]:
    """Every topic the worker reads or writes, with its partition count."""
    return {
        settings.input_topic: settings.partitions,
        settings.scored_topic: settings.partitions,
        settings.alerts_topic: settings.partitions,
        settings.dlq_topic: 1,
    }


def run_worker(
    settings: StreamSettings, engine_settings: EngineSettings, model_dir: Path, loglevel: str = "INFO"
) -> None:
    """Blocks until the worker is stopped (SIGINT/SIGTERM)."""
    import faust

    from stream.app import create_app

    classifier = load_classifier(engine_settings, model_dir)
    classifier.backend.warmup()
    desc = classifier.describe()
    log.info(
        "engine_ready",
        model_dir=str(model_dir),
        backend=desc["backend"],
        device=desc["device"],
        precision=desc["precision"],
        model_id=desc["model_id"],
        skipped_backends=desc.get("skipped_backends"),
    )
    asyncio.run(ensure_topics(settings.kafka_bootstrap, topic_plan(settings)))
    app = create_app(settings, classifier)
    worker = faust.Worker(app, loglevel=loglevel, quiet=True, redirect_stdouts=False)
    worker.execute_from_commandline()
