"""The Faust worker: the batch consume task, the close tick and the health and metrics pages.

``create_app`` wires an already-loaded classifier and Redis into a Faust app. Faust owns the process
(lifecycle, signals, the producer, timers, web); the input topic is read in batches by
``stream.consumer.BatchConsumer`` and each batch is handled by ``stream.processor.BatchProcessor``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import faust
import structlog
from aiokafka.errors import KafkaTimeoutError
from aiokafka.partitioner import murmur2
from faust.app.base import BootStrategy
from redis.asyncio import Redis

from engine.classifier import TextClassifier
from stream.consumer import BatchConsumer
from stream.novelty import store_kwargs as novelty_store_kwargs
from stream.processor import BatchProcessor
from stream.security import bearer_token_ok, diagnose_kafka, explain_kafka_error, faust_auth_kwargs, redis_from_settings
from stream.settings import StreamSettings
from stream.windows import WindowStore

log = structlog.get_logger(__name__)


class FaustSink:
    """Sends processor output through the aiokafka producer beneath the app, one batch per partition.

    Faust's ``Topic.send`` wraps every record in a FutureMessage, and even its ``Producer.send`` runs
    sensors and aiokafka's per-record path; here records are partitioned as aiokafka's default
    partitioner would (murmur2 of the key, Java-compatible, so a key's partition is unchanged), appended
    to one ``BatchBuilder`` per partition and handed over with ``send_batch``: one flush per output
    topic per micro-batch. Awaiting the delivery futures makes a batch's outputs durable before its
    input offsets may be committed.
    """

    def __init__(self, app: faust.App, scored: str, alerts: str, dlq: str) -> None:
        self.app = app
        self.scored, self.alerts, self.dlq = scored, alerts, dlq

    async def _send_all(self, topic: str, records: Sequence[tuple[bytes | None, bytes]]) -> None:
        if not records:
            return
        # Faust exposes the aiokafka producer only through a private helper.
        producer = self.app.producer._ensure_producer()  # type: ignore[attr-defined]
        await producer.client._wait_on_metadata(topic)
        parts = sorted(producer.client.cluster.partitions_for_topic(topic) or ())
        if not parts:
            raise KafkaTimeoutError(f"no partitions known for {topic}")
        builders: dict[int, Any] = {}
        futs: list[asyncio.Future[Any]] = []
        for p, key, value in zip(
            partitions_for(records, parts), (k for k, _ in records), (v for _, v in records), strict=True
        ):
            b = builders.get(p)
            if b is None:
                b = builders[p] = producer.create_batch()
            if b.append(key=key, value=value, timestamp=None) is None:
                # Full (the producer's batch size): send it and go on with a fresh one.
                futs.append(await producer.send_batch(b, topic, partition=p))
                b = builders[p] = producer.create_batch()
                if b.append(key=key, value=value, timestamp=None) is None:
                    raise ValueError(f"record of {len(value)} bytes exceeds the producer's batch size")
        for p, b in builders.items():
            futs.append(await producer.send_batch(b, topic, partition=p))
        await asyncio.gather(*futs)

    async def send_scored(self, records: Sequence[tuple[bytes, bytes]]) -> None:
        await self._send_all(self.scored, records)

    async def send_alerts(self, records: Sequence[tuple[bytes, bytes]]) -> None:
        await self._send_all(self.alerts, records)

    async def send_dead_letters(self, records: Sequence[tuple[bytes | None, bytes]]) -> None:
        await self._send_all(self.dlq, records)


def partitions_for(records: Sequence[tuple[bytes | None, bytes]], parts: Sequence[int]) -> list[int]:
    """The partition aiokafka's default partitioner picks for each record: murmur2 of the key, or a
    random one for a record without a key."""
    n = len(parts)
    out: list[int] = []
    for key, _ in records:
        if key is None:
            out.append(parts[random.randrange(n)])
        else:
            out.append(parts[(murmur2(key) & 0x7FFFFFFF) % n])
    return out


def redis_client(settings: StreamSettings) -> Redis:
    """The worker's Redis client: ACL user, password and TLS from the settings (stream.security)."""
    return redis_from_settings(settings, socket_timeout=10, socket_connect_timeout=5, health_check_interval=30)


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


def create_app(settings: StreamSettings, classifier: TextClassifier, redis: Redis | None = None) -> faust.App:
    """A Faust app whose single agent classifies micro-batches from the input topic."""
    faust_dir = settings.local_dir / "faust"
    # Faust makes its data folder without parents.
    faust_dir.mkdir(parents=True, exist_ok=True)
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
        # Faust's default data folder is "<group>-data" in the working directory; keep it with the
        # other local state instead of littering wherever the worker was started.
        datadir=str(faust_dir / f"{settings.consumer_group}-data"),
    )
    app.boot_strategy = _NoFaustConsumer(app)

    r = redis or redis_client(settings)
    store = WindowStore(
        r,
        settings.redis_prefix,
        settings.bucket_seconds,
        settings.retention_seconds,
        settings.allowed_lateness_seconds,
        settings.time_policy(),
        **novelty_store_kwargs(settings),
    )
    # One inference thread: the model already uses every core; two would only contend.
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="infer")
    processor = BatchProcessor(
        settings,
        classifier,
        store,
        FaustSink(app, settings.scored_topic, settings.alerts_topic, settings.dlq_topic),
        executor,
        # Its own thread, so the next batch is tokenized while this one is inferred (a GPU never waits).
        ThreadPoolExecutor(max_workers=1, thread_name_prefix="tokenize"),
        # And one for novelty signatures, computed while the batch is inferred.
        ThreadPoolExecutor(max_workers=1, thread_name_prefix="novelty"),
    )
    started = time.time()
    app.finpulse_processor = processor  # type: ignore[attr-defined]

    batches = BatchConsumer(settings, processor)
    app.finpulse_consumer = batches  # type: ignore[attr-defined]

    health_answered = asyncio.Event()

    @app.task
    async def consume() -> None:
        if settings.fault_crash_point:
            # Fault injection only: join the group once /health has answered, so that a worker told to
            # crash at its first batch is seen up before it dies (the group join used to take Faust
            # seconds; this consumer takes its first batch within milliseconds of start-up).
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(health_answered.wait(), timeout=30)
        # The hot path: batches straight from the worker's aiokafka consumer (stream.consumer).
        await batches.run()

    @app.on_before_shutdown.connect
    async def finish_batches(sender: Any, /, *args: Any, signal: Any, **kwargs: Any) -> None:
        # Faust sends this before it stops its producer: batches in flight can still send their
        # outputs, and their offsets are committed before the consumer leaves the group.
        await batches.stop()

    @app.timer(interval=settings.close_tick_s)
    async def close_tick() -> None:
        # Buckets close without new input too: by the wall clock in live mode, and when a judge died
        # holding a lease. Without this a quiet stream would never raise its last alert.
        try:
            await processor.tick()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - as for a failed batch: a silent tick would silence alerts
            # Transient errors are retried inside tick(); what reaches here is a bug or a permanent
            # misconfiguration. Faust would only end this timer, leaving a worker that never closes
            # a bucket by the clock again, so the process ends and its supervisor restarts it.
            log.critical("tick_failed_exiting", error=type(exc).__name__, detail=str(exc)[:500])
            os._exit(70)

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
        body = processor.prom.exposition(batches.lag)
        return web.bytes(body, content_type="text/plain; version=0.0.4")

    @app.page("/health")
    async def health(web: Any, request: Any) -> Any:
        health_answered.set()
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
                # What the surge rule counts, and how novelty is judged (None: off, every event novel).
                "novelty": (
                    {
                        "horizon_s": settings.novelty_horizon_seconds,
                        "threshold": settings.novelty_threshold,
                        "bands": settings.novelty_bands,
                        "rows": settings.novelty_rows,
                    }
                    if settings.novelty_enabled
                    else None
                ),
                "alert_events": settings.alert_events,
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


class _NoFaustConsumer(BootStrategy):
    """Faust without its own Kafka consumer: the input topic is read by ``stream.consumer`` in the
    worker's group, and a second member of another protocol (Faust's assignor) would split it."""

    enable_kafka_consumer = False
