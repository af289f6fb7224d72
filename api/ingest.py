"""``POST /v1/events``: events into the input topic over HTTP, validated exactly as the worker validates them.

A body is one event or a JSON array of them (at most ``ingest_max_events``, ``ingest_max_body_bytes``).
Each item goes through :func:`stream.events.parse_event` with the worker's own size limits, and one
dated further ahead than ``max_future_skew_s`` is refused as the worker would dead-letter it. Valid
items are produced with acks=all (keyed by :func:`stream.events.partition_key`: first ticker, else id)
and the answer, 202 with the accepted ids and the rejected indexes, comes only once Kafka has
acknowledged every one. When nothing is valid the answer is a 400 naming each item's reason.

Kafka is needed only here, so the producer starts on the first POST (the read-only routes work
without a broker) and every wait on Kafka is bounded: a broker that is down or slow is a 503 with the
reason, never a hung request. A 503 after sending may mean some events were written: posting the same
events again is safe, as ids are kept and the worker counts an id once.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import orjson
import structlog
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from fastapi import APIRouter, Depends, FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from api.settings import ApiSettings
from stream.events import MAX_EVENT_MS, NewsEvent, parse_event, partition_key
from stream.security import explain_kafka_error, kafka_client_kwargs
from stream.settings import StreamSettings
from stream.topics import ensure_topics

log = structlog.get_logger(__name__)


class RejectedEvent(BaseModel):
    """An item of the request that was not accepted."""

    index: int = Field(description="position in the request (0 for a single event)")
    reason: str = Field(description="not_object, invalid_schema, empty_text, oversized_text, future_timestamp, ...")
    detail: str


class IngestResponse(BaseModel):
    """What became of a POST /v1/events: every accepted event is in Kafka (acks=all)."""

    accepted: list[str] = Field(description="ids of the events written, in request order")
    rejected: list[RejectedEvent]


class KafkaUnavailable(Exception):
    """Kafka could not be reached or did not acknowledge in time (a 503).

    The message is for the client (what happened, no broker address); ``detail`` for the log (why).
    """

    def __init__(self, message: str, detail: str | None = None) -> None:
        super().__init__(message)
        self.detail = detail or message


def kafka_producer(s: StreamSettings, timeout_s: float) -> AIOKafkaProducer:
    """The API's producer (the one place it is built): acks=all and idempotent, bounded requests."""
    return AIOKafkaProducer(
        **kafka_client_kwargs(s),  # the deployment's TLS / SASL, as every client
        acks="all",
        enable_idempotence=True,
        linger_ms=5,
        request_timeout_ms=int(timeout_s * 1000),
    )


class EventProducer:
    """The app's one Kafka producer, started on first use and stopped with the app."""

    def __init__(self, s: StreamSettings, timeout_s: float) -> None:
        self.s = s
        self.timeout_s = timeout_s
        self._producer: AIOKafkaProducer | None = None
        self._lock = asyncio.Lock()

    async def _started(self) -> AIOKafkaProducer:
        if self._producer is not None:
            return self._producer
        async with self._lock:  # one start at a time; waiters then find it started
            if self._producer is None:
                # The input topic with the worker's partition count, as the replay does: a topic made by the
                # broker's auto-creation would have its default partition count instead.
                await ensure_topics(self.s, {self.s.input_topic: self.s.partitions}, timeout=self.timeout_s)
                p = kafka_producer(self.s, self.timeout_s)
                try:
                    await p.start()
                except BaseException:
                    await p.stop()
                    raise
                self._producer = p
                log.info("ingest_producer_started", topic=self.s.input_topic)
            return self._producer

    async def send_all(self, records: list[tuple[bytes, bytes]]) -> None:
        """Produce ``(key, value)`` records; returns once Kafka acknowledged all, else :class:`KafkaUnavailable`."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout_s
        futures: list[asyncio.Future[Any]] = []
        try:
            async with asyncio.timeout(self.timeout_s):
                producer = await self._started()
                for key, value in records:
                    futures.append(await producer.send(self.s.input_topic, value=value, key=key))
        except TimeoutError as exc:
            raise KafkaUnavailable(f"kafka did not answer within {self.timeout_s:g}s") from exc
        except (KafkaError, OSError) as exc:
            # The log says why (unreachable, authentication or TLS refused; no secret); the client only that
            # the broker is unavailable, not where it is or how it is secured.
            raise KafkaUnavailable("kafka unavailable", explain_kafka_error(exc, self.s)) from exc
        # asyncio.wait, not gather: giving up must not cancel the producer's own delivery futures.
        done, pending = await asyncio.wait(futures, timeout=max(0.0, deadline - loop.time()))
        if pending:
            raise KafkaUnavailable(f"kafka did not acknowledge {len(pending)} events within {self.timeout_s:g}s")
        failed = [f.exception() for f in done if f.exception() is not None]
        if failed:
            raise KafkaUnavailable(f"kafka refused {len(failed)} events: {type(failed[0]).__name__}")

    async def close(self) -> None:
        if self._producer is not None:
            await self._producer.stop()
            self._producer = None


def _event_schema(max_events: int) -> dict[str, Any]:
    """The request body as OpenAPI states it: one event, or an array of 1 to ``max_events`` events."""
    ev = NewsEvent.model_json_schema()
    ev.pop("title", None)
    props = ev["properties"]
    props["text"]["minLength"] = 1
    # parse_event reads ISO-8601 or epoch ms; JSON Schema names both.
    props["published_at"] = {
        "anyOf": [
            {"type": "integer", "minimum": 10**11, "maximum": MAX_EVENT_MS},
            {"type": "string", "format": "date-time"},
        ],
        "description": "event time: ISO-8601 (naive = UTC) or epoch milliseconds",
    }
    props["tickers"]["description"] = "default: the cashtags ($AAPL) in title and text"
    return {"anyOf": [ev, {"type": "array", "items": ev, "minItems": 1, "maxItems": max_events}]}


def _body_error(status: int, error: str, detail: list[dict[str, Any]] | None = None) -> JSONResponse:
    # The app's error shape ({"error", "detail": [{loc, msg, type}]}), as its validation handler answers.
    return JSONResponse({"error": error, "detail": detail or []}, status_code=status)


async def _read_body(request: Request, limit: int) -> bytes | None:
    """The body, or None as soon as it is known to exceed ``limit`` bytes (never buffered past it)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        return None
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            return None
    return bytes(body)


def validate_items(items: list[Any], s: StreamSettings, now_s: float) -> tuple[list[NewsEvent], list[RejectedEvent]]:
    """Each item as the worker would read it: the events it would score and, by index, the rest."""
    horizon_ms = int((now_s + s.max_future_skew_s) * 1000)
    events: list[NewsEvent] = []
    rejected: list[RejectedEvent] = []
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            rejected.append(
                RejectedEvent(index=i, reason="not_object", detail=f"{type(item).__name__}, expected object")
            )
            continue
        parsed = parse_event(orjson.dumps(item), s.max_event_bytes, s.max_text_bytes)
        if not isinstance(parsed, NewsEvent):
            rejected.append(RejectedEvent(index=i, reason=parsed.reason, detail=parsed.detail))
        elif parsed.published_at > horizon_ms:
            detail = f"published_at more than {s.max_future_skew_s:g}s ahead of the server clock"
            rejected.append(RejectedEvent(index=i, reason="future_timestamp", detail=detail))
        else:
            events.append(parsed)
    return events, rejected


def ingest_router(stream: StreamSettings, api: ApiSettings) -> APIRouter:
    """The POST /v1/events route, guarded by ``api.app.require_token``, with a lifespan owning the producer."""
    # api.app imports this module and calls this function once it is whole: the import cannot cycle.
    from api.app import ErrorResponse, require_token

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        producer = EventProducer(stream, api.ingest_kafka_timeout_seconds)
        app.state.ingest_producer = producer
        try:
            yield
        finally:
            await producer.close()

    r = APIRouter(prefix="/v1", dependencies=[Depends(require_token)], lifespan=lifespan)
    limit = api.ingest_max_body_bytes

    @r.post(
        "/events",
        status_code=202,
        response_model=IngestResponse,
        summary="Send events to the input topic (one, or an array)",
        responses={
            400: {"model": ErrorResponse, "description": "not JSON, or no valid event (each item's reason)"},
            413: {"model": ErrorResponse, "description": f"over {api.ingest_max_events} events or {limit} bytes"},
            503: {"model": ErrorResponse, "description": "Kafka unreachable or did not acknowledge in time"},
        },
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": _event_schema(api.ingest_max_events)}},
            }
        },
    )
    async def post_events(request: Request) -> Any:
        body = await _read_body(request, limit)
        if body is None:
            return _body_error(413, f"request body over {limit} bytes")
        try:
            data = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            return _body_error(400, "invalid request", [{"loc": ["body"], "msg": str(exc)[:200], "type": "not_json"}])
        items = data if isinstance(data, list) else [data]
        if not items:
            return _body_error(400, "invalid request", [{"loc": ["body"], "msg": "no events", "type": "empty"}])
        if len(items) > api.ingest_max_events:
            return _body_error(413, f"{len(items)} events in one request; at most {api.ingest_max_events}")
        events, rejected = validate_items(items, stream, time.time())
        reasons = dict(Counter(x.reason for x in rejected))
        if not events:
            log.info("events_rejected", rejected=len(rejected), reasons=reasons)
            detail = [{"loc": ["body", x.index], "msg": x.detail, "type": x.reason} for x in rejected]
            return _body_error(400, "no valid event", detail)
        producer: EventProducer = request.app.state.ingest_producer
        try:
            await producer.send_all([(partition_key(e), e.model_dump_json(exclude_none=True).encode()) for e in events])
        except KafkaUnavailable as exc:
            log.warning("events_not_sent", events=len(events), reason=exc.detail)
            raise HTTPException(503, str(exc), headers={"Retry-After": "5"}) from None
        log.info("events_accepted", accepted=len(events), rejected=len(rejected), reasons=reasons)
        return IngestResponse(accepted=[e.id for e in events], rejected=rejected)

    return r
