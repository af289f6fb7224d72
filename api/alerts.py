"""The alert tail: a background Kafka reader that keeps recent alerts in memory for the API.

Alerts are delivered at least once (a worker that crashes between sending and committing sends again,
with the same deterministic id), so the buffer dedupes by id. The tail has no consumer group and reads
the topic from the beginning on every start: the API is stateless and any number of replicas can run.
"""

from __future__ import annotations

import asyncio
import time
import weakref
from collections import OrderedDict
from typing import Any

import structlog
from aiokafka import AIOKafkaConsumer
from pydantic import ValidationError

from stream.events import Alert
from stream.security import kafka_client_kwargs
from stream.settings import StreamSettings

log = structlog.get_logger(__name__)


def _newest_first(a: Alert) -> tuple[int, str, str]:
    return (a.window_end, a.raised_at, a.id)


class AlertBuffer:
    """Bounded, deduplicated alerts in memory, and the fan-out of new ones to stream subscribers.

    At most ``size`` alerts are kept; the one received longest ago falls out first. An id is
    recognised as a duplicate while its alert is still buffered (a redelivery comes seconds after the
    original, long before it would fall out).
    """

    def __init__(self, size: int, queue_size: int = 1_000) -> None:
        self.size = size
        self.queue_size = queue_size
        self._alerts: OrderedDict[str, Alert] = OrderedDict()
        # Weak: a stream whose generator never ran (client gone before the first byte) cannot leak its queue.
        self._subscribers: weakref.WeakSet[asyncio.Queue[Alert]] = weakref.WeakSet()
        self.duplicates = 0
        self.invalid = 0
        self.missed = 0  # alerts not queued for a subscriber that was too far behind

    def __len__(self) -> int:
        return len(self._alerts)

    @property
    def subscribers(self) -> int:
        """Stream clients connected now."""
        return len(self._subscribers)

    def add(self, alert: Alert) -> bool:
        """Keep ``alert`` and hand it to every subscriber; False (and nothing done) for a duplicate id."""
        if alert.id in self._alerts:
            self.duplicates += 1
            return False
        self._alerts[alert.id] = alert
        while len(self._alerts) > self.size:
            self._alerts.popitem(last=False)
        for q in list(self._subscribers):
            try:
                q.put_nowait(alert)
            except asyncio.QueueFull:
                # A stalled client must not hold memory without bound or slow the tail down.
                self.missed += 1
        return True

    def query(
        self,
        *,
        since_ms: int | None = None,
        kind: str | None = None,
        name: str | None = None,
        severity: str | None = None,
        limit: int = 100,
    ) -> list[Alert]:
        """Buffered alerts matching every given filter, newest window end first, at most ``limit``.

        ``since_ms`` keeps alerts whose window ended at or after it; ``kind`` is ticker/topic or None for any.
        """
        hits = [
            a
            for a in self._alerts.values()
            if (since_ms is None or a.window_end >= since_ms)
            and (name is None or a.entity == name)
            and (kind is None or a.entity_kind == kind)
            and (severity is None or a.severity == severity)
        ]
        hits.sort(key=_newest_first, reverse=True)
        return hits[:limit]

    def subscribe(self) -> asyncio.Queue[Alert]:
        """A queue that receives every alert added from now on; call :meth:`unsubscribe` when done."""
        q: asyncio.Queue[Alert] = asyncio.Queue(maxsize=self.queue_size)
        self._subscribers.add(q)
        return q

    def unsubscribe(self, q: asyncio.Queue[Alert]) -> None:
        self._subscribers.discard(q)


class AlertTail:
    """Reads the alert topic from the beginning into an :class:`AlertBuffer`, reconnecting on errors."""

    def __init__(
        self,
        bootstrap: str | StreamSettings,
        topic: str,
        buffer: AlertBuffer,
        *,
        poll_ms: int = 500,
        retry_max_s: float = 5.0,
    ) -> None:
        self.bootstrap = bootstrap
        self.topic = topic
        self.buffer = buffer
        self.poll_ms = poll_ms
        self.retry_max_s = retry_max_s
        self.records = 0
        self.last_fetch_at: float | None = None  # monotonic time of the last fetch that returned without error
        self._consumer: Any = None
        self._task: asyncio.Task[None] | None = None

    @property
    def connected(self) -> bool:
        """Whether a consumer is started (it may still be waiting for a broker: see :meth:`reachable`)."""
        return self._consumer is not None

    def start(self) -> None:
        """Start reading in a background task (returns at once; a missing broker is retried, not raised)."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="alert-tail")

    async def stop(self) -> None:
        """Stop reading and close the consumer."""
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None

    async def reachable(self, timeout: float) -> bool:
        """Whether a broker answers a metadata request within ``timeout`` s.

        aiokafka's fetcher never raises during a broker outage (it waits in its reconnect loop), so an
        empty fetch says nothing: health asks the broker, as the worker's /health does.
        """
        consumer = self._consumer
        if consumer is None:
            return False
        try:
            await asyncio.wait_for(consumer.topics(), timeout)
        except Exception:  # noqa: BLE001 - any failure means "not reachable now"; health reports it
            return False
        return True

    async def _run(self) -> None:
        delay = 0.2
        while True:
            consumer = AIOKafkaConsumer(
                **kafka_client_kwargs(self.bootstrap),
                group_id=None,  # no group: every API replica reads every alert, nothing is committed
                enable_auto_commit=False,
                auto_offset_reset="earliest",
                # A topic created after the API started is noticed within this (default: 5 minutes).
                metadata_max_age_ms=10_000,
            )
            try:
                await consumer.start()
                self._consumer = consumer
                # The worker creates the topic; subscribing before it exists makes aiokafka warn on every
                # metadata refresh, so wait for it quietly (health already says whether Kafka answers).
                while self.topic not in await consumer.topics():
                    await asyncio.sleep(2.0)
                consumer.subscribe([self.topic])
                log.info("alert_tail_started", topic=self.topic)
                delay = 0.2
                while True:
                    batch = await consumer.getmany(timeout_ms=self.poll_ms)
                    self.last_fetch_at = time.monotonic()
                    for msgs in batch.values():
                        for m in msgs:
                            self._ingest(m.value, m.partition, m.offset)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - the tail must outlive broker outages; retried with backoff
                log.warning("alert_tail_error", topic=self.topic, error=type(exc).__name__, detail=str(exc)[:200])
            finally:
                self._consumer = None
                try:
                    await consumer.stop()
                except Exception as exc:  # noqa: BLE001 - closing a broken consumer may fail too; nothing to do
                    log.debug("alert_tail_stop_error", error=type(exc).__name__)
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.retry_max_s)

    def _ingest(self, value: bytes | None, partition: int, offset: int) -> None:
        try:
            alert = Alert.model_validate_json(value or b"")
        except ValidationError as exc:
            # Logged by position only: the record may quote event texts.
            self.buffer.invalid += 1
            log.warning("alert_invalid", topic=self.topic, partition=partition, offset=offset, errors=exc.error_count())
            return
        self.records += 1
        self.buffer.add(alert)
