"""`finpulse bench pipeline`: the whole path (Kafka -> worker -> Redis + scored topic) against its raw engine.

One run measures, for each backend asked for (default: the engine's choice and ``null``):
  * the raw engine: the same TextClassifier, in-process, on the same texts (texts/s);
  * end-to-end throughput: N events produced as fast as possible, timed from the first send
    to the last scored record and the Redis count reaching N;
  * latency at a fixed offered load (a fraction of the measured rate): produce-to-scored
    p50/p95/p99 from the Kafka record timestamps of input and output;
  * worker peak RSS and Redis memory per 1,000 events.
Everything runs on this machine against the real local Kafka and Redis (started if not running).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import click
import orjson

from bench.common import CpuSplit, append_markdown_row, machine_info, now_iso, stream_texts
from engine.runtime import load_classifier
from engine.settings import EngineSettings
from finpulse.stats import percentiles
from stream.cli.models import resolve_model_dir
from stream.cli.replay import produce
from stream.cli.supervise import clear_redis_prefix, start_worker_process, stop_process, wait_worker_ready
from stream.local import LocalServices
from stream.security import kafka_client_kwargs
from stream.settings import StreamSettings, get_settings
from stream.topics import delete_topics, ensure_topics
from stream.worker import topic_plan


def _isolated(base: StreamSettings, tag: str, port: int) -> StreamSettings:
    return base.model_copy(
        update={
            "input_topic": f"bench.{tag}.events",
            "scored_topic": f"bench.{tag}.scored",
            "alerts_topic": f"bench.{tag}.alerts",
            "dlq_topic": f"bench.{tag}.dlq",
            "consumer_group": f"bench-{tag}",
            "redis_prefix": f"bench:{tag}",
            "worker_web_port": port,
            # Each phase replays the same stretch of event time again (under fresh ids): none of it is late.
            "allowed_lateness_seconds": 10 * 365 * 86400,
            # Historical data: event time only, as the demo does.
            "time_mode": "replay",
        }
    )


class RssSampler(threading.Thread):
    """Polls a process's resident memory; keeps the peak."""

    def __init__(self, pid: int) -> None:
        # psutil comes with the [build] extra; importing it here keeps `finpulse` usable without it.
        import psutil

        super().__init__(daemon=True)
        self._psutil_error = psutil.Error
        self.proc = psutil.Process(pid)
        self.peak = 0
        self._stop = threading.Event()

    def run(self) -> None:
        while not self._stop.is_set():
            try:
                self.peak = max(self.peak, self.proc.memory_info().rss)
            except self._psutil_error:
                return
            time.sleep(0.1)

    def stop(self) -> None:
        self._stop.set()


async def _collect_scored(
    settings: StreamSettings, want: int, timeout: float, ready: asyncio.Event | None = None, prefix: str | None = None
) -> list[tuple[str, int]]:
    """(id, scored-record timestamp ms) for ``want`` scored records, read from the scored topic.

    With ``ready``, reading starts at the topic's current end (set once positioned there), so a
    latency phase never pays for re-reading earlier phases; ``prefix`` counts only matching ids.
    """
    from aiokafka import AIOKafkaConsumer

    c = AIOKafkaConsumer(
        settings.scored_topic,
        **kafka_client_kwargs(settings),
        group_id=None,
        auto_offset_reset="latest" if ready is not None else "earliest",
    )
    await c.start()
    if ready is not None:
        while not c.assignment():
            await asyncio.sleep(0.05)
        for tp in c.assignment():
            await c.position(tp)  # resolves "latest" now, before anything is produced
    if ready is not None:
        ready.set()
    out: list[tuple[str, int]] = []
    deadline = time.monotonic() + timeout
    try:
        while len(out) < want and time.monotonic() < deadline:
            for msgs in (await c.getmany(timeout_ms=200, max_records=10000)).values():
                out.extend(
                    (k, m.timestamp) for m in msgs if (k := m.key.decode()) and (prefix is None or k.startswith(prefix))
                )
    finally:
        await c.stop()
    return out


async def _produce_times(settings: StreamSettings) -> dict[str, int]:
    """Input record CreateTime (ms) per event id, read back from the input topic."""
    from aiokafka import AIOKafkaConsumer

    c = AIOKafkaConsumer(
        settings.input_topic, **kafka_client_kwargs(settings), group_id=None, auto_offset_reset="earliest"
    )
    await c.start()
    out: dict[str, int] = {}
    try:
        while True:
            batch = await c.getmany(timeout_ms=1000, max_records=10000)
            if not batch:
                break
            for msgs in batch.values():
                for m in msgs:
                    out[m.key.decode()] = m.timestamp
    finally:
        await c.stop()
    return out


async def _redis_counted(settings: StreamSettings) -> tuple[int, int]:
    from stream.app import redis_client

    r = redis_client(settings)
    try:
        m = await r.hgetall(f"{settings.redis_prefix}:metrics")
        counted = sum(int(m.get(k, 0)) for k in (b"counted", b"late"))
        mem = int((await r.info("memory"))["used_memory"])
    finally:
        await r.aclose()
    return counted, mem


def _with_ids(events: list[dict[str, Any]], run: str) -> list[dict[str, Any]]:
    # Fresh ids per phase: Redis dedupes by id, and each phase must do the full work.
    return [{**e, "id": f"{run}-{e['id']}"} for e in events]


def _start_profiler(pid: int, out: Path) -> subprocess.Popen[bytes] | None:
    """py-spy (the [dev] extra) sampling the worker at 100 Hz until SIGINT; None when it is not installed."""
    exe = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(exe).is_file():
        return None
    cmd = [exe, "record", "-p", str(pid), "-o", str(out), "--format", "raw", "-r", "100", "--nonblocking", "-t"]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _frame_name(frame: str) -> str:
    """``name (path/file.py:line)`` -> ``name (file.py)``: one entry per function."""
    name, _, where = frame.partition(" (")
    return f"{name} ({where.split(':')[0].rsplit('/', 1)[-1]})" if where else name


def top_frames(raw: Path, n: int = 15) -> dict[str, Any]:
    """The functions most often on CPU in a py-spy ``--format raw`` profile: self (leaf) and inclusive shares."""
    leaf: dict[str, int] = {}
    incl: dict[str, int] = {}
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count_s = line.rpartition(" ")
        if not stack or not count_s.isdigit():
            continue
        count = int(count_s)
        frames = [
            f.split(" (")[0] + " (" + f.split(" (")[-1].split(":")[0].rsplit("/", 1)[-1] + ")" for f in stack.split(";")
        ]
        if not frames:
            continue
        total += count
        leaf[frames[-1]] = leaf.get(frames[-1], 0) + count
        for f in set(frames):
            incl[f] = incl.get(f, 0) + count

    def top(d: dict[str, int]) -> list[tuple[str, float]]:
        return [(k, round(v / total, 3)) for k, v in sorted(d.items(), key=lambda kv: -kv[1])[:n]]

    return {"samples": total, "self": top(leaf), "inclusive": top(incl)}


#: The worker's per-batch stage quantiles (/health), reported for the throughput phase.
_STAGE_KEYS = ("count_ms_p50", "count_ms_p99", "publish_ms_p50", "publish_ms_p99", "batch_infer_ms_p50")


def run_one(
    base: StreamSettings,
    engine: EngineSettings,
    events: list[dict[str, Any]],
    latency_events: int,
    load_fraction: float,
    log_dir: Path,
    profile: Path | None = None,
) -> dict[str, Any]:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    tag = uuid.uuid4().hex[:8]
    settings = _isolated(base, tag, port)
    asyncio.run(ensure_topics(settings, topic_plan(settings)))
    _, mem0 = asyncio.run(_redis_counted(settings))
    log_path = log_dir / f"bench-worker-{tag}.log"
    proc = start_worker_process(settings, engine, log_path)
    sampler = RssSampler(proc.pid)
    sampler.start()
    try:
        info = wait_worker_ready(proc, settings.worker_web_port, log_path, timeout=300)
        # Warm the consumer group and the model before timing.
        warm = _with_ids(events[:64], "warm")
        asyncio.run(produce(settings, settings.input_topic, warm))
        asyncio.run(_collect_scored(settings, len(warm), 120))

        burst = _with_ids(events, "tput")
        split = CpuSplit(proc.pid)
        split.start()
        profiler = _start_profiler(proc.pid, profile) if profile is not None else None
        t0_wall = time.time()
        t0 = time.perf_counter()

        async def flood() -> float:
            # Only Redis is polled while the worker runs (cheap); the scored topic is read afterwards,
            # so the load generator's CPU goes to producing, not to consuming the results.
            from stream.app import redis_client

            r = redis_client(settings)
            try:
                await produce(settings, settings.input_topic, burst)
                while time.perf_counter() - t0 < 900:
                    m = await r.hmget(f"{settings.redis_prefix}:metrics", "counted", "late")
                    if sum(int(v or 0) for v in m) >= len(warm) + len(burst):
                        break
                    await asyncio.sleep(0.02)
                return time.perf_counter() - t0
            finally:
                await r.aclose()

        t_redis = asyncio.run(flood())
        cpu = split.stop()
        from stream.cli.supervise import health

        # The worker's stage histograms now hold the warm-up and this phase only (not the paced one below).
        tput_metrics = (health(settings.worker_web_port) or {}).get("metrics", {})
        if profiler is not None:
            profiler.send_signal(signal.SIGINT)  # py-spy writes its profile on SIGINT
            profiler.wait(timeout=60)
        scored = asyncio.run(_collect_scored(settings, len(warm) + len(burst), 300))
        # The worker sends scored records after counting them: the run ends at the later of the two.
        last_scored_ms = max((ts for i, ts in scored if i.startswith("tput-")), default=0)
        t_scored = last_scored_ms / 1000 - t0_wall
        elapsed = max(t_redis, t_scored)
        counted, mem1 = asyncio.run(_redis_counted(settings))
        rate = len(burst) / elapsed

        # Fixed offered load: a fraction of what the pipeline just sustained.
        lat_events = _with_ids(events[:latency_events], "lat")
        offered = max(1.0, rate * load_fraction)

        async def paced() -> list[tuple[str, int]]:
            at_end = asyncio.Event()
            collector = asyncio.create_task(
                _collect_scored(settings, len(lat_events), 900, ready=at_end, prefix="lat-")
            )
            await at_end.wait()
            await produce(settings, settings.input_topic, lat_events, rate=offered)
            return await collector

        scored_all = asyncio.run(paced())
        h = health(settings.worker_web_port) or {}
        metrics = h.get("metrics", {})
        batch_p99 = metrics.get("batch_infer_ms_p99")
        produced_at = asyncio.run(_produce_times(settings))
        lat = [ts - produced_at[i] for i, ts in scored_all if i.startswith("lat-") and i in produced_at]
        return {
            "backend": info["engine"]["backend"],
            "device": info["engine"]["device"],
            "precision": info["engine"]["precision"],
            "model_id": info["engine"]["model_id"],
            "skipped_backends": info["engine"].get("skipped_backends"),
            "batch_policy": {
                "take_max_events": settings.max_batch_size,
                "max_wait_ms": settings.max_wait_ms,
                **info["engine"].get("batch_policy", {}),
            },
            "events": len(burst),
            "processes": settings.worker_processes,
            "throughput_events_per_s": round(rate, 1),
            "seconds_to_last_scored": round(t_scored, 3),
            "seconds_to_redis_complete": round(t_redis, 3),
            "redis_counted": counted,
            "scored_records": len(scored),
            "latency_offered_events_per_s": round(offered, 1),
            "latency_events": len(lat),
            "latency_ms": percentiles(lat),
            # The bound: max wait + 3 x p99 of one backend call (the worker's own recent calls).
            # Quantiles estimated from the worker's Prometheus histograms (1.5x buckets: within ~25%).
            "engine_call_ms": {"p50": metrics.get("engine_call_ms_p50"), "p99": metrics.get("engine_call_ms_p99")},
            "batch_infer_ms_p99": batch_p99,
            # Per batch, the worker's own histograms: a batch is counted and published before the next one is
            # counted, so count + publish against the interval between batches says whether that chain sets the rate.
            "throughput_phase_stage_ms": {k: tput_metrics.get(k) for k in _STAGE_KEYS},
            "throughput_phase_batches": tput_metrics.get("batches"),
            "latency_bound_ms": round(settings.max_wait_ms + 3 * batch_p99, 1) if batch_p99 else None,
            "throughput_phase_cpu": cpu,
            "worker_peak_rss_mb": round(sampler.peak / 2**20, 1),
            "redis_bytes_per_1000_events": round((mem1 - mem0) / max(counted, 1) * 1000),
            "load_avg_after": os.getloadavg(),
            **({"profile": str(profile), "profile_top": top_frames(profile)} if profile and profile.is_file() else {}),
        }
    finally:
        sampler.stop()
        stop_process(proc)
        asyncio.run(delete_topics(settings, list(topic_plan(settings))))
        asyncio.run(clear_redis_prefix(settings))


def raw_engine(engine: EngineSettings, model_dir: Path, texts: list[str], max_batch_size: int) -> dict[str, Any]:
    """The same classifier in-process, fed in the worker's batch size: the pipeline's upper bound."""
    clf = load_classifier(engine, model_dir)
    clf.backend.warmup()
    t0 = time.perf_counter()
    for i in range(0, len(texts), max_batch_size):
        clf.classify(texts[i : i + max_batch_size])
    dt = time.perf_counter() - t0
    return {
        "backend": clf.backend.name,
        "texts": len(texts),
        "texts_per_s": round(len(texts) / dt, 1),
        "stats": clf.stats.as_dict(),
    }


@click.command("pipeline")
@click.option(
    "--events",
    "n",
    type=int,
    default=None,
    help="Events for the throughput phase [default: 30,000 for the null backend (long enough for a stable "
    "figure), 3,000 for a real model].",
)
@click.option("--latency-events", type=int, default=None, help="[default: a sixth of --events, at least 1,000]")
@click.option(
    "--runs", type=int, default=1, show_default=True, help="Run each backend this many times; the spread is reported."
)
@click.option(
    "--profile",
    "profile_dir",
    type=click.Path(path_type=Path),
    default=None,
    help="py-spy the worker during the throughput phase; raw profiles go to this folder.",
)
@click.option(
    "--load",
    "load_fraction",
    type=float,
    default=0.5,
    show_default=True,
    help="Offered load for latency, as a fraction of measured throughput.",
)
@click.option("--backend", "backends", multiple=True, default=("auto", "null"), show_default=True)
@click.option("--model", "model_dir", type=click.Path(path_type=Path), default=None)
@click.option("--data-dir", type=click.Path(path_type=Path), default=None)
@click.option("--out", type=click.Path(path_type=Path), default=None, help="Also write the JSON here.")
@click.option("--record", type=click.Path(path_type=Path), default=None, help="Append rows to this BENCHMARKS.md.")
@click.option(
    "--baseline-events",
    type=int,
    default=300,
    show_default=True,
    help="Also run `bench baseline` on this many of the same events (0: skip).",
)
@click.option(
    "--processes",
    type=click.IntRange(1, 64),
    default=1,
    show_default=True,
    help="Workers in the consumer group (finpulse worker --processes N); CPU and RSS are worker 0's.",
)
@click.option(
    "--novelty",
    type=click.Choice(["on", "off", "both"]),
    default="on",
    show_default=True,
    help="Story novelty in the worker; both: each run once without and once with it, back to back (its cost).",
)
def bench_pipeline_cmd(
    n: int | None,
    latency_events: int | None,
    runs: int,
    profile_dir: Path | None,
    load_fraction: float,
    backends: tuple[str, ...],
    model_dir: Path | None,
    data_dir: Path | None,
    out: Path | None,
    record: Path | None,
    baseline_events: int,
    processes: int,
    novelty: str,
) -> None:
    """End-to-end events/s and produce-to-scored latency, against the raw engine, in one run."""
    base = get_settings().model_copy(update={"worker_processes": processes})
    if data_dir:
        base = base.model_copy(update={"data_dir": data_dir})
    services = LocalServices(base)
    services.ensure_installed()
    started = services.start()
    try:
        eng0 = EngineSettings()
        mdir = model_dir or resolve_model_dir(base, eng0)
        results: dict[str, Any] = {
            "benchmark": "pipeline",
            "date": now_iso(),
            "machine": machine_info(),
            "load_avg_before": os.getloadavg(),
            "model_dir": str(mdir),
            "runs": [],
        }
        if profile_dir is not None:
            profile_dir.mkdir(parents=True, exist_ok=True)
        events: list[dict[str, Any]] = []
        for b in backends:
            count = n or (30_000 if b == "null" else 3_000)
            lat_count = latency_events or max(1_000, count // 6)
            events = stream_texts(base.require_data_dir(), max(count, lat_count))
            eng = eng0.model_copy(update={"backend": b, "model_dir": mdir})
            raw = raw_engine(eng, mdir, [e["text"] for e in events[:count]], base.max_batch_size)
            modes = {"on": [True], "off": [False], "both": [False, True]}[novelty]
            rates: dict[bool, list[float]] = {m: [] for m in modes}
            for k in range(runs):
                for nov in modes:
                    tag = f"{b}-{k}" + ("" if len(modes) == 1 else f"-novelty-{'on' if nov else 'off'}")
                    prof = profile_dir / f"pipeline-{tag}.raw.txt" if profile_dir is not None else None
                    run = run_one(
                        base.model_copy(update={"novelty_enabled": nov}),
                        eng,
                        events[:count],
                        lat_count,
                        load_fraction,
                        base.log_dir,
                        prof,
                    )
                    run["novelty"] = nov
                    run["raw_engine"] = raw
                    run["pipeline_vs_engine"] = (
                        round(run["throughput_events_per_s"] / raw["texts_per_s"], 3) if raw["texts_per_s"] else None
                    )
                    rates[nov].append(run["throughput_events_per_s"])
                    results["runs"].append(run)
                    click.echo(orjson.dumps(run).decode(), err=True)
            for nov, rs in rates.items():
                key = b if len(modes) == 1 else f"{b}/novelty-{'on' if nov else 'off'}"
                if runs > 1:
                    results.setdefault("spread", {})[key] = {
                        "runs": runs,
                        "events_per_s": rs,
                        "median": round(statistics.median(rs), 1),
                        "min": min(rs),
                        "max": max(rs),
                        "stdev_pct": round(100 * statistics.stdev(rs) / statistics.mean(rs), 1),
                    }
            if len(modes) == 2:
                # The cost of novelty as a ratio of medians taken in this one run (runs interleaved off, on).
                results.setdefault("novelty_cost", {})[b] = {
                    "events_per_s_off": rates[False],
                    "events_per_s_on": rates[True],
                    "on_over_off_median": round(statistics.median(rates[True]) / statistics.median(rates[False]), 3),
                }
        if baseline_events > 0:
            from bench.baseline import run_baseline

            # The per-message loop as a transformers pipeline runs it (no padding), and padded to 128.
            base_res = asyncio.run(run_baseline(base, events[:baseline_events], mdir))
            padded = asyncio.run(run_baseline(base, events[:baseline_events], mdir, pad_to_max=True))
            results["baseline"] = base_res
            results["baseline_padded"] = padded
            for run in results["runs"]:
                run["pipeline_vs_baseline"] = round(run["throughput_events_per_s"] / base_res["events_per_s"], 2)
                run["pipeline_vs_baseline_padded"] = round(run["throughput_events_per_s"] / padded["events_per_s"], 2)
    finally:
        services.stop([k for k, v in started.items() if v])
    text = orjson.dumps(results, option=orjson.OPT_INDENT_2).decode()
    click.echo(text)
    if out:
        out.write_text(text)
    if record:
        m = results["machine"]
        for r in results["runs"]:
            append_markdown_row(
                record,
                "Pipeline (finpulse bench pipeline)",
                f"| {results['date']} | {m['cpu']} ({m['cores']} cores) | {r['backend']} ({r['device']}, "
                f"{r['precision']}) | {r['model_id']} "
                f"| take {r['batch_policy']['take_max_events']} / wait {r['batch_policy']['max_wait_ms']} ms | "
                f"{r['events']} "
                f"| {r['throughput_events_per_s']} | {r['raw_engine']['texts_per_s']} | {r['pipeline_vs_engine']} "
                f"| {r['latency_ms']['p50']} / {r['latency_ms']['p95']} / {r['latency_ms']['p99']} @ "
                f"{r['latency_offered_events_per_s']}/s "
                f"| {r['worker_peak_rss_mb']} | {r['redis_bytes_per_1000_events']} |",
            )
