"""The query API on the real Redis and Kafka.

Windows are filled through ``WindowStore.apply`` (the worker's own Lua) with hand-made events, alerts
are published to a fresh topic (one twice, as at-least-once delivery may), and every number the API
returns is checked against a count made here from the same events.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi import FastAPI

from api.app import create_app
from api.settings import ApiSettings
from stream.cli.supervise import clear_redis_prefix
from stream.events import Alert, ms_to_iso
from stream.settings import StreamSettings
from stream.topics import delete_topics, ensure_topics
from stream.windows import SCORE_SCALE, WindowUpdate, bucket_start
from tests.support.alerts import make_alert
from tests.support.api_data import BUCKET, T0, TICKERS, fill_windows, make_events, publish_alerts, sample_alerts

pytestmark = [pytest.mark.kafka, pytest.mark.redis, pytest.mark.timeout(180)]

FIELDS = ("neg", "neu", "pos")


@dataclass(frozen=True)
class Loaded:
    settings: StreamSettings
    events: list[WindowUpdate]  # every distinct event counted (the duplicates sent are not in here)
    alerts: list[Alert]  # distinct alerts published


def _expected(events: list[WindowUpdate], start_s: int, end_s: int) -> dict[tuple[str, str], dict[str, int]]:
    """Independent count per (kind, name) of the events in [start_s, end_s): n, neg/neu/pos and score micro-units."""
    acc: dict[tuple[str, str], dict[str, int]] = defaultdict(Counter)  # type: ignore[arg-type]
    for e in events:
        if start_s <= e.ts_ms // 1000 < end_s:
            for ent in e.entities:
                c = acc[ent]
                c["n"] += 1
                c[FIELDS[e.sentiment]] += 1
                c["ssum"] += round(e.score * SCORE_SCALE)
    return acc


async def _wait_for(predicate: Callable[[], Any], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not await predicate():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.2)


@pytest.fixture()
async def loaded(isolated_settings: StreamSettings) -> AsyncIterator[Loaded]:
    """A fresh prefix filled through the real Lua, and a fresh alert topic with 3 alerts (one sent twice)."""
    s = isolated_settings.model_copy(update={"bucket_seconds": BUCKET})
    events = make_events(400)
    alerts = sample_alerts()
    await ensure_topics(s.kafka_bootstrap, {s.alerts_topic: 2})
    try:
        await fill_windows(s, events)
        await publish_alerts(s.kafka_bootstrap, s.alerts_topic, [*alerts, alerts[0]])  # a1 delivered twice
        yield Loaded(s, events, alerts)
    finally:
        await delete_topics(s.kafka_bootstrap, [s.alerts_topic])
        await clear_redis_prefix(s)


@pytest.fixture()
async def client(loaded: Loaded) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(loaded.settings, ApiSettings())
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://api") as c:

            async def caught_up() -> bool:
                return (await c.get("/v1/alerts")).json()["buffered"] == len(loaded.alerts)

            await _wait_for(caught_up)
            yield c


async def test_entities_match_an_independent_count(client: httpx.AsyncClient, loaded: Loaded) -> None:
    newest = max(e.ts_ms for e in loaded.events)
    end_s = bucket_start(newest, BUCKET) + BUCKET
    for window, seconds in [("15m", 900), ("1h", 3600), ("1d", 86400)]:
        for kind in ("ticker", "topic"):
            want = {name: c for (k, name), c in _expected(loaded.events, end_s - seconds, end_s).items() if k == kind}
            body = (await client.get(f"/v1/entities?kind={kind}&window={window}&limit=500")).json()
            assert body["window_end"] == end_s * 1000 and body["window_start"] == (end_s - seconds) * 1000
            assert body["watermark"] == newest and body["capped"] is False
            got = {e["name"]: e for e in body["entities"]}
            assert set(got) == set(want), (window, kind)
            for name, c in want.items():
                e = got[name]
                assert (e["count"], e["neg"], e["neu"], e["pos"]) == (c["n"], c["neg"], c["neu"], c["pos"])
                assert e["neg_share"] == pytest.approx(c["neg"] / c["n"], abs=1e-4)
                assert e["mean_score"] == pytest.approx(c["ssum"] / c["n"] / SCORE_SCALE, abs=1e-4)
            shares = [e["neg_share"] for e in body["entities"]]
            assert shares == sorted(shares, reverse=True)
    counts = [e["count"] for e in (await client.get("/v1/entities?window=1d&sort=count")).json()["entities"]]
    assert counts == sorted(counts, reverse=True) and len(counts) == len(TICKERS)
    scores = [e["mean_score"] for e in (await client.get("/v1/entities?window=1d&sort=score")).json()["entities"]]
    assert scores == sorted(scores, reverse=True)


async def test_entities_cap_reads_only_the_most_recent(loaded: Loaded) -> None:
    # Also tiny script calls (7 buckets each): the sums must not depend on how the reads are split.
    app = create_app(loaded.settings, ApiSettings(max_entities=2, redis_buckets_per_call=7))
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://api") as c:
            body = (await c.get("/v1/entities?window=1d")).json()
            series = (await c.get("/v1/entities/ticker/AAA/series?window=6h&step=1h")).json()
    last_seen: dict[str, int] = {}
    for e in loaded.events:
        for k, n in e.entities:
            if k == "ticker":
                last_seen[n] = max(last_seen.get(n, 0), e.ts_ms)
    assert body["capped"] is True and body["scanned"] == 2
    assert {e["name"] for e in body["entities"]} == set(sorted(last_seen, key=lambda n: -last_seen[n])[:2])
    want = _expected(loaded.events, body["window_start"] // 1000, body["window_end"] // 1000)
    for e in body["entities"]:
        c = want[("ticker", e["name"])]
        assert (e["count"], e["neg"], e["neu"], e["pos"]) == (c["n"], c["neg"], c["neu"], c["pos"])
    for p in series["points"]:
        c = _expected(loaded.events, p["start"] // 1000, p["end"] // 1000).get(("ticker", "AAA"), Counter())
        assert (p["count"], p["neg"]) == (c["n"], c["neg"])


async def test_series_match_an_independent_count(client: httpx.AsyncClient, loaded: Loaded) -> None:
    for kind, name, window, step, points in [
        ("ticker", "AAA", "6h", "15m", 24),
        ("ticker", "BRK.B", "1h", "1m", 60),
        ("topic", "Fed / Central Banks", "1d", "1h", 24),
    ]:
        r = await client.get(f"/v1/entities/{kind}/{name}/series", params={"window": window, "step": step})
        assert r.status_code == 200, r.text
        body = r.json()
        assert len(body["points"]) == points and body["name"] == name
        for p in body["points"]:
            c = _expected(loaded.events, p["start"] // 1000, p["end"] // 1000).get((kind, name), Counter())
            assert (p["count"], p["neg"], p["neu"], p["pos"]) == (c["n"], c["neg"], c["neu"], c["pos"])
            assert p["start_iso"] == ms_to_iso(p["start"])
        total = _expected(loaded.events, body["window_start"] // 1000, body["window_end"] // 1000)[(kind, name)]
        assert sum(p["count"] for p in body["points"]) == total["n"] > 0
    missing = await client.get("/v1/entities/ticker/NOPE/series")
    assert missing.status_code == 404 and "error" in missing.json()
    bad = await client.get("/v1/entities/ticker/AAA/series?window=7d&step=1m")
    assert bad.status_code == 400 and bad.json()["detail"][0]["loc"] == ["query", "step"]


async def test_alerts_are_deduped_filtered_and_newest_first(client: httpx.AsyncClient, loaded: Loaded) -> None:
    async def ids(query: str = "") -> list[str]:
        r = await client.get("/v1/alerts" + query)
        assert r.status_code == 200, r.text
        return [a["id"] for a in r.json()["alerts"]]

    body = (await client.get("/v1/alerts")).json()
    assert body["count"] == 3 and body["buffered"] == 3  # a1 was delivered twice
    assert [a["id"] for a in body["alerts"]] == ["a3", "a2", "a1"]
    assert body["alerts"][2] == loaded.alerts[0].model_dump(mode="json")
    assert await ids("?entity=ticker:AAA") == ["a1"]
    assert await ids("?entity=AAA") == ["a1"]
    assert await ids("?entity=topic:AAA") == []
    assert await ids("?entity=topic:Fed / Central Banks") == ["a2"]
    assert await ids("?severity=critical") == ["a2"]
    assert await ids(f"?since={T0 - 3_600_000}") == ["a3", "a2"]
    assert await ids("?since=" + ms_to_iso(T0 - 3_600_000)) == ["a3", "a2"]
    assert await ids("?limit=1") == ["a3"]
    bad = await client.get("/v1/alerts?since=soon")
    assert bad.status_code == 400 and bad.json()["detail"][0]["loc"] == ["query", "since"]


async def test_healthz(client: httpx.AsyncClient, loaded: Loaded) -> None:
    r = await client.get("/healthz")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["status"] == "ok" and body["redis"] is True and body["kafka"] is True
    assert body["alerts_buffered"] == 3 and body["watermark"] == max(e.ts_ms for e in loaded.events)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def _serve(app: FastAPI, port: int) -> tuple[uvicorn.Server, asyncio.Task[None]]:
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, access_log=False))
    task = asyncio.create_task(server.serve())
    deadline = time.monotonic() + 20
    while not server.started:
        assert not task.done() and time.monotonic() < deadline, "uvicorn did not start"
        await asyncio.sleep(0.05)
    return server, task


async def test_alert_stream_delivers_new_alerts_over_a_real_server(isolated_settings: StreamSettings) -> None:
    s = isolated_settings
    await ensure_topics(s.kafka_bootstrap, {s.alerts_topic: 1})
    port = _free_port()
    app = create_app(s, ApiSettings(sse_ping_seconds=0.5))
    server, task = await _serve(app, port)
    base = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient(base_url=base, timeout=10) as c:
            # An alert from before the client connects is in /v1/alerts but not sent on the stream.
            await publish_alerts(s.kafka_bootstrap, s.alerts_topic, [make_alert("old", end_ms=T0 - 60_000)])

            async def caught_up() -> bool:
                return (await c.get("/v1/alerts")).json()["buffered"] == 1

            await _wait_for(caught_up)
            async with c.stream("GET", "/v1/alerts/stream") as resp:
                assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/event-stream")
                assert (await c.get("/healthz")).json()["stream_clients"] == 1
                new = make_alert("new", entity="Earnings", kind="topic", end_ms=T0, severity="critical")
                # Sent after the client has the response headers (so after it subscribed), twice: one event.
                await publish_alerts(s.kafka_bootstrap, s.alerts_topic, [new, new])
                lines = resp.aiter_lines()
                event: dict[str, str] = {}
                pings = 0
                async with asyncio.timeout(30):
                    while "data" not in event:
                        line = await anext(lines)
                        if line.startswith(":"):
                            pings += 1
                        elif line:
                            field, _, value = line.partition(":")
                            event[field] = value.strip()
                assert event["event"] == "alert" and event["id"] == "new"
                assert Alert.model_validate_json(event["data"]) == new
                # Keep-alive comments arrive while nothing happens, and no second (duplicate) alert does.
                async with asyncio.timeout(5):
                    while pings < 2:
                        line = await anext(lines)
                        assert not line.startswith(("event", "data")), line
                        pings += line.startswith(":")

            # The disconnected client is forgotten.
            async def gone() -> bool:
                return (await c.get("/healthz")).json()["stream_clients"] == 0

            await _wait_for(gone, timeout=10)
            assert (await c.get("/v1/alerts")).json()["buffered"] == 2
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 20)
        await delete_topics(s.kafka_bootstrap, [s.alerts_topic])
