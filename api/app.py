"""The query API: entity windows and series from Redis, alerts from Kafka, a live alert stream, health.

A separate service from the worker: it only reads (Redis windows through :class:`stream.windows.WindowStore`,
alerts through a consumer without a group), so any number of replicas can run beside the workers.
Every request is bounded: entity reads go through the entity index (no KEYS or SCAN) and are capped,
and every bucket count is bounded by a setting.

Windows end where the store's event time is (the watermark bucket's end), as ``finpulse trends`` does,
so a replayed history answers the same way as live data.
"""

# No `from __future__ import annotations` here: the route signatures below use bounds from the settings
# (a local variable), which FastAPI can only read from annotations evaluated at definition time.
import asyncio
import math
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, get_args
from urllib.parse import urlencode

import structlog
from fastapi import APIRouter, Depends, FastAPI, HTTPException, Query, Request, Response
from fastapi import Path as PathParam
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import FileResponse, JSONResponse, RedirectResponse
from pydantic import AfterValidator, BaseModel, Field
from redis.asyncio import Redis
from sse_starlette import EventSourceResponse, ServerSentEvent
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.staticfiles import StaticFiles

from api.alerts import AlertBuffer, AlertTail
from api.ingest import ingest_router
from api.settings import ApiSettings
from stream import security
from stream.events import Alert, ms_to_iso, parse_event_time
from stream.indices import DEFAULT_BASELINE, INDEX_WINDOWS, MAX_BASELINE, EntityIndex, entity_indices, index_buckets
from stream.settings import StreamSettings
from stream.windows import BucketCounts, EntityTrend, WindowStore, bucket_start

log = structlog.get_logger(__name__)

STATIC_DIR = Path(__file__).resolve().parent / "static"

# Durations a client may ask for. Fixed choices keep every request's bucket count known in advance.
DURATIONS: dict[str, int] = {"1m": 60, "5m": 300, "15m": 900, "1h": 3600, "6h": 6 * 3600, "1d": 86400, "7d": 7 * 86400}
Kind = Literal["ticker", "topic"]
EntityWindow = Literal["15m", "1h", "1d"]
SeriesWindow = Literal["15m", "1h", "6h", "1d", "7d"]
Step = Literal["1m", "5m", "15m", "1h", "1d"]
SortKey = Literal["neg_share", "count", "score"]
Severity = Literal["warning", "critical"]
# Tickers (AAPL, BRK.B) and topic labels ("Fed / Central Banks", "M&A / Investments").
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9 .&/\-]{0,63}$"
# The {name} path parameter of every per-entity route, validated the same way.
EntityName = Annotated[
    str, PathParam(pattern=NAME_PATTERN, description="ticker or topic label", examples=["AAA", "Earnings"])
]
# Epoch ms, or an ISO-8601 date with an optional time and offset (a real date is checked when parsed).
SINCE_PATTERN = r"^(\d{11,16}|\d{4}-\d{2}-\d{2}([T ]\d{2}:\d{2}(:\d{2}(\.\d{1,6})?)?(Z|[+-]\d{2}:\d{2})?)?)$"
ENTITY_PATTERN = r"^(?:(?:ticker|topic):)?[A-Za-z0-9][A-Za-z0-9 .&/\-]{0,63}$"


# --- auth -----------------------------------------------------------------------------------------
#: The cookie ``/?token=...`` sets, so the dashboard page (which calls /v1 from the browser) needs no change.
TOKEN_COOKIE = "finpulse_token"


async def require_token(request: Request) -> None:
    """Bearer-token check for every /v1 route, / and /static (/healthz stays open).

    With no tokens configured (``FINPULSE_API_TOKENS``) every request passes. Otherwise a request needs
    ``Authorization: Bearer <token>`` or the ``finpulse_token`` cookie holding one of them, else 401.
    """
    tokens = request.app.state.api_tokens
    # The dashboard page itself may also be opened as /?token=T (a browser cannot send a header on its own);
    # the index route then moves the token into a cookie. Anywhere else a query token is ignored: it would
    # end up in logs and browser history.
    page_token = request.query_params.get("token") if request.url.path == "/" else None
    if not security.bearer_token_ok(
        request.headers.get("authorization"), tokens, fallbacks=(request.cookies.get(TOKEN_COOKIE), page_token)
    ):
        raise HTTPException(401, "a bearer token is required", headers={"WWW-Authenticate": 'Bearer realm="finpulse"'})


# --- response models --------------------------------------------------------------------------------
class ErrorResponse(BaseModel):
    """Why a request was refused."""

    error: str
    detail: list[dict[str, Any]] = Field(default_factory=list, description="one entry per invalid parameter")


class EntityStats(BaseModel):
    """One entity's counts over a window."""

    kind: Kind
    name: str
    count: int
    neg: int
    neu: int
    pos: int
    novel: int = Field(description="events that are not near-duplicates of an earlier story (count is the buzz)")
    novel_neg: int = Field(description="novel negative events")
    neg_share: float
    neu_share: float
    pos_share: float
    mean_score: float = Field(description="mean of P(positive) - P(negative)")
    last_seen: int = Field(description="event time (epoch ms) of the entity's newest event")


class EntitiesResponse(BaseModel):
    """The entities of one kind active in a window ending at the store's event time."""

    kind: Kind
    window: str
    sort: SortKey
    bucket_seconds: int = Field(description="the store's bucket: windows are read in whole buckets")
    window_start: int | None = Field(description="epoch ms; null while the store holds no events")
    window_end: int | None = Field(description="epoch ms (exclusive): end of the watermark's bucket")
    window_start_iso: str | None
    window_end_iso: str | None
    watermark: int | None = Field(description="newest event time counted (epoch ms)")
    scanned: int = Field(description="entities read (active in the window, most recent first)")
    capped: bool = Field(description="more entities were active than the API reads per request (max_entities)")
    matched: int = Field(description="entities with at least min_count events in the window")
    entities: list[EntityStats]


class SeriesPoint(BaseModel):
    """Counts of one step of a series."""

    start: int = Field(description="epoch ms")
    end: int = Field(description="epoch ms (exclusive)")
    start_iso: str
    count: int
    neg: int
    neu: int
    pos: int
    novel: int = Field(description="events that are not near-duplicates of an earlier story (count is the buzz)")
    novel_neg: int = Field(description="novel negative events")
    neg_share: float
    neu_share: float
    pos_share: float
    mean_score: float


class SeriesResponse(BaseModel):
    """One entity's counts per step over a window ending at the store's event time."""

    kind: Kind
    name: str
    window: str
    step: str
    step_seconds: int
    bucket_seconds: int = Field(description="the store's bucket: the finest step there is")
    window_start: int
    window_end: int
    last_seen: int
    points: list[SeriesPoint]


class IndexPoint(BaseModel):
    """One entity's index over one window length."""

    window: str = Field(description="1m, 5m, 15m, 1h or 1d")
    window_seconds: int = Field(description="read in whole buckets: a window shorter than a bucket is one bucket")
    start: int = Field(description="epoch ms")
    end: int = Field(description="epoch ms (exclusive)")
    count: int = Field(description="buzz: events in the window")
    novel: int = Field(description="events that are not near-duplicates of an earlier story")
    neg_share: float
    pos_share: float
    mean_score: float = Field(description="mean of P(positive) - P(negative)")
    baseline_windows: int = Field(description="past windows of the same length compared with (within retention)")
    baseline_mean: float
    baseline_std: float
    buzz_z: float | None = Field(description="(count - baseline_mean) / max(baseline_std, 1); null without a baseline")


class IndicesResponse(BaseModel):
    """One entity's indices at 1m, 5m, 15m, 1h and 1d, ending at the store's event time."""

    kind: Kind
    name: str
    bucket_seconds: int
    baseline: int = Field(description="past windows asked for")
    last_seen: int
    indices: list[IndexPoint]


def index_point(x: EntityIndex) -> IndexPoint:
    return IndexPoint(
        window=x.window,
        window_seconds=x.window_seconds,
        start=x.start_s * 1000,
        end=x.end_s * 1000,
        count=x.count,
        novel=x.novel,
        neg_share=round(x.neg_share, 4),
        pos_share=round(x.pos_share, 4),
        mean_score=round(x.mean_score, 4),
        baseline_windows=x.baseline_windows,
        baseline_mean=round(x.baseline_mean, 4),
        baseline_std=round(x.baseline_std, 4),
        buzz_z=None if x.buzz_z is None else round(x.buzz_z, 4),
    )


class AlertsResponse(BaseModel):
    """Buffered alerts matching the filters, newest window end first."""

    alerts: list[Alert]
    count: int
    buffered: int = Field(description="alerts held in memory (the API keeps the newest alert_buffer_size)")


class Health(BaseModel):
    """Whether the API can answer: Redis reachable and the alert tail's broker reachable."""

    status: Literal["ok", "degraded"]
    redis: bool
    kafka: bool
    alerts_buffered: int
    stream_clients: int
    watermark: int | None
    watermark_iso: str | None


# --- pure helpers (unit-tested without services) ---------------------------------------------------------
def shares(n: int, neg: int, neu: int, pos: int) -> tuple[float, float, float]:
    """Negative, neutral and positive shares (0 for an empty count), rounded to 4 places."""
    if n <= 0:
        return 0.0, 0.0, 0.0
    return round(neg / n, 4), round(neu / n, 4), round(pos / n, 4)


def entity_stats(t: EntityTrend, last_seen: int) -> EntityStats:
    ns, us, ps = shares(t.n, t.neg, t.neu, t.pos)
    return EntityStats(
        kind=t.kind,  # type: ignore[arg-type]  # the route's Literal kind, carried through the store
        name=t.name,
        count=t.n,
        neg=t.neg,
        neu=t.neu,
        pos=t.pos,
        novel=t.novel,
        novel_neg=t.novel_neg,
        neg_share=ns,
        neu_share=us,
        pos_share=ps,
        mean_score=round(t.mean_score, 4),
        last_seen=last_seen,
    )


_SORT_KEYS: dict[str, Callable[[EntityStats], tuple[float, ...]]] = {
    # Descending by the chosen key; ties by the other measures, then by name (ascending) so pages are stable.
    "neg_share": lambda e: (-e.neg_share, -e.count, -e.last_seen),
    "count": lambda e: (-e.count, -e.neg_share, -e.last_seen),
    "score": lambda e: (-e.mean_score, -e.count, -e.last_seen),
}


def rank_entities(rows: list[EntityStats], sort: SortKey) -> list[EntityStats]:
    """``rows`` sorted by ``sort`` (highest first), ties broken by count, recency, then name."""
    key = _SORT_KEYS[sort]
    return sorted(rows, key=lambda e: (*key(e), e.name))


def series_point(b: BucketCounts) -> SeriesPoint:
    ns, us, ps = shares(b.n, b.neg, b.neu, b.pos)
    return SeriesPoint(
        start=b.start_s * 1000,
        end=b.end_s * 1000,
        start_iso=ms_to_iso(b.start_s * 1000),
        count=b.n,
        neg=b.neg,
        neu=b.neu,
        pos=b.pos,
        novel=b.novel,
        novel_neg=b.novel_neg,
        neg_share=ns,
        neu_share=us,
        pos_share=ps,
        mean_score=round(b.score_sum / b.n, 4) if b.n else 0.0,
    )


def choose_step(window_s: int, step: str | None, bucket_s: int, max_points: int) -> int:
    """Step in seconds for a series of ``window_s``; ValueError (with the reason) when it cannot be served.

    A step must be whole buckets and divide the window, and the window may hold at most ``max_points``
    steps. Without a step, the smallest listed step that satisfies all three is used.
    """
    if step is not None:
        s = DURATIONS[step]
        if s % bucket_s:
            raise ValueError(f"step {step} is not a multiple of the bucket ({bucket_s} s)")
        if window_s % s:
            raise ValueError(f"step {step} does not divide the window")
        if window_s // s > max_points:
            raise ValueError(f"window / step = {window_s // s} points > max {max_points}: use a larger step")
        return s
    for name in get_args(Step):
        s = DURATIONS[name]
        if s % bucket_s == 0 and window_s % s == 0 and window_s // s <= max_points:
            return s
    raise ValueError(f"no step fits a window of {window_s} s with {bucket_s} s buckets and at most {max_points} points")


def parse_entity(value: str) -> tuple[str | None, str]:
    """``kind:name`` or a bare name -> (kind or None, name)."""
    kind, sep, name = value.partition(":")
    if sep and kind in ("ticker", "topic"):
        return kind, name
    return None, value


def _since(value: str | None) -> int | None:
    # ISO-8601 (naive means UTC) or epoch ms, exactly as event times are read.
    return None if value is None else parse_event_time(value)


def _check_since(value: str | None) -> str | None:
    _since(value)  # raises ValueError (a 400 naming the parameter) when it is not a time
    return value


def bad_request(param: str, msg: str, where: str = "query") -> RequestValidationError:
    """A 400 in the same shape as the parameter validation errors."""
    return RequestValidationError([{"loc": (where, param), "msg": msg, "type": "value_error"}])


class WindowCache:
    """Entity window reads shared for ``ttl`` seconds, and concurrent identical reads coalesced into one.

    A day of one-minute buckets over 1,000 entities is 1.44 M bucket reads (about 3 s of Redis time
    here): without this, every open dashboard would repeat it. The cost is answers up to ``ttl`` old.
    """

    def __init__(self, ttl: float) -> None:
        self.ttl = ttl
        self._entries: dict[tuple[Any, ...], tuple[float, asyncio.Task[Any]]] = {}

    async def get(self, key: tuple[Any, ...], read: Callable[[], Awaitable[Any]]) -> Any:
        """``read()``'s result for ``key``: a running or fresh read is reused, else a new one is started."""
        now = time.monotonic()
        # Drop expired entries first, so the map holds at most the keys read within the last ttl.
        for k in [k for k, (t, task) in self._entries.items() if task.done() and now - t > self.ttl]:
            del self._entries[k]
        hit = self._entries.get(key)
        if hit is None or self.ttl <= 0:
            hit = (now, asyncio.ensure_future(read()))
            self._entries[key] = hit
        try:
            # shield: a client that goes away must not cancel a read that other requests are waiting for.
            return await asyncio.shield(hit[1])
        except Exception:
            self._entries.pop(key, None)  # a failed read is not kept
            raise


# --- application state ------------------------------------------------------------------------------
@dataclass
class ApiState:
    """What the routes share: settings, the window store, the alert buffer and its tail."""

    stream: StreamSettings
    api: ApiSettings
    redis: Redis
    store: WindowStore
    buffer: AlertBuffer
    tail: AlertTail
    cache: WindowCache


def get_state(request: Request) -> ApiState:
    """The application's :class:`ApiState` (a FastAPI dependency)."""
    state: ApiState = request.app.state.api
    return state


State = Annotated[ApiState, Depends(get_state)]


def redis_from_settings(s: StreamSettings) -> Redis:
    """A Redis client for the API: short timeouts, so a Redis outage turns into fast 503s, not hung requests."""
    return security.redis_from_settings(s, socket_timeout=5, socket_connect_timeout=2)


def _router(api: ApiSettings) -> APIRouter:
    """The /v1 routes. Bounds that come from settings (page size) are part of the parameter schema."""
    r = APIRouter(
        prefix="/v1",
        dependencies=[Depends(require_token)],
        responses={400: {"model": ErrorResponse, "description": "invalid parameter (the reason is in the body)"}},
    )

    @r.get("/entities", response_model=EntitiesResponse, summary="Entities of a kind active in a window")
    async def entities(
        st: State,
        kind: Annotated[Kind, Query()] = "ticker",
        sort: Annotated[SortKey, Query()] = "neg_share",
        window: Annotated[EntityWindow, Query()] = "1h",
        min_count: Annotated[int, Query(ge=1, le=1_000_000, description="fewer events: left out")] = 1,
        limit: Annotated[int, Query(ge=1, le=api.max_page_size, description=f"at most {api.max_page_size}")] = 50,
    ) -> EntitiesResponse:
        store, bucket = st.store, st.stream.bucket_seconds
        wm = await store.watermark_ms()
        empty = EntitiesResponse(
            kind=kind,
            window=window,
            sort=sort,
            bucket_seconds=bucket,
            window_start=None,
            window_end=None,
            window_start_iso=None,
            window_end_iso=None,
            watermark=wm,
            scanned=0,
            capped=False,
            matched=0,
            entities=[],
        )
        if wm is None:
            return empty
        end_s = bucket_start(wm, bucket) + bucket
        # Whole buckets: a window shorter than a bucket (15m on hourly buckets) reads the last bucket.
        start_s = end_s - math.ceil(DURATIONS[window] / bucket) * bucket

        async def read() -> tuple[list[EntityStats], int, bool]:
            active = await store.active_entities(kind, start_s * 1000, st.api.max_entities + 1)
            capped = len(active) > st.api.max_entities
            active = active[: st.api.max_entities]
            totals = await store.window_totals(
                kind, [n for n, _ in active], start_s, end_s, max_buckets=st.api.redis_buckets_per_call
            )
            stats = [entity_stats(t, seen) for t, (_, seen) in zip(totals, active, strict=True) if t.n > 0]
            return stats, len(active), capped

        # Sorting, min_count and limit are applied per request; the Redis read is shared (see WindowCache).
        all_rows, scanned, capped = await st.cache.get((kind, start_s, end_s), read)
        rows = [e for e in all_rows if e.count >= min_count]
        return empty.model_copy(
            update={
                "window_start": start_s * 1000,
                "window_end": end_s * 1000,
                "window_start_iso": ms_to_iso(start_s * 1000),
                "window_end_iso": ms_to_iso(end_s * 1000),
                "scanned": scanned,
                "capped": capped,
                "matched": len(rows),
                "entities": rank_entities(rows, sort)[:limit],
            }
        )

    @r.get(
        "/entities/{kind}/{name:path}/series",
        response_model=SeriesResponse,
        responses={404: {"model": ErrorResponse, "description": "no such entity"}},
        summary="One entity's counts per step",
    )
    async def series(
        st: State,
        kind: Annotated[Kind, PathParam()],
        name: EntityName,
        window: Annotated[SeriesWindow, Query()] = "1h",
        step: Annotated[Step | None, Query(description="default: the smallest step that fits")] = None,
    ) -> SeriesResponse:
        bucket = st.stream.bucket_seconds
        # Whole buckets, as /v1/entities reads them: a window shorter than a bucket (15m on hourly
        # buckets) is the last bucket, so the two endpoints answer the same window.
        window_s = math.ceil(DURATIONS[window] / bucket) * bucket
        try:
            step_s = choose_step(window_s, step, bucket, st.api.max_series_points)
        except ValueError as exc:
            raise bad_request("step", str(exc)) from None
        last = await st.store.last_seen_ms(kind, name)
        if last is None:
            raise HTTPException(404, f"no {kind} named {name!r}")
        wm = await st.store.watermark_ms()
        end_s = bucket_start(max(wm or 0, last), bucket) + bucket
        start_s = end_s - window_s
        points = await st.store.series(kind, name, start_s, end_s, step_s, max_buckets=st.api.redis_buckets_per_call)
        return SeriesResponse(
            kind=kind,
            name=name,
            window=window,
            step=step or f"{step_s}s",
            step_seconds=step_s,
            bucket_seconds=bucket,
            window_start=start_s * 1000,
            window_end=end_s * 1000,
            last_seen=last,
            points=[series_point(p) for p in points],
        )

    @r.get(
        "/entities/{kind}/{name:path}/indices",
        response_model=IndicesResponse,
        responses={404: {"model": ErrorResponse, "description": "no such entity"}},
        summary="One entity's indices: buzz, shares, mean score and buzz z-score at 1m to 1d",
    )
    async def indices(
        st: State,
        kind: Annotated[Kind, PathParam()],
        name: EntityName,
        baseline: Annotated[
            int,
            Query(ge=1, le=MAX_BASELINE, description="past windows of the same length the buzz z-score compares with"),
        ] = DEFAULT_BASELINE,
    ) -> IndicesResponse:
        bucket = st.stream.bucket_seconds
        # Bounded Redis work: the bucket reads are known before any is made (a day of minute buckets times the
        # baseline is the large term), and refused with the reason when over the cap.
        cost = index_buckets(bucket, st.stream.retention_seconds, baseline, list(INDEX_WINDOWS))
        cap = 10 * st.api.redis_buckets_per_call
        if cost > cap:
            raise bad_request("baseline", f"{cost} bucket reads > {cap}: ask for a smaller baseline")
        last = await st.store.last_seen_ms(kind, name)
        if last is None:
            raise HTTPException(404, f"no {kind} named {name!r}")
        wm = await st.store.watermark_ms()
        rows = await entity_indices(
            st.store, kind, name, max(wm or 0, last), baseline=baseline, max_buckets=st.api.redis_buckets_per_call
        )
        return IndicesResponse(
            kind=kind,
            name=name,
            bucket_seconds=bucket,
            baseline=baseline,
            last_seen=last,
            indices=[index_point(x) for x in rows],
        )

    @r.get("/alerts", response_model=AlertsResponse, summary="Recent alerts, newest first")
    async def alerts(
        st: State,
        since: Annotated[
            str | None,
            Query(
                max_length=40,
                pattern=SINCE_PATTERN,
                description="window end at or after: ISO-8601 (naive = UTC) or epoch ms",
            ),
            AfterValidator(_check_since),
        ] = None,
        entity: Annotated[
            str | None, Query(pattern=ENTITY_PATTERN, description="kind:name (ticker:AAPL) or a bare name")
        ] = None,
        severity: Annotated[Severity | None, Query()] = None,
        limit: Annotated[int, Query(ge=1, le=api.max_page_size, description=f"at most {api.max_page_size}")] = 100,
    ) -> AlertsResponse:
        kind, name = parse_entity(entity) if entity else (None, None)
        hits = st.buffer.query(since_ms=_since(since), kind=kind, name=name, severity=severity, limit=limit)
        return AlertsResponse(alerts=hits, count=len(hits), buffered=len(st.buffer))

    @r.get(
        "/alerts/stream",
        response_class=EventSourceResponse,
        responses={200: {"content": {"text/event-stream": {}}, "description": "event `alert`, data: the alert JSON"}},
        summary="New alerts as server-sent events",
    )
    async def alert_stream(st: State) -> EventSourceResponse:
        # Subscribed before the response starts: an alert that arrives once the client has the headers is sent.
        q = st.buffer.subscribe()

        async def events() -> AsyncIterator[ServerSentEvent]:
            try:
                while True:
                    a = await q.get()
                    yield ServerSentEvent(data=a.model_dump_json(), event="alert", id=a.id)
            finally:
                # Runs when the client goes away (sse-starlette cancels the stream) or the server stops.
                st.buffer.unsubscribe(q)

        return EventSourceResponse(events(), ping=st.api.sse_ping_seconds)

    return r


def _openapi(app: FastAPI) -> Callable[[], dict[str, Any]]:
    """The OpenAPI document with 400 (our validation error) in place of FastAPI's default 422."""

    def build() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        doc = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
        for item in doc.get("paths", {}).values():
            for op in item.values():
                op.get("responses", {}).pop("422", None)
        schemas = doc.get("components", {}).get("schemas", {})
        schemas.pop("HTTPValidationError", None)
        schemas.pop("ValidationError", None)
        app.openapi_schema = doc
        return doc

    return build


def create_app(stream_settings: StreamSettings, api_settings: ApiSettings, redis: Redis | None = None) -> FastAPI:
    """The API application. ``redis``: a client to use (the caller closes it); by default one is made from
    ``stream_settings`` and closed at shutdown. The lifespan starts and stops the alert tail."""
    s = stream_settings

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        r = redis if redis is not None else redis_from_settings(s)
        buffer = AlertBuffer(api_settings.alert_buffer_size, api_settings.sse_queue_size)
        tail = AlertTail(s, s.alerts_topic, buffer)
        store = WindowStore(r, s.redis_prefix, s.bucket_seconds, s.retention_seconds, s.allowed_lateness_seconds)
        cache = WindowCache(api_settings.entities_cache_seconds)
        app.state.api = ApiState(s, api_settings, r, store, buffer, tail, cache)
        tail.start()
        log.info("api_started", prefix=s.redis_prefix, alerts_topic=s.alerts_topic, bucket_s=s.bucket_seconds)
        try:
            yield
        finally:
            await tail.stop()
            if redis is None:
                await r.aclose()
            log.info("api_stopped")

    app = FastAPI(
        title="finpulse query API",
        version="1",
        description="Entity windows and series (Redis), alerts (Kafka), a live alert stream and health.",
        lifespan=lifespan,
    )
    app.state.api_tokens = list(api_settings.tokens)  # read by require_token on every guarded request
    app.include_router(_router(api_settings))
    app.include_router(ingest_router(s, api_settings))  # POST /v1/events, with the Kafka producer it owns
    app.openapi = _openapi(app)  # type: ignore[method-assign]

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        detail = [
            {"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")} for e in exc.errors()
        ]
        return JSONResponse({"error": "invalid request", "detail": detail}, status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse({"error": str(exc.detail), "detail": []}, status_code=exc.status_code, headers=exc.headers)

    @app.middleware("http")
    async def access_log(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        # Method, path and status only: no client address, no query string, no headers (no personal data).
        t0 = time.perf_counter()
        response = await call_next(request)
        log.info(
            "request",
            method=request.method,
            path=request.url.path,
            status=response.status_code,
            ms=round((time.perf_counter() - t0) * 1000, 1),
        )
        return response

    @app.get("/healthz", response_model=Health, responses={503: {"model": Health, "description": "degraded"}})
    async def healthz(st: State) -> JSONResponse:
        timeout = st.api.health_timeout_seconds
        try:
            redis_ok = bool(await asyncio.wait_for(st.redis.ping(), timeout))
            wm = await asyncio.wait_for(st.store.watermark_ms(), timeout) if redis_ok else None
        except Exception:  # noqa: BLE001 - health reports Redis as down instead of raising
            redis_ok, wm = False, None
        kafka_ok = await st.tail.reachable(timeout)
        body = Health(
            status="ok" if redis_ok and kafka_ok else "degraded",
            redis=redis_ok,
            kafka=kafka_ok,
            alerts_buffered=len(st.buffer),
            stream_clients=st.buffer.subscribers,
            watermark=wm,
            watermark_iso=ms_to_iso(wm) if wm is not None else None,
        )
        return JSONResponse(body.model_dump(), status_code=200 if body.status == "ok" else 503)

    static_dir = STATIC_DIR  # read here, so a test can point the app at another folder
    static = StaticFiles(directory=static_dir, check_dir=False)

    @app.get("/", include_in_schema=False, dependencies=[Depends(require_token)])
    async def index(request: Request, token: str | None = None) -> Response:
        if token is not None and api_settings.tokens:
            # /?token=T got past require_token, so T is valid: it becomes an HttpOnly cookie and the browser is
            # sent on to the same page without it, so the token leaves the address bar (and history) and the
            # page's own /v1 calls carry the cookie. SameSite=Strict: other sites cannot make the browser use it.
            rest = [(k, v) for k, v in request.query_params.multi_items() if k != "token"]
            # Relative, so that it also lands on the page when a proxy serves the API under a path prefix.
            target = "./" + ("?" + urlencode(rest) if rest else "")
            response = RedirectResponse(target, status_code=303)
            response.set_cookie(
                TOKEN_COOKIE,
                token,
                httponly=True,
                samesite="strict",
                secure=request.url.scheme == "https",
                path="/",
            )
            return response
        page = static_dir / "index.html"
        if not page.is_file():
            raise HTTPException(404, "no dashboard installed (api/static/index.html)")
        return FileResponse(page, media_type="text/html")

    @app.api_route(
        "/static/{path:path}", methods=["GET", "HEAD"], include_in_schema=False, dependencies=[Depends(require_token)]
    )
    async def static_file(path: str, request: Request) -> Response:
        # StaticFiles mounted as a route rather than app.mount, so that require_token applies to it as well.
        # normpath as StaticFiles does for a mount; its lookup refuses anything outside the folder.
        clean = os.path.normpath(os.path.join(*path.split("/"))) if path else "."
        return await static.get_response(clean, request.scope)

    return app


def run_server(stream_settings: StreamSettings, api_settings: ApiSettings) -> None:
    """Serve the API with uvicorn on ``api_settings.host``/``port`` until interrupted."""
    import uvicorn

    app = create_app(stream_settings, api_settings)
    # log_config=None keeps the process's structlog JSON set-up; uvicorn's access log would record
    # client addresses, so the app logs requests itself.
    uvicorn.run(app, host=api_settings.host, port=api_settings.port, log_config=None, access_log=False)
