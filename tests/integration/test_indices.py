"""Entity indices over real Redis (windows filled through the worker's own Lua): the API route and the CLI's
reader agree with an independent count of the events, and a bad request is a 400 with the reason."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from api.app import create_app
from api.settings import ApiSettings
from stream.cli.supervise import clear_redis_prefix
from stream.settings import StreamSettings
from stream.topics import delete_topics, ensure_topics
from stream.windows import WindowUpdate
from tests.support.api_data import BUCKET, fill_windows, make_events

pytestmark = [pytest.mark.kafka, pytest.mark.redis, pytest.mark.timeout(120)]

EVENTS = make_events(400)


def _count(kind: str, name: str, start_s: int, end_s: int) -> list[WindowUpdate]:
    return [e for e in EVENTS if start_s <= e.ts_ms // 1000 < end_s and (kind, name) in e.entities]


@pytest.fixture()
async def client(isolated_settings: StreamSettings) -> AsyncIterator[httpx.AsyncClient]:
    s = isolated_settings.model_copy(update={"bucket_seconds": BUCKET})
    await ensure_topics(s.kafka_bootstrap, {s.alerts_topic: 1})
    try:
        await fill_windows(s, EVENTS)
        app = create_app(s, ApiSettings())
        async with app.router.lifespan_context(app):
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://api") as c:
                yield c
    finally:
        await delete_topics(s.kafka_bootstrap, [s.alerts_topic])
        await clear_redis_prefix(s)


@pytest.mark.parametrize(("kind", "name"), [("ticker", "AAA"), ("ticker", "BRK.B")])
async def test_indices_match_an_independent_count(client: httpx.AsyncClient, kind: str, name: str) -> None:
    r = await client.get(f"/v1/entities/{kind}/{name}/indices", params={"baseline": 24})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["bucket_seconds"] == BUCKET and [x["window"] for x in body["indices"]] == [
        "1m",
        "5m",
        "15m",
        "1h",
        "1d",
    ]
    for x in body["indices"]:
        start_s, end_s, win = x["start"] // 1000, x["end"] // 1000, x["window_seconds"]
        assert end_s - start_s == win
        cur = _count(kind, name, start_s, end_s)
        assert x["count"] == len(cur)
        if cur:
            assert x["neg_share"] == pytest.approx(sum(e.sentiment == 0 for e in cur) / len(cur), abs=1e-4)
            assert x["pos_share"] == pytest.approx(sum(e.sentiment == 2 for e in cur) / len(cur), abs=1e-4)
            assert x["mean_score"] == pytest.approx(sum(e.score for e in cur) / len(cur), abs=1e-4)
        base = [
            len(_count(kind, name, end_s - (k + 1) * win, end_s - k * win)) for k in range(1, x["baseline_windows"] + 1)
        ]
        assert x["baseline_windows"] == (24 if win < 86400 else 6)  # default retention: 7 days
        mean = sum(base) / len(base)
        std = (sum((b - mean) ** 2 for b in base) / len(base)) ** 0.5
        assert x["baseline_mean"] == pytest.approx(mean, abs=1e-4)
        assert x["buzz_z"] == pytest.approx((x["count"] - mean) / max(std, 1.0), abs=1e-3)
    # The hour holding the events is busier than the empty hours before them: a positive buzz z.
    assert next(x for x in body["indices"] if x["window"] == "1h")["buzz_z"] > 0


async def test_indices_refuse_bad_requests_with_the_reason(client: httpx.AsyncClient) -> None:
    r = await client.get("/v1/entities/ticker/AAA/indices", params={"baseline": 0})
    assert r.status_code == 400 and r.json()["detail"][0]["loc"] == ["query", "baseline"]
    assert (await client.get("/v1/entities/planet/AAA/indices")).status_code == 400
    missing = await client.get("/v1/entities/ticker/NOPE/indices")
    assert missing.status_code == 404 and "NOPE" in missing.json()["error"]
