"""Start one worker process: load the engine, make sure topics exist, run the Faust app."""

from __future__ import annotations

import asyncio

import structlog

from engine.runtime import load_classifier
from engine.settings import EngineSettings
from stream.local_services import ensure_topics
from stream.models import resolve_model_dir
from stream.settings import StreamSettings

log = structlog.get_logger(__name__)


def topic_plan(settings: StreamSettings) -> dict[str, int]:
    """Every topic the worker reads or writes, with its partition count."""
    return {
        settings.input_topic: settings.partitions,
        settings.scored_topic: settings.partitions,
        settings.alerts_topic: settings.partitions,
        settings.dlq_topic: 1,
    }


def run_worker(settings: StreamSettings, engine_settings: EngineSettings, loglevel: str = "INFO") -> None:
    """Blocks until the worker is stopped (SIGINT/SIGTERM)."""
    import faust

    from stream.app import create_app

    model_dir = resolve_model_dir(settings, engine_settings)
    classifier = load_classifier(engine_settings, model_dir)
    classifier.backend.warmup()
    desc = classifier.describe()
    log.info("engine_ready", model_dir=str(model_dir), backend=desc["backend"], device=desc["device"],
             precision=desc["precision"], model_id=desc["model_id"], skipped_backends=desc.get("skipped_backends"))
    asyncio.run(ensure_topics(settings.kafka_bootstrap, topic_plan(settings)))
    app = create_app(settings, classifier)
    worker = faust.Worker(app, loglevel=loglevel, quiet=True, redirect_stdouts=False)
    worker.execute_from_commandline()
