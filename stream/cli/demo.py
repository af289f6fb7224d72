"""`finpulse demo`: the whole system on one machine, on a real historical stream, in a few minutes.

Starts (only if needed) local Kafka and Redis, makes sure the default model and its engine bundle
exist, starts a worker in its own process, replays part of the StockNet tweet stream, follows the
scored and alert topics with a progress bar, then prints trends and alerts. The query API and its
live dashboard (``finpulse serve``) run alongside from the start, so the replay can be watched, and
keep serving after it until Ctrl-C (``--no-serve`` ends the demo once the tables are printed).
Whatever it started is stopped at the end or on Ctrl-C.
"""

from __future__ import annotations

import asyncio
import signal
import socket
import subprocess
import threading
import time
import uuid
from typing import Any

import orjson
import structlog
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from engine.settings import EngineSettings
from stream.cli.console import alerts_table, make_console, trends_table
from stream.cli.models import ensure_default_model
from stream.cli.replay import parse_when, produce, read_events
from stream.cli.supervise import clear_redis_prefix, health, start_worker_process, stop_process, wait_worker_ready
from stream.local import LocalServices
from stream.logs import configure_logging
from stream.security import kafka_client_kwargs
from stream.settings import StreamSettings
from stream.topics import delete_topics, ensure_topics
from stream.worker import topic_plan

log = structlog.get_logger(__name__)

# The StockNet stream is sparse (about 150 tweets a day over 87 tickers), so the demo counts in
# hourly buckets and compares a 6-hour window against the 3 days before it.
DEMO_OVERRIDES: dict[str, Any] = {
    "input_topic": "finpulse.demo.events",
    "scored_topic": "finpulse.demo.scored",
    "alerts_topic": "finpulse.demo.alerts",
    "dlq_topic": "finpulse.demo.dlq",
    "consumer_group": "finpulse-demo",
    # Braces: a Redis Cluster hash tag, as every store prefix needs one there.
    "redis_prefix": "{finpulse-demo}",
    # A historical replay: pure event time (no idleness, no wall-clock closing), so the same slice
    # raises the same alerts however the worker batches it.
    "time_mode": "replay",
    "bucket_seconds": 3600,
    "alert_window_seconds": 6 * 3600,
    "alert_baseline_seconds": 72 * 3600,
    "alert_min_count": 6,
    "alert_cooldown_seconds": 24 * 3600,
    "allowed_lateness_seconds": 6 * 3600,
    "retention_seconds": 3 * 24 * 3600,
}


async def follow_outputs(
    settings: StreamSettings, expected: int, progress: Progress, task: Any, idle_timeout: float
) -> tuple[int, list[dict[str, Any]], int]:
    """Count scored + dead-lettered events until ``expected`` are accounted for; collect alerts."""
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(
        settings.scored_topic,
        settings.alerts_topic,
        settings.dlq_topic,
        **kafka_client_kwargs(settings),
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        group_id=None,
        fetch_max_wait_ms=200,
    )
    await consumer.start()
    scored, dead = 0, 0
    alerts: list[dict[str, Any]] = []
    last = time.monotonic()
    try:
        while scored + dead < expected and time.monotonic() - last < idle_timeout:
            batch = await consumer.getmany(timeout_ms=500, max_records=5000)
            for tp, msgs in batch.items():
                if not msgs:
                    continue
                last = time.monotonic()
                if tp.topic == settings.scored_topic:
                    scored += len(msgs)
                elif tp.topic == settings.dlq_topic:
                    dead += len(msgs)
                else:
                    alerts.extend(orjson.loads(m.value) for m in msgs)
            progress.update(task, completed=scored + dead)
        # The last batch's alerts are sent just after its scored events: give them a moment.
        tail = await consumer.getmany(timeout_ms=1500)
        for tp, msgs in tail.items():
            if tp.topic == settings.alerts_topic:
                alerts.extend(orjson.loads(m.value) for m in msgs)
    finally:
        await consumer.stop()
    return scored, alerts, dead


def reset_run(settings: StreamSettings) -> None:
    """Start a run from nothing: its topics deleted and made again, its Redis prefix emptied (demo, backtest)."""
    asyncio.run(delete_topics(settings, list(topic_plan(settings))))
    asyncio.run(clear_redis_prefix(settings))
    asyncio.run(ensure_topics(settings, topic_plan(settings)))


def replay_and_follow(
    settings: StreamSettings, events: list[dict[str, Any]], console: Any, idle_timeout: float = 90
) -> tuple[int, list[dict[str, Any]], int]:
    """Replay ``events`` into the input topic while following the outputs, with progress bars (demo, backtest).

    Returns (scored, alerts, dead-lettered), as :func:`follow_outputs`.
    """
    with Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console
    ) as progress:
        sent_task = progress.add_task("replayed", total=len(events))
        done_task = progress.add_task("scored  ", total=len(events))

        async def both() -> tuple[int, list[dict[str, Any]], int]:
            follower = asyncio.create_task(
                follow_outputs(settings, len(events), progress, done_task, idle_timeout=idle_timeout)
            )
            await produce(settings, settings.input_topic, events, progress=lambda n: progress.advance(sent_task, n))
            return await follower

        return asyncio.run(both())


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


class DashboardServer:
    """The query API and dashboard under uvicorn in a background thread (its own event loop)."""

    def __init__(self, settings: StreamSettings) -> None:
        import uvicorn

        from api.app import create_app
        from api.settings import get_api_settings

        self.api = get_api_settings()
        app = create_app(settings, self.api)
        config = uvicorn.Config(
            app, host=self.api.host, port=self.api.port, log_config=None, access_log=False, log_level="warning"
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name="dashboard", daemon=True)

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.api.host in ("0.0.0.0", "::") else self.api.host
        return f"http://{host}:{self.api.port}/"

    def start(self, timeout: float = 20.0) -> None:
        with socket.socket() as probe:
            if probe.connect_ex((self.api.host if self.api.host != "0.0.0.0" else "127.0.0.1", self.api.port)) == 0:
                raise OSError(f"port {self.api.port} is already in use (set FINPULSE_API_PORT)")
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise OSError(f"the dashboard did not start on port {self.api.port}")
            time.sleep(0.05)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


def run_demo(
    base: StreamSettings,
    engine: EngineSettings,
    limit: int,
    since: str | None,
    until: str | None,
    keep_services: bool = False,
    serve: bool = True,
) -> int:
    console = make_console()
    # A fresh consumer group per run: the demo recreates its topics, and Kafka keeps a group's
    # committed offsets for a deleted topic, so a reused group would start the new topic at the old
    # run's offsets and skip this run's events (seen here with Kafka 4.1).
    group = f"{DEMO_OVERRIDES['consumer_group']}-{uuid.uuid4().hex[:8]}"
    settings = base.model_copy(update={**DEMO_OVERRIDES, "consumer_group": group})
    data_dir = settings.require_data_dir()
    stream_file = data_dir / "stocknet-tweets" / "stream.csv"
    services = LocalServices(settings)
    console.rule("[bold]finpulse demo")
    console.print(f"stream: {stream_file}  (events {limit}, since {since or 'start'})")
    services.ensure_installed()
    started = services.start()
    console.print("services: " + ", ".join(f"{k} {'started' if v else 'already running'}" for k, v in started.items()))
    worker: subprocess.Popen[bytes] | None = None
    dashboard: DashboardServer | None = None
    try:
        if engine.model_dir is None:
            model_dir = ensure_default_model(settings)
            engine = engine.model_copy(update={"model_dir": model_dir})
        reset_run(settings)

        events = read_events(stream_file, since=parse_when(since), until=parse_when(until), limit=limit)
        if not events:
            console.print("[red]no events in that range")
            return 1
        worker_log = settings.log_dir / "demo-worker.log"
        worker = start_worker_process(settings, engine, worker_log)
        with console.status("starting worker (loading model, joining consumer group)..."):
            info = wait_worker_ready(worker, settings.worker_web_port, worker_log)
        eng = info["engine"]
        console.print(
            f"model [bold]{eng['model_id']}[/] on backend [bold]{eng['backend']}[/] ({eng['device']}, "
            f"{eng['precision']})" + (f"; skipped: {eng['skipped_backends']}" if eng.get("skipped_backends") else "")
        )
        # From here the console belongs to the progress bar and the tables: the dashboard's polling would
        # otherwise print a request log line every few seconds (warnings and errors still show).
        configure_logging("WARNING")
        try:
            dashboard = DashboardServer(settings)
            dashboard.start()
            console.print(f"dashboard: [bold]{dashboard.url}[/] (live while the replay runs)")
        except OSError as exc:
            dashboard = None
            console.print(f"[yellow]dashboard not started: {exc}")
        t0 = time.perf_counter()
        scored, alerts, dead = replay_and_follow(settings, events, console)
        elapsed = time.perf_counter() - t0
        info = health(settings.worker_web_port) or info
        asyncio.run(_print_trends(console, settings))
        console.print(alerts_table(alerts))
        console.print(
            f"{scored} scored, {dead} dead-lettered of {len(events)} replayed in {elapsed:.1f}s "
            f"({(scored + dead) / elapsed:.0f} events/s end to end); backend {eng['backend']}; "
            f"windows: late={info['metrics'].get('late', 0)} duplicate={info['metrics'].get('duplicate', 0)}"
        )
        code = 0 if scored + dead == len(events) else 2
        if serve and dashboard is not None:
            console.print(f"dashboard still serving at [bold]{dashboard.url}[/]; press Ctrl-C to stop the demo")
            # A SIGTERM (a service manager, `timeout`) ends the demo as cleanly as Ctrl-C does.
            signal.signal(signal.SIGTERM, _interrupt)
            try:
                while dashboard.thread.is_alive():
                    time.sleep(0.5)
            except KeyboardInterrupt:
                console.print("stopping")
        return code
    finally:
        if dashboard is not None:
            dashboard.stop()
        if worker is not None:
            stop_process(worker)
        if not keep_services:
            services.stop([n for n, s in started.items() if s])


async def _print_trends(console: Any, settings: StreamSettings) -> None:
    from stream.app import redis_client
    from stream.windows import WindowStore

    r = redis_client(settings)
    try:
        store = WindowStore(
            r,
            settings.redis_prefix,
            settings.bucket_seconds,
            settings.retention_seconds,
            settings.allowed_lateness_seconds,
        )
        console.print(
            trends_table(
                "Top tickers by negative share (whole replay, at least 20 events)", await store.trends("ticker"), 15, 20
            )
        )
        console.print(trends_table("Topics by negative share (whole replay)", await store.trends("topic"), 20, 1))
    finally:
        await r.aclose()
