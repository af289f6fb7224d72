"""The ``finpulse`` command line. ``sys.exit`` lives here and nowhere else."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

import click
import orjson

from bench.cli import bench
from build_engine.cli import build_engine_cmd
from engine.settings import EngineSettings
from finpulse.extras import missing_extra
from ingest.cli import ingest_cmd
from stream.cli.backtest.command import backtest_cmd
from stream.cli.replay.command import replay_cmd
from stream.cli.status import status_cmd
from stream.logs import configure_logging
from stream.security import kafka_client_kwargs
from stream.settings import StreamSettings, get_settings
from training.cli import evaluate_cmd, pretrain_cmd, soup_cmd, teacher_base_cmd, train_cmd


def _settings(**overrides: Any) -> StreamSettings:
    base = get_settings()
    upd = {k: v for k, v in overrides.items() if v is not None}
    return base.model_copy(update=upd) if upd else base


@click.group()
@click.option("--log-level", default="INFO", show_default=True)
@click.option("--pretty-logs", is_flag=True, help="Human-readable logs instead of JSON lines.")
def cli(log_level: str, pretty_logs: bool) -> None:
    """finpulse: real-time financial sentiment monitor."""
    configure_logging(log_level, json=not pretty_logs)


# --- local services --------------------------------------------------------------------------------
@cli.command()
def up() -> None:
    """Start local Kafka (KRaft) and Redis (installing them first if needed)."""
    from stream.local import LocalServices

    svc = LocalServices(get_settings())
    svc.ensure_installed()
    started = svc.start()
    click.echo(orjson.dumps({"started": started, "status": svc.status()}, option=orjson.OPT_INDENT_2).decode())


@cli.command()
def down() -> None:
    """Stop the local Kafka and Redis that `finpulse up` started."""
    from stream.local import LocalServices

    click.echo(orjson.dumps({"stopped": LocalServices(get_settings()).stop()}).decode())


@cli.command()
def services() -> None:
    """Show whether local Kafka and Redis are running (`finpulse status` shows the consumer group)."""
    from stream.local import LocalServices

    click.echo(orjson.dumps(LocalServices(get_settings()).status(), option=orjson.OPT_INDENT_2, default=str).decode())


# --- the worker ---------------------------------------------------------------------------------------
@cli.command()
@click.option("--web-port", type=int, default=None, help="Health endpoint port (default FINPULSE_WORKER_WEB_PORT).")
@click.option("--backend", default=None, help="Engine backend (default FINPULSE_ENGINE_BACKEND or auto).")
@click.option("--model", "model_dir", type=click.Path(path_type=Path), default=None)
@click.option(
    "--processes",
    type=click.IntRange(1, 64),
    default=None,
    help="Run N workers of one consumer group here: this process and N-1 children on the next web ports "
    "(default FINPULSE_WORKER_PROCESSES; useful up to the input partition count).",
)
def worker(web_port: int | None, backend: str | None, model_dir: Path | None, processes: int | None) -> None:
    """Run a Faust worker: consume events, classify in micro-batches, update Redis, publish scores and alerts."""
    from stream.cli.models import resolve_model_dir
    from stream.cli.workers import SiblingWorkers
    from stream.worker import run_worker

    eng = EngineSettings()
    eng = eng.model_copy(
        update={k: v for k, v in {"backend": backend, "model_dir": model_dir}.items() if v is not None}
    )
    s = _settings(worker_web_port=web_port)
    resolved = resolve_model_dir(s, eng)
    n = processes or s.worker_processes
    siblings = SiblingWorkers(s, eng.model_copy(update={"model_dir": resolved}), n - 1) if n > 1 else None
    if siblings is not None:
        siblings.start()
    try:
        run_worker(s, eng, resolved)
    finally:
        if siblings is not None:
            siblings.stop()


@cli.command()
@click.option("--from-beginning", is_flag=True, help="Print past alerts too.")
@click.option(
    "--timeout", type=float, default=None, help="Stop after this many idle seconds (default: follow forever)."
)
@click.option("--json", "as_json", is_flag=True, help="One JSON alert per line.")
def alerts(from_beginning: bool, timeout: float | None, as_json: bool) -> None:
    """Follow the alert topic and print alerts as they come."""
    from aiokafka import AIOKafkaConsumer

    from stream.cli.console import alert_reasons

    s = get_settings()

    async def follow() -> None:
        consumer = AIOKafkaConsumer(
            s.alerts_topic,
            **kafka_client_kwargs(s),
            group_id=None,
            auto_offset_reset="earliest" if from_beginning else "latest",
        )
        await consumer.start()
        try:
            idle = 0.0
            while timeout is None or idle < timeout:
                batch = await consumer.getmany(timeout_ms=1000)
                if not batch:
                    idle += 1.0
                    continue
                idle = 0.0
                for msgs in batch.values():
                    for m in msgs:
                        a = orjson.loads(m.value)
                        if as_json:
                            click.echo(m.value.decode())
                        else:
                            click.echo(
                                f"[{a['severity'].upper()}] {a['window_end_iso']} {a['entity_kind']}:{a['entity']} "
                                f"negative {a['observed_share']:.0%} vs baseline {a['baseline_share']:.0%} "
                                f"over {a['count']} events (z={a['z']:.1f})"
                            )
                            for line in alert_reasons(a, examples=3, chars=200):
                                click.echo(f"    {line}")
        finally:
            await consumer.stop()

    try:
        asyncio.run(follow())
    except KeyboardInterrupt:
        pass


@cli.command()
@click.option("--kind", type=click.Choice(["ticker", "topic", "both"]), default="both")
@click.option(
    "--window",
    default="1h",
    show_default=True,
    help="Window ending at the newest event time: 5m, 15m, 1h, 24h... or 'all'.",
)
@click.option("--top", type=int, default=15)
@click.option("--min-count", type=int, default=1)
@click.option(
    "--indices",
    is_flag=True,
    help="Also the entity indices (buzz, neg/pos share, mean score, buzz z) at 1m, 5m, 15m, 1h and 1d for the "
    "top entities (or --entity).",
)
@click.option("--entity", "entity_names", multiple=True, help="With --indices: only these names (repeatable).")
@click.option(
    "--baseline",
    type=click.IntRange(1, 48),
    default=24,
    show_default=True,
    help="Past windows the buzz z compares with.",
)
def trends(
    kind: str,
    window: str,
    top: int,
    min_count: int,
    indices: bool,
    entity_names: tuple[str, ...],
    baseline: int,
) -> None:
    """Print current windows from Redis, entities ranked by negative share (and, with --indices, their indices)."""
    from stream.app import redis_client
    from stream.cli.console import indices_table, make_console, trends_table
    from stream.indices import entity_indices
    from stream.windows import WindowStore

    s = get_settings()
    window_s = None if window == "all" else _parse_duration(window)
    console = make_console()

    async def show() -> None:
        r = redis_client(s)
        try:
            store = WindowStore(r, s.redis_prefix, s.bucket_seconds, s.retention_seconds, s.allowed_lateness_seconds)
            wm = await store.watermark_ms()
            for k in ["ticker", "topic"] if kind == "both" else [kind]:
                rows = await store.trends(k, window_s)
                console.print(trends_table(f"{k}s, window {window}", rows, top, min_count))
                if indices and wm is not None:
                    # The same entities as the table above (ranked by negative share), or the ones named.
                    ranked = sorted((x for x in rows if x.n >= min_count), key=lambda x: (-x.negative_share, -x.n))
                    names = list(entity_names) or [x.name for x in ranked[:top]]
                    table = [(n, x) for n in names for x in await entity_indices(store, k, n, wm, baseline=baseline)]
                    console.print(indices_table(f"{k} indices (buzz z: vs the previous {baseline} windows)", table))
            console.print(f"watermark: {wm}  metrics: {await store.metrics()}")
        finally:
            await r.aclose()

    asyncio.run(show())


@cli.command()
@click.option("--host", default=None, help="Interface to bind (default FINPULSE_API_HOST, 127.0.0.1).")
@click.option("--port", type=int, default=None, help="Port (default FINPULSE_API_PORT, 8080).")
def serve(host: str | None, port: int | None) -> None:
    """Run the query API: entity windows and series, alerts, a live alert stream, health, the dashboard."""
    from api.app import run_server
    from api.settings import get_api_settings

    api = get_api_settings()
    api = api.model_copy(update={k: v for k, v in {"host": host, "port": port}.items() if v is not None})
    run_server(get_settings(), api)


def _parse_duration(text: str) -> int:
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    try:
        return int(float(text[:-1]) * units[text[-1]]) if text[-1] in units else int(text)
    except (ValueError, KeyError) as exc:
        raise click.BadParameter(f"{text!r}: use e.g. 15m, 1h, 24h") from exc


@cli.command()
@click.option("--limit", type=int, default=6000, show_default=True, help="Events to replay.")
@click.option("--since", default="2014-04-20", show_default=True)
@click.option("--until", default=None)
@click.option("--keep-services", is_flag=True, help="Leave Kafka and Redis running afterwards.")
@click.option(
    "--serve/--no-serve",
    default=True,
    show_default=True,
    help="Keep the dashboard (and the worker) serving after the replay, until Ctrl-C.",
)
def demo(limit: int, since: str | None, until: str | None, keep_services: bool, serve: bool) -> None:
    """Everything at once: services, default model, worker, a real stream replayed, trends and alerts,
    and the live dashboard."""
    from stream.cli.demo import run_demo

    try:
        code = run_demo(get_settings(), EngineSettings(), limit, since, until, keep_services, serve)
    except KeyboardInterrupt:
        click.echo("interrupted: stopped what the demo started", err=True)
        code = 130
    sys.exit(code)


@cli.group()
def model() -> None:
    """The default model."""


@model.command("ensure")
@click.option("--no-bundle", is_flag=True, help="Only the checkpoint, no engine bundle.")
def model_ensure(no_bundle: bool) -> None:
    """Train the default model if it is not cached, build its engine bundle, print where it is."""
    from stream.cli.models import ensure_default_model

    click.echo(str(ensure_default_model(get_settings(), build_bundle=not no_bundle)))


# Commands of the other packages, registered explicitly. Their modules import only light packages
# at import time (heavy ones such as torch inside the command), so every command is listed even on
# a worker-only install, and running one whose extra is missing says which extra to install.
cli.add_command(build_engine_cmd, "build-engine")
cli.add_command(train_cmd, "train")
cli.add_command(evaluate_cmd, "evaluate")
cli.add_command(pretrain_cmd, "pretrain")
cli.add_command(teacher_base_cmd, "teacher-base")
cli.add_command(soup_cmd, "soup")
cli.add_command(bench, "bench")
cli.add_command(status_cmd, "status")
cli.add_command(replay_cmd, "replay")
cli.add_command(ingest_cmd, "ingest")
cli.add_command(backtest_cmd, "backtest")


def main() -> None:
    """Console-script entry point."""
    try:
        cli(standalone_mode=True)
    except ModuleNotFoundError as exc:
        missing = missing_extra(exc, f"`finpulse {' '.join(sys.argv[1:2])}`")
        if missing is None:
            raise  # a finpulse module that does not import is a bug: show the traceback
        click.echo(f"error: {missing}", err=True)
        sys.exit(1)
    except Exception as exc:  # noqa: BLE001 - last line of defence: one clear line, non-zero exit
        click.echo(f"error: {type(exc).__name__}: {exc}", err=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
