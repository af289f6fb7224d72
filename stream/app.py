"""The Faust worker: topics, the classify agent (micro-batches via ``take_events``) and the health view.

``create_app`` wires an already-loaded classifier and Redis into a Faust app; the heavy lifting is in
``stream.processor.BatchProcessor`` so the agent stays a thin loop.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import faust
import structlog
from redis.asyncio import Redis

from engine.classifier import TextClassifier
from stream.processor import BatchPipeline, BatchProcessor, BatchResult, RawMessage
from stream.security import bearer_token_ok, diagnose_kafka, explain_kafka_error, faust_auth_kwargs, redis_from_settings
from stream.settings import StreamSettings
from stream.windows import WindowStore

log = structlog.get_logger(__name__)


class FaustSink:
    """Sends processor output straight through the app's aiokafka producer.

    Faust's ``Topic.send`` wraps every record in a FutureMessage and may attach it to the current
    event; going to the producer directly keeps per-record Python work minimal. Awaiting the
    delivery futures makes a batch's outputs durable before ``take_events`` acks (and so commits)
    the inputs they came from.
    """

    def __init__(self, app: faust.App, scored: str, alerts: str, dlq: str) -> None:
        self.app = app
        self.scored, self.alerts, self.dlq = scored, alerts, dlq

    async def _send_all(self, topic: str, records: Sequence[tuple[bytes | None, bytes]]) -> None:
        producer = self.app.producer
        futs = [await producer.send(topic, k, v, None, None, None) for k, v in records]
        await asyncio.gather(*futs)

    async def send_scored(self, records: Sequence[tuple[bytes, bytes]]) -> None:
        await self._send_all(self.scored, records)

    async def send_alerts(self, records: Sequence[tuple[bytes, bytes]]) -> None:
        await self._send_all(self.alerts, records)

    async def send_dead_letters(self, records: Sequence[tuple[bytes | None, bytes]]) -> None:
        await self._send_all(self.dlq, records)


def redis_client(settings: StreamSettings) -> Redis:
    """The worker's Redis client: ACL user, password and TLS from the settings (stream.security)."""
    return redis_from_settings(settings, socket_timeout=10, socket_connect_timeout=5, health_check_interval=30)


def _acker(stream: faust.StreamT, taken: list[Any]) -> Callable[[BatchResult], Awaitable[None]]:
    """The callback that acks one batch's input events (called once its outputs are durable)."""

    async def ack(_: BatchResult) -> None:
        for e in taken:
            await stream.ack(e)

    return ack


async def _kafka_reachable(app: faust.App, settings: StreamSettings, timeout: float = 2.0) -> str | None:
    """Whether any broker answers a metadata request, through the worker's own producer client.

    A broker outage does not surface as errors in the worker while no batch is in flight: aiokafka's
    consumer waits inside its reconnect loop. So health asks Kafka directly. Returns None when a broker
    answered, else why not (unreachable, TLS or authentication refused).
    """
    # Faust exposes the aiokafka producer only as a private attribute; no producer yet means not started.
    client = getattr(getattr(app.producer, "_producer", None), "client", None)
    if client is None:
        return None
    try:
        await asyncio.wait_for(client.fetch_all_metadata(), timeout)
    except Exception as exc:  # noqa: BLE001 - health reports the failure (why, nothing secret) instead of raising
        return await diagnose_kafka(settings, timeout) or explain_kafka_error(exc, settings)
    return None


def _consumer_lag(app: faust.App, topic: str) -> dict[tuple[str, int], int]:
    """High watermark minus committed offset for every input partition assigned to this worker."""
    consumer = app.consumer
    # Faust keeps the committed offsets it has seen in a private map; there is no public accessor.
    committed = getattr(consumer, "_committed_offset", {})
    out: dict[tuple[str, int], int] = {}
    for tp in consumer.assignment():
        if tp.topic != topic:
            continue
        high = consumer.highwater(tp)
        done = committed.get(tp)
        if high is not None and high >= 0:
            out[(tp.topic, tp.partition)] = max(0, high - (done or 0))
    return out


def create_app(settings: StreamSettings, classifier: TextClassifier, redis: Redis | None = None) -> faust.App:
    """A Faust app whose single agent classifies micro-batches from the input topic."""
    app = faust.App(
        settings.consumer_group,
        broker=f"kafka://{settings.kafka_bootstrap}",
        # TLS / SASL for every Faust client (producer, consumer, topic creation), as every other client has.
        **faust_auth_kwargs(settings),
        value_serializer="raw",
        key_serializer="raw",
        web_enabled=True,
        web_host=settings.worker_web_host,
        web_port=settings.worker_web_port,
        web_in_thread=False,
        topic_partitions=settings.partitions,
        topic_replication_factor=1,
        consumer_auto_offset_reset="earliest",
        broker_session_timeout=settings.broker_session_timeout_s,
        broker_heartbeat_interval=1.0,
        broker_commit_interval=1.0,
        producer_linger_ms=5,
        stream_buffer_maxsize=max(4096, settings.max_batch_size * 4),
        table_standby_replicas=0,
    )
    source = app.topic(
        settings.input_topic, value_type=bytes, key_type=bytes, value_serializer="raw", key_serializer="raw"
    )

    r = redis or redis_client(settings)
    store = WindowStore(
        r,
        settings.redis_prefix,
        settings.bucket_seconds,
        settings.retention_seconds,
        settings.allowed_lateness_seconds,
        settings.time_policy(),
    )
    # One inference thread: the model already uses every core; two would only contend.
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="infer")
    processor = BatchProcessor(
        settings,
        classifier,
        store,
        FaustSink(app, settings.scored_topic, settings.alerts_topic, settings.dlq_topic),
        executor,
    )
    started = time.time()
    app.finpulse_processor = processor  # type: ignore[attr-defined]

    @app.agent(source, name="classify")
    async def classify(stream: faust.StreamT) -> None:
        pipeline = BatchPipeline(processor, settings.pipeline_depth)
        # noack_take hands over the events themselves and leaves acking to us: an input is acked
        # (and so may be committed) only after its batch's outputs are durable, in take order.
        try:
            # faust.Stream has noack_take; the StreamT protocol that agents are typed with does not.
            take = stream.noack_take  # type: ignore[attr-defined]
            async for events in take(settings.max_batch_size, within=settings.max_wait_ms / 1000):
                msgs = [
                    RawMessage(
                        e.message.value,
                        e.message.key,
                        e.message.topic,
                        e.message.partition,
                        e.message.offset,
                        e.message.timestamp and int(e.message.timestamp * 1000),
                    )
                    for e in events
                ]

                await pipeline.submit(msgs, _acker(stream, list(events)))
        except asyncio.CancelledError:
            raise  # a stop or a rebalance: Faust restarts the agent on the new assignment
        except Exception as exc:  # noqa: BLE001 - every non-transient failure must end the process, see below
            # Transient Redis/Kafka errors never get here (they are retried forever): this is a bug
            # or a permanent misconfiguration. Faust would restart the agent in-process past the
            # failed batch's unacked events, whose offsets could then never be committed, while the
            # worker kept looking healthy. Dying loudly lets the supervisor restart the worker and
            # Kafka redeliver the batch (Redis dedupes what was already counted).
            log.critical("agent_failed_exiting", error=type(exc).__name__, detail=str(exc)[:500])
            os._exit(70)
        finally:
            # On a stop or a rebalance, finish what is in flight if Kafka and Redis let us, quickly.
            await pipeline.close(timeout=settings.broker_session_timeout_s / 2)

    @app.timer(interval=settings.close_tick_s)
    async def close_tick() -> None:
        # Buckets close without new input too: by the wall clock in live mode, and when a judge died
        # holding a lease. Without this a quiet stream would never raise its last alert.
        await processor.tick()

    @app.page("/metrics")
    async def metrics(web: Any, request: Any) -> Any:
        # Metrics name tickers, topics and volumes: with tokens configured only their holders may read them.
        if not bearer_token_ok(request.headers.get("Authorization"), settings.worker_metrics_tokens):
            return web.json(
                {"error": "a bearer token is required"},
                status=401,
                headers={"WWW-Authenticate": 'Bearer realm="metrics"'},
            )
        # Prometheus text format; aiohttp refuses a charset inside content_type (UTF-8 is the default).
        body = processor.prom.exposition(lambda: _consumer_lag(app, settings.input_topic))
        return web.bytes(body, content_type="text/plain; version=0.0.4")

    @app.page("/health")
    async def health(web: Any, request: Any) -> Any:
        redis_ok = True
        try:
            await r.ping()
        except Exception:  # noqa: BLE001 - health reports the failure instead of raising
            redis_ok = False
        kafka_problem = await _kafka_reachable(app, settings)
        kafka_ok = kafka_problem is None
        engine = classifier.describe()
        status, reasons = processor.health_state()
        if not redis_ok:
            status, reasons = "degraded", [*reasons, "redis ping failed"]
        if not kafka_ok:
            status, reasons = "degraded", [*reasons, f"no broker answered a metadata request: {kafka_problem}"]
        return web.json(
            {
                "status": status,
                # Which process answers: a supervisor can tell its own worker from an older one on the port.
                "pid": os.getpid(),
                "degraded_reasons": reasons,
                "time_mode": settings.time_mode,
                "uptime_s": round(time.time() - started, 1),
                "engine": engine,
                "engine_stats": classifier.stats.as_dict(),  # counters; call-time quantiles are in metrics
                "gpu_fallback": bool(engine.get("skipped_backends")) and engine.get("device") == "cpu",
                "redis": redis_ok,
                "kafka": kafka_ok,
                "metrics": processor.prom.summary(),
                "topics": {
                    "input": settings.input_topic,
                    "scored": settings.scored_topic,
                    "alerts": settings.alerts_topic,
                    "dlq": settings.dlq_topic,
                },
            }
        )

    return app
