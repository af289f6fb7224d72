"""``finpulse ingest``: bring events in from the web. Registered by ``stream.cli.main``.

Only click is imported here; httpx, feedparser and the Kafka and Redis clients load when a command runs.
"""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import click
import orjson


@click.group("ingest")
def ingest_cmd() -> None:
    """Bring events in from the web (RSS/Atom feeds) into the input topic."""


@ingest_cmd.command("feeds")
@click.option(
    "--feeds-file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="TOML or JSON feeds file (default FINPULSE_INGEST_FEEDS_FILE; see examples/feeds.toml).",
)
@click.option("--once", is_flag=True, help="Poll every feed once, print the counts as JSON and exit.")
@click.option("--topic", default=None, help="Topic to produce to (default FINPULSE_INPUT_TOPIC).")
@click.option("--interval", type=float, default=None, help="Seconds between polls of a feed without its own.")
def feeds_cmd(feeds_file: Path | None, once: bool, topic: str | None, interval: float | None) -> None:
    """Poll RSS/Atom feeds and produce each new entry once, as an event, to the input topic.

    Conditional GETs (ETag, Last-Modified), a per-feed interval, timeouts and retries with backoff;
    entries already sent are remembered in Redis, so a restart sends nothing twice. A broken or slow
    feed is logged, counted and skipped. Runs until Ctrl-C / SIGTERM, then prints the counts.
    """
    import logging

    from ingest.feeds import run_ingest
    from ingest.settings import FeedConfigError, get_ingest_settings
    from stream.settings import get_settings

    # httpx logs every request with its URL at INFO; a feed URL may carry an API key, so only warnings.
    for name in ("httpx", "httpcore"):
        logging.getLogger(name).setLevel(max(logging.getLogger().level, logging.WARNING))
    cfg = get_ingest_settings()
    cfg = cfg.model_copy(
        update={k: v for k, v in {"feeds_file": feeds_file, "interval_s": interval}.items() if v is not None}
    )
    try:
        cfg.feed_list()  # a bad feeds file stops here, in one line, before any connection is made
    except FeedConfigError as exc:
        raise click.ClickException(str(exc)) from exc

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        stats = await run_ingest(get_settings(), cfg, once=once, stop=stop, topic=topic)
        click.echo(orjson.dumps(stats.as_dict(), option=orjson.OPT_INDENT_2).decode())

    asyncio.run(main())
