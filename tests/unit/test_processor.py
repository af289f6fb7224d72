"""BatchProcessor routing with in-memory stand-ins for Redis and Kafka (the real ones are in tests/integration)."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest

from engine.errors import InferenceOutputError
from engine.runtime import load_classifier
from engine.settings import EngineSettings
from stream.events import WindowStatus
from stream.processor import BatchPipeline, BatchProcessor, BatchResult, RawMessage
from stream.settings import StreamSettings
from stream.windows import AlertContext, ApplyResult, ClosedBucket, WindowSums, WindowUpdate, bucket_start


class MemorySink:
    def __init__(self) -> None:
        self.scored: list[tuple[bytes, bytes]] = []
        self.alerts: list[tuple[bytes, bytes]] = []
        self.dlq: list[tuple[bytes | None, bytes]] = []

    async def send_scored(self, records: Sequence[tuple[bytes, bytes]]) -> None:
        self.scored.extend(records)

    async def send_alerts(self, records: Sequence[tuple[bytes, bytes]]) -> None:
        self.alerts.extend(records)

    async def send_dead_letters(self, records: Sequence[tuple[bytes | None, bytes]]) -> None:
        self.dlq.extend(records)


class MemoryStore:
    """Counts like the Redis store (dedupe by id, buckets close when event time passes them), without lateness."""

    BUCKET = 60

    def encode(self, updates: Sequence[WindowUpdate]) -> bytes:
        return orjson.dumps([u.event_id for u in updates])

    def __init__(self) -> None:
        self.seen: set[str] = set()
        self.updates: list[WindowUpdate] = []
        self.pending: set[tuple[str, str, int]] = set()
        self.cooldown: dict[tuple[str, str], int] = {}
        self.fail_next = 0
        self.committed_seen: list[dict[str, int] | None] = []

    async def apply(
        self,
        updates: Sequence[WindowUpdate],
        sources: Sequence[str] = (),
        now_ms: int | None = None,
        *,
        payload: bytes | None = None,
        committed: Mapping[str, int] | None = None,
    ) -> ApplyResult:
        self.committed_seen.append(None if committed is None else dict(committed))
        if self.fail_next:
            self.fail_next -= 1
            raise ConnectionError("redis down")
        out: list[WindowStatus] = []
        for u in updates:
            if u.event_id in self.seen:
                out.append("duplicate")
            else:
                self.seen.add(u.event_id)
                self.updates.append(u)
                out.append("counted")
                for kind, name in u.entities:
                    if u.sentiment == 0:
                        self.pending.add((kind, name, bucket_start(u.ts_ms, self.BUCKET) + self.BUCKET))
        wm_s = max(u.ts_ms for u in self.updates) // 1000 if self.updates else 0
        # Closed buckets stay pending until settled (like the Redis store; no leases here).
        closed = sorted((c for c in self.pending if c[2] <= wm_s), key=lambda c: (c[2], c[0], c[1]))
        # Novelty is judged in Redis (tests/integration/test_novelty.py); here every event is novel.
        return ApplyResult(out, [ClosedBucket(*c) for c in closed], [0] * len(out), [None] * len(out))

    async def settle(self, judged: Sequence[ClosedBucket], cooldowns: Sequence[tuple[str, str, str, int]]) -> None:
        self.pending -= {(c.kind, c.name, c.end_s) for c in judged}
        for _rule, kind, name, end_ms in cooldowns:
            self.cooldown[(kind, name)] = max(self.cooldown.get((kind, name), -1), end_ms)

    async def context(self, kind: str, name: str, end_s: int, window_s: int) -> AlertContext:
        neg = [
            u
            for u in self.updates
            if (kind, name) in u.entities and u.sentiment == 0 and end_s - window_s <= u.ts_ms // 1000 < end_s
        ]
        topics = Counter(n for u in neg for k, n in u.entities if k == "topic") if kind == "ticker" else Counter()
        return AlertContext([(u.event_id, u.example) for u in neg[:3]], topics.most_common(3))

    async def watermark_ms(self) -> int | None:
        return max((u.ts_ms for u in self.updates), default=None)

    async def window_sums(
        self,
        queries: Sequence[tuple[str, str, int]],
        recent_s: int,
        baseline_s: int,
        min_count: int = 0,
        floor: float = 0.0,
        rule: str = "",
        novel_only: bool = False,
    ) -> list[WindowSums]:
        out = []
        for kind, name, end_s in queries:
            ent = (kind, name)
            rec = [u for u in self.updates if ent in u.entities and end_s - recent_s <= u.ts_ms // 1000 < end_s]
            out.append(WindowSums(len(rec), sum(1 for u in rec if u.sentiment == 0), 0, 0, self.cooldown.get(ent, -1)))
        return out


def msg(value: bytes | None, offset: int) -> RawMessage:
    return RawMessage(value=value, key=None, topic="in", partition=0, offset=offset)


def good(i: int, text: str = "$AAPL beats estimates") -> bytes:
    return orjson.dumps({"id": f"e{i}", "text": text, "published_at": 1398902400000 + i * 1000})


@pytest.fixture()
def processor(tiny_model_dir: Path) -> tuple[BatchProcessor, MemoryStore, MemorySink]:
    clf = load_classifier(EngineSettings(backend="torch"), tiny_model_dir)
    store, sink = MemoryStore(), MemorySink()
    settings = StreamSettings(infra_retry_max_seconds=0.01, bucket_seconds=MemoryStore.BUCKET)
    return BatchProcessor(settings, clf, store, sink), store, sink  # type: ignore[arg-type]


async def test_valid_and_bad_messages_are_routed(processor: tuple[BatchProcessor, MemoryStore, MemorySink]) -> None:
    p, store, sink = processor
    res = await p.process([msg(good(1), 0), msg(b"not json", 1), msg(good(2), 2), msg(None, 3)])
    assert res.scored == 2 and res.dead_letters == 2
    assert [orjson.loads(v)["id"] for _, v in sink.scored] == ["e1", "e2"]
    assert sorted(orjson.loads(v)["offset"] for _, v in sink.dlq) == [1, 3]
    assert all(u.entities[0] == ("ticker", "AAPL") for u in store.updates)


async def test_a_batch_reports_its_newest_event_time_per_partition_and_counts_pass_the_committed_marks(
    processor: tuple[BatchProcessor, MemoryStore, MemorySink],
) -> None:
    p, store, _ = processor
    batch = [
        RawMessage(good(3), None, "in", 0, 0),
        RawMessage(good(1), None, "in", 0, 1),  # out of order on its partition: the newest still wins
        RawMessage(good(2), None, "in", 1, 0),
        RawMessage(b"bad", None, "in", 2, 0),  # a dead letter has no event time
    ]
    res = await p.process(batch)
    assert res.newest_ms == {"in:0": 1398902400000 + 3000, "in:1": 1398902400000 + 2000}
    # Without a committing consumer nothing is reported; with one, its marks go with every count and tick.
    assert store.committed_seen == [None]
    p.committed_event_ms = {"in:0": 5}
    await p.process([RawMessage(good(4), None, "in", 0, 2)])
    await p.tick()
    assert store.committed_seen[1:] == [{"in:0": 5}, {"in:0": 5}]


async def test_duplicate_ids_are_scored_but_counted_once(
    processor: tuple[BatchProcessor, MemoryStore, MemorySink],
) -> None:
    p, store, sink = processor
    await p.process([msg(good(1), 0)])
    await p.process([msg(good(1), 1)])
    assert [orjson.loads(v)["window_status"] for _, v in sink.scored] == ["counted", "duplicate"]
    assert len(store.updates) == 1


async def test_redis_outage_is_retried_not_dropped(processor: tuple[BatchProcessor, MemoryStore, MemorySink]) -> None:
    p, store, sink = processor
    store.fail_next = 3
    await p.process([msg(good(1), 0)])
    assert p.prom.summary()["infra_retries"] == 3
    assert len(sink.scored) == 1 and len(store.updates) == 1


async def test_engine_failure_dead_letters_the_batch(
    processor: tuple[BatchProcessor, MemoryStore, MemorySink], monkeypatch: pytest.MonkeyPatch
) -> None:
    p, store, sink = processor

    def broken(texts: list[str], **_: object) -> dict[str, np.ndarray]:
        raise InferenceOutputError("backend returned 1 row for 2 texts")

    monkeypatch.setattr(p.classifier, "classify", broken)
    res = await p.process([msg(good(1), 0), msg(good(2), 1)])
    assert res.scored == 0
    assert sorted(orjson.loads(v)["reason"] for _, v in sink.dlq) == ["inference_error", "inference_error"]
    assert not store.updates


async def test_poison_event_is_bisected_out(
    processor: tuple[BatchProcessor, MemoryStore, MemorySink], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only the events the engine refuses go to the DLQ; the rest of their batch is scored."""
    p, store, sink = processor
    orig = p.classifier.classify
    calls: list[int] = []

    def picky(texts: list[str], **_: object) -> dict[str, np.ndarray]:
        calls.append(len(texts))
        if any("POISON" in t for t in texts):
            raise InferenceOutputError("backend choked on this input")
        return orig(texts)

    monkeypatch.setattr(p.classifier, "classify", picky)
    msgs = [msg(good(i, "$AAPL POISON" if i in (3, 11) else f"$AAPL fine {i}"), i) for i in range(16)]
    res = await p.process(msgs)
    assert res.scored == 14 and res.dead_letters == 2
    dead = [orjson.loads(v) for _, v in sink.dlq]
    assert sorted(d["offset"] for d in dead) == [3, 11] and {d["reason"] for d in dead} == {"inference_error"}
    scored = [orjson.loads(v) for _, v in sink.scored]
    assert [d["id"] for d in scored] == [f"e{i}" for i in range(16) if i not in (3, 11)]
    # Each scored record carries the probabilities of its own text, in input order.
    ref = orig([f"$AAPL fine {i}" for i in range(16) if i not in (3, 11)])["sentiment"]
    got = np.array([[d["sentiment"]["probs"][k] for k in ("negative", "neutral", "positive")] for d in scored])
    assert np.allclose(got, ref, atol=1e-5)
    assert len(calls) < 16  # bisection, not one call per event


async def test_future_timestamp_goes_to_dlq(processor: tuple[BatchProcessor, MemoryStore, MemorySink]) -> None:
    p, store, sink = processor
    future = orjson.dumps({"id": "f1", "text": "$AAPL from a broken clock", "published_at": "2099-01-01T00:00:00Z"})
    res = await p.process([msg(future, 0), msg(good(1), 1)])
    assert res.scored == 1 and [orjson.loads(v)["reason"] for _, v in sink.dlq] == ["future_timestamp"]
    assert [u.event_id for u in store.updates] == ["e1"]


async def test_alert_stays_pending_until_kafka_acknowledges(
    processor: tuple[BatchProcessor, MemoryStore, MemorySink], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A failed alert send leaves the bucket pending and the cooldown unset: it is judged again, same id."""
    p, store, sink = processor
    orig = p.classifier.classify

    def all_negative(texts: list[str], **_: object) -> dict[str, np.ndarray]:
        out = orig(texts)
        out["sentiment"] = np.tile(np.array([[0.9, 0.05, 0.05]], dtype=np.float32), (len(texts), 1))
        return out

    monkeypatch.setattr(p.classifier, "classify", all_negative)
    await p.process([msg(good(i, "$ZZQX collapses"), i) for i in range(8)])
    real_send = sink.send_alerts

    async def broken(records: Sequence[tuple[bytes, bytes]]) -> None:
        raise RuntimeError("process died here")

    sink.send_alerts = broken  # type: ignore[method-assign]
    later = orjson.dumps({"id": "later", "text": "$OTHER flat", "published_at": 1398902400000 + 180_000})
    with pytest.raises(RuntimeError):
        await p.process([msg(later, 99)])
    assert any(k == "ticker" and n == "ZZQX" for k, n, _ in store.pending)
    assert not store.cooldown
    sink.send_alerts = real_send  # type: ignore[method-assign]
    first = await p.tick()
    again = await p.tick()
    assert [a.entity for a in first if a.entity_kind == "ticker"] == ["ZZQX"] and not again
    assert not any(n == "ZZQX" for _, n, _ in store.pending) and store.cooldown[("ticker", "ZZQX")] > 0


async def test_outage_marks_health_degraded_while_waiting(
    processor: tuple[BatchProcessor, MemoryStore, MemorySink],
) -> None:
    p, store, sink = processor
    p.settings = p.settings.model_copy(update={"infra_retry_max_seconds": 0.2})
    store.fail_next = 10**6
    task = asyncio.ensure_future(p.process([msg(good(1), 0)]))
    await asyncio.sleep(0.5)
    status, reasons = p.health_state()
    assert status == "degraded" and any("redis_apply" in r for r in reasons)
    assert not task.done()  # waiting (backpressure), not dropping
    store.fail_next = 0
    await asyncio.wait_for(task, 5)
    assert p.health_state() == ("ok", []) and len(store.updates) == 1
    summary = p.prom.summary()
    assert summary["retries_by_op"] == {"redis_apply": summary["infra_retries"]} and summary["infra_retries"]


def test_transient_errors_are_told_apart() -> None:
    from aiokafka.errors import KafkaConnectionError, KafkaTimeoutError, MessageSizeTooLargeError
    from faust.exceptions import ProducerSendError
    from redis.exceptions import BusyLoadingError, ResponseError

    from stream.processor import is_transient

    assert is_transient(KafkaTimeoutError()) and is_transient(KafkaConnectionError())
    try:
        raise ProducerSendError("send failed") from KafkaConnectionError()
    except ProducerSendError as exc:
        assert is_transient(exc)
    assert is_transient(BusyLoadingError("LOADING")) and is_transient(ConnectionRefusedError())
    # Another client's long script makes Redis answer BUSY: a wait, not a reason to exit.
    assert is_transient(ResponseError("BUSY Redis is busy running a script. You can only call SCRIPT KILL"))
    assert not is_transient(MessageSizeTooLargeError()) and not is_transient(ResponseError("WRONGTYPE"))
    assert not is_transient(ValueError("a bug"))


async def test_negative_burst_raises_one_alert_per_entity(
    processor: tuple[BatchProcessor, MemoryStore, MemorySink], monkeypatch: pytest.MonkeyPatch
) -> None:
    p, store, sink = processor
    orig = p.classifier.classify

    def all_negative(texts: list[str], **_: object) -> dict[str, np.ndarray]:
        out = orig(texts)
        out["sentiment"] = np.tile(np.array([[0.9, 0.05, 0.05]], dtype=np.float32), (len(texts), 1))
        return out

    monkeypatch.setattr(p.classifier, "classify", all_negative)
    await p.process([msg(good(i, "$ZZQX collapses"), i) for i in range(8)])
    assert not sink.alerts  # the burst's bucket is still open: its counts may still grow
    # Event time moves on (an event two minutes later): the bucket closes and is judged once.
    later = orjson.dumps({"id": "later", "text": "$OTHER flat", "published_at": 1398902400000 + 180_000})
    await p.process([msg(later, 99)])
    alerts = [orjson.loads(v) for _, v in sink.alerts]
    tickers = [a for a in alerts if a["entity_kind"] == "ticker"]
    assert [a["entity"] for a in tickers] == ["ZZQX"]
    assert tickers[0]["count"] == 8 and tickers[0]["observed_share"] == 1.0
    assert len(tickers[0]["example_event_ids"]) == 3
    # The alert quotes the words of its negative events, and says which topics drove a ticker alert.
    assert [x["id"] for x in tickers[0]["examples"]] == tickers[0]["example_event_ids"]
    assert all(x["text"] and "$ZZQX collapses" in x["text"] for x in tickers[0]["examples"])
    assert sum(t["negative"] for t in tickers[0]["top_topics"]) == 8


class SlowStore(MemoryStore):
    """A store whose writes take a while and leave a trace, to see what overlaps what."""

    def __init__(self, trace: list[str]) -> None:
        super().__init__()
        self.trace = trace
        self.fail_ids: set[str] = set()

    def encode(self, updates: Sequence[WindowUpdate]) -> bytes:
        self.trace.append(f"encode {updates[0].event_id}")
        return super().encode(updates)

    async def apply(
        self,
        updates: Sequence[WindowUpdate],
        sources: Sequence[str] = (),
        now_ms: int | None = None,
        *,
        payload: bytes | None = None,
        committed: Mapping[str, int] | None = None,
    ) -> ApplyResult:
        first = updates[0].event_id
        if first in self.fail_ids:
            raise RuntimeError(f"bug while counting {first}")
        self.trace.append(f"apply-start {first}")
        await asyncio.sleep(0.05)
        res = await super().apply(updates, sources, committed=committed)
        self.trace.append(f"apply-end {first}")
        return res


def _traced_pipeline(
    processor: tuple[BatchProcessor, MemoryStore, MemorySink], monkeypatch: pytest.MonkeyPatch, depth: int
) -> tuple[BatchPipeline, SlowStore, list[str]]:
    p, _, _ = processor
    trace: list[str] = []
    store = SlowStore(trace)
    p.store = store  # type: ignore[assignment]
    orig = p.classifier.classify

    def traced(texts: list[str], **_: object) -> dict[str, np.ndarray]:
        trace.append(f"infer {len(texts)}")
        return orig(texts)

    monkeypatch.setattr(p.classifier, "classify", traced)
    return BatchPipeline(p, depth=depth), store, trace


async def test_pipeline_overlaps_inference_but_commits_in_order(
    processor: tuple[BatchProcessor, MemoryStore, MemorySink], monkeypatch: pytest.MonkeyPatch
) -> None:
    pipe, store, trace = _traced_pipeline(processor, monkeypatch, depth=2)
    sink = processor[2]
    acked: list[int] = []
    batches = [[msg(good(10 * b + i), 10 * b + i) for i in range(b + 1)] for b in range(4)]
    for b, batch in enumerate(batches):

        async def on_done(res: BatchResult, b: int = b) -> None:
            acked.append(b)

        await pipe.submit(batch, on_done)
    await pipe.drain()
    assert acked == [0, 1, 2, 3]
    # Redis saw the batches in take order, one at a time...
    applies = [t for t in trace if t.startswith("apply")]
    assert applies == [f"apply-{w} e{10 * b}" for b in range(4) for w in ("start", "end")]
    # ...while the next batch was classified before the previous one had been counted.
    assert trace.index("infer 2") < trace.index("apply-end e0")
    assert [orjson.loads(v)["id"] for _, v in sink.scored] == [f"e{10 * b + i}" for b in range(4) for i in range(b + 1)]


class SlowSink(MemorySink):
    """A sink whose scored sends take a while and leave a trace; the batch whose first id is in ``fail`` fails."""

    def __init__(self, trace: list[str]) -> None:
        super().__init__()
        self.trace = trace
        self.fail: set[str] = set()

    async def send_scored(self, records: Sequence[tuple[bytes, bytes]]) -> None:
        first = orjson.loads(records[0][1])["id"]
        self.trace.append(f"send-start {first}")
        await asyncio.sleep(0.05)
        if first in self.fail:
            raise RuntimeError(f"bug while sending {first}")
        await super().send_scored(records)
        self.trace.append(f"send-end {first}")


async def test_pipeline_counts_the_next_batch_while_the_previous_one_is_published(
    processor: tuple[BatchProcessor, MemoryStore, MemorySink], monkeypatch: pytest.MonkeyPatch
) -> None:
    pipe, store, trace = _traced_pipeline(processor, monkeypatch, depth=3)
    sink = SlowSink(trace)
    processor[0].sink = sink
    acked: list[int] = []
    for b in range(4):

        async def on_done(res: BatchResult, b: int = b) -> None:
            trace.append(f"ack {b}")
            acked.append(b)

        await pipe.submit([msg(good(10 * b + i), 10 * b + i) for i in range(2)], on_done)
    await pipe.drain()
    # Counting stays one batch at a time, in take order...
    applies = [t for t in trace if t.startswith("apply")]
    assert applies == [f"apply-{w} e{10 * b}" for b in range(4) for w in ("start", "end")]
    # ...but batch 1 is counted while batch 0's scored records are still on their way, and its payload
    # was ready before batch 0's count returned (only the Redis call waits for the previous one).
    assert trace.index("apply-start e10") < trace.index("send-end e0")
    assert trace.index("encode e10") < trace.index("apply-end e0")
    # Acks stay in take order, each after its own outputs were sent.
    assert acked == [0, 1, 2, 3]
    assert all(trace.index(f"send-end e{10 * b}") < trace.index(f"ack {b}") for b in range(4))
    assert [orjson.loads(v)["id"] for _, v in sink.scored] == [f"e{10 * b + i}" for b in range(4) for i in range(2)]


async def _three_batches_the_second_failing(pipe: BatchPipeline) -> list[int]:
    """Submit batches e0, e10, e20 (the caller makes e10 fail), check the failure surfaces; the batches acked."""
    acked: list[int] = []
    for b in range(3):

        async def on_done(res: BatchResult, b: int = b) -> None:
            acked.append(b)

        await pipe.submit([msg(good(10 * b), b)], on_done)
    with pytest.raises(RuntimeError, match="e10"):
        await pipe.drain()
    await pipe.close(timeout=1)
    return acked


async def test_pipeline_acks_nothing_after_a_failed_publish(
    processor: tuple[BatchProcessor, MemoryStore, MemorySink], monkeypatch: pytest.MonkeyPatch
) -> None:
    pipe, store, trace = _traced_pipeline(processor, monkeypatch, depth=3)
    sink = SlowSink(trace)
    sink.fail = {"e10"}
    processor[0].sink = sink
    acked = await _three_batches_the_second_failing(pipe)
    # Batch 1's outputs never went out: neither it nor batch 2 (published fine) is acked, so Kafka
    # redelivers both, and Redis (which counted batch 2 already) answers "duplicate" for its events.
    assert acked == [0]
    assert [u.event_id for u in store.updates] == ["e0", "e10", "e20"]


async def test_pipeline_failure_stops_later_commits(
    processor: tuple[BatchProcessor, MemoryStore, MemorySink], monkeypatch: pytest.MonkeyPatch
) -> None:
    pipe, store, trace = _traced_pipeline(processor, monkeypatch, depth=3)
    store.fail_ids = {"e10"}
    acked = await _three_batches_the_second_failing(pipe)
    # Batch 1 failed: neither it nor the batch after it is acked, so Kafka redelivers both.
    assert acked == [0]
    assert [u.event_id for u in store.updates] == ["e0"]


async def test_a_failed_last_batch_is_reported_at_once_not_at_the_next_submit(
    processor: tuple[BatchProcessor, MemoryStore, MemorySink], monkeypatch: pytest.MonkeyPatch
) -> None:
    # The worker ends itself on such a report; waiting for the next batch could mean waiting forever.
    pipe, store, _ = _traced_pipeline(processor, monkeypatch, depth=2)
    failures: list[BaseException] = []
    pipe.on_failure = failures.append
    store.fail_ids = {"e0"}

    async def on_done(res: BatchResult) -> None:
        pass

    await pipe.submit([msg(good(0), 0)], on_done)
    for _ in range(200):  # no further submit, no drain: only the failure callback can tell
        if failures:
            break
        await asyncio.sleep(0.01)
    assert len(failures) == 1 and "e0" in str(failures[0])
    await pipe.close(timeout=1)


async def test_an_event_that_breaks_the_parser_is_dead_lettered(
    processor: tuple[BatchProcessor, MemoryStore, MemorySink], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Defence in depth: even a parser bug costs one dead letter, not the worker."""
    import stream.processor as proc

    p, store, sink = processor
    real = proc.parse_event

    def buggy(raw: bytes | str | None, max_event: int, max_text: int) -> Any:
        if raw is not None and b"boom" in (raw if isinstance(raw, bytes) else raw.encode()):
            raise OverflowError("date value out of range")
        return real(raw, max_event, max_text)

    monkeypatch.setattr(proc, "parse_event", buggy)
    monkeypatch.setattr(proc, "decode_event", buggy)  # the compiled fast path runs first
    res = await p.process([msg(good(1, "$AAPL boom"), 0), msg(good(2), 1)])
    assert res.scored == 1 and [orjson.loads(v)["reason"] for _, v in sink.dlq] == ["unparseable"]


async def test_prometheus_metrics_count_what_happened(
    processor: tuple[BatchProcessor, MemoryStore, MemorySink],
) -> None:
    p, store, sink = processor
    store.fail_next = 2
    await p.process([msg(good(1), 0), msg(b"not json", 1), msg(good(2), 2)])
    await p.process([msg(good(1), 3)])
    reg = p.prom.registry

    def value(name: str, **labels: str) -> float | None:
        return reg.get_sample_value(name, labels)

    assert value("finpulse_events_in_total") == 4 and value("finpulse_events_scored_total") == 3
    assert value("finpulse_events_window_total", status="counted") == 2
    assert value("finpulse_events_window_total", status="duplicate") == 1
    assert value("finpulse_dead_letters_total", reason="not_json") == 1
    assert value("finpulse_infra_retries_total", op="redis_apply") == 2
    assert value("finpulse_degraded", op="redis_apply") == 0  # recovered
    assert value("finpulse_batch_events_count") == 2 and value("finpulse_batch_events_sum") == 4
    assert value("finpulse_inference_seconds_count") == 2
    assert value("finpulse_event_lag_seconds_count") == 3
    assert value("finpulse_engine_info", backend="torch", device="cpu", precision="fp32", model_id=p.model_id) == 1
    text = p.prom.exposition(lambda: {("in", 0): 7}).decode()
    assert 'finpulse_consumer_lag{partition="0",topic="in"} 7.0' in text
