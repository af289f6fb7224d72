"""What the ingester remembers across restarts, in Redis: entries already sent and each feed's validators.

Keys (under the worker's ``redis_prefix``, so a deployment's data stays in one namespace):

- ``{prefix}:ingest:seen``: sorted set of event ids sent, scored by when each was last seen in a feed
  (epoch ms). An id still listed by a feed is refreshed on every poll; one absent from every feed for
  ``seen_retention_s`` is pruned. Memory is bounded by what the feeds list, not by time.
- ``{prefix}:ingest:feed:{feed_key}``: hash of the feed's ``etag`` and ``last_modified`` (the validators
  of its last fully sent response) and when it was last polled, so conditional GETs survive a restart.

Redis rather than a compacted topic: the ingester already needs a fast "which of these ids are new"
lookup per poll (one ZMSCORE), which a topic cannot answer without reading it whole at start.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

from redis.asyncio import Redis


def feed_key(url: str) -> str:
    """A short, stable name for a feed URL in Redis keys (the URL itself may hold an API key)."""
    return hashlib.sha256(url.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Validators:
    """The HTTP cache validators of a feed's last fully sent response."""

    etag: str | None = None
    last_modified: str | None = None


class IngestState:
    """Seen entry ids and per-feed validators in Redis."""

    def __init__(self, redis: Redis, prefix: str) -> None:
        self.redis = redis
        self.seen_key = f"{prefix}:ingest:seen"
        self._feed_prefix = f"{prefix}:ingest:feed:"

    async def unseen(self, ids: Sequence[str]) -> list[str]:
        """Those of ``ids`` never sent (in order)."""
        if not ids:
            return []
        scores = await self.redis.zmscore(self.seen_key, list(ids))
        return [i for i, sc in zip(ids, scores, strict=True) if sc is None]

    async def mark_seen(self, ids: Sequence[str], now_ms: int) -> None:
        """Record ``ids`` as sent (or, for ids already recorded, as still listed by a feed) at ``now_ms``."""
        if ids:
            await self.redis.zadd(self.seen_key, {i: now_ms for i in ids})

    async def refresh(self, ids: Sequence[str], now_ms: int) -> None:
        """Move the last-seen time of those of ``ids`` already recorded (new ids are not added)."""
        if ids:
            await self.redis.zadd(self.seen_key, {i: now_ms for i in ids}, xx=True)

    async def prune(self, older_than_ms: int) -> int:
        """Forget ids not seen in any feed since ``older_than_ms``; how many were forgotten."""
        return int(await self.redis.zremrangebyscore(self.seen_key, "-inf", f"({older_than_ms}"))

    async def validators(self, url: str) -> Validators:
        raw = await self.redis.hmget(self._feed_prefix + feed_key(url), ["etag", "last_modified"])
        etag, lm = (v.decode() if isinstance(v, bytes) else v for v in raw)
        return Validators(etag or None, lm or None)

    async def save_poll(self, url: str, validators: Validators | None, now_ms: int) -> None:
        """Record a poll; ``validators`` (when given) replace the stored ones, as a pair."""
        key = self._feed_prefix + feed_key(url)
        items: list[str | int] = ["polled_ms", now_ms]
        if validators is not None:
            items += ["etag", validators.etag or "", "last_modified", validators.last_modified or ""]
        await self.redis.hset(key, items=items)  # one HSET: the pair is replaced together
