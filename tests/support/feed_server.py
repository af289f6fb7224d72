"""A local HTTP server for the feed ingestion tests, serving the shipped fixture feeds (tests/fixtures/feeds/).

No internet is needed or used: the server listens on 127.0.0.1 on a free port, in the test's event loop.
``/slow.xml`` answers only after ``slow_s`` (past the ingester's timeout in the tests); the other
fixtures are served as they are, with validators, answering 304 when the request's validators match.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from aiokafka import AIOKafkaConsumer

from finpulse.paths import PROJECT_ROOT
from stream.settings import StreamSettings

FIXTURES = PROJECT_ROOT / "tests" / "fixtures" / "feeds"
LAST_MODIFIED = "Tue, 03 Nov 2026 20:00:00 GMT"


@dataclass
class FeedServer:
    """A local feed server: documents by path, a log of (path, status, conditional headers), switches."""

    docs: dict[str, bytes]
    url: str = ""
    conditional: bool = True  # False: always 200, as a server without validators
    slow_s: float = 1.5
    log: list[tuple[str, int, bool]] = field(default_factory=list)

    def statuses(self, path: str) -> list[int]:
        return [st for p, st, _ in self.log if p == path]

    async def handle(self, request: web.Request) -> web.StreamResponse:
        path = request.path
        asked = "If-None-Match" in request.headers or "If-Modified-Since" in request.headers
        if path == "/slow.xml":
            await asyncio.sleep(self.slow_s)  # past the ingester's timeout
        body = self.docs.get(path)
        if body is None:
            self.log.append((path, 404, asked))
            return web.Response(status=404)
        etag = '"' + hashlib.sha256(body).hexdigest()[:16] + '"'
        # The Atom feed offers only Last-Modified (so If-Modified-Since alone is exercised), the others both.
        # As HTTP says, If-None-Match, when sent, decides alone.
        use_etag = path != "/company.atom"
        if "If-None-Match" in request.headers:
            fresh = use_etag and request.headers["If-None-Match"] == etag
        else:
            fresh = request.headers.get("If-Modified-Since") == LAST_MODIFIED
        if self.conditional and fresh:
            self.log.append((path, 304, asked))
            return web.Response(status=304, headers={"ETag": etag} if use_etag else {})
        self.log.append((path, 200, asked))
        headers = {"Content-Type": "application/rss+xml; charset=utf-8"}
        if self.conditional:
            headers |= {"ETag": etag, "Last-Modified": LAST_MODIFIED} if use_etag else {"Last-Modified": LAST_MODIFIED}
        return web.Response(body=body, headers=headers)


@asynccontextmanager
async def serve_feeds() -> AsyncIterator[FeedServer]:
    """A :class:`FeedServer` serving every fixture feed (and ``/slow.xml``), stopped on exit."""
    docs = {f"/{p.name}": p.read_bytes() for p in FIXTURES.glob("*") if p.suffix in (".xml", ".atom")}
    docs["/slow.xml"] = docs["/markets.xml"]
    server = FeedServer(docs)
    app = web.Application()
    app.router.add_get("/{name}", server.handle)
    # handler_cancellation: a handler whose client gave up (the slow feed) is cancelled, not awaited at cleanup.
    runner = web.AppRunner(app, access_log=None, handler_cancellation=True, shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    server.url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    try:
        yield server
    finally:
        await runner.cleanup()


async def read_topic(s: StreamSettings, topic: str, want: int, timeout: float = 20.0) -> list[Any]:
    """Every record of ``topic`` from its start: at least ``want`` of them, then until 1 s passes without more."""
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=s.kafka_bootstrap, group_id=None, auto_offset_reset="earliest")
    await consumer.start()
    out: list[Any] = []
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=1000)
            for msgs in batch.values():
                out.extend(msgs)
            if len(out) >= want and not batch:
                break
    finally:
        await consumer.stop()
    return out
