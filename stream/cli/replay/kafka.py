"""Sending a replay to Kafka (paced by event time or a fixed rate), and reading a time range of a topic."""

from __future__ import annotations

import asyncio
import heapq
import time
from collections import deque
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from stream.cli.replay.errors import TopicRangeError
from stream.events import parse_event_time
from stream.security import kafka_bootstrap_of, kafka_client_kwargs
from stream.settings import StreamSettings
from stream.topics import partition_count

ACK_BATCH = 2000  # sends awaited together (and reported to ``progress``)


@dataclass(frozen=True)
class RawRecord:
    """A record copied from a topic: key, value and headers are sent byte for byte."""

    key: bytes | None
    value: bytes | None
    timestamp_ms: int
    headers: tuple[tuple[str, bytes], ...] = ()


Sendable = dict[str, Any] | bytes | RawRecord


@dataclass
class ReplayStats:
    """What :func:`produce` sent, over how long, and the event-time span it covered."""

    sent: int
    seconds: float
    first_event_ms: int | None = None
    last_event_ms: int | None = None

    @property
    def rate(self) -> float:
        """Events per second over the whole send."""
        return self.sent / self.seconds if self.seconds else 0.0


@dataclass
class Pacer:
    """When each event may go: at ``speed`` times event-time speed, and no faster than ``rate`` events/s.

    ``max_gap_s`` caps one wait (a night or a weekend between two events), shifting the rest of the
    schedule; without it the pacing is exact. An event older than the clock's start goes at once.
    """

    speed: float = 0.0
    rate: float = 0.0
    max_gap_s: float | None = None
    _t0: float | None = None
    _ev0: int | None = None
    _n: int = 0
    _clock: Callable[[], float] = field(default=time.perf_counter)

    def delay(self, event_ms: int | None) -> float:
        """Seconds to wait before sending the next event (dated ``event_ms``, ``None`` if unknown)."""
        now = self._clock()
        if self._t0 is None:
            self._t0 = now
        wait = 0.0
        if self.rate > 0:
            wait = self._t0 + self._n / self.rate - now
        self._n += 1
        if self.speed > 0 and event_ms is not None:
            if self._ev0 is None:
                self._ev0 = event_ms
            due = self._t0 + (event_ms - self._ev0) / 1000 / self.speed - now
            if self.max_gap_s is not None and due > self.max_gap_s:
                self._t0 -= due - self.max_gap_s  # the rest of the schedule moves up by the time skipped
                due = self.max_gap_s
            wait = max(wait, due)
        return max(0.0, wait)


def event_time_ms(ev: Sendable) -> int | None:
    """The event time of something to send, where it has one that parses."""
    try:
        if isinstance(ev, RawRecord):
            return ev.timestamp_ms
        if isinstance(ev, bytes):
            ev = orjson.loads(ev)
            if not isinstance(ev, dict):
                return None
        return parse_event_time(ev.get("published_at"))
    except (ValueError, orjson.JSONDecodeError):
        return None


def _record(ev: Sendable) -> tuple[bytes | None, bytes | None, list[tuple[str, bytes]] | None]:
    if isinstance(ev, RawRecord):
        return ev.key, ev.value, list(ev.headers) or None
    if isinstance(ev, bytes):
        key = None
        try:
            k = orjson.loads(ev).get("id")
            key = str(k).encode() if k is not None else None
        except (orjson.JSONDecodeError, AttributeError):  # malformed lines go unkeyed, for the DLQ to catch
            key = None
        return key, ev, None
    # Keyed by id, so one event (and any re-send of it) always lands on one partition.
    return str(ev["id"]).encode(), orjson.dumps(ev), None


async def _items(events: Iterable[Sendable] | AsyncIterable[Sendable]) -> AsyncIterator[Sendable]:
    if isinstance(events, AsyncIterable):
        async for ev in events:
            yield ev
    else:
        for ev in events:
            yield ev


async def produce(
    bootstrap: str | StreamSettings,
    topic: str,
    events: Iterable[Sendable] | AsyncIterable[Sendable],
    rate: float = 0.0,
    progress: Callable[[int], None] | None = None,
    *,
    speed: float = 0.0,
    max_gap_s: float | None = None,
    on_send: Callable[[int | None], None] | None = None,
) -> ReplayStats:
    """Send ``events`` (event dicts, raw JSON values, or :class:`RawRecord` copies) to ``topic``, in order.

    Events are keyed by id, raw records keep their key. ``rate`` caps events/s (0: as fast as
    possible); ``speed`` replays at that many times event-time speed (0: no event-time pacing).
    ``progress`` gets the number of events acknowledged since its last call; ``on_send`` each
    event's time as it is handed to the producer.
    """
    producer = AIOKafkaProducer(
        **kafka_client_kwargs(bootstrap),
        linger_ms=20,
        max_batch_size=256 * 1024,
        acks="all",
        enable_idempotence=True,
        compression_type=None,
    )
    pacer = Pacer(speed=speed, rate=rate, max_gap_s=max_gap_s)
    paced = speed > 0 or rate > 0
    sent = 0
    first_ms: int | None = None
    last_ms: int | None = None
    await producer.start()
    t0 = time.perf_counter()
    try:
        pending: list[asyncio.Future[Any]] = []

        async def settle() -> None:
            if pending:
                await asyncio.gather(*pending)
                if progress:
                    progress(len(pending))
                pending.clear()

        async for ev in _items(events):
            ev_ms = event_time_ms(ev)
            if ev_ms is not None:
                first_ms = ev_ms if first_ms is None else first_ms
                last_ms = ev_ms
            if paced:
                wait = pacer.delay(ev_ms)
                if wait > 0:
                    due = time.perf_counter() + wait
                    await settle()  # acks (and progress) while waiting, not in one lump later
                    await asyncio.sleep(max(0.0, due - time.perf_counter()))
            key, value, headers = _record(ev)
            pending.append(await producer.send(topic, value=value, key=key, headers=headers))
            sent += 1
            if on_send:
                on_send(ev_ms)
            if len(pending) >= ACK_BATCH:
                await settle()
        await producer.flush()
        await settle()
    finally:
        await producer.stop()
    return ReplayStats(sent=sent, seconds=time.perf_counter() - t0, first_event_ms=first_ms, last_event_ms=last_ms)


def parse_when(value: str | None) -> str | None:
    """Accept a date or datetime; keep the ISO-8601 'Z' form the CSV uses so string comparison works."""
    if not value:
        return None
    dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
    return dt.strftime("%Y-%m-%dT%H:%M:%SZ")


async def topic_range(
    bootstrap: str | StreamSettings, topic: str, start_ms: int | None, end_ms: int | None, idle_timeout_s: float = 30.0
) -> AsyncIterator[RawRecord]:
    """The records of ``topic`` with a timestamp in ``[start_ms, end_ms)``, merged across partitions by timestamp.

    Each partition's start is found with ``offsets_for_times(start_ms)``, its end with
    ``offsets_for_times(end_ms)`` (or the end offset at the start of the read), so records appended
    meanwhile, including by a replay into this very topic, are not read.
    """
    if start_ms is not None and end_ms is not None and end_ms <= start_ms:
        raise TopicRangeError(f"empty time range: --to must be after --from (topic {topic!r})")
    consumer = AIOKafkaConsumer(
        **kafka_client_kwargs(bootstrap), group_id=None, enable_auto_commit=False, auto_offset_reset="earliest"
    )
    await consumer.start()
    try:
        n_parts = await partition_count(bootstrap, topic)
        if not n_parts:
            raise TopicRangeError(f"no topic {topic!r} on {kafka_bootstrap_of(bootstrap)}")
        tps = [TopicPartition(topic, p) for p in range(n_parts)]
        ends = await consumer.end_offsets(tps)
        starts: dict[TopicPartition, int] = await consumer.beginning_offsets(tps)
        if start_ms is not None:
            found = await consumer.offsets_for_times({tp: start_ms for tp in tps})
            starts = {tp: (found[tp].offset if found[tp] is not None else ends[tp]) for tp in tps}
        if end_ms is not None:
            found = await consumer.offsets_for_times({tp: end_ms for tp in tps})
            ends = {tp: (found[tp].offset if found[tp] is not None else ends[tp]) for tp in tps}
        todo = [tp for tp in tps if starts[tp] < ends[tp]]
        if not todo:
            return
        consumer.assign(todo)
        for tp in todo:
            consumer.seek(tp, starts[tp])
        buffers: dict[TopicPartition, deque[Any]] = {tp: deque() for tp in todo}
        done: set[TopicPartition] = set()
        heap: list[tuple[int, int, TopicPartition]] = []  # (timestamp of the buffered head, partition, tp)
        while True:
            hungry = [tp for tp in todo if tp not in done and not buffers[tp]]
            if hungry:
                # Fetch only for partitions with nothing buffered: memory stays a fetch per partition.
                consumer.pause(*[tp for tp in todo if tp not in hungry])
                consumer.resume(*hungry)
                batch = await consumer.getmany(*hungry, timeout_ms=int(idle_timeout_s * 1000))
                if not any(batch.values()):
                    for tp in hungry:
                        if await consumer.position(tp) >= ends[tp]:
                            done.add(tp)
                    if not any(tp not in done and not buffers[tp] for tp in hungry):
                        continue
                    at = [f"{tp.partition}@{await consumer.position(tp)}" for tp in hungry]
                    missing = ", ".join(at)
                    raise TopicRangeError(f"topic {topic!r}: no records within {idle_timeout_s:.0f}s at {missing}")
                for tp, msgs in batch.items():
                    for m in msgs:
                        if m.offset >= ends[tp]:
                            done.add(tp)
                            break
                        buffers[tp].append(m)
                        if len(buffers[tp]) == 1:
                            heapq.heappush(heap, (m.timestamp, tp.partition, tp))
                    if await consumer.position(tp) >= ends[tp]:
                        done.add(tp)
                continue
            if not heap:
                return
            _, _, tp = heapq.heappop(heap)
            m = buffers[tp].popleft()
            if buffers[tp]:
                heapq.heappush(heap, (buffers[tp][0].timestamp, tp.partition, tp))
            # offsets_for_times finds the first offset at or after a time; later offsets may carry
            # earlier timestamps (producer clocks), so the range is checked record by record.
            if (start_ms is None or m.timestamp >= start_ms) and (end_ms is None or m.timestamp < end_ms):
                yield RawRecord(m.key, m.value, m.timestamp, tuple((k, v) for k, v in (m.headers or ())))
    finally:
        await consumer.stop()
