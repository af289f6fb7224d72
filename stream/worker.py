"""Start one worker process: load the engine, make sure topics exist, run the Faust app.

The model path comes resolved from the caller (the CLI), so the worker needs no model-resolution or
training code."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import structlog

from engine.runtime import load_classifier
from engine.settings import EngineSettings
from stream.security import SecurityConfigError, describe_kafka_security, diagnose_kafka, explain_kafka_error
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


async def wait_for_kafka(
    settings: StreamSettings,
    topics: dict[str, int],
    *,
    first_delay_s: float = 1.0,
    max_delay_s: float = 60.0,
    attempt_timeout_s: float = 15.0,
) -> None:
    """Create the topics, retrying with backoff (up to ``max_delay_s``) while Kafka is unreachable or refuses us.

    While it waits, the worker's web port answers ``/health`` with 503 and the reason (authentication
    refused, TLS certificate not trusted, unreachable) and nothing secret; ``/metrics`` answers 503 too.
    A configuration error that retrying cannot fix (a certificate file missing) is raised at once.
    """
    from aiohttp import web

    state: dict[str, object] = {"status": "waiting_for_kafka", "reason": None, "attempts": 0, "since": time.time()}

    async def health(_: web.Request) -> web.Response:
        return web.json_response(
            {
                "status": state["status"],
                "degraded_reasons": [state["reason"]] if state["reason"] else [],
                "kafka": False,
                "kafka_security": describe_kafka_security(settings),
                "attempts": state["attempts"],
                "waiting_s": round(time.time() - float(state["since"])),  # type: ignore[arg-type]
            },
            status=503,
        )

    runner: web.AppRunner | None = None
    delay = first_delay_s
    try:
        while True:
            state["attempts"] = int(state["attempts"]) + 1  # type: ignore[call-overload]
            try:
                await ensure_topics(settings, topics, timeout=attempt_timeout_s)
                return
            except SecurityConfigError:
                raise
            except Exception as exc:  # noqa: BLE001 - every Kafka failure is reported and retried, see docstring
                reason = await diagnose_kafka(settings) or explain_kafka_error(exc, settings)
            state["reason"] = reason
            log.error("kafka_refused_or_unreachable", reason=reason, attempt=state["attempts"], retry_in_s=delay)
            if runner is None:
                app = web.Application()
                app.router.add_get("/health", health)
                app.router.add_get("/metrics", health)
                runner = web.AppRunner(app, access_log=None)
                await runner.setup()
                await web.TCPSite(runner, settings.worker_web_host, settings.worker_web_port).start()
            await asyncio.sleep(delay)
            delay = min(delay * 2, max_delay_s)
    finally:
        if runner is not None:
            await runner.cleanup()  # frees the port for Faust's own web server


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
    # Kafka must accept us before Faust starts: Faust treats a refused login or TLS handshake as a crash,
    # and a supervisor would restart it in a loop. Here a refusal is retried slowly while /health says why.
    asyncio.run(wait_for_kafka(settings, topic_plan(settings)))
    app = create_app(settings, classifier)
    worker = faust.Worker(app, loglevel=loglevel, quiet=True, redirect_stdouts=False)
    worker.execute_from_commandline()
