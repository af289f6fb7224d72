"""Feed ingestion without services: entries to events, conditional GETs, retries, and the poller over
an in-memory Redis stand-in, a recording producer and ``httpx.MockTransport`` feeds."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from finpulse.paths import PROJECT_ROOT
from ingest.feeds import (
    FeedHTTPError,
    FeedParseError,
    FeedPoller,
    FeedTimeout,
    FeedTooLarge,
    SymbolMap,
    entry_event,
    entry_id,
    entry_identity,
    fetch_feed,
    html_to_text,
    http_client,
    parse_feed,
)
from ingest.settings import FeedConfig, FeedConfigError, IngestSettings, load_feeds_file
from ingest.state import IngestState, Validators
from stream.events import NewsEvent, parse_event
from stream.settings import StreamSettings

FIXTURES = PROJECT_ROOT / "tests" / "fixtures" / "feeds"
NOW_MS = 1_795_000_000_000  # 2026-11-18, after every fixture date
S = StreamSettings(redis_prefix="unit")
FAST = IngestSettings(timeout_s=0.5, connect_timeout_s=0.5, max_attempts=3, backoff_initial_s=0, backoff_max_s=0)


# --- stand-ins -----------------------------------------------------------------------------------------
class FakeRedis:
    """The five commands IngestState uses, with redis-py's reply shapes."""

    def __init__(self) -> None:
        self.zsets: dict[str, dict[str, float]] = {}
        self.hashes: dict[str, dict[str, str]] = {}
        self.down = False

    def _check(self) -> None:
        if self.down:
            from redis.exceptions import ConnectionError

            raise ConnectionError("down")

    async def zmscore(self, key: str, members: list[str]) -> list[float | None]:
        self._check()
        z = self.zsets.get(key, {})
        return [z.get(m) for m in members]

    async def zadd(self, key: str, mapping: dict[str, float], xx: bool = False) -> int:
        self._check()
        z = self.zsets.setdefault(key, {})
        for m, sc in mapping.items():
            if not xx or m in z:
                z[m] = sc
        return len(mapping)

    async def zremrangebyscore(self, key: str, lo: str, hi: str) -> int:
        z = self.zsets.get(key, {})
        bound = float(hi.lstrip("("))
        gone = [m for m, sc in z.items() if sc < bound]
        for m in gone:
            del z[m]
        return len(gone)

    async def hmget(self, key: str, fields: list[str]) -> list[bytes | None]:
        self._check()
        h = self.hashes.get(key, {})
        return [h[f].encode() if f in h else None for f in fields]

    async def hset(self, key: str, items: list[Any]) -> int:
        self._check()
        h = self.hashes.setdefault(key, {})
        for k, v in zip(items[::2], items[1::2], strict=True):
            h[str(k)] = str(v)
        return len(items) // 2


class FakeProducer:
    """Records what is sent; ids in ``fail`` get a failed delivery future."""

    def __init__(self, fail: set[str] | None = None) -> None:
        self.sent: list[tuple[str, bytes, bytes]] = []
        self.fail = fail or set()

    async def send(self, topic: str, value: bytes, key: bytes) -> asyncio.Future[Any]:
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        if json.loads(value)["id"] in self.fail:
            fut.set_exception(RuntimeError("broker refused"))
        else:
            self.sent.append((topic, key, value))
            fut.set_result(None)
        return fut


def _serve(routes: dict[str, Callable[[httpx.Request], Any]]) -> httpx.MockTransport:
    async def handler(request: httpx.Request) -> httpx.Response:
        resp = routes[request.url.path](request)
        return await resp if asyncio.iscoroutine(resp) else resp

    return httpx.MockTransport(handler)


def _conditional(body: bytes, etag: str = '"v1"', lm: str = "Tue, 03 Nov 2026 20:00:00 GMT") -> Any:
    """A feed answering 304 when the request's validators match, with a log of the requests' headers."""
    seen: list[dict[str, str]] = []

    def route(request: httpx.Request) -> httpx.Response:
        seen.append(dict(request.headers))
        if request.headers.get("if-none-match") == etag or request.headers.get("if-modified-since") == lm:
            return httpx.Response(304, headers={"ETag": etag})
        return httpx.Response(
            200, content=body, headers={"ETag": etag, "Last-Modified": lm, "Content-Type": "application/rss+xml"}
        )

    route.seen = seen  # type: ignore[attr-defined]
    return route


def _feed(name: str) -> FeedConfig:
    return FeedConfig(url=f"http://feeds.test/{name}", name=name)


def _poller(
    feeds: list[FeedConfig],
    routes: dict[str, Any],
    redis: FakeRedis,
    producer: FakeProducer,
    cfg: IngestSettings = FAST,
    symbols: dict[str, str] | None = None,
) -> tuple[FeedPoller, httpx.AsyncClient]:
    http = http_client(cfg, _serve(routes))
    poller = FeedPoller(
        S,
        cfg,
        feeds,
        symbols or {},
        http=http,
        producer=producer,  # type: ignore[arg-type]
        state=IngestState(redis, S.redis_prefix),  # type: ignore[arg-type]
        clock=lambda: NOW_MS / 1000,
    )
    return poller, http


# --- entries to events ---------------------------------------------------------------------------------
def test_entry_identity_scopes_local_guids_to_their_feed() -> None:
    a, b = "http://a.test/rss", "http://b.test/rss"
    glob = {"id": "https://news.test/story-1", "link": "https://news.test/story-1?utm=x"}
    assert entry_identity(glob, a) == entry_identity(glob, b) == "https://news.test/story-1"
    assert entry_identity({"id": "tag:news.test,2026:1"}, a) == "tag:news.test,2026:1"
    local = {"id": "12345", "link": "https://news.test/x"}
    assert entry_identity(local, a) != entry_identity(local, b)  # "12345" is only unique within its feed
    assert entry_identity({"link": "https://news.test/y"}, a) == "https://news.test/y"
    assert entry_identity({"title": "Only a title", "published": "Tue"}, a) == f"{a}#Only a title|Tue"
    assert entry_identity({"summary": "nothing to name it by"}, a) is None
    assert entry_id("x") == entry_id("x") and entry_id("x") != entry_id("y")
    assert entry_id("x").startswith("feed-") and len(entry_id("x")) == 37


def test_entry_event_text_time_and_tickers() -> None:
    feed = FeedConfig(url="http://feeds.test/co", name="co-news", tickers=["init"])
    symbols = SymbolMap({"Globex": "GBX", "Globex Corporation": "GBXC", "Apple": "AAPL"})
    entry = {
        "id": "https://news.test/1",
        "link": "https://news.test/1",
        "title": "<b>Globex Corporation</b> &amp; $acme rally",
        "summary": "<p>Shares rose.<br/>An apple a day; Applebee's is not Apple.</p><script>x()</script>",
        "published_parsed": time.gmtime(NOW_MS / 1000 - 3600),
        "author": "A. Writer",
    }
    ev = entry_event(entry, feed, symbols, NOW_MS, S)
    assert isinstance(ev, NewsEvent)
    assert ev.title == "Globex Corporation & $acme rally"
    assert ev.text == "Shares rose. An apple a day; Applebee's is not Apple."
    # The feed's own tickers, then cashtags, then names (longest name first, whole words, case-sensitive).
    assert ev.tickers == ["INIT", "ACME", "GBXC", "AAPL"]
    assert ev.published_at == NOW_MS - 3_600_000 and ev.source == "co-news" and ev.url == "https://news.test/1"
    assert ev.author is None  # never sent
    # A date ahead of the fetch is clamped to it; no date at all is the fetch time.
    future = entry_event({**entry, "published_parsed": time.gmtime(NOW_MS / 1000 + 86400)}, feed, symbols, NOW_MS, S)
    undated = entry_event({**entry, "published_parsed": None}, feed, symbols, NOW_MS, S)
    assert isinstance(future, NewsEvent) and isinstance(undated, NewsEvent)
    assert future.published_at == undated.published_at == NOW_MS
    # No summary (or the title again): the title is the text, and no title is repeated.
    bare = entry_event({"id": "tag:x", "title": "Headline only", "summary": "Headline only"}, feed, symbols, NOW_MS, S)
    assert isinstance(bare, NewsEvent) and bare.text == "Headline only" and bare.title is None
    assert entry_event({"id": "tag:y", "title": " ", "summary": "<p> </p>"}, feed, symbols, NOW_MS, S) == "empty_text"
    assert entry_event({"summary": "no id"}, feed, symbols, NOW_MS, S) == "no_id"
    # Text over the worker's limit is cut (at a character boundary) rather than refused.
    small = S.model_copy(update={"max_text_bytes": 64})
    long = entry_event({"id": "tag:z", "title": "T", "summary": "é" * 100}, feed, symbols, NOW_MS, small)
    assert isinstance(long, NewsEvent) and long.text == "é" * 32


def test_html_to_text() -> None:
    assert html_to_text("<p>a&nbsp;b</p><p>c &lt;d&gt;</p>") == "a b c <d>"
    assert html_to_text(None) == "" and html_to_text("<style>p{}</style>ok") == "ok"


def test_fixtures_parse_and_the_malformed_one_is_refused() -> None:
    rss = parse_feed((FIXTURES / "markets.xml").read_bytes(), "http://feeds.test/markets")
    atom = parse_feed((FIXTURES / "company.atom").read_bytes(), "http://feeds.test/co", "application/atom+xml")
    assert (rss.version, len(rss.entries)) == ("rss20", 3) and (atom.version, len(atom.entries)) == ("atom10", 2)
    with pytest.raises(FeedParseError):
        parse_feed((FIXTURES / "malformed.xml").read_bytes(), "http://feeds.test/bad")
    with pytest.raises(FeedParseError):
        parse_feed(b"", "http://feeds.test/empty")
    # A string that looks like a URL is data, never fetched.
    with pytest.raises(FeedParseError):
        parse_feed(b"http://127.0.0.1:9/feed", "http://feeds.test/u")


# --- fetching ------------------------------------------------------------------------------------------
async def test_conditional_get_sends_validators_and_reads_304() -> None:
    route = _conditional((FIXTURES / "markets.xml").read_bytes())
    async with http_client(FAST, _serve({"/f": route})) as http:
        first = await fetch_feed(http, "http://feeds.test/f", Validators(), FAST)
        assert first.status == 200 and first.validators == Validators('"v1"', "Tue, 03 Nov 2026 20:00:00 GMT")
        again = await fetch_feed(http, "http://feeds.test/f", first.validators, FAST)
        assert again.status == 304 and again.body == b"" and again.validators == first.validators
        only_date = await fetch_feed(
            http, "http://feeds.test/f", Validators(None, first.validators.last_modified), FAST
        )
        assert only_date.status == 304
    assert "if-none-match" not in route.seen[0]
    assert route.seen[1]["if-none-match"] == '"v1"' and route.seen[1]["if-modified-since"].endswith("GMT")
    assert route.seen[0]["user-agent"].startswith("finpulse-ingest")


async def test_retries_transient_failures_not_permanent_ones() -> None:
    calls: dict[str, int] = {"flaky": 0, "gone": 0, "slow": 0}
    body = (FIXTURES / "markets.xml").read_bytes()

    def flaky(request: httpx.Request) -> httpx.Response:
        calls["flaky"] += 1
        return httpx.Response(503 if calls["flaky"] < 3 else 200, content=body)

    def gone(request: httpx.Request) -> httpx.Response:
        calls["gone"] += 1
        return httpx.Response(404)

    async def slow(request: httpx.Request) -> httpx.Response:
        calls["slow"] += 1
        await asyncio.sleep(5)
        return httpx.Response(200, content=body)

    def big(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=b"x" * 16384)

    cfg = FAST.model_copy(update={"timeout_s": 0.2, "max_feed_bytes": 8192})
    async with http_client(cfg, _serve({"/flaky": flaky, "/gone": gone, "/slow": slow, "/big": big})) as http:
        assert (await fetch_feed(http, "http://t/flaky", Validators(), cfg)).status == 200
        with pytest.raises(FeedHTTPError) as err:
            await fetch_feed(http, "http://t/gone", Validators(), cfg)
        assert err.value.status == 404
        t0 = time.monotonic()
        with pytest.raises(FeedTimeout):
            await fetch_feed(http, "http://t/slow", Validators(), cfg)
        assert time.monotonic() - t0 < 2.0  # three attempts of 0.2 s, not one of 5 s
        with pytest.raises(FeedTooLarge):
            await fetch_feed(http, "http://t/big", Validators(), cfg)
    assert calls == {"flaky": 3, "gone": 1, "slow": 3}


# --- the poller ----------------------------------------------------------------------------------------
async def test_new_entries_are_sent_once_even_across_a_restart() -> None:
    redis, producer = FakeRedis(), FakeProducer()
    markets = (FIXTURES / "markets.xml").read_bytes()
    always_200 = {"/markets": lambda r: httpx.Response(200, content=markets)}  # no validators: no 304 to hide behind
    feeds = [_feed("markets")]
    poller, http = _poller(feeds, always_200, redis, producer, symbols={"Globex": "GBX"})
    async with http:
        first = await poller.poll(feeds[0])
        second = await poller.poll(feeds[0])
    assert (first.status, first.entries, first.new, first.sent) == ("ok", 3, 3, 3)
    assert (second.status, second.new, second.sent) == ("ok", 0, 0)
    restarted, http = _poller(feeds, always_200, redis, producer, symbols={"Globex": "GBX"})
    async with http:
        third = await restarted.poll(feeds[0])
    assert (third.new, third.sent) == (0, 0) and len(producer.sent) == 3
    # What was sent is what the worker accepts, keyed by the first ticker, else by id.
    for topic, key, value in producer.sent:
        ev = parse_event(value, S.max_event_bytes, S.max_text_bytes)
        assert isinstance(ev, NewsEvent) and topic == S.input_topic
        assert key == (ev.tickers[0] if ev.tickers else ev.id).encode()
    assert sorted(k for _, k, _ in producer.sent if not k.startswith(b"feed-")) == [b"ACME", b"GBX"]
    times = [json.loads(v)["published_at"] for _, _, v in producer.sent]
    assert times == sorted(times)  # oldest first


async def test_304_sends_nothing_and_validators_survive_a_restart() -> None:
    redis, producer = FakeRedis(), FakeProducer()
    route = _conditional((FIXTURES / "markets.xml").read_bytes())
    feeds = [_feed("m")]
    poller, http = _poller(feeds, {"/m": route}, redis, producer)
    async with http:
        assert (await poller.poll(feeds[0])).sent == 3
    restarted, http = _poller(feeds, {"/m": route}, redis, producer)
    async with http:
        r = await restarted.poll(feeds[0])
    assert r.status == "not_modified" and len(producer.sent) == 3
    assert route.seen[1]["if-none-match"] == '"v1"'


async def test_a_broken_feed_never_stops_the_others() -> None:
    redis, producer = FakeRedis(), FakeProducer()

    async def hang(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(10)
        return httpx.Response(200)

    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused")

    routes = {
        "/good": lambda r: httpx.Response(200, content=(FIXTURES / "company.atom").read_bytes()),
        "/bad": lambda r: httpx.Response(200, content=(FIXTURES / "malformed.xml").read_bytes()),
        "/slow": hang,
        "/gone": lambda r: httpx.Response(410),
        "/down": refuse,
    }
    feeds = [_feed(n) for n in ["good", "bad", "slow", "gone", "down"]]
    cfg = FAST.model_copy(update={"timeout_s": 0.2, "max_attempts": 2})
    poller, http = _poller(feeds, routes, redis, producer, cfg)
    t0 = time.monotonic()
    async with http:
        results = {r.feed: r for r in await poller.poll_all()}
    assert time.monotonic() - t0 < 3.0
    assert (results["good"].status, results["good"].sent) == ("ok", 2)
    assert {n: results[n].error for n in ["bad", "slow", "gone", "down"]} == {
        "bad": "malformed",
        "slow": "timeout",
        "gone": "http_status",
        "down": "transport",
    }
    counts = poller.stats.as_dict()
    assert counts["sent"] == 2 and counts["errors"] == {"malformed": 1, "timeout": 1, "http_status": 1, "transport": 1}
    assert counts["feeds"]["slow"]["polls"] == {"error": 1}


async def test_a_failed_send_is_retried_next_poll_and_keeps_the_old_validators() -> None:
    redis, producer = FakeRedis(), FakeProducer()
    route = _conditional((FIXTURES / "markets.xml").read_bytes())
    feeds = [_feed("m")]
    poller, http = _poller(feeds, {"/m": route}, redis, producer)
    rates_id = entry_id("https://news.example.com/markets/rates-hold")
    producer.fail = {rates_id}
    async with http:
        failed = await poller.poll(feeds[0])
        assert (failed.status, failed.error, failed.sent) == ("error", "kafka", 2)
        producer.fail = set()
        retried = await poller.poll(feeds[0])
    assert (retried.status, retried.new, retried.sent) == ("ok", 1, 1)
    # No validators were stored after the failure: the second poll was a full GET (no 304 hiding the entry).
    assert "if-none-match" not in route.seen[1]
    assert [json.loads(v)["id"] for _, _, v in producer.sent].count(rates_id) == 1 and len(producer.sent) == 3


async def test_redis_down_fails_the_poll_without_sending() -> None:
    redis, producer = FakeRedis(), FakeProducer()
    redis.down = True
    feeds = [_feed("m")]
    poller, http = _poller(feeds, {"/m": _conditional((FIXTURES / "markets.xml").read_bytes())}, redis, producer)
    async with http:
        r = await poller.poll(feeds[0])
    assert (r.status, r.error, producer.sent) == ("error", "redis", [])


async def test_seen_ids_still_listed_are_kept_and_absent_ones_pruned() -> None:
    redis, producer = FakeRedis(), FakeProducer()
    feeds = [_feed("m")]
    route = {"/m": lambda r: httpx.Response(200, content=(FIXTURES / "markets.xml").read_bytes())}
    poller, http = _poller(feeds, route, redis, producer)
    async with http:
        await poller.poll(feeds[0])
    seen = redis.zsets[f"{S.redis_prefix}:ingest:seen"]
    seen["feed-gone-long-ago"] = NOW_MS - (FAST.seen_retention_s + 1) * 1000
    await poller.prune()
    assert len(seen) == 3 and "feed-gone-long-ago" not in seen


# --- settings ------------------------------------------------------------------------------------------
def test_feeds_files_toml_and_json(tmp_path: Path) -> None:
    toml = tmp_path / "feeds.toml"
    toml.write_text(
        '[[feeds]]\nurl = "https://a.test/rss"\ntickers = ["$acme"]\ninterval_s = 60\n\n'
        '[[feeds]]\nurl = "https://b.test/atom"\nname = "b"\n\n[symbols]\n"Acme Corp" = "acme"\n'
    )
    f = load_feeds_file(toml)
    assert [x.source for x in f.feeds] == ["a.test", "b"] and f.feeds[0].tickers == ("ACME",)
    assert f.symbols == {"Acme Corp": "ACME"}
    js = tmp_path / "feeds.json"
    js.write_text(json.dumps({"feeds": [{"url": "https://a.test/rss", "name": "dup"}, {"url": "https://c.test/x"}]}))
    cfg = IngestSettings(feeds_file=toml, feeds=[FeedConfig(url="https://a.test/rss", name="again")])
    feeds, symbols = cfg.feed_list()
    assert [x.url for x in feeds] == ["https://a.test/rss", "https://b.test/atom"] and feeds[0].name is None
    assert len(load_feeds_file(js).feeds) == 2
    for bad, why in [
        ('[[feeds]]\nurl = "ftp://a.test/x"\n', "http"),
        ('[[feeds]]\nurl = "https://a.test"\ntickers = ["not a ticker"]\n', "ticker"),
        ('[[feeds]]\nurl = "https://a.test"\ncolour = "red"\n', "colour"),
        ("[[feeds]\n", "feeds.toml"),
    ]:
        toml.write_text(bad)
        with pytest.raises(FeedConfigError, match=why):
            load_feeds_file(toml)
    with pytest.raises(FeedConfigError, match="no feeds"):
        IngestSettings().feed_list()


def test_feeds_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FINPULSE_INGEST_FEEDS", '[{"url": "https://a.test/rss", "interval_s": 30}]')
    monkeypatch.setenv("FINPULSE_INGEST_SYMBOLS", '{"Acme": "acme"}')
    feeds, symbols = IngestSettings().feed_list()
    assert feeds[0].interval_s == 30 and symbols == {"Acme": "ACME"}


def test_the_example_feeds_file_loads() -> None:
    f = load_feeds_file(PROJECT_ROOT / "examples" / "feeds.toml")
    assert len(f.feeds) >= 3 and all(x.url.startswith("https://") for x in f.feeds)
