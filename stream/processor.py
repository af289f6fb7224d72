"""One micro-batch, start to finish: validate, classify, count in Redis, score, alert, dead-letter.

This is the worker's whole logic, kept free of Faust so that benchmarks and tests drive it directly;
``stream.app`` only feeds it batches taken from Kafka. Nothing here drops an input: every message
ends as a scored event or a dead letter, and infrastructure errors are retried (the consumer waits,
which is the backpressure) rather than skipped.
"""

from __future__ import annotations

import asyncio
import base64
import os
import signal
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from typing import Protocol, TypeVar

import numpy as np
import orjson
import structlog
from aiokafka.errors import KafkaError, KafkaTimeoutError
from faust.exceptions import ProducerSendError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError as RedisResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, wait_random_exponential

from engine.classifier import TextClassifier
from engine.errors import EngineError
from engine.heads import SENTIMENT_LABELS
from engine.tokenize import TokenizedTexts
from stream.alerts import RULE_NAME, SurgeParams, alert_id, evaluate_surge
from stream.events import (
    Alert,
    AlertExample,
    DeadLetter,
    InputEvent,
    Rejection,
    TopicCount,
    WindowStatus,
    decode_event,
    example_text,
    ms_to_iso,
    parse_event,
)
from stream.metrics import WorkerMetrics
from stream.novelty import Sketcher
from stream.settings import StreamSettings
from stream.windows import ApplyResult, ClosedBucket, WindowStore, WindowSums, WindowUpdate, entities_for

log = structlog.get_logger(__name__)
T = TypeVar("T")


@dataclass(frozen=True)
class RawMessage:
    """A Kafka record as the processor needs it (no Faust types leak in here)."""

    value: bytes | None
    key: bytes | None
    topic: str
    partition: int
    offset: int
    timestamp_ms: int | None = None


class Sink(Protocol):
    """Where results go: (key, value) pairs per output topic."""

    async def send_scored(self, records: Sequence[tuple[bytes, bytes]]) -> None: ...

    async def send_alerts(self, records: Sequence[tuple[bytes, bytes]]) -> None: ...

    async def send_dead_letters(self, records: Sequence[tuple[bytes | None, bytes]]) -> None: ...


@dataclass(frozen=True)
class BatchResult:
    scored: int
    dead_letters: int
    alerts: list[Alert]
    statuses: list[WindowStatus]
    # Per input partition ("topic:partition"): the newest event time among the batch's valid events. The
    # consumer reports it to the window store once the batch's offsets are committed (the dedupe floor).
    newest_ms: dict[str, int] = field(default_factory=dict)


@dataclass
class PreparedBatch:
    """A batch between stages: validated events (with the messages they came from) and dead letters."""

    t0: float
    events: list[InputEvent] = field(default_factory=list)
    sources: list[RawMessage] = field(default_factory=list)
    dead: list[tuple[RawMessage, str, str]] = field(default_factory=list)
    probs: dict[str, np.ndarray] = field(default_factory=dict)
    bands: list[list[str]] = field(default_factory=list)  # per event: its LSH band keys (novelty on)


@dataclass
class CountedBatch:
    """A batch between inference and publishing: its window updates and their payload (``to_count``), then
    what Redis answered (``count``); everything the publishing stage needs."""

    batch: PreparedBatch
    applied: ApplyResult | None = None  # None: no valid event, nothing was counted
    sent: np.ndarray | None = None  # sentiment probabilities, one row per event
    cls: np.ndarray | None = None
    scores: np.ndarray = field(default_factory=lambda: np.zeros(0))
    topic_idx: np.ndarray | None = None
    topics: list[str | None] = field(default_factory=list)
    updates: list[WindowUpdate] = field(default_factory=list)
    payload: bytes | None = None  # the window script's encoding of ``updates``


def is_transient(exc: BaseException) -> bool:
    """An infrastructure error worth waiting out: Redis or Kafka unreachable, timing out or still loading.

    Kafka errors count when aiokafka marks them retriable, or are a timeout (what a send to a dead
    broker ends with); Faust wraps send errors in ``ProducerSendError``, so its cause decides.
    """
    if isinstance(exc, ProducerSendError):
        return exc.__cause__ is not None and is_transient(exc.__cause__)
    if isinstance(exc, KafkaError):
        return bool(getattr(exc, "retriable", False)) or isinstance(exc, KafkaTimeoutError)
    # A Redis busy with someone else's long script answers "BUSY ...": wait, as for an outage.
    if isinstance(exc, RedisResponseError) and str(exc).startswith("BUSY"):
        return True
    # redis-py's BusyLoadingError (a restarted Redis replaying its AOF) is a ConnectionError.
    return isinstance(exc, (RedisConnectionError, RedisTimeoutError, ConnectionError, asyncio.TimeoutError, OSError))


def _preview(value: bytes, chars: int) -> str | None:
    """The first ``chars`` characters of ``value`` as UTF-8 text (a cut multi-byte character dropped); None when
    the bytes are not text or no preview is wanted."""
    if chars <= 0:
        return None
    # At most 4 bytes a character: decode just enough, tolerating a character cut at the end.
    head = value[: chars * 4]
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as exc:
        if exc.start < len(head) - 3:
            return None  # not text at all (a cut only ever spoils the last 3 bytes)
        text = head[: exc.start].decode("utf-8")
    return text[:chars]


def encode_scored(
    events: Sequence[InputEvent],
    sent: np.ndarray,
    cls: np.ndarray,
    scores: np.ndarray,
    topic_probs: np.ndarray | None,
    topic_idx: np.ndarray | None,
    topics: Sequence[str | None],
    statuses: Sequence[WindowStatus],
    novelty: Sequence[float] | None = None,
    duplicate_of: Sequence[str | None] = (),
    *,
    processed_at: str,
    model_id: str,
    backend: str,
) -> list[tuple[bytes, bytes]]:
    """(key, value) of every scored record: the JSON of ``stream.events.ScoredEvent``, fields in its order.

    Written from byte pieces rather than through a model or a dict per event (about 8 us an event that
    way, a tenth of a saturated worker's budget at 10,000 events/s): the per-batch parts are encoded once,
    strings through orjson, numbers as the float64 values the model gives. ``parse_scored`` reads the
    result back into the same ScoredEvent as before (tests compare them).
    """
    dumps = orjson.dumps
    labels = [lbl.encode() for lbl in SENTIMENT_LABELS]
    neg, neu, pos = (f'"{lbl}":'.encode() for lbl in SENTIMENT_LABELS)
    mid = b',"processed_at":' + dumps(processed_at) + b',"sentiment":{"label":"'
    tail = b',"model_id":' + dumps(model_id) + b',"backend":' + dumps(backend) + b',"window_status":"'
    topic_json = {t: b'{"label":' + dumps(t) + b',"prob":' for t in set(topics) if t is not None}
    # One float64 list per batch; each event's numbers then come out of one orjson call.
    sent64 = sent.astype(np.float64).tolist()
    score64 = scores.astype(np.float64).tolist()
    tprob64 = (
        topic_probs[np.arange(len(events)), topic_idx].astype(np.float64).tolist()
        if topic_probs is not None and topic_idx is not None
        else None
    )
    cls_list = cls.tolist()
    nov = list(novelty) if novelty is not None else None
    out: list[tuple[bytes, bytes]] = []
    for i, e in enumerate(events):
        p = sent64[i]
        t = topics[i]
        nums = dumps(
            (p[0], p[1], p[2], score64[i], tprob64[i] if tprob64 is not None else 0.0, nov[i] if nov else None)
        )[1:-1].split(b",")
        dup = duplicate_of[i] if duplicate_of else None
        eid = e.id.encode()
        value = b"".join(
            (
                b'{"id":',
                dumps(e.id),
                b',"tickers":',
                dumps(e.tickers),
                b',"source":',
                dumps(e.source),
                b',"published_at":',
                str(e.published_at).encode(),
                b',"published_at_iso":"',
                ms_to_iso(e.published_at).encode(),
                b'"',
                mid,
                labels[cls_list[i]],
                b'","probs":{',
                neg,
                nums[0],
                b",",
                neu,
                nums[1],
                b",",
                pos,
                nums[2],
                b'}},"topic":',
                (topic_json[t] + nums[4] + b"}") if t is not None and tprob64 is not None else b"null",
                b',"score":',
                nums[3],
                tail,
                statuses[i].encode(),
                b'","novelty":',
                nums[5],
                b',"duplicate_of":',
                dumps(dup) if dup is not None else b"null",
                b"}",
            )
        )
        out.append((eid, value))
    return out


def _now_iso() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


class BatchProcessor:
    """Processes one batch of raw messages; safe to call from one coroutine at a time."""

    def __init__(
        self,
        settings: StreamSettings,
        classifier: TextClassifier,
        store: WindowStore,
        sink: Sink,
        executor: Executor | None = None,
        tokenize_executor: Executor | None = None,
        novelty_executor: Executor | None = None,
    ) -> None:
        self.settings = settings
        self.classifier = classifier
        self.store = store
        self.sink = sink
        self.executor = executor
        # Tokenizing has a thread of its own where the caller gives one (the worker does), so that it
        # overlaps the previous batch's inference; otherwise it shares the inference executor.
        self.tokenize_executor = tokenize_executor or executor
        self.params: SurgeParams = settings.surge_params()
        # Novelty signatures run in a thread of their own (the worker gives one) beside tokenizing and inference.
        self.novelty = settings.novelty_params()
        self.sketcher = Sketcher(self.novelty) if self.novelty is not None else None
        self.novelty_executor = novelty_executor
        self.novel_only = settings.alert_events == "novel"
        desc = classifier.describe()
        # The worker's counters and histograms (/metrics; /health shows a summary of the same).
        self.prom = WorkerMetrics()
        self.prom.set_engine(desc)
        classifier.stats.call_observer = self.prom.engine_call.observe
        self.model_id = str(desc.get("model_id"))
        self.backend_name = str(desc.get("backend"))
        heads = {h.name: h for h in classifier.heads}
        if "sentiment" not in heads or tuple(heads["sentiment"].labels) != SENTIMENT_LABELS:
            raise EngineError(f"model {self.model_id} has no sentiment head with labels {SENTIMENT_LABELS}")
        # Every input partition: the low watermark is defined once each has delivered an event.
        self.sources = [f"{settings.input_topic}:{i}" for i in range(settings.partitions)]
        self.topic_labels: tuple[str, ...] | None = tuple(heads["topic"].labels) if "topic" in heads else None
        # Operations now waiting on an outage, with the last error: /health reports "degraded" while any is.
        self.degraded: dict[str, str] = {}
        # The alert stage (judge, send, settle) runs for one caller at a time: a batch or the tick.
        self._alert_lock = asyncio.Lock()
        self._fault_hits = 0
        # Per input partition, the newest event time of inputs committed to Kafka, kept by the consumer that
        # commits them (BatchConsumer). None: no such consumer (tests, tools), and what is counted is
        # taken as durable. Every window call passes it: the dedupe floor never passes an uncommitted event.
        self.committed_event_ms: dict[str, int] | None = None

    # --- the batch ------------------------------------------------------------------------------
    async def process(self, messages: Sequence[RawMessage]) -> BatchResult:
        """All stages of one batch, in order (tests and benchmarks; the worker overlaps batches: ``BatchPipeline``)."""
        return await self.commit(await self.infer(self.prepare(messages)))

    def prepare(self, messages: Sequence[RawMessage]) -> PreparedBatch:
        """Stage 1 (on the event loop): validate every message; nothing here waits on I/O."""
        batch = PreparedBatch(t0=time.perf_counter())
        self.prom.events_in.inc(len(messages))
        self.prom.batch_size.observe(len(messages))
        max_event, max_text = self.settings.max_event_bytes, self.settings.max_text_bytes
        # One event from a broken clock (say 2099) would drag the watermark so far ahead that every
        # normal event after it is late: such timestamps are refused, not counted.
        horizon_ms = int((time.time() + self.settings.max_future_skew_s) * 1000)
        for msg in messages:
            value = msg.value
            # The compiled fast path (stream.events.decode_event) takes plainly valid events; anything
            # else goes to parse_event, which names the reason exactly as it always has.
            try:
                parsed: InputEvent | Rejection | None = (
                    decode_event(value, max_event, max_text) if value is not None else None
                )
                if parsed is None:
                    slow = parse_event(value, max_event, max_text)
                    parsed = slow if isinstance(slow, Rejection) else InputEvent.from_news(slow)
            except Exception as exc:  # noqa: BLE001 - one event must never stop the stream, see below
                # Both parsers are written never to raise; if an input still finds a way, redelivering
                # it would crash every worker that takes it. It is dead-lettered instead, and logged
                # as the bug it is.
                log.error(
                    "parse_bug",
                    error=type(exc).__name__,
                    detail=str(exc)[:200],
                    topic=msg.topic,
                    partition=msg.partition,
                    offset=msg.offset,
                )
                batch.dead.append((msg, "unparseable", f"{type(exc).__name__}: {str(exc)[:200]}"))
                continue
            if isinstance(parsed, Rejection):
                batch.dead.append((msg, parsed.reason, parsed.detail))
            elif parsed.published_at > horizon_ms:
                batch.dead.append(
                    (
                        msg,
                        "future_timestamp",
                        f"published_at {ms_to_iso(parsed.published_at)} is more than "
                        f"{self.settings.max_future_skew_s:g}s ahead of the wall clock",
                    )
                )
            else:
                batch.events.append(parsed)
                batch.sources.append(msg)
        return batch

    async def infer(self, batch: PreparedBatch) -> PreparedBatch:
        """Stage 2 (in the inference thread): classify the valid events, and (in the novelty thread, at the
        same time) compute their LSH band keys.

        A batch the engine refuses is bisected until the events it refuses are isolated: only those
        go to the DLQ (``inference_error``), every other event is scored.
        """
        if not batch.events or self.sketcher is None:
            return await self._infer_probs(batch)
        before = batch.events
        sketch = asyncio.get_running_loop().run_in_executor(
            self.novelty_executor,
            self.sketcher.band_keys,
            [e.classify_text for e in before],
            [e.tickers for e in before],
        )
        try:
            batch = await self._infer_probs(batch)
        finally:
            bands = await sketch
        if batch.events is not before:  # bisected: the band keys of the events that are still in
            pos = {id(e): i for i, e in enumerate(before)}
            bands = [bands[pos[id(e)]] for e in batch.events]
        batch.bands = bands
        return batch

    async def _infer_probs(self, batch: PreparedBatch) -> PreparedBatch:
        if not batch.events:
            return batch
        try:
            batch.probs = await self._classify([e.classify_text for e in batch.events])
            return batch
        except EngineError as exc:
            first_error = str(exc)[:300]
            log.warning("inference_failed_bisecting", error=first_error, batch=len(batch.events))
        good: list[int] = []
        parts: dict[int, dict[str, np.ndarray]] = {}
        idx = list(range(len(batch.events)))
        if len(idx) == 1:
            batch.dead.append((batch.sources[0], "inference_error", first_error))
        else:  # the whole batch already failed: go straight to its halves
            await self._bisect(batch, idx[: len(idx) // 2], good, parts)
            await self._bisect(batch, idx[len(idx) // 2 :], good, parts)
        keep = sorted(good)
        if keep:
            heads = next(iter(parts.values())).keys()
            order = sorted(parts)
            batch.probs = {h: np.concatenate([parts[k][h] for k in order], axis=0) for h in heads}
        batch.events = [batch.events[i] for i in keep]
        batch.sources = [batch.sources[i] for i in keep]
        return batch

    async def _bisect(
        self, batch: PreparedBatch, idx: list[int], good: list[int], parts: dict[int, dict[str, np.ndarray]]
    ) -> None:
        """Classify ``idx``; on refusal split it in two, down to single events that go to the DLQ."""
        try:
            out = await self._classify([batch.events[i].classify_text for i in idx])
        except EngineError as exc:
            if len(idx) == 1:
                log.error(
                    "inference_error",
                    error=str(exc)[:300],
                    topic=batch.sources[idx[0]].topic,
                    partition=batch.sources[idx[0]].partition,
                    offset=batch.sources[idx[0]].offset,
                )
                batch.dead.append((batch.sources[idx[0]], "inference_error", str(exc)[:300]))
                return
            mid = len(idx) // 2
            await self._bisect(batch, idx[:mid], good, parts)
            await self._bisect(batch, idx[mid:], good, parts)
            return
        good.extend(idx)
        parts[idx[0]] = out

    async def commit(self, batch: PreparedBatch) -> BatchResult:
        """Stage 3, whole: count in Redis, then publish (tests and ``process``; the pipeline runs the two
        parts itself so that one batch's publishing overlaps the next one's counting)."""
        return await self.publish(await self.count(self.to_count(batch)))

    def to_count(self, batch: PreparedBatch) -> CountedBatch:
        """Stage 3a, first half (on the event loop, nothing awaited): the batch's window updates and the
        script's payload. The pipeline runs this while the previous batch is still being counted, so
        that only the Redis call itself stays on the one-batch-at-a-time path."""
        events, sources, probs = batch.events, batch.sources, batch.probs
        if not events:
            return CountedBatch(batch)
        sent = probs["sentiment"]
        cls = sent.argmax(axis=1)
        scores = sent[:, 2] - sent[:, 0]
        topic_idx = probs["topic"].argmax(axis=1) if self.topic_labels else None
        topics = (
            [self.topic_labels[i] for i in topic_idx]
            if self.topic_labels and topic_idx is not None
            else [None] * len(events)
        )
        # A negative event carries the short text an alert may quote (only negatives can be quoted).
        updates = [
            WindowUpdate(
                e.id,
                e.published_at,
                int(c),
                float(sc),
                entities_for(e.tickers, t),
                f"{m.topic}:{m.partition}",
                example_text(e.classify_text) if c == 0 else None,
                batch.bands[i] if batch.bands else (),
            )
            for i, (e, m, c, sc, t) in enumerate(zip(events, sources, cls, scores, topics, strict=True))
        ]
        return CountedBatch(batch, None, sent, cls, scores, topic_idx, topics, updates, self.store.encode(updates))

    async def count(self, counted: CountedBatch) -> CountedBatch:
        """Stage 3a: count the batch in Redis (one atomic script call).

        Counts must run one at a time and in take order: lateness and bucket closing depend on the
        order in which batches reach Redis. Nothing is sent yet.
        """
        if not counted.updates:
            return counted
        t0 = time.perf_counter()
        updates, payload = counted.updates, counted.payload
        counted.applied = await self._retry(
            "redis_apply",
            lambda: self.store.apply(updates, self.sources, payload=payload, committed=self.committed_event_ms),
        )
        self.fault_point("after_redis_apply")
        self.prom.stage.labels("count").observe(time.perf_counter() - t0)
        return counted

    async def publish(self, counted: CountedBatch) -> BatchResult:
        """Stage 3b: send the scored records and dead letters, and judge the buckets the count closed,
        all concurrently. When this returns every output is acknowledged by Kafka, so the inputs may be
        acked (in take order: the pipeline sees to that)."""
        batch, applied = counted.batch, counted.applied
        events, probs = batch.events, batch.probs
        t0 = time.perf_counter()
        statuses: list[WindowStatus] = []
        alerts: list[Alert] = []
        # Dead letters travel while the scored records do; both are done before the inputs can be acked.
        dlq = asyncio.ensure_future(self._dead_letter(batch.dead)) if batch.dead else None
        try:
            if applied is not None and counted.sent is not None and counted.cls is not None:
                statuses = applied.statuses
                novelty = [self.novelty.novelty(v) for v in applied.votes] if self.novelty is not None else None
                _, alerts = await asyncio.gather(
                    self._send_scored(
                        events,
                        counted.sent,
                        counted.cls,
                        counted.scores,
                        probs.get("topic"),
                        counted.topic_idx,
                        counted.topics,
                        statuses,
                        novelty,
                        applied.duplicate_of,
                    ),
                    self._judge_closed(applied.closed),
                )
                for st, n in Counter(statuses).items():
                    self.prom.window.labels(st).inc(n)
                self.prom.scored.inc(len(events))
                self.prom.observe_event_lag(int(time.time() * 1000), (e.published_at for e in events))
        finally:
            if dlq is not None:
                await dlq
        self.prom.stage.labels("publish").observe(time.perf_counter() - t0)
        # From the window updates, which already carry each event's source and time.
        newest: dict[str, int] = {}
        for u in counted.updates:
            if u.ts_ms > newest.get(u.source, -1):
                newest[u.source] = u.ts_ms
        return BatchResult(
            scored=len(events), dead_letters=len(batch.dead), alerts=alerts, statuses=statuses, newest_ms=newest
        )

    async def _classify(self, texts: list[str]) -> dict[str, np.ndarray]:
        loop = asyncio.get_running_loop()
        # Tokenizing runs in its own thread, ahead of the inference thread: with two batches in flight,
        # batch k+1 is tokenized while batch k is inferred, so a GPU never waits on the CPU for its
        # inputs. The Rust tokenizer releases the GIL, so this overlaps the event loop too.
        tok, tok_ms = await loop.run_in_executor(self.tokenize_executor, self._timed_tokenize, texts)
        # Off the event loop: the consumer keeps heartbeating while the model runs.
        out, infer_ms = await loop.run_in_executor(self.executor, self._timed_classify, texts, tok)
        # Timed inside the threads: with batches in flight a call may queue behind the previous one,
        # and the latency budget is about inference (tokenizing included, as before), not that wait.
        self.prom.inference.observe((tok_ms + infer_ms) / 1000)
        for name, arr in out.items():
            if arr.shape[0] != len(texts):
                raise EngineError(f"head {name} returned {arr.shape[0]} rows for {len(texts)} texts")
        return out

    def _timed_tokenize(self, texts: list[str]) -> tuple[TokenizedTexts, float]:
        t = time.perf_counter()
        tok = self.classifier.tokenize(texts)
        return tok, (time.perf_counter() - t) * 1000

    def _timed_classify(self, texts: list[str], tok: TokenizedTexts) -> tuple[dict[str, np.ndarray], float]:
        t = time.perf_counter()
        out = self.classifier.classify(texts, tokenized=tok)
        return out, (time.perf_counter() - t) * 1000

    # --- outputs ------------------------------------------------------------------------------
    async def _dead_letter(self, dead: list[tuple[RawMessage, str, str]]) -> None:
        now = _now_iso()
        records: list[tuple[bytes | None, bytes]] = []
        for msg, reason, detail in dead:
            value = msg.value or b""
            # A short prefix only: enough to recognise the input, little of any personal data in it. The
            # whole input stays recoverable from value_b64 unless dlq_keep_raw is off (losing input is worse).
            preview = _preview(value, self.settings.dlq_preview_chars)
            dl = DeadLetter(
                reason=reason,
                detail=detail,
                topic=msg.topic,
                partition=msg.partition,
                offset=msg.offset,
                key=msg.key.decode("utf-8", "replace") if msg.key else None,
                value_b64=base64.b64encode(value).decode() if self.settings.dlq_keep_raw else None,
                value_preview=preview,
                received_at=now,
            )
            records.append((msg.key, orjson.dumps(dl.model_dump())))
            self.prom.dead_letters.labels(reason).inc()
            # One line, no text and no author: only where the message was and why it was refused.
            log.warning(
                "dead_letter",
                reason=reason,
                detail=detail[:200],
                topic=msg.topic,
                partition=msg.partition,
                offset=msg.offset,
                size=len(value),
            )
        await self._retry("kafka_dlq", lambda: self.sink.send_dead_letters(records))

    async def _send_scored(
        self,
        events: list[InputEvent],
        sent: np.ndarray,
        cls: np.ndarray,
        scores: np.ndarray,
        topic_probs: np.ndarray | None,
        topic_idx: np.ndarray | None,
        topics: list[str | None],
        statuses: list[WindowStatus],
        novelty: list[float] | None,
        duplicate_of: list[str | None],
    ) -> None:
        records = encode_scored(
            events,
            sent,
            cls,
            scores,
            topic_probs,
            topic_idx,
            topics,
            statuses,
            novelty,
            duplicate_of,
            processed_at=_now_iso(),
            model_id=self.model_id,
            backend=self.backend_name,
        )
        await self._retry("kafka_scored", lambda: self.sink.send_scored(records))

    async def tick(self) -> list[Alert]:
        """Close buckets without new input: by the wall clock (live mode) and for judges that died
        (their leases ran out). Called periodically by the worker; safe alongside batch commits."""
        applied = await self._retry(
            "redis_tick", lambda: self.store.apply([], self.sources, committed=self.committed_event_ms)
        )
        return await self._judge_closed(applied.closed)

    async def _judge_closed(self, closed: Sequence[ClosedBucket]) -> list[Alert]:
        """Judge the buckets leased to us, oldest first, send their alerts, then settle them.

        Which buckets close depends only on event time in replay mode, not on how events were
        batched, so a replay evaluates the same windows with the same counts and raises the same
        alerts. The buckets leave Redis's pending set, and cooldowns move, only after Kafka has
        acknowledged the alerts: a crash in between re-offers them later (same alert ids).
        """
        if not closed:
            return []
        s = self.settings
        async with self._alert_lock:
            queries = [(c.kind, c.name, c.end_s) for c in closed]
            sums: list[WindowSums] = await self._retry(
                "redis_sums",
                lambda: self.store.window_sums(
                    queries,
                    s.alert_window_seconds,
                    s.alert_baseline_seconds,
                    self.params.min_count,
                    self.params.floor,
                    RULE_NAME,
                    novel_only=self.novel_only,
                ),
            )
            cooldown_ms = s.alert_cooldown_seconds * 1000
            last_end: dict[tuple[str, str], int] = {}
            alerts: list[Alert] = []
            for c, w in zip(closed, sums, strict=True):
                ent = (c.kind, c.name)
                last = max(last_end.get(ent, -1), w.last_alert_end_ms)
                if w.baseline_n < 0:  # the recent window already fails the count or floor check
                    continue
                d = evaluate_surge(w.recent_n, w.recent_neg, w.baseline_n, w.baseline_neg, self.params)
                if not d.fire:
                    continue
                start_ms, end_ms = (c.end_s - s.alert_window_seconds) * 1000, c.end_s * 1000
                # Event-time cooldown per (rule, entity); a bucket judged again after a crash finds its
                # own settled alert here (end_ms - last == 0) and is not repeated.
                if last >= 0 and end_ms - last < cooldown_ms:
                    continue
                last_end[ent] = end_ms
                ctx = await self._retry(
                    "redis_examples", partial(self.store.context, c.kind, c.name, c.end_s, s.alert_window_seconds)
                )
                alerts.append(
                    Alert(
                        id=alert_id(RULE_NAME, c.kind, c.name, start_ms, end_ms),
                        rule=RULE_NAME,
                        entity_kind=c.kind,
                        entity=c.name,
                        window_start=start_ms,
                        window_end=end_ms,
                        window_start_iso=ms_to_iso(start_ms),
                        window_end_iso=ms_to_iso(end_ms),
                        observed_share=round(d.share, 4),
                        baseline_share=round(d.baseline_share, 4),
                        count=w.recent_n,
                        negative=w.recent_neg,
                        baseline_count=w.baseline_n,
                        z=round(d.z, 3),
                        ratio=round(d.ratio, 3),
                        severity=d.severity,
                        counts="novel" if self.novel_only else "all",
                        example_event_ids=[i for i, _ in ctx.examples],
                        examples=[AlertExample(id=i, text=t) for i, t in ctx.examples],
                        top_topics=[TopicCount(topic=t, negative=n) for t, n in ctx.top_topics],
                        model_id=self.model_id,
                        raised_at=_now_iso(),
                    )
                )
            if alerts:
                records = [(f"{a.entity_kind}:{a.entity}".encode(), orjson.dumps(a.model_dump())) for a in alerts]
                await self._retry("kafka_alerts", lambda: self.sink.send_alerts(records))
                self.fault_point("after_alert_send")
            await self._retry(
                "redis_settle",
                lambda: self.store.settle(closed, [(RULE_NAME, a.entity_kind, a.entity, a.window_end) for a in alerts]),
            )
        for a in alerts:
            log.info(
                "alert_raised",
                alert_id=a.id,
                entity_kind=a.entity_kind,
                entity=a.entity,
                share=a.observed_share,
                baseline=a.baseline_share,
                count=a.count,
                severity=a.severity,
                window_end=a.window_end_iso,
            )
        for a in alerts:
            self.prom.alerts.labels(a.severity).inc()
        return alerts

    # --- resilience ----------------------------------------------------------------------------------
    async def _retry(self, what: str, op: Callable[[], Awaitable[T]]) -> T:
        """Retry transient infrastructure errors forever, with capped exponential backoff and jitter.

        Waiting is the backpressure (the pipeline stops taking batches while a commit waits);
        dropping would be loss. While an operation waits, /health says "degraded" and why.
        """

        def before_sleep(state: RetryCallState) -> None:
            exc = state.outcome.exception() if state.outcome else None
            self.prom.retries.labels(what).inc()
            self.prom.degraded.labels(what).set(1)
            self.degraded[what] = f"{type(exc).__name__}: {str(exc)[:160]}"
            log.warning(
                "infra_retry",
                op=what,
                error=type(exc).__name__,
                detail=str(exc)[:200],
                attempt=state.attempt_number,
                retry_in_s=round(state.next_action.sleep, 2) if state.next_action else None,
            )

        retrying = AsyncRetrying(
            retry=retry_if_exception(is_transient),
            wait=wait_random_exponential(multiplier=0.2, max=self.settings.infra_retry_max_seconds),
            before_sleep=before_sleep,
            reraise=True,
        )
        try:
            async for attempt in retrying:
                with attempt:
                    result = await op()
        finally:
            if self.degraded.pop(what, None) is not None:
                self.prom.degraded.labels(what).set(0)
                log.info("infra_recovered", op=what)
        return result

    def health_state(self) -> tuple[str, list[str]]:
        """("ok" | "degraded", reasons): degraded while any Redis or Kafka operation is waiting on an outage."""
        reasons = [f"{op} retrying: {why}" for op, why in sorted(self.degraded.items())]
        return ("degraded" if reasons else "ok"), reasons

    def fault_point(self, point: str) -> None:
        """Fault injection for the fault suite: SIGKILL this process the Nth time ``point`` is reached.

        Off unless ``FINPULSE_FAULT_CRASH_POINT`` names the point; a kill -9 at an exact spot that a
        test cannot otherwise hit reliably (say between the Redis call and the alert send).
        """
        if self.settings.fault_crash_point != point:
            return
        self._fault_hits += 1
        if self._fault_hits >= self.settings.fault_crash_after:
            log.warning("fault_injected_crash", point=point, hit=self._fault_hits)
            os.kill(os.getpid(), signal.SIGKILL)


@dataclass
class _InFlight:
    """A batch in the pipeline: its whole run, and the moment its Redis count is done (or failed)."""

    task: asyncio.Task[BatchResult]
    counted: asyncio.Future[None]


class BatchPipeline:
    """Keeps up to ``depth`` batches in flight, in three overlapping stages: the validation and
    inference of one batch, the Redis count of the one before, and the publishing (Kafka sends and
    alert judging) of the one before that.

    Counts run strictly one at a time in submission order (so Redis sees batches in take order and
    replays give the same windows and alerts); a batch is counted as soon as the previous one's count
    has returned, not after its Kafka round trip. ``on_committed`` is called for each batch in
    submission order once its outputs are durable: that is where the caller acks its inputs.

    So a crash can leave two batches counted but not committed. Their counts move the low watermark, but
    not the dedupe floor, which follows what Kafka has committed (``BatchProcessor.committed_event_ms``):
    on redelivery they are answered "duplicate", never refused as "late". (The overlap was first built in
    the seventh session and reverted when CI's kill -9 test caught exactly that.)
    """

    def __init__(
        self,
        processor: BatchProcessor,
        depth: int = 3,
        on_failure: Callable[[BaseException], None] | None = None,
    ) -> None:
        if depth < 1:
            raise ValueError("pipeline depth must be at least 1")
        self.processor = processor
        self.depth = depth
        # Called as soon as a batch fails (not cancelled): without it a failure in the last batch
        # before a quiet spell would only surface at the next submit, and the worker would sit there
        # looking alive while nothing is counted or alerted.
        self.on_failure = on_failure
        self._inflight: deque[_InFlight] = deque()

    async def submit(
        self, messages: Sequence[RawMessage], on_committed: Callable[[BatchResult], Awaitable[None]]
    ) -> None:
        """Start a batch; waits only while ``depth`` batches are already in flight (backpressure).

        An unexpected error in any batch is raised here (by a later ``submit`` or by ``drain``). A batch
        after a failed one is never acked (its inputs will be redelivered), and is not counted either
        when the failure was in counting.
        """
        while len(self._inflight) >= self.depth:
            await self._inflight.popleft().task
        prepared = self.processor.prepare(messages)
        infer = asyncio.ensure_future(self.processor.infer(prepared))
        prev = self._inflight[-1] if self._inflight else None
        counted: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        # Only the next batch waits on this; a failure is also raised by the task, so never "unretrieved".
        counted.add_done_callback(lambda f: f.cancelled() or f.exception())
        task = asyncio.ensure_future(self._run(prev, infer, counted, on_committed))
        if self.on_failure is not None:
            task.add_done_callback(self._report_failure)
        self._inflight.append(_InFlight(task, counted))

    def _report_failure(self, task: asyncio.Task[BatchResult]) -> None:
        if self.on_failure is not None and not task.cancelled() and (exc := task.exception()) is not None:
            self.on_failure(exc)

    async def _run(
        self,
        prev: _InFlight | None,
        infer: asyncio.Future[PreparedBatch],
        counted: asyncio.Future[None],
        on_committed: Callable[[BatchResult], Awaitable[None]],
    ) -> BatchResult:
        try:
            # Ready to count before the previous count returns: only the Redis call waits for it.
            ready = self.processor.to_count(await infer)
            if prev is not None:
                # Propagates the previous batch's failure to count: never count out of order.
                await asyncio.shield(prev.counted)
            done = await self.processor.count(ready)
        except BaseException as exc:
            infer.cancel()
            if not counted.done():
                if isinstance(exc, asyncio.CancelledError):
                    counted.cancel()
                else:
                    counted.set_exception(exc)
            raise
        counted.set_result(None)
        result = await self.processor.publish(done)
        if prev is not None:
            # Acks in take order, and none after a failed batch (this raises its failure).
            await asyncio.shield(prev.task)
        self.processor.fault_point("before_ack")
        await on_committed(result)
        return result

    async def drain(self) -> None:
        """Wait for every batch in flight (on shutdown or before a rebalance)."""
        while self._inflight:
            await self._inflight.popleft().task

    async def close(self, timeout: float) -> list[BaseException]:
        """Let batches in flight finish for up to ``timeout`` seconds, then cancel the rest.

        A cancelled batch was never acked, so Kafka redelivers it to whoever owns the partition next
        (Redis dedupes the counts by event id): stopping is never a loss, at worst a repeat. Returns
        the failures of batches that ended with an error (the caller decides whether that is fatal).
        """
        pending = [f.task for f in self._inflight]
        self._inflight.clear()
        if not pending:
            return []
        done, not_done = await asyncio.wait(pending, timeout=timeout)
        for t in not_done:
            t.cancel()
        if not_done:
            log.warning("pipeline_batches_abandoned", batches=len(not_done), reason="shutdown timeout")
        failures: list[BaseException] = []
        for t in done:
            if not t.cancelled() and (exc := t.exception()) is not None:
                log.error("pipeline_batch_failed", error=repr(exc)[:300])
                failures.append(exc)
        return failures
