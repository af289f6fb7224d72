"""The query API without services: parameter validation (400 with reasons), bounds, sorting, the alert
buffer, and the routes over an in-memory stand-in for the few Redis commands the API reads with."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi import HTTPException
from fastapi.testclient import TestClient

import api.app
from api.alerts import AlertBuffer
from api.app import (
    STATIC_DIR,
    ApiState,
    EntityStats,
    choose_step,
    create_app,
    parse_entity,
    rank_entities,
    require_token,
    shares,
)
from api.settings import ApiSettings
from stream.events import Alert, ms_to_iso
from stream.settings import StreamSettings
from stream.windows import SCORE_SCALE
from tests.support.alerts import make_alert

BUCKET = 60
WM = 1_700_000_000_000 + 30_000  # watermark (ms), mid-bucket
END_S = (WM // 1000) - (WM // 1000) % BUCKET + BUCKET  # end of the watermark's bucket


class FakeRedis:
    """Only what WindowStore's read paths and /healthz use, with redis-py's reply shapes (bytes)."""

    def __init__(self) -> None:
        self.hashes: dict[str, dict[str, bytes]] = {}
        self.zsets: dict[str, dict[str, float]] = {}
        self.strings: dict[str, bytes] = {}
        self.calls: list[int] = []  # bucket reads per counts.lua call

    def register_script(self, script: str) -> Any:
        return self._counts if "Window counts summed server-side" in script else None

    async def _counts(self, args: list[Any], keys: list[str] | None = None) -> list[int]:
        """counts.lua in Python: per (name, start, end) query, per step slice, the summed count fields.

        ``keys`` only routes the call to the store's slot on a Redis Cluster: it must be a key of the store."""
        assert keys is None or all(k.startswith(f"{args[0]}:") for k in keys)
        prefix, kind, bucket, step = args[0], args[1], int(args[2]), int(args[3])
        self.calls.append(sum((int(args[q + 2]) - int(args[q + 1])) // bucket for q in range(4, len(args), 3)))
        out: list[int] = []
        for q in range(4, len(args), 3):
            name, t, stop = args[q], int(args[q + 1]), int(args[q + 2])
            while t < stop:
                row = [0] * 7
                for b in range(t, min(t + step, stop), bucket):
                    h = self.hashes.get(f"{prefix}:b:{kind}:{name}:{b}", {})
                    for f, field in enumerate(("n", "neg", "neu", "pos", "ssum", "nn", "nneg")):
                        row[f] += int(h.get(field, b"0"))
                out += row
                t = min(t + step, stop)
        return out

    async def get(self, key: str) -> bytes | None:
        return self.strings.get(key)

    async def ping(self) -> bool:
        return True

    async def zscore(self, key: str, member: str) -> float | None:
        return self.zsets.get(key, {}).get(member)

    async def zrevrangebyscore(
        self, key: str, max: str, min: int, start: int, num: int, withscores: bool
    ) -> list[tuple[bytes, float]]:
        rows = sorted(((m, s) for m, s in self.zsets.get(key, {}).items() if s >= min), key=lambda x: -x[1])
        return [(m.encode(), s) for m, s in rows[start : start + num]]

    def add(
        self, prefix: str, kind: str, name: str, ts_ms: int, sentiment: str, score: float, bucket: int = BUCKET
    ) -> None:
        """Count one event as apply.lua does (bucket hash fields, entity index, watermark)."""
        b = (ts_ms // 1000) - (ts_ms // 1000) % bucket
        h = self.hashes.setdefault(f"{prefix}:b:{kind}:{name}:{b}", {})
        for f, d in ((sentiment, 1), ("n", 1), ("ssum", round(score * SCORE_SCALE))):
            h[f] = str(int(h.get(f, b"0")) + d).encode()
        z = self.zsets.setdefault(f"{prefix}:ent:{kind}", {})
        z[name] = max(z.get(name, 0), ts_ms)
        self.strings[f"{prefix}:wm"] = str(max(int(self.strings.get(f"{prefix}:wm", b"0")), ts_ms)).encode()


PREFIX = "unit"


def _fill(r: FakeRedis) -> None:
    # AAA: 3 events in the last minute, 2 negative. BBB: 4 events, 1 negative, 10 minutes ago.
    # CCC: 1 positive event 2 hours ago (outside 1h, inside 1d). DDD (topic) for the kind filter.
    for i, s in enumerate(["neg", "neg", "pos"]):
        r.add(PREFIX, "ticker", "AAA", WM - i * 1000, s, -0.5 if s == "neg" else 0.5)
    for i, s in enumerate(["neg", "neu", "neu", "pos"]):
        r.add(PREFIX, "ticker", "BBB", WM - 600_000 - i * 1000, s, {"neg": -0.8, "neu": 0.0, "pos": 0.8}[s])
    r.add(PREFIX, "ticker", "CCC", WM - 2 * 3600_000, "pos", 0.9)
    r.add(PREFIX, "topic", "Earnings", WM, "neu", 0.1)


def _settings(**api: Any) -> tuple[StreamSettings, ApiSettings]:
    # An address where no broker listens: the alert tail retries in the background, /healthz says kafka false.
    s = StreamSettings(redis_prefix=PREFIX, bucket_seconds=BUCKET, kafka_bootstrap="127.0.0.1:9")
    return s, ApiSettings(**api)


@pytest.fixture()
def fake() -> FakeRedis:
    r = FakeRedis()
    _fill(r)
    return r


@pytest.fixture()
def client(fake: FakeRedis) -> Iterator[TestClient]:
    s, a = _settings(max_page_size=50, max_series_points=120)
    with TestClient(create_app(s, a, redis=fake)) as c:  # type: ignore[arg-type]
        yield c


def _alert(i: int, *, entity: str = "AAA", kind: str = "ticker", end_ms: int = WM, severity: str = "warning") -> Alert:
    return make_alert(f"a{i}", entity=entity, kind=kind, end_ms=end_ms, severity=severity)  # type: ignore[arg-type]


# --- validation: 400 with a reason ----------------------------------------------------------------
@pytest.mark.parametrize(
    ("url", "param"),
    [
        ("/v1/entities?kind=stock", "kind"),
        ("/v1/entities?sort=name", "sort"),
        ("/v1/entities?window=2h", "window"),
        ("/v1/entities?limit=0", "limit"),
        ("/v1/entities?limit=51", "limit"),  # max_page_size
        ("/v1/entities?limit=abc", "limit"),
        ("/v1/entities?min_count=0", "min_count"),
        ("/v1/entities/ticker/AAA/series?window=3d", "window"),
        ("/v1/entities/ticker/AAA/series?step=2m", "step"),
        ("/v1/entities/ticker/AAA/series?window=1d&step=1m", "step"),  # 1440 points > 120
        ("/v1/entities/ticker/AAA/series?window=15m&step=1h", "step"),  # does not divide the window
        ("/v1/entities/ticker/$$$/series", "name"),
        ("/v1/entities/stock/AAA/series", "kind"),
        ("/v1/alerts?since=yesterday", "since"),
        ("/v1/alerts?since=1700000000", "since"),  # epoch seconds, not ms
        ("/v1/alerts?since=" + "9" * 41, "since"),
        ("/v1/alerts?entity=ticker:$AAA", "entity"),
        ("/v1/alerts?entity=" + "A" * 80, "entity"),
        ("/v1/alerts?severity=info", "severity"),
        ("/v1/alerts?limit=-1", "limit"),
    ],
)
def test_bad_parameters_are_400_with_the_reason(client: TestClient, url: str, param: str) -> None:
    r = client.get(url)
    assert r.status_code == 400, r.text
    body = r.json()
    assert body["error"] == "invalid request"
    assert any(d["loc"][-1] == param and d["msg"] for d in body["detail"]), body


def test_step_must_be_whole_buckets() -> None:
    s, a = _settings()
    s = s.model_copy(update={"bucket_seconds": 3600})
    with TestClient(create_app(s, a, redis=FakeRedis())) as c:  # type: ignore[arg-type]
        r = c.get("/v1/entities/ticker/AAA/series?window=1d&step=5m")
    assert r.status_code == 400 and "multiple of the bucket" in r.json()["detail"][0]["msg"]


def test_choose_step() -> None:
    assert choose_step(3600, None, 60, 1440) == 60
    assert choose_step(7 * 86400, None, 60, 1440) == 900  # 1m and 5m give too many points, 15m 672: fits
    assert choose_step(7 * 86400, None, 60, 600) == 3600
    assert choose_step(86400, None, 3600, 1440) == 3600  # hourly buckets: the smallest whole-bucket step
    assert choose_step(86400, "5m", 60, 1440) == 300
    with pytest.raises(ValueError, match="points"):
        choose_step(7 * 86400, "1m", 60, 1440)
    with pytest.raises(ValueError, match="no step fits"):
        choose_step(900, None, 3600, 1440)


def test_openapi_documents_400_not_422(client: TestClient) -> None:
    doc = client.get("/openapi.json").json()
    ops = {(p, m): op for p, item in doc["paths"].items() for m, op in item.items()}
    assert ("/v1/entities", "get") in ops and ("/v1/entities/{kind}/{name}/series", "get") in ops
    for (path, _), op in ops.items():
        assert "422" not in op["responses"]
        if path.startswith("/v1/"):
            assert "400" in op["responses"], path
    assert "HTTPValidationError" not in doc["components"]["schemas"]
    # The Alert model is served as it is: its fields are not listed by hand.
    assert set(Alert.model_fields) <= set(doc["components"]["schemas"]["Alert"]["properties"])


def test_require_token_guards_everything_but_health(client: TestClient) -> None:
    """require_token is the one place for auth: overriding it with a refusal closes every route but /healthz."""

    async def refuse() -> None:
        raise HTTPException(401, "token required")

    app: Any = client.app
    app.dependency_overrides[require_token] = refuse
    try:
        for url in [
            "/",
            "/static/index.html",
            "/v1/entities",
            "/v1/entities/ticker/AAA/series",
            "/v1/alerts",
            "/v1/alerts/stream",
        ]:
            r = client.get(url)
            assert r.status_code == 401 and r.json()["error"] == "token required", url
        assert client.get("/healthz").status_code == 503  # open (and degraded here: no broker)
    finally:
        app.dependency_overrides.clear()


# --- entities -------------------------------------------------------------------------------------------
def test_entities_window_counts_and_default_sort(client: TestClient) -> None:
    body = client.get("/v1/entities?window=1h").json()
    assert body["window_end"] == END_S * 1000 and body["window_start"] == (END_S - 3600) * 1000
    assert body["watermark"] == WM and body["capped"] is False and body["scanned"] == 2
    names = [e["name"] for e in body["entities"]]
    assert names == ["AAA", "BBB"]  # CCC is outside the hour; topics are another kind
    aaa = body["entities"][0]
    assert (aaa["count"], aaa["neg"], aaa["neu"], aaa["pos"]) == (3, 2, 0, 1)
    assert aaa["neg_share"] == pytest.approx(0.6667) and aaa["mean_score"] == pytest.approx(-0.1667)
    day = client.get("/v1/entities?window=1d&sort=score").json()
    assert [e["name"] for e in day["entities"]] == ["CCC", "BBB", "AAA"]
    assert [e["name"] for e in client.get("/v1/entities?window=1d&sort=count").json()["entities"]] == [
        "BBB",
        "AAA",
        "CCC",
    ]
    assert [e["name"] for e in client.get("/v1/entities?kind=topic").json()["entities"]] == ["Earnings"]
    assert [e["name"] for e in client.get("/v1/entities?window=1d&min_count=4").json()["entities"]] == ["BBB"]
    assert len(client.get("/v1/entities?window=1d&limit=1").json()["entities"]) == 1


def test_entities_capped_reads_the_most_recent(fake: FakeRedis) -> None:
    s, a = _settings(max_entities=2)
    with TestClient(create_app(s, a, redis=fake)) as c:  # type: ignore[arg-type]
        body = c.get("/v1/entities?window=1d").json()
    assert body["capped"] is True and body["scanned"] == 2
    assert {e["name"] for e in body["entities"]} == {"AAA", "BBB"}  # CCC is the least recently active


def test_redis_work_is_bounded(fake: FakeRedis) -> None:
    s, a = _settings(max_entities=2, redis_buckets_per_call=1000)
    with TestClient(create_app(s, a, redis=fake)) as c:  # type: ignore[arg-type]
        fake.calls.clear()
        assert c.get("/v1/entities?window=1d").status_code == 200
        # max_entities x buckets in a day however many entities exist, in script calls of at most 1,000 buckets.
        assert sum(fake.calls) == 2 * 1440 and max(fake.calls) <= 1000
        fake.calls.clear()
        r = c.get("/v1/entities/ticker/BBB/series?window=1d&step=1h")
        assert r.status_code == 200 and sum(p["count"] for p in r.json()["points"]) == 4
        assert sum(fake.calls) == 1440 and max(fake.calls) <= 1000


@pytest.mark.parametrize(("ttl", "reads"), [(5.0, 1), (0.0, 3)])
def test_entity_reads_are_shared_for_the_cache_ttl(fake: FakeRedis, ttl: float, reads: int) -> None:
    s, a = _settings(entities_cache_seconds=ttl)
    with TestClient(create_app(s, a, redis=fake)) as c:  # type: ignore[arg-type]
        fake.calls.clear()
        for sort in ("neg_share", "count", "score"):  # same window: only the ordering differs
            assert c.get(f"/v1/entities?window=1d&sort={sort}").status_code == 200
    assert len(fake.calls) == reads


def test_empty_store_answers_with_no_window() -> None:
    s, a = _settings()
    with TestClient(create_app(s, a, redis=FakeRedis())) as c:  # type: ignore[arg-type]
        body = c.get("/v1/entities").json()
    assert body["entities"] == [] and body["window_start"] is None and body["watermark"] is None


def test_rank_entities_ties_are_stable() -> None:
    def row(name: str, n: int, neg: int, score: float, seen: int = 0) -> EntityStats:
        ns, us, ps = shares(n, neg, n - neg, 0)
        return EntityStats(
            kind="ticker",
            name=name,
            count=n,
            neg=neg,
            neu=n - neg,
            pos=0,
            novel=n,
            novel_neg=neg,
            neg_share=ns,
            neu_share=us,
            pos_share=ps,
            mean_score=score,
            last_seen=seen,
        )

    rows = [row("B", 10, 5, 0.1), row("A", 10, 5, 0.1), row("C", 20, 10, -0.2), row("D", 2, 2, -0.9, seen=5)]
    assert [e.name for e in rank_entities(rows, "neg_share")] == ["D", "C", "A", "B"]
    assert [e.name for e in rank_entities(rows, "count")] == ["C", "A", "B", "D"]
    assert [e.name for e in rank_entities(rows, "score")] == ["A", "B", "C", "D"]
    assert shares(0, 0, 0, 0) == (0.0, 0.0, 0.0)


# --- series ---------------------------------------------------------------------------------------------
def test_series_steps_and_404(client: TestClient) -> None:
    body = client.get("/v1/entities/ticker/BBB/series?window=1h&step=5m").json()
    assert body["step_seconds"] == 300 and len(body["points"]) == 12
    assert body["window_end"] == END_S * 1000 and body["points"][-1]["end"] == END_S * 1000
    hit = [p for p in body["points"] if p["count"]]
    assert len(hit) == 1 and (hit[0]["neg"], hit[0]["neu"], hit[0]["pos"]) == (1, 2, 1)
    assert hit[0]["start"] <= WM - 600_000 < hit[0]["end"]
    assert sum(p["count"] for p in body["points"]) == 4
    default = client.get("/v1/entities/ticker/AAA/series").json()
    assert default["step_seconds"] == 60 and len(default["points"]) == 60
    r = client.get("/v1/entities/ticker/NOPE/series")
    assert r.status_code == 404 and "NOPE" in r.json()["error"]
    topic = client.get("/v1/entities/topic/Earnings/series?window=15m").json()
    assert sum(p["count"] for p in topic["points"]) == 1


def test_topic_names_with_slashes_reach_the_series_route(fake: FakeRedis) -> None:
    fake.add(PREFIX, "topic", "Fed / Central Banks", WM, "neg", -0.7)
    s, a = _settings()
    with TestClient(create_app(s, a, redis=fake)) as c:  # type: ignore[arg-type]
        r = c.get("/v1/entities/topic/Fed%20%2F%20Central%20Banks/series?window=15m")
    assert r.status_code == 200, r.text
    assert r.json()["name"] == "Fed / Central Banks" and sum(p["neg"] for p in r.json()["points"]) == 1


# --- alerts ---------------------------------------------------------------------------------------------
def test_alert_buffer_dedupes_bounds_and_filters() -> None:
    buf = AlertBuffer(size=3)
    q = buf.subscribe()
    assert buf.add(_alert(1, end_ms=WM - 3000)) and not buf.add(_alert(1, end_ms=WM - 3000))
    assert buf.duplicates == 1 and q.qsize() == 1
    buf.add(_alert(2, entity="Earnings", kind="topic", end_ms=WM - 2000, severity="critical"))
    buf.add(_alert(3, end_ms=WM - 1000))
    buf.add(_alert(4, end_ms=WM))
    assert len(buf) == 3 and [a.id for a in buf.query()] == ["a4", "a3", "a2"]  # a1 fell out
    assert [a.id for a in buf.query(kind="ticker", name="AAA")] == ["a4", "a3"]
    assert [a.id for a in buf.query(name="Earnings")] == ["a2"]
    assert [a.id for a in buf.query(severity="critical")] == ["a2"]
    assert [a.id for a in buf.query(since_ms=WM - 1000)] == ["a4", "a3"]
    assert [a.id for a in buf.query(limit=1)] == ["a4"]
    buf.unsubscribe(q)
    assert buf.subscribers == 0


def test_a_stalled_subscriber_misses_alerts_instead_of_growing() -> None:
    buf = AlertBuffer(size=100, queue_size=2)
    q = buf.subscribe()
    for i in range(5):
        buf.add(_alert(i))
    assert q.qsize() == 2 and buf.missed == 3


def test_parse_entity() -> None:
    assert parse_entity("ticker:AAPL") == ("ticker", "AAPL")
    assert parse_entity("AAPL") == (None, "AAPL")
    assert parse_entity("topic:M&A / Investments") == ("topic", "M&A / Investments")


def test_alerts_route_filters(client: TestClient) -> None:
    st: ApiState = client.app.state.api  # type: ignore[attr-defined]
    st.buffer.add(_alert(1, end_ms=WM - 3_600_000))
    st.buffer.add(_alert(2, entity="Earnings", kind="topic", severity="critical"))
    st.buffer.add(_alert(3, entity="BBB", end_ms=WM - 60_000))
    ids = lambda q: [a["id"] for a in client.get("/v1/alerts" + q).json()["alerts"]]  # noqa: E731
    assert ids("") == ["a2", "a3", "a1"]
    assert ids("?entity=ticker:AAA") == ["a1"] and ids("?entity=topic:AAA") == []
    assert ids("?entity=Earnings") == ["a2"]
    assert ids("?severity=critical") == ["a2"]
    assert ids(f"?since={WM - 60_000}") == ["a2", "a3"]
    assert ids("?since=" + ms_to_iso(WM - 60_000)) == ["a2", "a3"]
    assert ids("?limit=1") == ["a2"]
    body = client.get("/v1/alerts").json()
    assert body["count"] == 3 and body["buffered"] == 3
    assert body["alerts"][0].keys() == Alert.model_fields.keys()


# --- health and static ------------------------------------------------------------------------------------
def test_health_is_503_without_kafka(client: TestClient) -> None:
    r = client.get("/healthz")
    assert r.status_code == 503
    assert r.json()["redis"] is True and r.json()["kafka"] is False and r.json()["watermark"] == WM


def test_index_and_static_files(fake: FakeRedis, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A folder of our own: api/static/ belongs to the dashboard, whose files change independently of the API.
    (tmp_path / "index.html").write_text("<!doctype html><title>t</title>")
    (tmp_path / "js").mkdir()
    (tmp_path / "js" / "app.js").write_text("1;")
    monkeypatch.setattr(api.app, "STATIC_DIR", tmp_path)
    s, a = _settings()
    with TestClient(create_app(s, a, redis=fake)) as client:  # type: ignore[arg-type]
        r = client.get("/")
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
        assert r.content == (tmp_path / "index.html").read_bytes()
        assert client.get("/static/index.html").content == r.content
        assert client.get("/static/js/app.js").text == "1;"
        assert client.get("/static/nope.js").status_code == 404
        assert client.get("/static/../pyproject.toml").status_code == 404
        assert client.get("/static/%2e%2e/%2e%2e/pyproject.toml").status_code == 404
        (tmp_path / "index.html").unlink()
        assert client.get("/").status_code == 404


def test_the_dashboard_folder_is_served() -> None:
    assert STATIC_DIR == Path(api.app.__file__).parent / "static" and STATIC_DIR.is_dir()


def test_a_window_shorter_than_a_bucket_reads_the_last_bucket_in_both_endpoints(fake: FakeRedis) -> None:
    # Hourly buckets (the demo's): 15m is the last whole bucket, for the ranking and for the series alike.
    s, a = _settings()
    s = s.model_copy(update={"bucket_seconds": 3600})
    fake.add(PREFIX, "ticker", "HRS", WM, "neg", -0.9, bucket=3600)
    with TestClient(create_app(s, a, redis=fake)) as c:  # type: ignore[arg-type]
        ent = c.get("/v1/entities?kind=ticker&window=15m").json()
        ser = c.get("/v1/entities/ticker/HRS/series?window=15m")
    assert ser.status_code == 200, ser.text
    body = ser.json()
    assert ent["bucket_seconds"] == body["bucket_seconds"] == 3600
    assert (body["window_start"], body["window_end"]) == (ent["window_start"], ent["window_end"])
    assert body["step_seconds"] == 3600 and len(body["points"]) == 1
    hrs = next(e for e in ent["entities"] if e["name"] == "HRS")
    assert body["points"][0]["count"] == hrs["count"] and body["points"][0]["neg"] == hrs["neg"] >= 1
