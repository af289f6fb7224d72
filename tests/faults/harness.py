"""What the fault tests share: worker processes, reading topics to their end, Redis checks, results.

Nothing here knows what a model answers: expected window counts are derived from the labels the
worker itself published in the scored topic (the same text always gets the same label from the
``null`` backend), and expected alerts come from a fault-free reference run of the same input.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import platform
import signal
import socket
import subprocess
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from redis.asyncio import Redis

from engine.settings import EngineSettings
from finpulse.cpu import cpu_model_name
from stream.cli.supervise import health, start_worker_process, unlink_prefix, wait_worker_ready
from stream.settings import StreamSettings
from stream.windows import SCORE_SCALE, SENTIMENT_FIELDS, bucket_start

LABELS = ("negative", "neutral", "positive")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def fresh_names(settings: StreamSettings, **update: Any) -> StreamSettings:
    """Fresh topics, consumer group, Redis prefix and web port for one test (plus ``update``)."""
    tag = uuid.uuid4().hex[:10]
    return settings.model_copy(
        update={
            "input_topic": f"f.{tag}.events",
            "scored_topic": f"f.{tag}.scored",
            "alerts_topic": f"f.{tag}.alerts",
            "dlq_topic": f"f.{tag}.dlq",
            "consumer_group": f"fg-{tag}",
            "redis_prefix": f"fault:{tag}",
            "worker_web_port": free_port(),
            **update,
        }
    )


def with_settings(settings: StreamSettings, **update: Any) -> StreamSettings:
    """``model_copy`` that refuses names ``StreamSettings`` does not have.

    ``model_copy(update=...)`` accepts any key, and ``settings_env`` then silently drops what is not
    a field, so a test would run without the behaviour it asks for. This makes that an error.
    """
    missing = sorted(set(update) - set(type(settings).model_fields))
    if missing:
        raise AssertionError(
            f"StreamSettings has no field(s) {missing}: "
            "the worker feature they belong to (issue 10) is not in this tree"
        )
    return settings.model_copy(update=update)


# --------------------------------------------------------------------------------------------
# worker processes
# --------------------------------------------------------------------------------------------


@dataclass
class Worker:
    """One worker subprocess (own process group) with its own web port and log file."""

    settings: StreamSettings
    engine: EngineSettings
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0

    @classmethod
    def start(cls, settings: StreamSettings, engine: EngineSettings, log_dir: Path, name: str, **update: Any) -> Worker:
        s = with_settings(settings, worker_web_port=free_port(), **update)
        w = cls(s, engine, log_dir / f"{name}.log")
        w.started_at = time.monotonic()
        w.proc = start_worker_process(s, engine, w.log_path)
        return w

    @property
    def port(self) -> int:
        return self.settings.worker_web_port

    def wait_ready(self, timeout: float = 120.0) -> dict[str, Any]:
        assert self.proc is not None
        return wait_worker_ready(self.proc, self.port, self.log_path, timeout)

    async def await_ready(self, timeout: float = 120.0) -> dict[str, Any]:
        return await asyncio.to_thread(self.wait_ready, timeout)

    def health(self) -> dict[str, Any] | None:
        return health(self.port)

    def metric(self, name: str) -> int:
        h = self.health()
        return int((h or {}).get("metrics", {}).get(name, 0) or 0)

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill9(self) -> None:
        """SIGKILL the worker's whole process group and reap it."""
        assert self.proc is not None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def terminate(self, timeout: float = 60.0) -> float:
        """SIGTERM the worker; seconds until it exited (``inf`` when it had to be killed after ``timeout``)."""
        assert self.proc is not None
        t0 = time.monotonic()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill9()
            return float("inf")
        return time.monotonic() - t0

    def wait_exit(self, timeout: float) -> int | None:
        assert self.proc is not None
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def stop(self) -> None:
        if self.alive:
            self.terminate(30)

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""


async def wait_until(pred: Any, timeout: float, what: str, interval: float = 0.1) -> float:
    """Poll ``pred()`` (sync or async) until true; seconds waited. ``TimeoutError`` naming ``what``."""
    t0 = time.monotonic()
    while True:
        try:
            ok = pred()
            if asyncio.iscoroutine(ok):
                ok = await ok
        except Exception:  # noqa: BLE001 - services may be down while we poll
            ok = False
        if ok:
            return time.monotonic() - t0
        if time.monotonic() - t0 > timeout:
            raise TimeoutError(f"{what}: not reached within {timeout:.0f}s")
        await asyncio.sleep(interval)


# --------------------------------------------------------------------------------------------
# Kafka
# --------------------------------------------------------------------------------------------


async def produce_raw(
    bootstrap: str, topic: str, records: Iterable[tuple[bytes | None, bytes | None, int | None]], rate: float = 0.0
) -> int:
    """Send (key, value, partition) records as they are (value may be None: a tombstone);
    ``rate`` records per second (0: as fast as possible)."""
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, linger_ms=10, acks="all", enable_idempotence=True, max_request_size=8 * 1024 * 1024
    )
    await producer.start()
    n = 0
    t0 = time.monotonic()
    try:
        futs = []
        for key, value, partition in records:
            futs.append(await producer.send(topic, value=value, key=key, partition=partition))
            n += 1
            if rate > 0:
                ahead = n / rate - (time.monotonic() - t0)
                if ahead > 0:
                    await asyncio.sleep(ahead)
            if len(futs) >= 2000:
                await asyncio.gather(*futs)
                futs.clear()
        await producer.flush()
        await asyncio.gather(*futs)
    finally:
        await producer.stop()
    return n


def event_record(ev: dict[str, Any], partition: int | None = None) -> tuple[bytes, bytes, int | None]:
    return str(ev["id"]).encode(), orjson.dumps(ev), partition


@dataclass(frozen=True)
class Record:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp_ms: int


async def read_topic(bootstrap: str, topic: str, timeout: float = 60.0) -> list[Record]:
    """Every record of ``topic``, from the beginning to the end offsets taken at the start."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        fetch_max_bytes=16 * 1024 * 1024,
    )
    await consumer.start()
    out: list[Record] = []
    try:
        parts = consumer.partitions_for_topic(topic)
        if parts is None:
            await consumer._client.force_metadata_update()  # noqa: SLF001 - first metadata fetch
            parts = consumer.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        if not tps:
            return out
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        deadline = time.monotonic() + timeout

        async def behind() -> bool:
            for tp in tps:
                if await consumer.position(tp) < ends[tp]:
                    return True
            return False

        while await behind():
            if time.monotonic() > deadline:
                raise TimeoutError(f"reading {topic}: not at its end after {timeout:.0f}s")
            batch = await consumer.getmany(timeout_ms=500)
            for tp, msgs in batch.items():
                out.extend(
                    Record(m.topic, m.partition, m.offset, m.key, m.value, m.timestamp)
                    for m in msgs
                    if m.offset < ends[tp]
                )
    finally:
        await consumer.stop()
    return out


async def committed_offsets(settings: StreamSettings) -> dict[int, int]:
    """``{partition: committed offset}`` of the consumer group on the input topic (0 where none)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap, request_timeout_ms=5000)
    await admin.start()
    try:
        tps = [TopicPartition(settings.input_topic, p) for p in range(settings.partitions)]
        committed = await admin.list_consumer_group_offsets(settings.consumer_group, partitions=tps)
        return {tp.partition: (c.offset if (c := committed.get(tp)) is not None and c.offset >= 0 else 0) for tp in tps}
    finally:
        await admin.close()


async def group_lag(settings: StreamSettings) -> int:
    """Input records not yet committed by the consumer group (end offset minus committed, summed)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap, request_timeout_ms=5000)
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap, group_id=None, request_timeout_ms=5000)
    await admin.start()
    await consumer.start()
    try:
        tps = [TopicPartition(settings.input_topic, p) for p in range(settings.partitions)]
        ends = await consumer.end_offsets(tps)
        committed = await admin.list_consumer_group_offsets(settings.consumer_group, partitions=tps)
        lag = 0
        for tp in tps:
            c = committed.get(tp)
            lag += ends[tp] - (c.offset if c is not None and c.offset >= 0 else 0)
        return lag
    finally:
        await consumer.stop()
        await admin.close()


async def wait_caught_up(settings: StreamSettings, timeout: float, workers: Sequence[Worker] = ()) -> float:
    """Until the group has committed every input record (so every output of it is acknowledged)."""

    async def done() -> bool:
        for w in workers:
            if w.proc is not None and w.proc.poll() is not None:
                raise AssertionError(f"worker exited with {w.proc.returncode} before catching up:\n{w.log_tail()}")
        return await group_lag(settings) == 0

    t0 = time.monotonic()
    while True:
        try:
            if await done():
                return time.monotonic() - t0
        except AssertionError:
            raise
        except Exception:  # noqa: BLE001 - broker may be restarting
            pass
        if time.monotonic() - t0 > timeout:
            lag = None
            with contextlib.suppress(Exception):
                lag = await group_lag(settings)
            tails = "\n".join(f"--- {w.log_path.name}\n{w.log_tail(25)}" for w in workers)
            raise TimeoutError(f"consumer group not caught up after {timeout:.0f}s (lag {lag})\n{tails}")
        await asyncio.sleep(0.3)


@dataclass
class Outputs:
    scored: list[dict[str, Any]]
    dlq: list[dict[str, Any]]
    alerts: list[dict[str, Any]]
    alert_keys: list[bytes | None]

    @property
    def scored_ids(self) -> Counter[str]:
        return Counter(str(e["id"]) for e in self.scored)

    @property
    def alert_ids(self) -> Counter[str]:
        return Counter(str(a["id"]) for a in self.alerts)

    def statuses(self) -> Counter[str]:
        return Counter(e["window_status"] for e in self.scored)


async def read_outputs(settings: StreamSettings) -> Outputs:
    scored, dlq, alerts = await asyncio.gather(
        read_topic(settings.kafka_bootstrap, settings.scored_topic),
        read_topic(settings.kafka_bootstrap, settings.dlq_topic),
        read_topic(settings.kafka_bootstrap, settings.alerts_topic),
    )
    return Outputs(
        scored=[orjson.loads(r.value) for r in scored if r.value is not None],
        dlq=[orjson.loads(r.value) for r in dlq if r.value is not None],
        alerts=[orjson.loads(r.value) for r in alerts if r.value is not None],
        alert_keys=[r.key for r in alerts],
    )


# --------------------------------------------------------------------------------------------
# Redis
# --------------------------------------------------------------------------------------------


def redis_for(settings: StreamSettings) -> Redis:
    return Redis.from_url(settings.redis_url, socket_timeout=10, socket_connect_timeout=5)


async def window_state(settings: StreamSettings) -> dict[str, dict[str, int]]:
    """Every bucket hash and all-time total under the prefix.

    ``{"b:kind:name:start" | "tot:kind:name": {field: n}}`` (prefix stripped).
    """
    r = redis_for(settings)
    p = settings.redis_prefix + ":"
    out: dict[str, dict[str, int]] = {}
    try:
        for pattern in (f"{p}b:*", f"{p}tot:*"):
            async for key in r.scan_iter(match=pattern, count=1000):
                h = await r.hgetall(key)
                out[key.decode()[len(p) :]] = {k.decode(): int(v) for k, v in h.items()}
    finally:
        await r.aclose()
    return out


async def redis_metrics(settings: StreamSettings) -> dict[str, int]:
    r = redis_for(settings)
    try:
        raw = await r.hgetall(f"{settings.redis_prefix}:metrics")
    finally:
        await r.aclose()
    return {k.decode(): int(v) for k, v in raw.items()}


async def clear_prefix(settings: StreamSettings) -> None:
    r = redis_for(settings)
    try:
        await unlink_prefix(r, settings.redis_prefix)
    finally:
        await r.aclose()


def expected_window_state(scored: Iterable[dict[str, Any]], bucket_s: int) -> dict[str, dict[str, int]]:
    """The windows Redis must hold if every distinct scored event was counted exactly once.

    Built from the worker's own published labels (one record per id is enough: a repeated id has the
    same text, so the same labels), with the same integer score units as the window script.
    """
    acc: dict[str, Counter[str]] = defaultdict(Counter)
    seen: set[str] = set()
    for e in scored:
        if e["id"] in seen:
            continue
        seen.add(e["id"])
        fld = SENTIMENT_FIELDS[LABELS.index(e["sentiment"]["label"])]
        score = round(float(e["score"]) * SCORE_SCALE)
        b = bucket_start(int(e["published_at"]), bucket_s)
        ents = [("ticker", t) for t in e["tickers"]]
        if e.get("topic"):
            ents.append(("topic", e["topic"]["label"]))
        for kind, name in ents:
            for key in (f"b:{kind}:{name}:{b}", f"tot:{kind}:{name}"):
                acc[key][fld] += 1
                acc[key]["n"] += 1
                acc[key]["ssum"] += score
            # A ticker's bucket also counts its negatives per topic (what a ticker alert names).
            if kind == "ticker" and fld == "neg" and e.get("topic"):
                acc[f"b:{kind}:{name}:{b}"][f"nt:{e['topic']['label']}"] += 1
    # HINCRBY by 0 never creates a field: a sum of exactly 0 may be absent in Redis.
    return {k: dict(v) for k, v in acc.items()}


NOVELTY_FIELDS = ("nn", "nneg")


def without_novelty(state: dict[str, dict[str, int]]) -> dict[str, dict[str, int]]:
    """The state without the novel counts, which a record alone cannot give: an earlier copy of a story that
    arrives after a later one takes the later one's novel count back after its record went out."""
    return {k: {f: n for f, n in v.items() if f not in NOVELTY_FIELDS} for k, v in state.items()}


def novelty_problems(state: dict[str, dict[str, int]]) -> list[str]:
    """Bounds of the novel counts: in every hash, no more novel events than events, no more novel negatives than
    negatives or novel events. (That they are the same as without faults is the reference comparison.)"""
    problems = []
    for k, v in state.items():
        nn, nneg = v.get("nn", 0), v.get("nneg", 0)
        if not (0 <= nn <= v.get("n", 0) and 0 <= nneg <= min(nn, v.get("neg", 0))):
            problems.append(f"{k}: novel counts out of bounds {v}")
    return problems


def normalise_state(state: dict[str, dict[str, int]]) -> dict[str, dict[str, int]]:
    """Drop zero fields (``ssum`` 0 is either absent or 0 depending on how it was reached)."""
    return {k: {f: n for f, n in v.items() if n != 0} for k, v in state.items()}


def diff_states(want: dict[str, dict[str, int]], got: dict[str, dict[str, int]], limit: int = 12) -> str:
    want, got = normalise_state(want), normalise_state(got)
    lines = []
    for k in sorted(set(want) | set(got)):
        if want.get(k) != got.get(k):
            lines.append(f"{k}: want {want.get(k)} got {got.get(k)}")
    return f"{len(lines)} keys differ:\n" + "\n".join(lines[:limit])


# --------------------------------------------------------------------------------------------
# results for RELIABILITY.md
# --------------------------------------------------------------------------------------------


def machine() -> str:
    cpu = cpu_model_name() or platform.processor() or ""
    mem = ""
    with contextlib.suppress(OSError, ValueError, IndexError):
        kb = int(Path("/proc/meminfo").read_text().split("MemTotal:")[1].split()[0])
        mem = f"{kb / 1024 / 1024:.1f} GiB"
    return f"{cpu}, {os.cpu_count()} cores, {mem}"


@dataclass
class ResultLog:
    """One JSON line per test in ``<local_dir>/results.jsonl`` (the source of RELIABILITY.md)."""

    path: Path
    run_id: str = field(default_factory=lambda: time.strftime("%Y%m%dT%H%M%S"))

    def write(self, test: str, outcome: str, **data: Any) -> dict[str, Any]:
        row = {
            "run": self.run_id,
            "test": test,
            "outcome": outcome,
            "at": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "machine": machine(),
            **data,
        }
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("ab") as f:
            f.write(orjson.dumps(row, default=str) + b"\n")
        print(orjson.dumps(row, default=str).decode())
        return row
