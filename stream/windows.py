"""Event-time windows in Redis: 1-bucket granularity, longer windows answered by summing buckets.

All writes for a batch go in one Lua script call, so they are atomic and cost one round trip, and
idempotent: an event id is claimed in a compact per-bucket seen hash in the same script that counts it,
so a replayed event changes nothing; seen ids are dropped by event time behind a dedupe horizon, and an
event older than that is refused as late, so dedupe stays exact with bounded memory. Event time is
authoritative: a low watermark over the input partitions decides lateness and which buckets have closed
(see ``stream/lua/apply.lua`` for live vs replay time).

Closed buckets are handed to the alert stage under a lease and leave the pending set only when
``settle`` is called after their alerts were acknowledged by Kafka, so a crash never loses an alert.

Redis Cluster: every key of a store starts with its prefix, and on a cluster the prefix must carry a
hash tag (``{finpulse}``, the default): the whole store lives in one slot, so each Lua call stays on
one slot and every read (per entity or across entities) is one node's work. See README "Sizing".
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import orjson
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

from stream.events import WindowStatus

SENTIMENT_FIELDS = ("neg", "neu", "pos")
SCORE_SCALE = 1_000_000  # scores are summed as integer micro-units: exact, so replays match bit for bit
STATUS_NAMES: tuple[WindowStatus, ...] = ("counted", "duplicate", "late")
_COUNT_FIELDS = 7  # what counts.lua returns per slice: n, neg, neu, pos, ssum, nn, nneg

# The Lua lives in stream/lua/*.lua (one file per script, with its own comments on the ARGV layout),
# read once at import and registered with Redis per client (redis-py re-loads a script that a
# restarted Redis no longer has).
_LUA_DIR = Path(__file__).resolve().parent / "lua"
_APPLY_LUA = (_LUA_DIR / "apply.lua").read_text()
_SUMS_LUA = (_LUA_DIR / "sums.lua").read_text()
_SETTLE_LUA = (_LUA_DIR / "settle.lua").read_text()
_COUNTS_LUA = (_LUA_DIR / "counts.lua").read_text()

TimeMode = Literal["live", "replay"]


def bucket_start(ts_ms: int, bucket_s: int) -> int:
    """Start (epoch seconds) of the bucket holding ``ts_ms``."""
    sec = ts_ms // 1000
    return sec - sec % bucket_s


def hash_tag(prefix: str) -> str | None:
    """The hash tag Redis Cluster reads from a key starting with ``prefix`` (text in the first ``{...}``), if any."""
    start = prefix.find("{")
    end = prefix.find("}", start + 1) if start >= 0 else -1
    return prefix[start + 1 : end] if start >= 0 and end > start + 1 else None


@dataclass(frozen=True)
class WindowUpdate:
    """One classified event as the window store needs it."""

    event_id: str
    ts_ms: int
    sentiment: int  # 0 negative, 1 neutral, 2 positive
    score: float
    entities: Sequence[tuple[str, str]]  # (kind, name): ("ticker", "AAPL"), ("topic", "Earnings")
    source: str = "-"  # input "topic:partition" the event came from (for the low watermark)
    example: str | None = None  # for a negative event: the short text an alert may quote (no author)
    bands: Sequence[str] = ()  # MinHash LSH band keys of its text (stream.novelty); none: novelty not judged


@dataclass(frozen=True)
class ClosedBucket:
    """An (entity, bucket) whose bucket event time has passed: ready for the alert rule."""

    kind: str
    name: str
    end_s: int

    @property
    def member(self) -> str:
        """Its name in the pending set (``kind|name|end_s``)."""
        return f"{self.kind}|{self.name}|{self.end_s}"


@dataclass(frozen=True)
class TimePolicy:
    """How event time and the wall clock close buckets (settings ``FINPULSE_TIME_MODE`` and friends)."""

    mode: TimeMode = "live"
    idle_partition_s: float = 30.0
    live_close_delay_s: float = 60.0
    alert_lease_s: float = 30.0
    # Seen ids are kept this long (event time) behind the lateness cut; older events are refused as late.
    dedupe_horizon_s: float = 3600.0


@dataclass(frozen=True)
class ApplyResult:
    statuses: list[WindowStatus]
    closed: list[ClosedBucket]
    # Per update: bands shared with its most similar earlier event, and that event's id when the update is a
    # near-duplicate of it (votes >= the store's novelty_min_votes), else None.
    votes: list[int] = field(default_factory=list)
    duplicate_of: list[str | None] = field(default_factory=list)


@dataclass(frozen=True)
class WindowSums:
    recent_n: int
    recent_neg: int
    baseline_n: int
    baseline_neg: int
    last_alert_end_ms: int = -1  # the entity's cooldown: end of its newest settled alert window


@dataclass(frozen=True)
class AlertContext:
    """What an alert quotes: (event id, short text or None) examples and (topic, negatives) pairs."""

    examples: list[tuple[str, str | None]]
    top_topics: list[tuple[str, int]]


def _parse_example(raw: str) -> tuple[str, str | None]:
    # A list entry is the JSON [id, text] written for a negative event; a bare id (older data) has no text.
    if raw.startswith("["):
        try:
            eid, text = orjson.loads(raw)
            return str(eid), (str(text) if text is not None else None)
        except (orjson.JSONDecodeError, ValueError, TypeError):
            pass
    return raw, None


@dataclass(frozen=True)
class EntityTrend:
    kind: str
    name: str
    n: int
    neg: int
    neu: int
    pos: int
    score_sum: float
    novel: int = 0  # novel events (not near-duplicates of an earlier story); the buzz is n
    novel_neg: int = 0

    @property
    def negative_share(self) -> float:
        return self.neg / self.n if self.n else 0.0

    @property
    def mean_score(self) -> float:
        return self.score_sum / self.n if self.n else 0.0


@dataclass(frozen=True)
class BucketCounts:
    """One entity's counts over [start_s, end_s): one bucket or the sum of consecutive buckets."""

    start_s: int
    end_s: int
    n: int
    neg: int
    neu: int
    pos: int
    score_sum: float
    novel: int = 0  # novel events (not near-duplicates of an earlier story); the buzz is n
    novel_neg: int = 0


class WindowStore:
    """Redis-backed windowed counts, shared by every worker (Redis is the single source of truth)."""

    def __init__(
        self,
        redis: Redis | RedisCluster,
        prefix: str,
        bucket_s: int,
        retention_s: int,
        lateness_s: int,
        time_policy: TimePolicy | None = None,
        novelty_horizon_s: int = 0,
        novelty_min_votes: int = 1,
    ) -> None:
        if isinstance(redis, RedisCluster) and hash_tag(prefix) is None:
            # Without a tag each key of a Lua call hashes to its own slot, and Redis refuses the call.
            raise ValueError(
                f"FINPULSE_REDIS_PREFIX {prefix!r} has no hash tag: on Redis Cluster the prefix must hold one, "
                "such as '{finpulse}', so that each window script touches one slot"
            )
        self.redis = redis
        self.prefix = prefix
        # Any key of the store: named to the script as KEYS[1] so a cluster client routes it to the tag's slot.
        self._route = [f"{prefix}:wm"]
        self.bucket_s = bucket_s
        self.retention_s = retention_s
        self.lateness_ms = lateness_s * 1000
        self.time = time_policy or TimePolicy()
        # Near-duplicates are looked for this far back in event time (0: novelty off, every event novel).
        self.novelty_horizon_ms = novelty_horizon_s * 1000
        self.novelty_min_votes = novelty_min_votes
        self._apply = redis.register_script(_APPLY_LUA)
        self._sums = redis.register_script(_SUMS_LUA)
        self._settle = redis.register_script(_SETTLE_LUA)
        self._counts = redis.register_script(_COUNTS_LUA)

    def encode(self, updates: Sequence[WindowUpdate]) -> bytes:
        """The window script's events argument for ``updates`` (see ``stream/lua/apply.lua``)."""
        return orjson.dumps(
            [
                [
                    u.event_id,
                    u.ts_ms,
                    bucket_start(u.ts_ms, self.bucket_s),
                    u.sentiment + 1,
                    round(u.score * SCORE_SCALE),
                    [list(e) for e in u.entities],
                    u.source,
                    orjson.dumps([u.event_id, u.example]).decode() if u.example else "",
                    u.bands,
                ]
                for u in updates
            ]
        )

    async def apply(
        self,
        updates: Sequence[WindowUpdate],
        sources: Sequence[str] = (),
        now_ms: int | None = None,
        *,
        payload: bytes | None = None,
        committed: Mapping[str, int] | None = None,
    ) -> ApplyResult:
        """Count a batch in one atomic round trip; returns counted/duplicate/late per update and the
        closed buckets now leased to this caller for judging (oldest first).

        ``sources`` names every input partition ("topic:partition"). With no updates this is the
        periodic tick: nothing is counted, but buckets that closed by the wall clock (live mode) or
        whose lease ran out (a crashed judge) are handed out. ``payload``: ``encode(updates)``, made
        beforehand (the worker encodes a batch while the previous one is still being committed).
        ``committed``: per input partition, the newest event time of the inputs the caller's consumer
        group has committed; the dedupe floor never passes it, so a batch counted but not yet committed
        (redelivered after a crash) is answered "duplicate", never refused as "late". ``None``: the caller's
        inputs are durable once counted (tests, tools without Kafka), and the floor follows the counts.
        """
        if payload is None:
            payload = self.encode(updates)
        now = int(time.time() * 1000) if now_ms is None else now_ms
        t = self.time
        res, closed_raw, raw_votes, raw_dups = await self._apply(
            keys=self._route,
            args=[
                self.prefix,
                self.retention_s,
                self.lateness_ms,
                payload,
                orjson.dumps(list(sources) or ["-"]),
                self.bucket_s,
                now,
                t.mode,
                int(t.idle_partition_s * 1000),
                int(t.live_close_delay_s * 1000),
                int(t.alert_lease_s * 1000),
                int(t.dedupe_horizon_s * 1000),
                self.novelty_horizon_ms,
                self.novelty_min_votes,
                b"" if committed is None else orjson.dumps(committed),
            ],
        )
        # cjson encodes an empty Lua table as an object, which Redis returns as an empty reply.
        res = res or []
        votes = [int(v) for v in (raw_votes or [])]
        dups = [(d.decode() if isinstance(d, bytes) else str(d)) or None for d in (raw_dups or [])]
        if len(votes) != len(updates) or len(dups) != len(updates):
            raise RuntimeError(f"window script returned {len(votes)} novelty votes for {len(updates)} events")
        if len(res) != len(updates):
            raise RuntimeError(f"window script returned {len(res)} statuses for {len(updates)} events")
        closed = []
        for raw in closed_raw or []:
            parts = (raw.decode() if isinstance(raw, bytes) else raw).split("|")
            closed.append(ClosedBucket(parts[0], "|".join(parts[1:-1]), int(parts[-1])))
        # Oldest first; the script already keeps each entity's buckets in time order.
        closed.sort(key=lambda c: (c.end_s, c.kind, c.name))
        return ApplyResult([STATUS_NAMES[int(x)] for x in res], closed, votes, dups)

    async def settle(self, judged: Sequence[ClosedBucket], cooldowns: Sequence[tuple[str, str, str, int]]) -> None:
        """Release judged buckets and move cooldowns, once their alerts are acknowledged by Kafka.

        ``cooldowns``: (rule, kind, name, window_end_ms) of every alert just sent.
        """
        if not judged and not cooldowns:
            return
        await self._settle(
            keys=self._route,
            args=[
                self.prefix,
                self.retention_s,
                orjson.dumps([c.member for c in judged]),
                orjson.dumps([[f"{rule}:{kind}:{name}", end_ms] for rule, kind, name, end_ms in cooldowns]),
            ],
        )

    async def context(
        self, kind: str, name: str, end_s: int, window_s: int, limit: int = 3, top: int = 3
    ) -> AlertContext:
        """Why a window ending at ``end_s`` looks negative, in one round trip: up to ``limit`` negative
        examples (newest bucket first) and, for a ticker, the ``top`` topics of its negative events."""
        pipe = self.redis.pipeline(transaction=False)
        starts = list(range(end_s - self.bucket_s, end_s - window_s - 1, -self.bucket_s))
        fields = [f"{kind}|{name}|{i}" for i in range(1, 4)]
        for b in starts:
            pipe.hmget(f"{self.prefix}:exb:{b}", fields)
        if kind == "ticker":
            for b in starts:
                pipe.hgetall(f"{self.prefix}:b:{kind}:{name}:{b}")
        res = await pipe.execute()
        examples: list[tuple[str, str | None]] = []
        for raw in (x for xs in res[: len(starts)] for x in xs if x is not None):
            if len(examples) >= limit:
                break
            examples.append(_parse_example(raw.decode() if isinstance(raw, bytes) else raw))
        topics: dict[str, int] = {}
        for h in res[len(starts) :]:
            for k, v in h.items():
                key = k.decode() if isinstance(k, bytes) else k
                if key.startswith("nt:"):
                    topics[key[3:]] = topics.get(key[3:], 0) + int(v)
        ranked = sorted(topics.items(), key=lambda kv: (-kv[1], kv[0]))[:top]
        return AlertContext(examples, ranked)

    async def watermark_ms(self) -> int | None:
        v = await self.redis.get(f"{self.prefix}:wm")
        return int(v) if v is not None else None

    async def window_sums(
        self,
        queries: Sequence[tuple[str, str, int]],
        recent_s: int,
        baseline_s: int,
        min_count: int = 0,
        floor: float = 0.0,
        rule: str = "",
        novel_only: bool = False,
    ) -> list[WindowSums]:
        """Per (kind, name, end_s): recent [end-recent, end) and baseline [end-recent-baseline, end-recent) sums,
        and the entity's cooldown for ``rule``, in one round trip.

        With ``min_count``/``floor``, a recent window that fails them skips the baseline (returned as -1).
        ``novel_only`` counts novel events only (not near-duplicates of an earlier story).
        """
        if not queries:
            return []
        fields = ("nn", "nneg") if novel_only else ("n", "neg")
        args: list[Any] = [self.prefix, self.bucket_s, min_count, floor, rule, *fields]
        for kind, name, end_s in queries:
            mid = end_s - recent_s
            args += [kind, name, mid - baseline_s, mid, end_s]
        flat = await self._sums(keys=self._route, args=args)
        return [WindowSums(*map(int, flat[i : i + 5])) for i in range(0, len(flat), 5)]

    async def metrics(self) -> dict[str, int]:
        raw = await self.redis.hgetall(f"{self.prefix}:metrics")
        return {k.decode() if isinstance(k, bytes) else k: int(v) for k, v in raw.items()}

    async def entities(self, kind: str) -> list[str]:
        names = await self.redis.zrange(f"{self.prefix}:ent:{kind}", 0, -1)
        return [n.decode() if isinstance(n, bytes) else str(n) for n in names]

    async def active_entities(self, kind: str, since_ms: int, limit: int) -> list[tuple[str, int]]:
        """(name, newest event ms) of up to ``limit`` entities with an event at or after ``since_ms``, most
        recently active first: one bounded range read of the entity index, never a scan of the keyspace."""
        # redis-py types the reply as a list of members; with scores each row is a (member, score) pair.
        rows: list[Any] = await self.redis.zrevrangebyscore(
            f"{self.prefix}:ent:{kind}", "+inf", since_ms, start=0, num=limit, withscores=True
        )
        return [(n.decode() if isinstance(n, bytes) else str(n), int(ts)) for n, ts in rows]

    async def last_seen_ms(self, kind: str, name: str) -> int | None:
        """Event time (ms) of the entity's newest counted event, or None for an entity never seen."""
        ts = await self.redis.zscore(f"{self.prefix}:ent:{kind}", name)
        return None if ts is None else int(ts)

    async def window_totals(
        self, kind: str, names: Sequence[str], start_s: int, end_s: int, max_buckets: int = 5_000
    ) -> list[EntityTrend]:
        """Per name (same order, zero counts included): totals over the buckets in [start_s, end_s)."""
        sums = await self._sum_buckets(kind, names, start_s, end_s, end_s - start_s, max_buckets)
        return [
            EntityTrend(kind, name, n, neg, neu, pos, ssum / SCORE_SCALE, nn, nneg)
            for name, ((n, neg, neu, pos, ssum, nn, nneg),) in zip(names, sums, strict=True)
        ]

    async def series(
        self, kind: str, name: str, start_s: int, end_s: int, step_s: int, max_buckets: int = 5_000
    ) -> list[BucketCounts]:
        """One entity's counts in consecutive ``step_s`` slices of [start_s, end_s) (``step_s`` a multiple of the
        bucket), empty slices included."""
        (sums,) = await self._sum_buckets(kind, [name], start_s, end_s, step_s, max_buckets)
        return [
            BucketCounts(
                start_s + i * step_s,
                min(start_s + (i + 1) * step_s, end_s),
                n,
                neg,
                neu,
                pos,
                ssum / SCORE_SCALE,
                nn,
                nneg,
            )
            for i, (n, neg, neu, pos, ssum, nn, nneg) in enumerate(sums)
        ]

    async def _sum_buckets(
        self, kind: str, names: Sequence[str], start_s: int, end_s: int, step_s: int, max_buckets: int
    ) -> list[list[list[int]]]:
        """[name][step slice] -> [n, neg, neu, pos, ssum, nn, nneg] summed over the buckets of [start_s, end_s).

        Summed in Redis by ``counts.lua``, in calls of at most ``max_buckets`` bucket reads: a script
        blocks Redis while it runs, so the worker waits at most one short call (~15 ms for 5,000 buckets
        here), never a whole request. The caller bounds names x buckets.
        """
        b = self.bucket_s
        if start_s % b or end_s % b or step_s % b or step_s <= 0 or end_s < start_s:
            raise ValueError(f"window [{start_s}, {end_s}) and step {step_s} must be whole buckets of {b} s")
        # Each query covers whole slices (or, when one slice alone is over the cap, a piece of one slice), so
        # its sums add into consecutive slices from the one it starts in.
        max_span = max(1, max_buckets) * b
        span = step_s * (max_span // step_s) if step_s <= max_span else max_span
        queries: list[tuple[int, str, int, int]] = []
        for i, name in enumerate(names):
            t = start_s
            while t < end_s:
                stop = min(t + span, end_s)
                if span < step_s:
                    stop = min(stop, start_s + ((t - start_s) // step_s + 1) * step_s)
                queries.append((i, name, t, stop))
                t = stop
        acc = [[[0] * _COUNT_FIELDS for _ in range(-(-(end_s - start_s) // step_s))] for _ in names]

        async def run(call: list[tuple[int, str, int, int]]) -> None:
            flat = await self._counts(
                keys=self._route, args=[self.prefix, kind, b, step_s, *(x for q in call for x in q[1:])]
            )
            k = 0
            for i, _, t0, t1 in call:
                first = (t0 - start_s) // step_s
                for j in range(-(-(t1 - t0) // step_s)):
                    row = acc[i][first + j]
                    for f in range(_COUNT_FIELDS):
                        row[f] += int(flat[k + f])
                    k += _COUNT_FIELDS

        call: list[tuple[int, str, int, int]] = []
        load = 0
        for q in queries:
            n_buckets = (q[3] - q[2]) // b
            if call and load + n_buckets > max_buckets:
                await run(call)
                call, load = [], 0
            call.append(q)
            load += n_buckets
        if call:
            await run(call)
        return acc

    async def trends(self, kind: str, window_s: int | None = None, end_s: int | None = None) -> list[EntityTrend]:
        """Per-entity totals over the last ``window_s`` (ending at the watermark), or all time when None."""
        names = await self.entities(kind)
        if not names:
            return []
        pipe = self.redis.pipeline(transaction=False)
        if window_s is None:
            for n in names:
                pipe.hgetall(f"{self.prefix}:tot:{kind}:{n}")
            rows = await pipe.execute()
        else:
            if end_s is None:
                wm = await self.watermark_ms()
                if wm is None:
                    return []
                end_s = bucket_start(wm, self.bucket_s) + self.bucket_s
            starts = range(end_s - window_s, end_s, self.bucket_s)
            for n in names:
                for b in starts:
                    pipe.hgetall(f"{self.prefix}:b:{kind}:{n}:{b}")
            flat = await pipe.execute()
            per = len(starts)
            rows = []
            for i in range(len(names)):
                acc: dict[bytes, int] = {}
                for h in flat[i * per : (i + 1) * per]:
                    for k, v in h.items():
                        acc[k] = acc.get(k, 0) + int(v)
                rows.append(acc)
        out = []
        for name, h in zip(names, rows, strict=True):
            g = {(k.decode() if isinstance(k, bytes) else k): int(v) for k, v in h.items()}
            if g.get("n", 0) > 0:
                out.append(
                    EntityTrend(
                        kind,
                        name,
                        g.get("n", 0),
                        g.get("neg", 0),
                        g.get("neu", 0),
                        g.get("pos", 0),
                        g.get("ssum", 0) / SCORE_SCALE,
                        g.get("nn", 0),
                        g.get("nneg", 0),
                    )
                )
        return out


def entities_for(tickers: Iterable[str], topic: str | None) -> list[tuple[str, str]]:
    ents = [("ticker", t) for t in tickers]
    if topic:
        ents.append(("topic", topic))
    return ents
