"""`finpulse bench soak`: offer the worker twice what it can sustain, for minutes, and watch it.

One run, against the real local Kafka and Redis (started if not running, stopped only if started
here), on fresh topics, consumer group and Redis prefix:

1. **Sustainable rate** (skipped with ``--sustainable-rate``): after a warm-up, a backlog of real
   events is produced as fast as possible and timed until Redis has counted all of it.
2. **Overload**: a paced producer in its own process offers ``--rate-factor`` x that rate for
   ``--duration`` seconds: real StockNet tweets, fresh ids, event times continuing the stream (the
   stream is cycled with its time shifted forward when more events are needed), ``time_mode=replay``.
3. **Drain**: production stops; the run waits until the group's committed offsets reach the end
   of the input topic and Redis has counted every event.

Every ``--sample-interval`` seconds (also while draining) it samples the worker's RSS (psutil),
Redis ``used_memory`` (INFO memory), the consumer lag (input end offsets minus the group's
committed offsets), events/s scored (the worker's ``/health`` counter) and ``/health``'s status.
At the end it checks that nothing was dropped: every produced id is in the scored topic or the
DLQ, and Redis counted (+ late) equals the events produced. One JSON document is printed; with
``--record FILE`` a row is added to the "Overload soak" section of that file (RELIABILITY.md).

Where memory lives under overload: the backlog stays in Kafka. The worker holds at most Faust's
stream buffer (``stream_buffer_maxsize``, 4,096 events), aiokafka's fetch buffers (1 MiB per
partition), ``pipeline_depth`` batches in flight and bounded deques (recent inference times);
Redis grows with every counted event (one seen-id key each, plus window buckets) until the
retention TTL (``FINPULSE_RETENTION_SECONDS``, 7 days of wall-clock time) expires them, so its
memory is bounded by retention x rate, not by the soak's length; the summary projects that bound.
"""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import os
import socket
import threading
import time
import urllib.request
import uuid
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import click
import orjson
import psutil

from bench.common import append_markdown_row, machine_info, now_iso, stream_texts
from engine.settings import EngineSettings
from stream.cli.supervise import unlink_prefix
from stream.security import kafka_client_kwargs
from stream.settings import StreamSettings, get_settings

#: Events read from the stream (the whole StockNet stream from its default start is fewer).
_ALL_EVENTS = 10**7
#: A growth of RSS over the second half of the overload below this share of the mid-run RSS counts as bounded.
RSS_BOUNDED_SHARE = 0.05
_WARM_EVENTS = 64


def soak_settings(base: StreamSettings, tag: str, port: int) -> StreamSettings:
    """Fresh topics, consumer group and Redis prefix for one soak (nothing shared with other runs)."""
    return base.model_copy(
        update={
            "input_topic": f"soak.{tag}.events",
            "scored_topic": f"soak.{tag}.scored",
            "alerts_topic": f"soak.{tag}.alerts",
            "dlq_topic": f"soak.{tag}.dlq",
            "consumer_group": f"soak-{tag}",
            "redis_prefix": f"soak:{tag}",
            "worker_web_port": port,
            # Historical data: event time only (as the demo and replays run). Lateness stays the default,
            # so an event that arrived out of order would show up as "late" in the summary.
            "time_mode": "replay",
        }
    )


def _epoch_ms(value: Any) -> int:
    if isinstance(value, (int, float)):
        return int(value)
    return int(datetime.fromisoformat(str(value).replace("Z", "+00:00")).timestamp() * 1000)


class EventSource:
    """The i-th soak event for any i: the stream's events in order, cycled with fresh ids.

    Cycle ``k`` shifts every event time forward by ``k`` times the stream's span (plus one bucket),
    so event time keeps moving forward across cycles and windows and lateness behave as in a
    longer stream. Ids are ``{run}-{i}``: never seen before, so every event does the full work.
    """

    def __init__(self, events: Sequence[dict[str, Any]], run: str, gap_ms: int = 60_000) -> None:
        if not events:
            raise ValueError("no events to soak with")
        self.events = list(events)
        self.run = run
        self.ts = [_epoch_ms(e["published_at"]) for e in self.events]
        self.span_ms = max(self.ts) - min(self.ts) + gap_ms

    def event(self, i: int) -> dict[str, Any]:
        """Event number ``i`` (0-based) of the soak sequence."""
        n = len(self.events)
        e = self.events[i % n]
        return {**e, "id": f"{self.run}-{i}", "published_at": self.ts[i % n] + (i // n) * self.span_ms}

    def event_id(self, i: int) -> str:
        return f"{self.run}-{i}"


async def _produce_paced(
    bootstrap: str | StreamSettings,
    topic: str,
    source: EventSource,
    start: int,
    count: int,
    rate: float,
    sent: Any = None,
    ready: Any = None,
) -> dict[str, Any]:
    """Send events ``start .. start+count-1`` keyed by id at ``rate`` per second (0: as fast as possible)."""
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(
        **kafka_client_kwargs(bootstrap), linger_ms=20, max_batch_size=256 * 1024, acks="all", enable_idempotence=True
    )
    await producer.start()
    if ready is not None:
        ready.set()
    t0 = time.perf_counter()
    behind_max = 0.0
    try:
        pending = []
        for j in range(count):
            ev = source.event(start + j)
            pending.append(await producer.send(topic, value=orjson.dumps(ev), key=ev["id"].encode()))
            if rate > 0:
                ahead = (j + 1) / rate - (time.perf_counter() - t0)
                if ahead > 0:
                    await asyncio.sleep(ahead)
                else:
                    behind_max = max(behind_max, -ahead)
            if len(pending) >= 1000:
                await asyncio.gather(*pending)
                pending.clear()
                if sent is not None:
                    sent.value = j + 1
        await producer.flush()
        await asyncio.gather(*pending)
        if sent is not None:
            sent.value = count
    finally:
        await producer.stop()
    dt = time.perf_counter() - t0
    return {
        "events": count,
        "seconds": round(dt, 2),
        "events_per_s": round(count / dt, 1) if dt else None,
        "max_behind_schedule_s": round(behind_max, 3),
    }


def _producer_main(
    bootstrap: str | StreamSettings,
    topic: str,
    data_dir: str,
    run: str,
    start: int,
    count: int,
    rate: float,
    sent: Any,
    result: Any,
    ready: Any = None,
) -> None:
    """Entry point of the producer process (spawned: nothing shared with the sampler).

    Sets ``ready`` once the stream is read and the producer connected, just before the first send.
    """
    source = EventSource(stream_texts(Path(data_dir), _ALL_EVENTS), run)
    res = asyncio.run(_produce_paced(bootstrap, topic, source, start, count, rate, sent, ready))
    result.put(res)


class PeakRss(threading.Thread):
    """Polls a process's resident set size every ``interval`` seconds and keeps the peak."""

    def __init__(self, pid: int, interval: float = 0.5) -> None:
        super().__init__(daemon=True)
        self.proc = psutil.Process(pid)
        self.interval = interval
        self.peak = 0
        self._stop_evt = threading.Event()

    def run(self) -> None:
        while not self._stop_evt.is_set():
            try:
                self.peak = max(self.peak, self.proc.memory_info().rss)
            except psutil.Error:
                return
            self._stop_evt.wait(self.interval)

    def stop(self) -> None:
        self._stop_evt.set()


def _health(port: int, timeout: float = 5.0) -> dict[str, Any] | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=timeout) as resp:
            return orjson.loads(resp.read())
    except Exception:  # noqa: BLE001 - a busy or restarting worker is recorded as "no answer"
        return None


class Probe:
    """Kafka offsets (input end, group committed) and Redis figures for one soak."""

    def __init__(self, settings: StreamSettings) -> None:
        self.settings = settings

    async def start(self) -> None:
        from aiokafka import AIOKafkaConsumer
        from aiokafka.admin import AIOKafkaAdminClient
        from aiokafka.structs import TopicPartition

        from stream.app import redis_client

        s = self.settings
        self.tps = [TopicPartition(s.input_topic, p) for p in range(s.partitions)]
        self.consumer = AIOKafkaConsumer(**kafka_client_kwargs(s), group_id=None, enable_auto_commit=False)
        await self.consumer.start()
        self.admin = AIOKafkaAdminClient(**kafka_client_kwargs(s))
        await self.admin.start()
        self.redis = redis_client(s)

    async def stop(self) -> None:
        await self.consumer.stop()
        await self.admin.close()
        await self.redis.aclose()

    async def lag(self) -> dict[str, int]:
        """Input end offsets, the group's committed offsets and their difference (summed over partitions)."""
        end = await self.consumer.end_offsets(self.tps)
        committed = await self.admin.list_consumer_group_offsets(self.settings.consumer_group, partitions=self.tps)
        com = {tp: (committed[tp].offset if tp in committed and committed[tp].offset >= 0 else 0) for tp in self.tps}
        return {
            "end": sum(end.values()),
            "committed": sum(com.values()),
            "lag": sum(max(0, end[tp] - com[tp]) for tp in self.tps),
        }

    async def redis_figures(self) -> dict[str, int]:
        """Redis used_memory and this soak's window metrics (counted / late / duplicate)."""
        mem = await self.redis.info("memory")
        m = await self.redis.hgetall(f"{self.settings.redis_prefix}:metrics")
        g = {(k.decode() if isinstance(k, bytes) else k): int(v) for k, v in m.items()}
        return {
            "used_memory": int(mem["used_memory"]),
            "counted": g.get("counted", 0),
            "late": g.get("late", 0),
            "duplicate": g.get("duplicate", 0),
        }


async def _read_topic(
    bootstrap: str | StreamSettings, topic: str, partitions: int, reasons: bool = False
) -> dict[str, Any]:
    """Every record of ``topic`` up to its current end: record count, distinct keys (and the DLQ's reasons)."""
    from aiokafka import AIOKafkaConsumer
    from aiokafka.structs import TopicPartition

    c = AIOKafkaConsumer(
        **kafka_client_kwargs(bootstrap),
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_partition_fetch_bytes=4 * 2**20,
    )
    await c.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        c.assign(tps)
        end = await c.end_offsets(tps)
        await c.seek_to_beginning(*tps)
        seen: set[bytes] = set()
        records = 0
        why: dict[str, int] = {}
        todo = {tp for tp in tps if end[tp] > 0}
        while todo:
            for tp, msgs in (await c.getmany(*todo, timeout_ms=1000, max_records=20000)).items():
                for m in msgs:
                    records += 1
                    if m.key is not None:
                        seen.add(m.key)
                    if reasons:
                        try:
                            r = str(orjson.loads(m.value).get("reason", "?"))
                        except Exception:  # noqa: BLE001 - a dead letter is JSON; anything else is counted as "?"
                            r = "?"
                        why[r] = why.get(r, 0) + 1
                if msgs and msgs[-1].offset + 1 >= end[tp]:
                    todo.discard(tp)
        return {"records": records, "keys": seen, "reasons": why}
    finally:
        await c.stop()


def _slope_per_min(points: Sequence[tuple[float, float]]) -> float | None:
    """Least-squares slope of (t seconds, value) points, per minute."""
    if len(points) < 2:
        return None
    n = len(points)
    mt = sum(t for t, _ in points) / n
    mv = sum(v for _, v in points) / n
    den = sum((t - mt) ** 2 for t, _ in points)
    return 60 * sum((t - mt) * (v - mv) for t, v in points) / den if den else None


def summarize_rss(samples: Sequence[dict[str, Any]], overload_s: float) -> dict[str, Any]:
    """RSS over the overload: at mid-run and at its end, growth and slope over the second half, and the verdict.

    ``samples`` carry ``t`` (seconds since the overload started) and ``worker_rss_mb``; the verdict
    ``bounded`` holds when the second half grew by less than ``RSS_BOUNDED_SHARE`` of the mid-run RSS.
    """
    pts = [
        (s["t"], s["worker_rss_mb"])
        for s in samples
        if s.get("worker_rss_mb") is not None and s["t"] <= overload_s + 1e-6
    ]
    second = [(t, v) for t, v in pts if t >= overload_s / 2]
    if len(second) < 2:
        return {
            "mid_mb": None,
            "end_mb": None,
            "second_half_growth_mb": None,
            "second_half_slope_mb_per_min": None,
            "bounded": None,
        }
    mid, end = second[0][1], second[-1][1]
    growth = end - mid
    slope = _slope_per_min(second)
    return {
        "mid_mb": round(mid, 1),
        "end_mb": round(end, 1),
        "second_half_growth_mb": round(growth, 1),
        "second_half_slope_mb_per_min": round(slope, 2) if slope is not None else None,
        "bounded": growth < RSS_BOUNDED_SHARE * mid,
    }


def run_soak(
    base: StreamSettings,
    engine: EngineSettings,
    data_dir: Path,
    duration: float,
    rate_factor: float,
    sustainable_rate: float | None,
    probe_events: int,
    interval: float,
    drain_timeout: float,
    log: Any = None,
) -> dict[str, Any]:
    """One soak as described in the module docstring; returns the JSON-ready result."""
    from stream.cli.supervise import start_worker_process, stop_process, wait_worker_ready
    from stream.topics import delete_topics, ensure_topics
    from stream.worker import topic_plan

    say = log or (lambda msg: None)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    tag = uuid.uuid4().hex[:8]
    settings = soak_settings(base, tag, port)
    run = f"soak{tag}"
    source = EventSource(stream_texts(data_dir, _ALL_EVENTS), run)
    # One event loop for every phase: the probe's Kafka and Redis clients live across them.
    loop = asyncio.new_event_loop()
    loop.run_until_complete(ensure_topics(settings, topic_plan(settings)))
    log_path = settings.log_dir / f"soak-worker-{tag}.log"
    proc = start_worker_process(settings, engine, log_path)
    peak = PeakRss(proc.pid)
    peak.start()
    wproc = psutil.Process(proc.pid)
    probe = Probe(settings)
    samples: list[dict[str, Any]] = []
    result: dict[str, Any] = {"tag": tag, "worker_log": str(log_path), "distinct_texts": len(source.events)}
    producer: Any = None
    try:
        info = wait_worker_ready(proc, port, log_path, timeout=300)
        result["engine"] = {k: info["engine"].get(k) for k in ("backend", "device", "precision", "model_id")}
        result["batch_policy"] = {
            "take_max_events": settings.max_batch_size,
            "max_wait_ms": settings.max_wait_ms,
            "pipeline_depth": settings.pipeline_depth,
            **info["engine"].get("batch_policy", {}),
        }

        async def phase_probe() -> dict[str, Any]:
            await probe.start()
            await _produce_paced(settings, settings.input_topic, source, 0, _WARM_EVENTS, 0)
            t_end = time.monotonic() + 300
            while (f := await probe.redis_figures())["counted"] + f["late"] < _WARM_EVENTS and time.monotonic() < t_end:
                await asyncio.sleep(0.2)
            if sustainable_rate:
                return {"given": sustainable_rate}
            t0 = time.perf_counter()
            await _produce_paced(settings, settings.input_topic, source, _WARM_EVENTS, probe_events, 0)
            while True:
                f = await probe.redis_figures()
                if f["counted"] + f["late"] >= _WARM_EVENTS + probe_events or time.perf_counter() - t0 > 1800:
                    break
                await asyncio.sleep(0.05)
            dt = time.perf_counter() - t0
            return {"events": probe_events, "seconds": round(dt, 2), "events_per_s": round(probe_events / dt, 1)}

        say("warm-up and sustainable-rate probe")
        result["sustainable"] = loop.run_until_complete(phase_probe())
        rate = float(sustainable_rate or result["sustainable"]["events_per_s"])
        offered = rate * rate_factor
        start = _WARM_EVENTS + (0 if sustainable_rate else probe_events)
        count = int(round(offered * duration))
        result["offered_events_per_s"] = round(offered, 1)
        result["rate_factor"] = rate_factor
        say(f"sustainable {rate:.1f} ev/s; offering {offered:.1f} ev/s for {duration:.0f} s ({count} events)")

        ctx = mp.get_context("spawn")
        sent = ctx.Value("q", 0)
        res_q = ctx.Queue()
        ready = ctx.Event()
        producer = ctx.Process(
            target=_producer_main,
            name="soak-producer",
            daemon=True,
            args=(
                settings,
                settings.input_topic,
                str(data_dir),
                run,
                start,
                count,
                offered,
                sent,
                res_q,
                ready,
            ),
        )

        async def phase_soak() -> dict[str, Any]:
            total = start + count
            producer.start()
            # The clock starts when the producer has read the stream and connected (a few seconds).
            while not ready.is_set() and producer.is_alive():
                await asyncio.sleep(0.1)
            t0 = time.monotonic()
            prev: dict[str, Any] = {
                "t": 0.0,
                "scored": None,
                "cpu": wproc.cpu_times(),
                "sys": psutil.cpu_times(),
                "m": {},
            }
            produce_end: float | None = None
            drained_at: float | None = None
            next_t = 0.0
            while True:
                now = time.monotonic() - t0
                if produce_end is None and not producer.is_alive():
                    produce_end = now
                    say(f"producer finished at {now:.0f} s; draining")
                if now >= next_t or produce_end is not None:
                    lag, red, h = await asyncio.gather(
                        probe.lag(), probe.redis_figures(), asyncio.to_thread(_health, port)
                    )
                    now = time.monotonic() - t0
                    try:
                        rss = wproc.memory_info().rss / 2**20
                        cpu = wproc.cpu_times()
                    except psutil.Error:
                        rss, cpu = None, None
                    scored = (h or {}).get("metrics", {}).get("scored")
                    metrics = (h or {}).get("metrics", {})
                    sys_cpu = psutil.cpu_times()
                    dt = now - prev["t"]
                    # Whole-machine busy cores and the worker's mean take: is it the worker, or the neighbours?
                    busy = (sum(sys_cpu) - sys_cpu.idle - sys_cpu.iowait) - (
                        sum(prev["sys"]) - prev["sys"].idle - prev["sys"].iowait
                    )
                    d_batches = metrics.get("batches", 0) - prev["m"].get("batches", 0)
                    d_received = metrics.get("received", 0) - prev["m"].get("received", 0)
                    sample = {
                        "t": round(now, 1),
                        "phase": "overload" if produce_end is None else "drain",
                        "produced": lag["end"],
                        "committed": lag["committed"],
                        "lag": lag["lag"],
                        "scored_total": scored,
                        "scored_per_s": round((scored - prev["scored"]) / dt, 1)
                        if scored is not None and prev["scored"] is not None and dt > 0
                        else None,
                        "counted": red["counted"],
                        "late": red["late"],
                        "worker_rss_mb": round(rss, 1) if rss is not None else None,
                        "worker_cores": round((cpu.user + cpu.system - prev["cpu"].user - prev["cpu"].system) / dt, 2)
                        if cpu and dt > 0
                        else None,
                        "machine_busy_cores": round(busy / dt, 2) if dt > 0 else None,
                        "load_1m": round(os.getloadavg()[0], 2),
                        "mean_take": round(d_received / d_batches, 1)
                        if metrics and prev["m"] and d_batches > 0
                        else None,
                        "redis_used_memory_mb": round(red["used_memory"] / 2**20, 1),
                        "status": (h or {}).get("status", "no answer"),
                        "degraded_reasons": (h or {}).get("degraded_reasons"),
                    }
                    appended = now >= next_t
                    if appended:
                        samples.append(sample)
                        say(orjson.dumps(sample).decode())
                        prev = {
                            "t": now,
                            "scored": scored if scored is not None else prev["scored"],
                            "cpu": cpu or prev["cpu"],
                            "sys": sys_cpu,
                            "m": metrics or prev["m"],
                        }
                        next_t += interval
                    if (
                        produce_end is not None
                        and lag["lag"] == 0
                        and lag["end"] >= total
                        and red["counted"] + red["late"] >= total
                    ):
                        drained_at = now
                        if not appended:
                            samples.append(sample)
                        break
                    if produce_end is not None and now - produce_end > drain_timeout:
                        break
                if proc.poll() is not None:
                    raise RuntimeError(f"worker exited with {proc.returncode} during the soak (log: {log_path})")
                await asyncio.sleep(2.0 if produce_end is not None else 0.2)
            return {
                "produce_end_s": round(produce_end or 0, 1),
                "drained_at_s": round(drained_at, 1) if drained_at is not None else None,
                "drain_s": round(drained_at - produce_end, 1)
                if drained_at is not None and produce_end is not None
                else None,
            }

        say("overload")
        phases = loop.run_until_complete(phase_soak())
        producer.join(30)
        try:
            result["producer"] = res_q.get(timeout=10)
        except Exception:  # noqa: BLE001 - queue.Empty: the producer died without a result
            result["producer"] = None
        result["phases"] = phases

        async def phase_check() -> dict[str, Any]:
            total = start + count
            scored = await _read_topic(settings, settings.scored_topic, settings.partitions)
            dlq = await _read_topic(settings, settings.dlq_topic, 1, reasons=True)
            alerts = await _read_topic(settings, settings.alerts_topic, settings.partitions)
            red = await probe.redis_figures()
            ids = {source.event_id(i).encode() for i in range(total)}
            missing_scored = ids - scored["keys"]
            # A dead letter is keyed by its input's key: an event missing from the scored topic may be there.
            dropped = len(missing_scored - dlq["keys"])
            return {
                "produced": total,
                "scored_records": scored["records"],
                "scored_distinct_ids": len(scored["keys"] & ids),
                "scored_duplicates": scored["records"] - len(scored["keys"]),
                "dlq_records": dlq["records"],
                "dlq_reasons": dlq["reasons"],
                "alerts": alerts["records"],
                "redis_counted": red["counted"],
                "redis_late": red["late"],
                "redis_duplicate": red["duplicate"],
                "missing_from_scored": len(missing_scored),
                "dropped": dropped,
                "scored_plus_dlq_equals_produced": len(scored["keys"] & ids) + len(dlq["keys"] & ids) == total,
                "redis_counted_plus_late_equals_produced": red["counted"] + red["late"] == total,
            }

        say("checking counts")
        result["check"] = loop.run_until_complete(phase_check())
    finally:
        peak.stop()
        if producer is not None and producer.is_alive():
            producer.terminate()
        stop_process(proc)

        async def cleanup() -> None:
            from stream.app import redis_client

            try:
                await probe.stop()
            except Exception:  # noqa: BLE001 - the probe may never have started
                pass
            await delete_topics(settings, list(topic_plan(settings)))
            r = redis_client(settings)
            try:
                await unlink_prefix(r, settings.redis_prefix)
            finally:
                await r.aclose()

        try:
            loop.run_until_complete(cleanup())
        finally:
            loop.close()

    over = [s for s in samples if s["phase"] == "overload"]
    overload_s = phases["produce_end_s"]
    rss = summarize_rss(samples, overload_s)
    counted = result["check"]["redis_counted"] + result["check"]["redis_late"]
    mem0 = samples[0]["redis_used_memory_mb"] if samples else None
    mem_end = samples[-1]["redis_used_memory_mb"] if samples else None
    soak_counted = counted - _WARM_EVENTS - (0 if sustainable_rate else probe_events)
    per_event = (mem_end - mem0) * 2**20 / max(1, soak_counted) if mem0 is not None and mem_end is not None else None
    result["samples"] = samples
    result["summary"] = {
        "sustainable_events_per_s": rate,
        "offered_events_per_s": round(offered, 1),
        "achieved_produce_events_per_s": (result.get("producer") or {}).get("events_per_s"),
        "overload_s": overload_s,
        "scored_per_s_during_overload_mean": round(
            sum(s["scored_per_s"] for s in over if s["scored_per_s"] is not None)
            / max(1, sum(1 for s in over if s["scored_per_s"] is not None)),
            1,
        ),
        "overload_means": {
            k: round(sum(v) / len(v), 2) if (v := [x[k] for x in over if x.get(k) is not None]) else None
            for k in ("worker_cores", "machine_busy_cores", "load_1m", "mean_take")
        },
        "worker_rss_peak_mb": round(peak.peak / 2**20, 1),
        "worker_rss_final_mb": samples[-1]["worker_rss_mb"] if samples else None,
        "worker_rss_second_half": rss,
        "memory_bounded": rss["bounded"],
        "redis_used_memory_mb": {
            "start": mem0,
            "peak": max((s["redis_used_memory_mb"] for s in samples), default=None),
            "final": mem_end,
        },
        "redis_bytes_per_soak_event": round(per_event) if per_event is not None else None,
        # Redis keeps a seen-id per event (and the buckets) for the retention TTL: at the sustainable
        # rate, steady-state memory is about bytes/event x rate x retention.
        "redis_projected_gib_at_sustainable_rate_for_retention": round(
            per_event * rate * base.retention_seconds / 2**30, 1
        )
        if per_event
        else None,
        "retention_s": base.retention_seconds,
        "max_lag": max((s["lag"] for s in samples), default=None),
        "lag_at_produce_end": next((s["lag"] for s in samples if s["phase"] == "drain"), None),
        "drain_s": phases["drain_s"],
        "degraded_samples": sum(1 for s in samples if s["status"] == "degraded"),
        "health_unanswered_samples": sum(1 for s in samples if s["status"] == "no answer"),
        "dropped": result["check"]["dropped"],
        "nothing_dropped": result["check"]["dropped"] == 0
        and result["check"]["scored_plus_dlq_equals_produced"]
        and result["check"]["redis_counted_plus_late_equals_produced"],
    }
    return result


SOAK_SECTION = "Overload soak"
_SOAK_INTRO = """Reproduce: `.venv/bin/finpulse bench soak --record RELIABILITY.md` (defaults: ONNX Runtime on the
default model, 2x the sustainable rate measured in the same run, 600 s, a sample every 10 s; the
JSON holds every sample). Fresh topics, group and Redis prefix on the local Kafka and Redis; the
producer runs in its own process; nothing else of the soak reads the scored topic until the end.
Memory counts as bounded when the worker's RSS grew by less than 5% over the second half of the
overload. Redis memory is the whole Redis (shared with whatever else runs on it)."""
_SOAK_HEADER = (
    "| date | machine, load avg (1 min) start -> end | backend | overload | events produced "
    "| scored ev/s during overload | worker RSS peak / final MB | RSS growth, 2nd half MB (slope/min) "
    "| Redis used_memory MB start -> final (per event) | max lag | drain s | scored + DLQ / counted + late "
    "| dropped | degraded samples |\n"
    "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
)


def ensure_soak_section(path: Path) -> None:
    """Add the "Overload soak" section (intro and table header) at the end of ``path`` unless it is there."""
    text = path.read_text() if path.exists() else "# Reliability\n"
    if f"## {SOAK_SECTION}" in text:
        return
    path.write_text(text.rstrip() + f"\n\n## {SOAK_SECTION}\n\n{_SOAK_INTRO}\n\n{_SOAK_HEADER}\n")


@click.command("soak")
@click.option("--duration", type=float, default=600.0, show_default=True, help="Seconds of overload.")
@click.option(
    "--rate-factor",
    type=float,
    default=2.0,
    show_default=True,
    help="Offered rate, as a multiple of the sustainable rate.",
)
@click.option(
    "--backend",
    default="onnxruntime",
    show_default=True,
    help="Engine backend of the worker (onnxruntime, null, auto, ...).",
)
@click.option(
    "--model",
    "model_dir",
    type=click.Path(path_type=Path),
    default=None,
    help="Model (default: the cached default model, as the worker resolves it).",
)
@click.option("--sustainable-rate", type=float, default=None, help="Skip the probe and take this rate (events/s).")
@click.option(
    "--probe-events",
    type=int,
    default=None,
    help="Backlog timed to measure the sustainable rate (default 3,000; null backend 20,000).",
)
@click.option("--sample-interval", type=float, default=10.0, show_default=True)
@click.option(
    "--drain-timeout",
    type=float,
    default=1800.0,
    show_default=True,
    help="Seconds to wait for the backlog to drain after production stops.",
)
@click.option("--data-dir", type=click.Path(path_type=Path), default=None)
@click.option("--out", type=click.Path(path_type=Path), default=None, help="Also write the JSON here.")
@click.option(
    "--record",
    type=click.Path(path_type=Path),
    default=None,
    help="Add a row to the 'Overload soak' section of this file (RELIABILITY.md).",
)
def bench_soak_cmd(
    duration: float,
    rate_factor: float,
    backend: str,
    model_dir: Path | None,
    sustainable_rate: float | None,
    probe_events: int | None,
    sample_interval: float,
    drain_timeout: float,
    data_dir: Path | None,
    out: Path | None,
    record: Path | None,
) -> None:
    """Offer 2x the sustainable rate for 10 minutes: RSS, Redis memory, lag and events/s over time, drops checked."""
    from stream.cli.models import resolve_model_dir
    from stream.local import LocalServices

    base = get_settings()
    if data_dir:
        base = base.model_copy(update={"data_dir": data_dir})
    services = LocalServices(base)
    services.ensure_installed()
    started = services.start()
    load_start = [round(x, 2) for x in os.getloadavg()]
    try:
        eng0 = EngineSettings()
        mdir = model_dir or resolve_model_dir(base, eng0)
        eng = eng0.model_copy(update={"backend": backend, "model_dir": mdir})
        probe_n = probe_events or (20000 if backend == "null" else 3000)
        res = run_soak(
            base,
            eng,
            base.require_data_dir(),
            duration,
            rate_factor,
            sustainable_rate,
            probe_n,
            sample_interval,
            drain_timeout,
            log=lambda m: click.echo(m, err=True),
        )
    finally:
        services.stop([k for k, v in started.items() if v])
    results = {
        "benchmark": "soak",
        "date": now_iso(),
        "machine": machine_info(),
        "model_dir": str(mdir),
        "load_avg_1_5_15": {"start": load_start, "end": [round(x, 2) for x in os.getloadavg()]},
        "duration_s": duration,
        **res,
    }
    text = orjson.dumps(results, option=orjson.OPT_INDENT_2).decode()
    click.echo(text)
    if out:
        out.write_text(text)
    if record:
        m, s, c = results["machine"], results["summary"], results["check"]
        rss = s["worker_rss_second_half"]
        ensure_soak_section(record)
        mem = s["redis_used_memory_mb"]
        cells = [
            results["date"],
            f"{m['cpu']} ({m['cores']} cores, {m['gpu'] or 'no GPU'}), "
            f"load {load_start[0]} -> {results['load_avg_1_5_15']['end'][0]}",
            f"{res['engine']['backend']} ({res['engine']['device']})",
            f"{duration:.0f} s at {s['offered_events_per_s']} ev/s ({rate_factor}x {s['sustainable_events_per_s']})",
            c["produced"],
            s["scored_per_s_during_overload_mean"],
            f"{s['worker_rss_peak_mb']} / {s['worker_rss_final_mb']}",
            f"{rss['second_half_growth_mb']} ({rss['second_half_slope_mb_per_min']}/min)",
            f"{mem['start']} -> {mem['final']} ({s['redis_bytes_per_soak_event']} B/event)",
            s["max_lag"],
            s["drain_s"],
            f"{c['scored_distinct_ids']} + {c['dlq_records']} / {c['redis_counted']} + {c['redis_late']}",
            s["dropped"],
            s["degraded_samples"],
        ]
        append_markdown_row(record, SOAK_SECTION, "| " + " | ".join(str(x) for x in cells) + " |")
