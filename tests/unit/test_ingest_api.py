"""POST /v1/events without services: validation as the worker validates, 202/400/413 and their bodies,
keys, auth, the OpenAPI entry, and a 503 (bounded) when Kafka cannot be reached."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
from fastapi import HTTPException
from fastapi.testclient import TestClient

from api.app import create_app, require_token
from api.ingest import validate_items
from api.settings import ApiSettings
from stream.events import NewsEvent, parse_event
from stream.settings import StreamSettings
from tests.unit.test_api import FakeRedis

# No broker listens on port 9: the alert tail retries in the background, and a real producer cannot start.
S = StreamSettings(redis_prefix="unit-ingest", kafka_bootstrap="127.0.0.1:9", input_topic="unit.events")
NOW = "2026-11-01T12:00:00Z"


class FakeProducer:
    """Stands in for the app's EventProducer: records (key, value) pairs, as if Kafka acknowledged them."""

    def __init__(self) -> None:
        self.records: list[tuple[bytes, bytes]] = []

    async def send_all(self, records: list[tuple[bytes, bytes]]) -> None:
        self.records.extend(records)

    async def close(self) -> None:
        pass


def _ev(i: int, **kw: Any) -> dict[str, Any]:
    return {"id": f"e{i}", "text": f"headline {i}", "published_at": NOW, **kw}


@pytest.fixture()
def producer() -> FakeProducer:
    return FakeProducer()


@pytest.fixture()
def client(producer: FakeProducer) -> Iterator[TestClient]:
    app = create_app(S, ApiSettings(ingest_max_events=5, ingest_max_body_bytes=4096), redis=FakeRedis())  # type: ignore[arg-type]
    with TestClient(app) as c:
        app.state.ingest_producer = producer  # after start-up: the lifespan made the real one
        yield c


def test_one_event_is_accepted_and_produced_as_the_worker_reads_it(client: TestClient, producer: FakeProducer) -> None:
    r = client.post("/v1/events", json=_ev(1, text="$acme and $BRK.B fall", source="wire"))
    assert r.status_code == 202, r.text
    assert r.json() == {"accepted": ["e1"], "rejected": []}
    [(key, value)] = producer.records
    ev = parse_event(value, S.max_event_bytes, S.max_text_bytes)
    assert key == b"ACME"  # keyed by the first ticker (here from the cashtags, as the worker defaults them)
    assert isinstance(ev, NewsEvent) and ev.tickers == ["ACME", "BRK.B"] and ev.source == "wire"


def test_an_array_answers_each_item(client: TestClient, producer: FakeProducer) -> None:
    body = [
        _ev(0),
        _ev(1, text="   "),
        "not an object",
        _ev(3, published_at="last tuesday"),
        _ev(4, published_at=int((time.time() + 86400) * 1000)),
    ]
    r = client.post("/v1/events", json=body)
    assert r.status_code == 202, r.text
    got = r.json()
    assert got["accepted"] == ["e0"]
    assert [(x["index"], x["reason"]) for x in got["rejected"]] == [
        (1, "empty_text"),
        (2, "not_object"),
        (3, "invalid_schema"),
        (4, "future_timestamp"),
    ]
    assert all(x["detail"] for x in got["rejected"])
    assert [k for k, _ in producer.records] == [b"e0"]  # no ticker: keyed by id


def test_nothing_valid_is_a_400_with_every_reason(client: TestClient, producer: FakeProducer) -> None:
    r = client.post("/v1/events", json=[_ev(0, text=""), {"id": 5, "text": "x", "published_at": NOW}])
    assert r.status_code == 400
    body = r.json()
    assert body["error"] == "no valid event"
    assert [(d["loc"], d["type"]) for d in body["detail"]] == [
        (["body", 0], "empty_text"),
        (["body", 1], "invalid_schema"),
    ]
    assert producer.records == []


@pytest.mark.parametrize(
    ("content", "status", "kind"),
    [
        (b"{not json", 400, "not_json"),
        (b"[]", 400, "empty"),
        (orjson.dumps([_ev(i) for i in range(6)]), 413, None),  # 6 events > ingest_max_events=5
        (orjson.dumps(_ev(0, text="x" * 5000)), 413, None),  # 5 KB body > ingest_max_body_bytes=4096
    ],
)
def test_bad_bodies(client: TestClient, producer: FakeProducer, content: bytes, status: int, kind: str | None) -> None:
    r = client.post("/v1/events", content=content, headers={"Content-Type": "application/json"})
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error", "detail"}
    if kind:
        assert body["detail"][0]["type"] == kind and body["detail"][0]["loc"] == ["body"]
    assert producer.records == []


def test_oversized_text_is_refused_with_the_workers_limit(producer: FakeProducer) -> None:
    s = S.model_copy(update={"max_text_bytes": 100})
    events, rejected = validate_items([_ev(0, text="y" * 101), _ev(1, text="y" * 100)], s, time.time())
    assert [e.id for e in events] == ["e1"] and [(x.index, x.reason) for x in rejected] == [(0, "oversized_text")]


def test_the_token_guard_covers_the_route(client: TestClient, producer: FakeProducer) -> None:
    async def refuse() -> None:
        raise HTTPException(401, "token required")

    app: Any = client.app
    app.dependency_overrides[require_token] = refuse
    try:
        r = client.post("/v1/events", json=_ev(0))
        assert r.status_code == 401 and r.json()["error"] == "token required"
    finally:
        app.dependency_overrides.clear()
    assert producer.records == []


def test_openapi_documents_the_route(client: TestClient) -> None:
    op = client.get("/openapi.json").json()["paths"]["/v1/events"]["post"]
    assert {"202", "400", "413", "503"} <= set(op["responses"]) and "422" not in op["responses"]
    schema = op["requestBody"]["content"]["application/json"]["schema"]
    assert schema["anyOf"][1]["maxItems"] == 5 and "text" in schema["anyOf"][0]["required"]


def test_kafka_down_is_a_bounded_503() -> None:
    app = create_app(S, ApiSettings(ingest_kafka_timeout_seconds=1.5), redis=FakeRedis())  # type: ignore[arg-type]
    with TestClient(app) as c:
        t0 = time.monotonic()
        r = c.post("/v1/events", json=_ev(0))
        took = time.monotonic() - t0
    assert r.status_code == 503 and r.json()["error"] == "kafka unavailable" and r.headers["retry-after"] == "5"
    assert "127.0.0.1" not in r.text  # where the broker is stays in the server's log
    assert took < 5.0
