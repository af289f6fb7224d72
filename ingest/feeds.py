"""RSS/Atom feeds polled into the input topic: conditional GETs, retries, one event per new entry.

For each feed, on its own interval:

1. GET it over httpx with ``If-None-Match`` / ``If-Modified-Since`` from its last fully sent response
   (kept in Redis, so they survive a restart); a 304 ends the poll.
2. Each attempt is bounded (``timeout_s`` from connection to last byte, ``max_feed_bytes``); timeouts,
   connection errors, 429 and 5xx are retried with jittered exponential backoff (tenacity).
3. Parse with feedparser; every entry becomes a :class:`stream.events.NewsEvent`, validated by the
   worker's own :func:`stream.events.parse_event` (same size limits), so what is sent is what the worker
   accepts.
4. Entries whose ids Redis has seen are dropped; the rest are produced (acks=all, keyed by first ticker,
   else id) and, once Kafka acknowledged them, recorded as seen; then the response's validators are stored.

A feed that fails at any step is logged, counted by reason and skipped until its next poll; it never
stops the other feeds. Delivery: an entry is recorded as seen only after Kafka acknowledged it, so a
crash in between re-sends it once on restart, with the same id, which the worker's window dedupe ignores.
Never logged: feed URLs (they may hold API keys; the feed's name is logged), entry texts, authors.
"""

from __future__ import annotations

import asyncio
import calendar
import hashlib
import io
import re
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from html.parser import HTMLParser
from typing import Any, ClassVar, Literal

import httpx
import orjson
import structlog
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from redis.exceptions import RedisError
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential,
    wait_random,
)

from ingest.settings import FeedConfig, IngestSettings
from ingest.state import IngestState, Validators
from stream.events import MAX_TICKERS, NewsEvent, extract_cashtags, parse_event, partition_key
from stream.settings import StreamSettings

log = structlog.get_logger(__name__)

ACCEPT = "application/rss+xml, application/atom+xml, application/xml;q=0.9, text/xml;q=0.9, */*;q=0.1"
# A guid that names itself globally (a URL, a URN, a tag URI) is an id on its own; any other guid is
# only unique within its feed, so the feed URL is part of the id.
GLOBAL_GUID_RE = re.compile(r"^(?:[a-z][a-z0-9+.-]*://|urn:|tag:)", re.IGNORECASE)
_URL_RE = re.compile(r"[a-z][a-z0-9+.-]*://\S+", re.IGNORECASE)


# --- errors -------------------------------------------------------------------------------------------
class FeedError(Exception):
    """Why one poll of one feed failed; ``reason`` is the counter label, the message holds no URL."""

    reason: ClassVar[str] = "error"
    retryable: bool = False


class FeedTimeout(FeedError):
    reason = "timeout"
    retryable = True


class FeedTransportError(FeedError):
    reason = "transport"
    retryable = True


class FeedHTTPError(FeedError):
    reason = "http_status"

    def __init__(self, status: int) -> None:
        super().__init__(f"HTTP {status}")
        self.status = status
        # 429 and 5xx may pass; another 4xx (404, 410, 403) will not by asking again.
        self.retryable = status == 429 or status >= 500


class FeedTooLarge(FeedError):
    reason = "too_large"


class FeedParseError(FeedError):
    reason = "malformed"


class FeedSendError(FeedError):
    reason = "kafka"


class FeedStateError(FeedError):
    reason = "redis"


def _scrub(text: str) -> str:
    """An error message without URLs (a feed URL may carry an API key)."""
    return _URL_RE.sub("<url>", text)[:300]


# --- fetching -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class FetchResult:
    """A feed response: 304 (nothing new) or the document with its validators."""

    status: int
    body: bytes = b""
    validators: Validators = Validators()
    content_type: str | None = None
    url: str = ""


def http_client(cfg: IngestSettings, transport: httpx.AsyncBaseTransport | None = None) -> httpx.AsyncClient:
    """The ingester's HTTP client (``transport``: tests hand in an ``httpx.MockTransport``)."""
    return httpx.AsyncClient(
        timeout=httpx.Timeout(cfg.timeout_s, connect=cfg.connect_timeout_s),
        follow_redirects=True,
        max_redirects=5,
        headers={"User-Agent": cfg.user_agent, "Accept": ACCEPT},
        transport=transport,
    )


async def _fetch_once(client: httpx.AsyncClient, url: str, known: Validators, cfg: IngestSettings) -> FetchResult:
    headers = {}
    if known.etag:
        headers["If-None-Match"] = known.etag
    if known.last_modified:
        headers["If-Modified-Since"] = known.last_modified
    try:
        # httpx's timeouts bound each connect and read; this bounds the whole attempt, so a server
        # that trickles a byte every few seconds cannot hold a poll forever.
        async with asyncio.timeout(cfg.timeout_s):
            async with client.stream("GET", url, headers=headers) as resp:
                if resp.status_code == 304:
                    # A 304 may update the validators; otherwise the ones sent stay valid.
                    return FetchResult(
                        304,
                        validators=Validators(
                            resp.headers.get("etag") or known.etag,
                            resp.headers.get("last-modified") or known.last_modified,
                        ),
                        url=str(resp.url),
                    )
                if not 200 <= resp.status_code < 300:
                    raise FeedHTTPError(resp.status_code)
                declared = resp.headers.get("content-length", "")
                if declared.isdigit() and int(declared) > cfg.max_feed_bytes:
                    raise FeedTooLarge(f"{declared} bytes > limit {cfg.max_feed_bytes}")
                chunks: list[bytes] = []
                size = 0
                async for chunk in resp.aiter_bytes():
                    size += len(chunk)
                    if size > cfg.max_feed_bytes:
                        raise FeedTooLarge(f"over {cfg.max_feed_bytes} bytes")
                    chunks.append(chunk)
                return FetchResult(
                    resp.status_code,
                    b"".join(chunks),
                    Validators(resp.headers.get("etag"), resp.headers.get("last-modified")),
                    resp.headers.get("content-type"),
                    str(resp.url),
                )
    except (TimeoutError, httpx.TimeoutException) as exc:
        raise FeedTimeout(f"no complete response within {cfg.timeout_s:g}s") from exc
    except httpx.TransportError as exc:
        raise FeedTransportError(_scrub(f"{type(exc).__name__}: {exc}")) from exc
    except httpx.HTTPError as exc:  # too many redirects, an invalid URL after a redirect, ...
        err = FeedTransportError(_scrub(f"{type(exc).__name__}: {exc}"))
        err.retryable = False
        raise err from exc


async def fetch_feed(
    client: httpx.AsyncClient,
    url: str,
    known: Validators,
    cfg: IngestSettings,
    *,
    name: str = "feed",
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> FetchResult:
    """GET a feed conditionally, retrying timeouts, transport errors, 429 and 5xx; the last error is raised."""

    def log_retry(state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        log.info(
            "feed_retry",
            feed=name,
            attempt=state.attempt_number,
            reason=getattr(exc, "reason", "error"),
            wait_s=round(state.next_action.sleep if state.next_action else 0.0, 2),
        )

    retrying = AsyncRetrying(
        stop=stop_after_attempt(cfg.max_attempts),
        # Doubling from backoff_initial_s up to backoff_max_s, plus up to backoff_initial_s of jitter (so
        # feeds on one host that failed together do not retry in step).
        wait=wait_exponential(multiplier=cfg.backoff_initial_s, max=cfg.backoff_max_s)
        + wait_random(0, cfg.backoff_initial_s),
        retry=retry_if_exception(lambda e: isinstance(e, FeedError) and e.retryable),
        before_sleep=log_retry,
        sleep=sleep,
        reraise=True,
    )
    async for attempt in retrying:
        with attempt:
            return await _fetch_once(client, url, known, cfg)
    raise AssertionError("tenacity ended without an outcome")  # pragma: no cover - reraise=True raises


# --- parsing ------------------------------------------------------------------------------------------
def parse_feed(body: bytes, url: str, content_type: str | None = None) -> Any:
    """feedparser's result for a document; :class:`FeedParseError` when it holds no feed at all.

    feedparser is lenient: a feed with a flaw (an undeclared entity, a bad date) still yields its
    entries and is used; only a document without any entry that is not well-formed, or is no
    RSS/Atom at all, is refused.
    """
    import feedparser  # imported here: only the ingester needs it

    headers = {"content-location": url}
    if content_type:
        headers["content-type"] = content_type
    # A stream, never bytes or a string: feedparser fetches a string that looks like a URL itself.
    d = feedparser.parse(io.BytesIO(body), response_headers=headers)
    if not d.get("entries") and (d.get("bozo") or not d.get("version")):
        why = type(d.get("bozo_exception")).__name__ if d.get("bozo") else "no RSS or Atom root element"
        raise FeedParseError(f"not a feed ({why})")
    return d


class _TextOf(HTMLParser):
    """The text of an HTML fragment: tags dropped, entities decoded, script and style skipped."""

    SKIP = frozenset({"script", "style"})

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self._skip = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in self.SKIP:
            self._skip += 1
        elif tag in ("br", "p", "div", "li"):
            self.parts.append(" ")

    def handle_endtag(self, tag: str) -> None:
        if tag in self.SKIP and self._skip:
            self._skip -= 1

    def handle_data(self, data: str) -> None:
        if not self._skip:
            self.parts.append(data)


def html_to_text(fragment: str | None) -> str:
    """Plain text of an entry's title or summary (feedparser leaves HTML in them), whitespace collapsed."""
    if not fragment:
        return ""
    p = _TextOf()
    p.feed(fragment)
    p.close()
    return " ".join("".join(p.parts).split())


def _cut_utf8(text: str, limit: int) -> str:
    """``text`` cut to at most ``limit`` UTF-8 bytes, never inside a character."""
    raw = text.encode("utf-8")
    return text if len(raw) <= limit else raw[:limit].decode("utf-8", "ignore").rstrip()


class SymbolMap:
    """Company names to tickers, found as whole words (case-sensitive: "Apple" the company, not "apple")."""

    def __init__(self, symbols: Mapping[str, str]) -> None:
        self.symbols = dict(symbols)
        names = sorted(self.symbols, key=len, reverse=True)  # longest first: "Acme Corp" before "Acme"
        self._re = re.compile(r"(?<!\w)(?:" + "|".join(map(re.escape, names)) + r")(?!\w)") if names else None

    def tickers(self, *texts: str | None) -> list[str]:
        if self._re is None:
            return []
        out: dict[str, None] = {}
        for text in texts:
            for m in self._re.finditer(text or ""):
                out.setdefault(self.symbols[m.group(0)], None)
        return list(out)


def entry_identity(entry: Mapping[str, Any], feed_url: str) -> str | None:
    """What makes an entry itself: its guid (scoped to the feed unless global), else its link, else title+date."""
    guid = str(entry.get("id") or "").strip()
    if guid:
        return guid if GLOBAL_GUID_RE.match(guid) else f"{feed_url}#{guid}"
    link = str(entry.get("link") or "").strip()
    if link:
        return link
    title = str(entry.get("title") or "").strip()
    if title:
        return f"{feed_url}#{title}|{entry.get('published') or entry.get('updated') or ''}"
    return None


def entry_id(identity: str) -> str:
    """The event id: a digest of the identity (stable across polls and restarts, 128 bits, no URL in it)."""
    return "feed-" + hashlib.sha256(identity.encode("utf-8", "surrogatepass")).hexdigest()[:32]


def _entry_time_ms(entry: Mapping[str, Any]) -> int | None:
    parsed = entry.get("published_parsed") or entry.get("updated_parsed")  # feedparser: a UTC struct_time
    if not parsed:
        return None
    try:
        return calendar.timegm(parsed) * 1000
    except (TypeError, ValueError, OverflowError):
        return None


def entry_event(
    entry: Mapping[str, Any], feed: FeedConfig, symbols: SymbolMap, fetched_ms: int, s: StreamSettings
) -> NewsEvent | str:
    """The event for one feed entry, or the reason it is skipped.

    Title and summary become ``title`` and ``text`` (a summary-less entry's title is its text);
    the time is the entry's published (else updated) time, never later than the fetch, and the fetch
    time when it has none; tickers are the feed's own, the cashtags, then symbol-map names. Authors
    are left out: the model does not read them and they are personal data.
    """
    identity = entry_identity(entry, feed.url)
    if identity is None:
        return "no_id"
    title = html_to_text(entry.get("title"))
    text = html_to_text(entry.get("summary"))
    if not text or text == title:
        text, title = title, ""
    if not text:
        return "empty_text"
    text = _cut_utf8(text, s.max_text_bytes)
    title = _cut_utf8(title, s.max_text_bytes)
    published = _entry_time_ms(entry)
    # A date ahead of the fetch is a feed's clock or time-zone error; the worker would dead-letter it.
    published_ms = fetched_ms if published is None else min(published, fetched_ms)
    tickers = list(dict.fromkeys([*feed.tickers, *extract_cashtags(title, text), *symbols.tickers(title, text)]))[
        :MAX_TICKERS
    ]
    record: dict[str, Any] = {
        "id": entry_id(identity),
        "text": text,
        "published_at": published_ms,
        "source": feed.source,
        "tickers": tickers,
    }
    if title:
        record["title"] = title
    link = str(entry.get("link") or "")
    if link.startswith(("http://", "https://")):
        record["url"] = link[:2048]
    # The worker's own validation and limits: an entry it would dead-letter is not sent at all.
    parsed = parse_event(orjson.dumps(record), s.max_event_bytes, s.max_text_bytes)
    return parsed if isinstance(parsed, NewsEvent) else parsed.reason


def feed_events(
    entries: Iterable[Mapping[str, Any]], feed: FeedConfig, symbols: SymbolMap, fetched_ms: int, s: StreamSettings
) -> tuple[list[NewsEvent], Counter[str]]:
    """Events for a feed's entries (one per id, oldest first) and the skipped entries counted by reason."""
    events: dict[str, NewsEvent] = {}
    skipped: Counter[str] = Counter()
    for entry in entries:
        ev = entry_event(entry, feed, symbols, fetched_ms, s)
        if isinstance(ev, str):
            skipped[ev] += 1
        else:
            events.setdefault(ev.id, ev)  # a feed listing an entry twice sends it once
    return sorted(events.values(), key=lambda e: (e.published_at, e.id)), skipped


# --- polling ------------------------------------------------------------------------------------------
PollStatus = Literal["ok", "not_modified", "error"]


@dataclass
class PollResult:
    """What one poll of one feed did."""

    feed: str
    status: PollStatus
    entries: int = 0
    new: int = 0
    sent: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    error: str | None = None
    detail: str | None = None
    ms: float = 0.0


@dataclass
class IngestStats:
    """Counters since start, per feed: polls by status, events sent, entries skipped and errors by reason."""

    polls: Counter[tuple[str, str]] = field(default_factory=Counter)
    sent: Counter[str] = field(default_factory=Counter)
    skipped: Counter[tuple[str, str]] = field(default_factory=Counter)
    errors: Counter[tuple[str, str]] = field(default_factory=Counter)

    def record(self, r: PollResult) -> None:
        self.polls[(r.feed, r.status)] += 1
        self.sent[r.feed] += r.sent
        for reason, n in r.skipped.items():
            self.skipped[(r.feed, reason)] += n
        if r.error:
            self.errors[(r.feed, r.error)] += 1

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready: totals, then per feed."""
        feeds = sorted({f for f, _ in self.polls} | set(self.sent))
        return {
            "sent": sum(self.sent.values()),
            "polls": sum(self.polls.values()),
            "errors": dict(Counter(reason for (_, reason) in self.errors.elements())),
            "skipped": dict(Counter(reason for (_, reason) in self.skipped.elements())),
            "feeds": {
                f: {
                    "polls": {st: n for (ff, st), n in self.polls.items() if ff == f},
                    "sent": self.sent[f],
                    "skipped": {r: n for (ff, r), n in self.skipped.items() if ff == f},
                    "errors": {r: n for (ff, r), n in self.errors.items() if ff == f},
                }
                for f in feeds
            },
        }


class FeedPoller:
    """Polls feeds into the input topic; every client is handed in (and closed by whoever made it)."""

    def __init__(
        self,
        stream: StreamSettings,
        cfg: IngestSettings,
        feeds: Sequence[FeedConfig],
        symbols: Mapping[str, str],
        *,
        http: httpx.AsyncClient,
        producer: AIOKafkaProducer,
        state: IngestState,
        topic: str | None = None,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.stream = stream
        self.cfg = cfg
        self.feeds = list(feeds)
        self.symbols = SymbolMap(symbols)
        self.http = http
        self.producer = producer
        self.state = state
        self.topic = topic or stream.input_topic
        self.stats = IngestStats()
        self._clock = clock
        self._sleep = sleep
        self._fetching = asyncio.Semaphore(cfg.concurrency)

    async def poll(self, feed: FeedConfig) -> PollResult:
        """Poll one feed once. Never raises (but cancellation): a failure is a result with a reason."""
        t0 = time.perf_counter()
        result = PollResult(feed=feed.source, status="ok")
        now_ms = int(self._clock() * 1000)
        try:
            await self._poll(feed, now_ms, result)
        except FeedError as exc:
            result.status, result.error, result.detail = "error", exc.reason, _scrub(str(exc))
        except RedisError as exc:
            result.status, result.error, result.detail = "error", FeedStateError.reason, type(exc).__name__
        except Exception as exc:  # noqa: BLE001 - one feed's unforeseen failure must not stop the others
            result.status, result.error, result.detail = "error", "unexpected", _scrub(f"{type(exc).__name__}: {exc}")
        result.ms = round((time.perf_counter() - t0) * 1000, 1)
        self.stats.record(result)
        fields = {k: v for k, v in vars(result).items() if v not in (None, {})}
        if result.status == "error":
            log.warning("feed_failed", **fields)
        else:
            log.info("feed_polled", **fields)
        return result

    async def _poll(self, feed: FeedConfig, now_ms: int, result: PollResult) -> None:
        async with self._fetching:
            known = await self.state.validators(feed.url)
            fetched = await fetch_feed(self.http, feed.url, known, self.cfg, name=feed.source, sleep=self._sleep)
        if fetched.status == 304:
            result.status = "not_modified"
            await self.state.save_poll(feed.url, fetched.validators, now_ms)
            return
        parsed = await asyncio.to_thread(parse_feed, fetched.body, fetched.url or feed.url, fetched.content_type)
        if parsed.bozo:
            result.skipped["not_well_formed_feed"] = 1  # used anyway: its entries parsed
        events, skipped = feed_events(parsed.entries, feed, self.symbols, now_ms, self.stream)
        result.entries = len(parsed.entries)
        result.skipped.update(skipped)
        ids = [e.id for e in events]
        fresh = set(await self.state.unseen(ids))
        new = [e for e in events if e.id in fresh]
        result.new = len(new)
        sent, error = await self._send(new)
        result.sent = len(sent)
        # Sent ones, and those seen before (their last-seen time moves on, so they are kept while listed).
        acked = set(sent)
        await self.state.mark_seen([i for i in ids if i not in fresh or i in acked], now_ms)
        if error is not None:
            raise error  # validators not stored: the next poll fetches the whole feed and sends the rest
        await self.state.save_poll(feed.url, fetched.validators, now_ms)

    async def _send(self, events: Sequence[NewsEvent]) -> tuple[list[str], FeedSendError | None]:
        """Produce ``events``; the ids Kafka acknowledged, and the error when not all of them were."""
        if not events:
            return [], None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.cfg.kafka_timeout_s
        futures: list[asyncio.Future[Any]] = []
        error: FeedSendError | None = None
        try:
            async with asyncio.timeout(self.cfg.kafka_timeout_s):
                for ev in events:
                    value = ev.model_dump_json(exclude_none=True).encode()
                    futures.append(await self.producer.send(self.topic, value=value, key=partition_key(ev)))
        except TimeoutError:
            error = FeedSendError(f"kafka took events for more than {self.cfg.kafka_timeout_s:g}s")
        except KafkaError as exc:
            error = FeedSendError(f"kafka: {type(exc).__name__}")
        if futures:
            # asyncio.wait, not gather: a timeout must not cancel the producer's own delivery futures.
            await asyncio.wait(futures, timeout=max(0.0, deadline - loop.time()))
        acked = [
            ev.id
            for ev, f in zip(events, futures, strict=False)
            if f.done() and not f.cancelled() and f.exception() is None
        ]
        if error is None and len(acked) < len(events):
            failed = next((f.exception() for f in futures if f.done() and not f.cancelled() and f.exception()), None)
            why = type(failed).__name__ if failed else f"no acknowledgement within {self.cfg.kafka_timeout_s:g}s"
            error = FeedSendError(f"kafka: {len(events) - len(acked)} of {len(events)} events not sent ({why})")
        return acked, error

    async def poll_all(self) -> list[PollResult]:
        """Poll every feed once, concurrently (at most ``concurrency`` fetches at a time)."""
        await self.prune()
        return list(await asyncio.gather(*(self.poll(f) for f in self.feeds)))

    async def prune(self) -> None:
        """Forget entry ids no feed has listed for ``seen_retention_s`` (a Redis outage only delays it)."""
        try:
            gone = await self.state.prune(int((self._clock() - self.cfg.seen_retention_s) * 1000))
        except RedisError as exc:
            log.warning("ingest_prune_failed", reason=type(exc).__name__)
            return
        if gone:
            log.info("ingest_pruned", ids=gone)

    async def run(self, stop: asyncio.Event) -> None:
        """Poll each feed on its own interval until ``stop`` is set."""
        tasks = [asyncio.create_task(self._loop(f, stop), name=f"feed:{f.source}") for f in self.feeds]
        tasks.append(asyncio.create_task(self._prune_loop(stop), name="ingest:prune"))
        try:
            await stop.wait()
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _loop(self, feed: FeedConfig, stop: asyncio.Event) -> None:
        interval = feed.interval_s or self.cfg.interval_s
        while not stop.is_set():
            t0 = time.monotonic()
            await self.poll(feed)
            # The interval runs from the start of a poll: a slow feed does not drift later and later.
            await _wait(stop, interval - (time.monotonic() - t0))

    async def _prune_loop(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await self.prune()
            await _wait(stop, 3600.0)


async def _wait(stop: asyncio.Event, seconds: float) -> None:
    """Sleep ``seconds``, or less when ``stop`` is set meanwhile."""
    if seconds <= 0:
        return
    try:
        await asyncio.wait_for(stop.wait(), seconds)
    except TimeoutError:
        pass


async def run_ingest(
    stream: StreamSettings,
    cfg: IngestSettings,
    *,
    once: bool = False,
    stop: asyncio.Event | None = None,
    topic: str | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
) -> IngestStats:
    """Make the clients, poll (every feed once, or until ``stop``), close the clients; the counters.

    The input topic is created (``partitions``) when missing, as the replay does, so the first
    events do not wait for a worker to start.
    """
    from ingest.clients import kafka_producer, redis_client
    from stream.topics import ensure_topics

    feeds, symbols = cfg.feed_list()
    topic = topic or stream.input_topic
    await ensure_topics(stream, {topic: stream.partitions})
    redis = redis_client(stream)
    producer = kafka_producer(stream, request_timeout_s=cfg.kafka_timeout_s)
    await producer.start()
    try:
        async with http_client(cfg, transport) as http:
            poller = FeedPoller(
                stream,
                cfg,
                feeds,
                symbols,
                http=http,
                producer=producer,
                state=IngestState(redis, stream.redis_prefix),
                topic=topic,
            )
            log.info("ingest_started", feeds=len(feeds), symbols=len(symbols), topic=topic, once=once)
            if once:
                await poller.poll_all()
            else:
                await poller.run(stop or asyncio.Event())
            return poller.stats
    finally:
        await producer.stop()
        await redis.aclose()
