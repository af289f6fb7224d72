"""From the web to a scored event: a real worker (tiny keyword model), real Kafka, real Redis.

Feed entries come from the local fixture server through ``run_ingest``; more events come through
``POST /v1/events`` on the query API (its lifespan owning the producer). Every accepted event must come
out of the worker's scored topic once, with the id, tickers and source it went in with.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from api.app import create_app
from api.settings import ApiSettings
from engine.settings import EngineSettings
from ingest.feeds import run_ingest
from ingest.settings import FeedConfig, IngestSettings
from stream.cli.supervise import clear_redis_prefix, start_worker_process, stop_process, wait_worker_ready
from stream.events import ScoredEvent, parse_scored
from stream.settings import StreamSettings
from stream.topics import delete_topics, ensure_topics
from stream.worker import topic_plan
from tests.support.feed_server import FeedServer, read_topic, serve_feeds
from tests.support.tiny_bert import NEGATIVE_PHRASES

pytestmark = [pytest.mark.kafka, pytest.mark.redis, pytest.mark.slow, pytest.mark.timeout(300)]


@pytest.fixture()
async def feed_server() -> AsyncIterator[FeedServer]:
    async with serve_feeds() as server:
        yield server


async def test_feed_entries_and_posted_events_are_scored(
    isolated_settings: StreamSettings, keyword_model_dir: Path, feed_server: FeedServer, tmp_path: Path
) -> None:
    s = isolated_settings.model_copy(update={"max_batch_size": 16, "max_wait_ms": 50})
    engine = EngineSettings(backend="torch", model_dir=keyword_model_dir, max_batch_size=16)
    cfg = IngestSettings(
        feeds=[
            FeedConfig(url=f"{feed_server.url}/markets.xml", name="markets"),
            FeedConfig(url=f"{feed_server.url}/company.atom", name="initech", tickers=["INIT"]),
        ],
        symbols={"Globex": "GBX"},
        timeout_s=2,
        max_attempts=1,
    )
    recent = datetime.now(UTC) - timedelta(minutes=2)
    posted = [
        {"id": "http-1", "text": f"{NEGATIVE_PHRASES[0]} $ZYXW", "published_at": recent.isoformat(), "source": "api"},
        {"id": "http-2", "text": "Quarterly results in line", "published_at": int(recent.timestamp() * 1000)},
        {"id": "http-bad", "text": "", "published_at": recent.isoformat()},
    ]
    await ensure_topics(s.kafka_bootstrap, topic_plan(s))
    log_path = tmp_path / "worker.log"
    proc = start_worker_process(s, engine, log_path)
    try:
        await asyncio.to_thread(wait_worker_ready, proc, s.worker_web_port, log_path, 180)
        t0 = time.monotonic()
        stats = (await run_ingest(s, cfg, once=True)).as_dict()
        assert stats["sent"] == 5 and not stats["errors"], stats
        app = create_app(s, ApiSettings())
        async with app.router.lifespan_context(app):
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://api") as c:
                r = await c.post("/v1/events", json=posted)
        assert r.status_code == 202, r.text
        assert r.json()["accepted"] == ["http-1", "http-2"]
        assert [(x["index"], x["reason"]) for x in r.json()["rejected"]] == [(2, "empty_text")]

        inputs = await read_topic(s, s.input_topic, 7)
        assert len(inputs) == 7  # acknowledged before the 202: already in the topic
        records = await read_topic(s, s.scored_topic, 7, timeout=120)
        scored: dict[str, ScoredEvent] = {}
        for rec in records:
            e = parse_scored(rec.value)
            assert e.id not in scored, f"{e.id} scored twice"
            scored[e.id] = e
        latency = time.monotonic() - t0
        assert len(scored) == 7, sorted(scored)
        by_source: dict[str, list[ScoredEvent]] = {}
        for e in scored.values():
            by_source.setdefault(e.source, []).append(e)
        assert {k: len(v) for k, v in by_source.items()} == {"markets": 3, "initech": 2, "api": 1, "unknown": 1}
        assert sorted(t for e in by_source["markets"] for t in e.tickers) == ["ACME", "GBX"]
        assert all(e.tickers == ["INIT"] for e in by_source["initech"])
        assert scored["http-1"].tickers == ["ZYXW"] and all(e.id.startswith("feed-") for e in by_source["markets"])
        for e in scored.values():
            assert abs(sum(e.sentiment.probs.values()) - 1) < 1e-4 and e.topic is not None

        # Each counted once (the weeks-old fixture entries may be behind the live watermark: "late").
        assert all(e.window_status in ("counted", "late") for e in scored.values())
        print(f"feed/HTTP to scored: {latency:.1f}s")  # noqa: T201 - shown with -s
    finally:
        stop_process(proc)
        await delete_topics(s.kafka_bootstrap, list(topic_plan(s)))
        await clear_redis_prefix(s)
