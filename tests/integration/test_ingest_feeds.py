"""Feed ingestion on the real Kafka and Redis, from a local HTTP server that this test starts.

The server serves the shipped fixture feeds (tests/fixtures/feeds/): two good feeds that answer 304 when
the request's If-None-Match or If-Modified-Since matches, a malformed one and one that answers too
slowly. Checked: what reaches the input topic (keys, values the worker accepts), 304s on the second
poll, a new entry sent alone, nothing sent twice across restarts (new clients, same Redis), the broken
feeds counted and skipped. The end to end path (feed entry and HTTP POST to a scored event through a
real worker) is in test_ingest_end_to_end.py.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from ingest.feeds import IngestStats, run_ingest
from ingest.settings import FeedConfig, IngestSettings
from stream.cli.supervise import clear_redis_prefix
from stream.events import NewsEvent, parse_event
from stream.settings import StreamSettings
from stream.topics import delete_topics
from tests.support.feed_server import FIXTURES, FeedServer, read_topic, serve_feeds

pytestmark = [pytest.mark.kafka, pytest.mark.redis, pytest.mark.timeout(120)]


@pytest.fixture()
async def feed_server() -> AsyncIterator[FeedServer]:
    async with serve_feeds() as server:
        yield server


def ingest_settings(server: FeedServer, names: list[str]) -> IngestSettings:
    feeds = [FeedConfig(url=f"{server.url}/{n}", name=n.split(".")[0]) for n in names]
    return IngestSettings(
        feeds=feeds,
        symbols={"Globex": "GBX"},
        timeout_s=0.5,
        connect_timeout_s=0.5,
        max_attempts=2,
        backoff_initial_s=0.05,
        kafka_timeout_s=10,
    )


async def test_feeds_conditional_gets_restarts_and_broken_feeds(
    isolated_settings: StreamSettings, feed_server: FeedServer
) -> None:
    s = isolated_settings
    cfg = ingest_settings(feed_server, ["markets.xml", "company.atom", "malformed.xml", "slow.xml"])
    # Each run is a fresh process as far as state goes: new HTTP, Kafka and Redis clients.
    run = lambda: run_ingest(s, cfg, once=True)  # noqa: E731
    try:
        t0 = time.monotonic()
        first: IngestStats = await run()
        took = time.monotonic() - t0
        report = first.as_dict()
        # 3 + 2 entries; the slow feed times out (2 attempts of 0.5 s), the malformed one is refused.
        assert report["sent"] == 5 and report["errors"] == {"malformed": 1, "timeout": 1}, report
        assert report["feeds"]["slow"]["errors"] == {"timeout": 1} and took < 10
        records = await read_topic(s, s.input_topic, 5)
        assert len(records) == 5
        events = [parse_event(r.value, s.max_event_bytes, s.max_text_bytes) for r in records]
        assert all(isinstance(e, NewsEvent) for e in events)
        by_id = {e.id: (e, r.key) for e, r in zip(events, records, strict=True) if isinstance(e, NewsEvent)}
        assert len(by_id) == 5
        for e, key in by_id.values():
            assert key == (e.tickers[0] if e.tickers else e.id).encode()
        assert {e.source for e, _ in by_id.values()} == {"markets", "company"}
        assert sorted(t for e, _ in by_id.values() for t in e.tickers) == ["ACME", "GBX"]

        # Second run (a restart): both good feeds answer 304, nothing is sent.
        second = (await run()).as_dict()
        assert second["sent"] == 0 and second["feeds"]["markets"]["polls"] == {"not_modified": 1}
        assert feed_server.statuses("/markets.xml") == [200, 304]
        assert feed_server.statuses("/company.atom") == [200, 304]

        # The feed changes: only its new entry is sent.
        updated = FIXTURES / "markets.xml"
        new_item = (
            b"<item><title>$ZYXW files for bankruptcy protection</title>"
            b"<link>https://news.example.com/markets/zyxw-chapter-11</link>"
            b"<pubDate>Wed, 04 Nov 2026 07:00:00 GMT</pubDate></item>\n  </channel>"
        )
        feed_server.docs["/markets.xml"] = updated.read_bytes().replace(b"</channel>", new_item)
        third = (await run()).as_dict()
        assert third["sent"] == 1 and third["feeds"]["markets"]["sent"] == 1

        # A server that stops honouring validators: full documents again, and still nothing twice.
        feed_server.conditional = False
        fourth = (await run()).as_dict()
        assert fourth["sent"] == 0 and fourth["feeds"]["markets"]["polls"] == {"ok": 1}
        assert feed_server.statuses("/markets.xml")[-1] == 200

        records = await read_topic(s, s.input_topic, 6)
        ids = [r.key for r in records]
        assert len(records) == 6 and b"ZYXW" in ids
        assert len({parse_event(r.value, 10**6, 10**6).id for r in records}) == 6  # type: ignore[union-attr]
        # The broken feeds were tried on every run, and never held the others up.
        assert len(feed_server.statuses("/malformed.xml")) == 4
    finally:
        await delete_topics(s.kafka_bootstrap, [s.input_topic])
        await clear_redis_prefix(s)


async def test_the_cli_polls_once_and_reports(
    isolated_settings: StreamSettings, feed_server: FeedServer, tmp_path: Any
) -> None:
    """`finpulse ingest feeds --once --feeds-file F` in its own process: JSON counts on stdout, events in Kafka."""
    import json
    import os
    import sys

    s = isolated_settings
    feeds = tmp_path / "feeds.toml"
    feeds.write_text(
        f'[[feeds]]\nurl = "{feed_server.url}/company.atom"\nname = "initech"\ntickers = ["INIT"]\n\n'
        f'[[feeds]]\nurl = "{feed_server.url}/missing.xml"\nname = "missing"\n'
    )
    env = {
        **os.environ,
        "FINPULSE_INPUT_TOPIC": s.input_topic,
        "FINPULSE_REDIS_PREFIX": s.redis_prefix,
        "FINPULSE_KAFKA_BOOTSTRAP": s.kafka_bootstrap,
        "FINPULSE_REDIS_URL": s.redis_url,
        "FINPULSE_INGEST_MAX_ATTEMPTS": "1",
    }
    try:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "stream.cli", "ingest", "feeds", "--once", "--feeds-file", str(feeds),
            env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, err = await asyncio.wait_for(proc.communicate(), 60)
        assert proc.returncode == 0, err.decode()[-2000:]
        report = json.loads(out)
        assert report["sent"] == 2 and report["errors"] == {"http_status": 1}
        records = await read_topic(s, s.input_topic, 2)
        assert sorted(r.key for r in records) == [b"INIT", b"INIT"]
        # The logs are JSON lines naming feeds, never their URLs or the entries' words.
        logs = err.decode()
        assert '"feed_failed"' in logs and "missing" in logs
        assert feed_server.url not in logs and "payments start-up" not in logs
    finally:
        await delete_topics(s.kafka_bootstrap, [s.input_topic])
        await clear_redis_prefix(s)
