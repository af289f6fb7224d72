"""``finpulse replay``: a file, a folder or a topic's time range into the input topic."""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import AsyncIterator, Iterator
from contextlib import ExitStack, aclosing, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
import orjson

from stream.settings import StreamSettings, get_settings

if TYPE_CHECKING:
    from stream.cli.replay.kafka import RawRecord, ReplayStats


class _Meter:
    """Feeds the progress bar: event time, events sent, events/s over the last seconds (throttled)."""

    def __init__(self, progress: Any, task: Any) -> None:
        self.progress, self.task = progress, task
        self.sent = 0
        self.last_ms: int | None = None
        self._shown = 0.0
        self._samples: deque[tuple[float, int]] = deque(maxlen=50)

    def __call__(self, event_ms: int | None) -> None:
        self.sent += 1
        if event_ms is not None:
            self.last_ms = event_ms
        now = time.perf_counter()
        if now - self._shown >= 0.1:
            self.show(now)

    def show(self, now: float | None = None) -> None:
        from stream.events import ms_to_iso

        now = time.perf_counter() if now is None else now
        self._shown = now
        self._samples.append((now, self.sent))
        while len(self._samples) > 2 and now - self._samples[0][0] > 3.0:
            self._samples.popleft()
        t0, n0 = self._samples[0]
        eps = (self.sent - n0) / (now - t0) if now > t0 else 0.0
        when = ms_to_iso(self.last_ms)[:19].replace("T", " ") if self.last_ms is not None else "-"
        self.progress.update(self.task, completed=self.sent, event_time=when, eps=f"{eps:,.0f}")


@contextmanager
def _progress(enabled: bool, total: int | None) -> Iterator[_Meter | None]:
    if not enabled:
        yield None
        return
    from rich.console import Console
    from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    columns: list[Any] = [SpinnerColumn(), TextColumn("event time [bold]{task.fields[event_time]}[/]")]
    if total:
        columns.append(BarColumn())
    columns += [
        TextColumn("{task.completed:,} sent"),
        TextColumn("{task.fields[eps]} events/s"),
        TimeElapsedColumn(),
    ]
    with Progress(*columns, console=Console(stderr=True), transient=False) as progress:
        task = progress.add_task("replay", total=total, event_time="-", eps="0")
        meter = _Meter(progress, task)
        yield meter
        meter.show()


async def _send(settings: StreamSettings, topic: str, events: Any, **kw: Any) -> ReplayStats:
    from stream.cli.replay.kafka import produce
    from stream.topics import ensure_topics

    # The broker does not create topics on first use: a fresh target gets the worker's partition count.
    await ensure_topics(settings, {topic: settings.partitions})
    return await produce(settings, topic, events, **kw)


def _fail(exc: Exception) -> click.ClickException:
    return click.ClickException(str(exc))


@click.command("replay")
@click.argument("file", type=click.Path(exists=True, path_type=Path), required=False)
@click.option("--limit", type=int, default=None, help="At most this many events.")
@click.option("--since", "--from", "since", default=None, help="Only events at or after this time (ISO-8601).")
@click.option("--until", "--to", "until", default=None, help="Only events before this time (ISO-8601).")
@click.option("--rate", type=float, default=0.0, help="Cap in events per second (0: no cap).")
@click.option(
    "--speed", type=float, default=0.0, help="Replay at this many times event-time speed (0: as fast as allowed)."
)
@click.option(
    "--max-gap", type=float, default=None, help="With --speed: wait at most this many seconds between two events."
)
@click.option("--topic", default=None, help="Target topic (default FINPULSE_INPUT_TOPIC).")
@click.option("--from-topic", default=None, help="Replay a time range (--from/--to) of this topic instead of a file.")
@click.option("--text", "text_col", default=None, help="Column holding the text.")
@click.option("--time", "time_col", default=None, help="Column holding the event time.")
@click.option("--id", "id_col", default=None, help="Column holding a unique id (default: derived).")
@click.option("--tickers", "tickers_col", default=None, help="Column holding the ticker(s).")
@click.option("--title", "title_col", default=None, help="Column holding a title.")
@click.option("--source", "source_col", default=None, help="Column holding the source (news, tweet, ...).")
@click.option("--author", "author_col", default=None, help="Column holding the author (pseudonymised).")
@click.option("--default-source", default=None, help="Source of every event when no column names one.")
@click.option("--format", "fmt", type=click.Choice(["csv", "tsv", "jsonl", "parquet"]), default=None)
@click.option("--tz", default="UTC", show_default=True, help="Time zone of naive input times (IANA name).")
@click.option("--strict", is_flag=True, help="Stop at the first bad or out-of-order row.")
@click.option("--bad-rows", type=click.Path(dir_okay=False, path_type=Path), default=None, help="Sample bad rows here.")
@click.option(
    "--sort-buffer", type=click.IntRange(min=1), default=10_000, show_default=True, help="Events held to sort."
)
@click.option("--dry-run", is_flag=True, help="Read and check the input, send nothing.")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
def replay_cmd(
    file: Path | None,
    limit: int | None,
    since: str | None,
    until: str | None,
    rate: float,
    speed: float,
    max_gap: float | None,
    topic: str | None,
    from_topic: str | None,
    text_col: str | None,
    time_col: str | None,
    id_col: str | None,
    tickers_col: str | None,
    title_col: str | None,
    source_col: str | None,
    author_col: str | None,
    default_source: str | None,
    fmt: str | None,
    tz: str,
    strict: bool,
    bad_rows: Path | None,
    sort_buffer: int,
    dry_run: bool,
    no_progress: bool,
) -> None:
    """Replay a historical stream into the input topic: a CSV, TSV, JSONL or Parquet file (gzip or zstd
    too), a folder of them, or with --from-topic a time range of a topic.

    Columns are recognised by name or named with --text, --time, --id, --tickers, --title, --source
    and --author. Rows with no usable time or text are skipped and counted (--strict: stop).
    """
    from aiokafka.errors import KafkaError

    from stream.cli.replay import ColumnFlags, ReplayError, ReplayOptions, ReplayReport, ReplaySource
    from stream.cli.replay.kafka import topic_range
    from stream.cli.replay.source import parse_input_time, resolve_tz

    s = get_settings()
    target = topic or s.input_topic
    flags = ColumnFlags(text_col, time_col, id_col, tickers_col, title_col, source_col, author_col)
    if (file is None) == (from_topic is None):
        raise click.UsageError("give either FILE (a file or folder) or --from-topic TOPIC")
    if from_topic is not None and (flags.any() or fmt or default_source or bad_rows):
        raise click.UsageError("column and format options apply to files, not to --from-topic")
    if rate < 0 or speed < 0:
        raise click.UsageError("--rate and --speed must be positive (0: off)")
    if from_topic is not None and dry_run:
        raise click.UsageError("--dry-run reads files only")
    progress_on = not no_progress and not dry_run
    summary: dict[str, Any] = {}
    stats: ReplayStats | None = None
    try:
        if from_topic is not None:
            zone = resolve_tz(tz)
            try:
                start = parse_input_time(since, zone) if since else None
                end = parse_input_time(until, zone) if until else None
            except ValueError as exc:
                raise click.BadParameter(str(exc), param_hint="--from/--to") from exc
            records = topic_range(s, from_topic, start, end)
            with _progress(progress_on, limit) as meter:
                stats = asyncio.run(
                    _send(s, target, _limited(records, limit), rate=rate, speed=speed, max_gap_s=max_gap, on_send=meter)
                )
            summary["from_topic"] = from_topic
        else:
            assert file is not None
            with ExitStack() as stack:
                out = stack.enter_context(open(bad_rows, "wb")) if bad_rows else None
                report = ReplayReport(strict=strict, bad_rows_out=out)
                opts = ReplayOptions(flags, fmt, tz, default_source, since, until, limit, sort_buffer)
                source = ReplaySource(file, opts, report)
                for line in source.describe():
                    click.echo(line, err=True)
                if dry_run:
                    t0 = time.perf_counter()
                    n = sum(1 for _ in source)
                    summary.update(sent=0, seconds=round(time.perf_counter() - t0, 3), read=n)
                else:
                    with _progress(progress_on, limit) as meter:
                        stats = asyncio.run(
                            _send(s, target, source, rate=rate, speed=speed, max_gap_s=max_gap, on_send=meter)
                        )
                summary["file"] = str(file)
                summary["report"] = report.as_dict()
                if report.bad:
                    by = ", ".join(f"{k} {v}" for k, v in sorted(report.bad.items()))
                    where = f"; a sample in {bad_rows}" if bad_rows else "; --bad-rows FILE writes a sample"
                    click.echo(f"skipped {sum(report.bad.values())} bad rows: {by}{where}", err=True)
                if report.out_of_order:
                    click.echo(
                        f"{report.out_of_order} events were out of time order beyond the sort buffer and sent late: "
                        "sort the input or raise --sort-buffer",
                        err=True,
                    )
    except ReplayError as exc:
        raise _fail(exc) from exc
    except KafkaError as exc:
        raise click.ClickException(f"Kafka at {s.kafka_bootstrap}: {type(exc).__name__}: {exc}") from exc
    if stats is not None:
        summary.update(sent=stats.sent, seconds=round(stats.seconds, 3), rate=round(stats.rate, 1))
    summary["topic"] = target
    click.echo(orjson.dumps(summary).decode())


async def _limited(records: AsyncIterator[RawRecord], limit: int | None) -> AsyncIterator[RawRecord]:
    # aclosing: stop the topic reader (and its consumer) as soon as the limit is reached.
    async with aclosing(records) as it:  # type: ignore[type-var]
        n = 0
        async for r in it:
            if limit is not None and n >= limit:
                break
            yield r
            n += 1
