"""``finpulse backtest``: replay a stream through the real pipeline (Kafka, a worker process, Redis), then
judge its alerts against the prices that followed them.

The pipeline part is the demo's (:mod:`stream.cli.demo`): the same local services, default model, worker
process, alert settings for a sparse stream (``DEMO_OVERRIDES``: hourly buckets, pure event time), replay
producer and output follower; only the names differ, fresh per run (topics, group, Redis prefix, web
port), so a backtest never touches a demo's or a live worker's data.
"""

from __future__ import annotations

import asyncio
import socket
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from engine.settings import EngineSettings
from stream.cli.backtest.analysis import active_days, load_prices
from stream.cli.backtest.report import BacktestResult, compute, write_report
from stream.cli.console import make_console
from stream.cli.demo import DEMO_OVERRIDES, replay_and_follow, reset_run
from stream.cli.models import ensure_default_model
from stream.cli.replay import parse_when, read_events
from stream.cli.supervise import start_worker_process, stop_process, wait_worker_ready
from stream.events import parse_event_time
from stream.local import LocalServices
from stream.settings import StreamSettings
from stream.topics import delete_topics
from stream.worker import topic_plan

log = structlog.get_logger(__name__)

# The demo's settings minus its names: time mode, buckets and the alert rule for a sparse stream.
_NAME_KEYS = ("input_topic", "scored_topic", "alerts_topic", "dlq_topic", "consumer_group", "redis_prefix")
BACKTEST_OVERRIDES: dict[str, Any] = {k: v for k, v in DEMO_OVERRIDES.items() if k not in _NAME_KEYS}


class BacktestError(RuntimeError):
    """The backtest could not run (no events in range, the pipeline lost events)."""


@dataclass(frozen=True)
class BacktestOutcome:
    result: BacktestResult
    paths: dict[str, Path]
    meta: dict[str, Any]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def backtest_settings(base: StreamSettings, overrides: dict[str, Any] | None = None) -> StreamSettings:
    """``base`` with the demo's alert settings, then ``overrides`` (flags), and fresh names for this run."""
    tag = uuid.uuid4().hex[:8]
    names = {
        "input_topic": f"finpulse.backtest.{tag}.events",
        "scored_topic": f"finpulse.backtest.{tag}.scored",
        "alerts_topic": f"finpulse.backtest.{tag}.alerts",
        "dlq_topic": f"finpulse.backtest.{tag}.dlq",
        "consumer_group": f"finpulse-backtest-{tag}",
        # In braces: a Redis Cluster hash tag, as the default prefix has, so the run's windows share one slot.
        "redis_prefix": f"{{finpulse:backtest:{tag}}}",
        "worker_web_port": _free_port(),
    }
    return base.model_copy(update={**BACKTEST_OVERRIDES, **(overrides or {}), **names})


def rule_text(s: StreamSettings) -> str:
    """The alert settings in one line, for the report."""
    return (
        f"negative share over {s.alert_window_seconds // 3600}h vs the {s.alert_baseline_seconds // 3600}h before, "
        f"{s.bucket_seconds}s buckets, method {s.alert_method} (min z {s.alert_min_z}), min count {s.alert_min_count}, "
        f"floor {s.alert_floor}, critical share {s.alert_critical_share}, "
        f"cooldown {s.alert_cooldown_seconds // 3600}h, time mode {s.time_mode}"
    )


def run_backtest(
    settings: StreamSettings,
    engine: EngineSettings,
    stream_file: Path,
    prices_dir: Path,
    out_dir: Path,
    *,
    since: str | None = None,
    until: str | None = None,
    limit: int | None = None,
    draws: int = 20,
    seed: int = 0,
    n_boot: int = 2000,
    keep_topics: bool = False,
    start_services: bool = True,
) -> BacktestOutcome:
    """Replay ``stream_file`` through a real worker under ``settings`` (see :func:`backtest_settings`), collect its
    alerts, join them with ``prices_dir`` and write the report into ``out_dir``.

    Redis keeps the run's windows under ``settings.redis_prefix`` (``finpulse trends`` and the API can read
    them with that prefix); the topics are deleted afterwards unless ``keep_topics``.
    """
    console = make_console()
    prices = load_prices(prices_dir)  # first: a wrong folder fails before anything starts
    events = read_events(stream_file, since=parse_when(since), until=parse_when(until), limit=limit)
    if not events:
        raise BacktestError(f"no events in {stream_file} between {since or 'start'} and {until or 'end'}")
    console.rule("[bold]finpulse backtest")
    console.print(f"stream: {stream_file} ({len(events)} events); prices: {prices_dir} ({len(prices)} tickers)")
    services = LocalServices(settings)
    started: dict[str, bool] = {}
    if start_services:
        services.ensure_installed()
        started = services.start()
    worker: subprocess.Popen[bytes] | None = None
    completed = False
    try:
        if engine.model_dir is None:
            engine = engine.model_copy(update={"model_dir": ensure_default_model(settings)})
        reset_run(settings)
        worker_log = settings.log_dir / f"backtest-worker-{settings.consumer_group}.log"
        worker = start_worker_process(settings, engine, worker_log)
        info = wait_worker_ready(worker, settings.worker_web_port, worker_log)
        eng = info["engine"]
        log.info("backtest_worker_ready", backend=eng["backend"], model_id=eng["model_id"], events=len(events))
        t0 = time.perf_counter()
        scored, alerts, dead = replay_and_follow(settings, events, console, idle_timeout=120)
        elapsed = time.perf_counter() - t0
        if scored + dead < len(events):
            raise BacktestError(
                f"only {scored + dead} of {len(events)} events came out of the pipeline (worker log: {worker_log}; "
                f"topics kept: {settings.alerts_topic})"
            )
        completed = True
    finally:
        if worker is not None:
            stop_process(worker)
        # A failed run keeps its topics: the alerts it did raise stay readable (a long run is not cheap to repeat).
        if completed and not keep_topics:
            asyncio.run(delete_topics(settings, list(topic_plan(settings))))
        if started:
            services.stop([n for n, s in started.items() if s])
    meta = {
        "input": str(stream_file),
        "prices": str(prices_dir),
        "since": since,
        "until": until,
        "events": len(events),
        "scored": scored,
        "dead": dead,
        "elapsed_s": round(elapsed, 1),
        "events_per_s": round((scored + dead) / elapsed, 1) if elapsed else None,
        "model_id": eng["model_id"],
        "backend": eng["backend"],
        "rule": rule_text(settings),
        "redis_prefix": settings.redis_prefix,
        "bucket_seconds": settings.bucket_seconds,
        "draws": draws,
        "seed": seed,
        "n_boot": n_boot,
    }
    result = compute(alerts, active_days(events, parse_event_time), prices, draws=draws, seed=seed, n_boot=n_boot)
    paths = write_report(result, out_dir, meta)
    console.print(f"{scored} scored, {dead} dead-lettered, {len(alerts)} alerts in {elapsed:.0f}s; report: {out_dir}")
    return BacktestOutcome(result, paths, meta)
