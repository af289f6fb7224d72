"""The ``finpulse backtest`` command: flags to :func:`stream.cli.backtest.run.run_backtest`."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click

from engine.settings import EngineSettings
from stream.settings import get_settings


@click.command("backtest")
@click.option(
    "--input",
    "input_path",
    type=click.Path(path_type=Path, exists=True),
    default=None,
    help="Stream to replay: CSV/JSONL/Parquet file or folder (default: the data dir's StockNet stream.csv).",
)
@click.option(
    "--prices",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    help="Folder of TICKER.csv daily prices (Date, Close or Adj Close; default: StockNet's prices/).",
)
@click.option(
    "--out",
    "out_dir",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    help="Report folder (default .local/backtest/<UTC time>).",
)
@click.option("--since", default=None, help="First event time (ISO date or datetime).")
@click.option("--until", default=None, help="Last event time (exclusive).")
@click.option("--limit", type=int, default=None, help="At most this many events (default: all in range).")
@click.option(
    "--draws",
    type=click.IntRange(1, 1000),
    default=20,
    show_default=True,
    help="Random alerts per real alert, for each baseline.",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the random draws and the bootstrap.")
@click.option(
    "--boot", "n_boot", type=click.IntRange(100, 100_000), default=2000, show_default=True, help="Bootstrap resamples."
)
@click.option(
    "--model",
    "model_dir",
    type=click.Path(path_type=Path),
    default=None,
    help="Model directory (default: the default model, trained and cached on first use).",
)
@click.option("--backend", default=None, help="Engine backend (default FINPULSE_ENGINE_BACKEND or auto).")
@click.option("--bucket-seconds", type=int, default=None, help="Override the demo's hourly buckets.")
@click.option("--alert-window-seconds", type=int, default=None, help="Override the demo's 6 h alert window.")
@click.option("--alert-baseline-seconds", type=int, default=None, help="Override the demo's 72 h baseline.")
@click.option("--alert-min-count", type=int, default=None, help="Override the demo's minimum count (6).")
@click.option("--keep-topics", is_flag=True, help="Keep the run's Kafka topics (its Redis windows are always kept).")
def backtest_cmd(
    input_path: Path | None,
    prices: Path | None,
    out_dir: Path | None,
    since: str | None,
    until: str | None,
    limit: int | None,
    draws: int,
    seed: int,
    n_boot: int,
    model_dir: Path | None,
    backend: str | None,
    bucket_seconds: int | None,
    alert_window_seconds: int | None,
    alert_baseline_seconds: int | None,
    alert_min_count: int | None,
    keep_topics: bool,
) -> None:
    """Replay a stream through the real pipeline and judge its alerts against later returns and random alerts.

    Writes report.md, returns.png, hit_rate.png, alerts.csv, random.csv and summary.json.
    """
    # The plots need matplotlib (the backtest extra): fail now, not after a 20-minute replay.
    import matplotlib  # noqa: F401

    from stream.cli.backtest.run import BacktestError, backtest_settings, run_backtest

    base = get_settings()
    overrides: dict[str, Any] = {
        k: v
        for k, v in {
            "bucket_seconds": bucket_seconds,
            "alert_window_seconds": alert_window_seconds,
            "alert_baseline_seconds": alert_baseline_seconds,
            "alert_min_count": alert_min_count,
        }.items()
        if v is not None
    }
    settings = backtest_settings(base, overrides)
    # The data dir is needed only for what the flags leave out (FINPULSE_DATA_DIR, else a clear error).
    stream_file = input_path or settings.require_data_dir() / "stocknet-tweets" / "stream.csv"
    prices_dir = prices or settings.require_data_dir() / "stocknet-tweets" / "prices"
    out = out_dir or settings.local_dir / "backtest" / datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    engine = EngineSettings()
    engine = engine.model_copy(
        update={k: v for k, v in {"backend": backend, "model_dir": model_dir}.items() if v is not None}
    )
    try:
        outcome = run_backtest(
            settings,
            engine,
            stream_file,
            prices_dir,
            out,
            since=since,
            until=until,
            limit=limit,
            draws=draws,
            seed=seed,
            n_boot=n_boot,
            keep_topics=keep_topics,
        )
    except BacktestError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(outcome.paths["report"].read_text())
