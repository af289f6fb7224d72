"""Event-time windows in Redis: 1-bucket granularity, longer windows answered by summing buckets.

All writes for a batch go in one Lua script call, so they are atomic and cost one round trip, and
idempotent: an event id is claimed with ``SET NX`` in the same script that counts it, so a replayed
event changes nothing. Event time is authoritative; a global watermark (newest event time counted)
decides lateness, so a replay gives the same windows as the live run did.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import orjson
from redis.asyncio import Redis

SENTIMENT_FIELDS = ("neg", "neu", "pos")
SCORE_SCALE = 1_000_000  # scores are summed as integer micro-units: exact, so replays match bit for bit
STATUS_NAMES = ("counted", "duplicate", "late")

# ARGV: prefix, ttl_s, lateness_ms, events_json, sources_json, bucket_s
# events_json: [[id, ts_ms, bucket_start_s, sentiment_index(1..3), score_micro, [[kind, name], ...], source], ...]
# sources_json: every input partition ("topic:partition") the stream has.
# Lateness is judged against the low watermark: the minimum over all input partitions of the newest
# event time counted from each. Partitions are read in any interleaving, but each is in order, so a
# replay of an ordered stream is never "late" however the consumer interleaves partitions; until
# every partition has been seen the low watermark is undefined and nothing is late.
# Every (entity, bucket) that receives an event is queued in a pending set; a bucket closes once
# event time has passed its end: the low watermark, or (while some partition has not delivered yet)
# the newest event time minus the allowed lateness. Closed buckets are popped in the same atomic
# call and returned, so each is evaluated by the alert rule exactly once, with complete counts,
# whatever the batch boundaries were: replays raise the same alerts.
# Returns {statuses (0 counted, 1 duplicate, 2 late), closed ("kind|name|bucket_end_s", oldest first)}.
_APPLY_LUA = """
local p = ARGV[1]
local ttl = tonumber(ARGV[2])
local lateness = tonumber(ARGV[3])
local events = cjson.decode(ARGV[4])
local sources = cjson.decode(ARGV[5])
local bucket_s = tonumber(ARGV[6])
local pending_key = p .. ':pending'
local fields = {'neg', 'neu', 'pos'}
local wm_key, wmp_key = p .. ':wm', p .. ':wmp'
local wm0 = tonumber(redis.call('GET', wm_key) or '-1')
local wm = wm0
local pw = {}
local flat = redis.call('HGETALL', wmp_key)
for i = 1, #flat, 2 do pw[flat[i]] = tonumber(flat[i + 1]) end
local changed = {}
local function low_watermark()
  local m = nil
  for _, src in ipairs(sources) do
    local v = pw[src]
    if v == nil then return nil end
    if m == nil or v < m then m = v end
  end
  return m
end
-- Writes are gathered per key and flushed once per batch (one HINCRBY per key and field, one
-- EXPIRE per key): the same totals as event-by-event writes in a fraction of the Redis commands.
local incr, incr_order = {}, {}
local function add(key, f, d)
  local h = incr[key]
  if h == nil then h = {}; incr[key] = h; table.insert(incr_order, key) end
  h[f] = (h[f] or 0) + d
end
local ent_ts, ent_order = {}, {}
local pend, pend_order = {}, {}
local ex, ex_order = {}, {}
local counted, late = 0, 0
local status = {}
for i, e in ipairs(events) do
  local id, ts, bucket, cls, score, ents, src = e[1], e[2], e[3], e[4], e[5], e[6], e[7]
  local low = low_watermark()
  if not redis.call('SET', p .. ':seen:' .. id, '1', 'NX', 'EX', ttl) then
    status[i] = 1
  elseif low ~= nil and ts < low - lateness then
    status[i] = 2
    late = late + 1
  else
    status[i] = 0
    counted = counted + 1
    if ts > wm then wm = ts end
    if pw[src] == nil or ts > pw[src] then pw[src] = ts; changed[src] = true end
    local f = fields[cls]
    for _, ent in ipairs(ents) do
      local kind, name = ent[1], ent[2]
      local bk = p .. ':b:' .. kind .. ':' .. name .. ':' .. bucket
      add(bk, f, 1); add(bk, 'n', 1); add(bk, 'ssum', score)
      local tk = p .. ':tot:' .. kind .. ':' .. name
      add(tk, f, 1); add(tk, 'n', 1); add(tk, 'ssum', score)
      local ek = kind .. '\0' .. name
      local prev = ent_ts[ek]
      if prev == nil then table.insert(ent_order, {kind, name, ek}) end
      if prev == nil or ts > prev then ent_ts[ek] = ts end
      if cls == 1 then
        -- Only a bucket that received negative events can start a surge: only those are judged.
        local member = kind .. '|' .. name .. '|' .. string.format('%d', bucket + bucket_s)
        if pend[member] == nil then pend[member] = bucket + bucket_s; table.insert(pend_order, member) end
        local xk = p .. ':ex:' .. kind .. ':' .. name .. ':' .. bucket
        local l = ex[xk]
        if l == nil then l = {}; ex[xk] = l; table.insert(ex_order, xk) end
        if #l < 3 then table.insert(l, id) end
      end
    end
  end
end
for _, key in ipairs(incr_order) do
  local h = incr[key]
  for _, f in ipairs({'neg', 'neu', 'pos', 'n', 'ssum'}) do
    if h[f] ~= nil then redis.call('HINCRBY', key, f, string.format('%d', h[f])) end
  end
  redis.call('EXPIRE', key, ttl)
end
local ent_kinds = {}
for _, t in ipairs(ent_order) do
  local zk = p .. ':ent:' .. t[1]
  redis.call('ZADD', zk, 'GT', string.format('%d', ent_ts[t[3]]), t[2])
  ent_kinds[zk] = true
end
for zk, _ in pairs(ent_kinds) do redis.call('EXPIRE', zk, ttl) end
for _, member in ipairs(pend_order) do redis.call('ZADD', pending_key, 'NX', pend[member], member) end
for _, xk in ipairs(ex_order) do
  local have = redis.call('LLEN', xk)
  local ids = ex[xk]
  for j = 1, math.min(#ids, 3 - have) do redis.call('RPUSH', xk, ids[j]) end
  redis.call('EXPIRE', xk, ttl)
end
if wm > wm0 then redis.call('SET', wm_key, string.format('%d', wm)) end
for src, _ in pairs(changed) do redis.call('HSET', wmp_key, src, string.format('%d', pw[src])) end
if counted > 0 then redis.call('HINCRBY', p .. ':metrics', 'counted', counted) end
if late > 0 then redis.call('HINCRBY', p .. ':metrics', 'late', late) end
local closed = {}
if counted > 0 then
  local low = low_watermark()
  local close_ms = low
  if close_ms == nil and wm >= 0 then close_ms = wm - lateness end
  if close_ms ~= nil then
    local close_s = math.floor(close_ms / 1000)
    closed = redis.call('ZRANGEBYSCORE', pending_key, '-inf', close_s)
    if #closed > 0 then redis.call('ZREMRANGEBYSCORE', pending_key, '-inf', close_s) end
    redis.call('EXPIRE', pending_key, ttl)
  end
end
return {status, closed}
"""

# ARGV: prefix, bucket_s, min_count, floor, then per query: kind, name, start_s, mid_s, end_s
# returns per query: n and neg in [mid, end) (recent), then n and neg in [start, mid) (baseline).
# The recent window is summed first; when it cannot pass the rule's count and floor checks the
# (much longer) baseline is not read at all and comes back as -1, -1.
_SUMS_LUA = """
local p = ARGV[1]
local bucket = tonumber(ARGV[2])
local min_count = tonumber(ARGV[3])
local floor = tonumber(ARGV[4])
local out = {}
local function sum(kind, name, from, to)
  local n, neg = 0, 0
  local t = from
  while t < to do
    local v = redis.call('HMGET', p .. ':b:' .. kind .. ':' .. name .. ':' .. string.format('%d', t), 'n', 'neg')
    n = n + tonumber(v[1] or '0')
    neg = neg + tonumber(v[2] or '0')
    t = t + bucket
  end
  return n, neg
end
local i = 5
while i <= #ARGV do
  local kind, name = ARGV[i], ARGV[i + 1]
  local s, m, e = tonumber(ARGV[i + 2]), tonumber(ARGV[i + 3]), tonumber(ARGV[i + 4])
  local rn, rneg = sum(kind, name, m, e)
  local bn, bneg = -1, -1
  if rn >= min_count and rneg >= floor * rn then bn, bneg = sum(kind, name, s, m) end
  table.insert(out, rn); table.insert(out, rneg); table.insert(out, bn); table.insert(out, bneg)
  i = i + 5
end
return out
"""

# ARGV: prefix, rule, kind, name, window_end_ms, cooldown_ms, ttl_s
# Event-time cooldown per (rule, entity), decided atomically so several workers never repeat an alert.
_CLAIM_LUA = """
local key = ARGV[1] .. ':cooldown:' .. ARGV[2] .. ':' .. ARGV[3] .. ':' .. ARGV[4]
local now = tonumber(ARGV[5])
local last = redis.call('GET', key)
if last and now - tonumber(last) < tonumber(ARGV[6]) then return 0 end
redis.call('SET', key, ARGV[5], 'EX', tonumber(ARGV[7]))
return 1
"""


def bucket_start(ts_ms: int, bucket_s: int) -> int:
    """Start (epoch seconds) of the bucket holding ``ts_ms``."""
    sec = ts_ms // 1000
    return sec - sec % bucket_s


@dataclass(frozen=True)
class WindowUpdate:
    """One classified event as the window store needs it."""

    event_id: str
    ts_ms: int
    sentiment: int  # 0 negative, 1 neutral, 2 positive
    score: float
    entities: Sequence[tuple[str, str]]  # (kind, name): ("ticker", "AAPL"), ("topic", "Earnings")
    source: str = "-"  # input "topic:partition" the event came from (for the low watermark)


@dataclass(frozen=True)
class ClosedBucket:
    """An (entity, bucket) whose bucket event time has passed: ready for the alert rule."""

    kind: str
    name: str
    end_s: int


@dataclass(frozen=True)
class ApplyResult:
    statuses: list[str]
    closed: list[ClosedBucket]


@dataclass(frozen=True)
class WindowSums:
    recent_n: int
    recent_neg: int
    baseline_n: int
    baseline_neg: int


@dataclass(frozen=True)
class EntityTrend:
    kind: str
    name: str
    n: int
    neg: int
    neu: int
    pos: int
    score_sum: float

    @property
    def negative_share(self) -> float:
        return self.neg / self.n if self.n else 0.0

    @property
    def mean_score(self) -> float:
        return self.score_sum / self.n if self.n else 0.0


class WindowStore:
    """Redis-backed windowed counts, shared by every worker (Redis is the single source of truth)."""

    def __init__(self, redis: Redis, prefix: str, bucket_s: int, retention_s: int, lateness_s: int) -> None:
        self.redis = redis
        self.prefix = prefix
        self.bucket_s = bucket_s
        self.retention_s = retention_s
        self.lateness_ms = lateness_s * 1000
        self._apply = redis.register_script(_APPLY_LUA)
        self._sums = redis.register_script(_SUMS_LUA)
        self._claim = redis.register_script(_CLAIM_LUA)

    async def apply(self, updates: Sequence[WindowUpdate], sources: Sequence[str] = ()) -> ApplyResult:
        """Count a batch in one atomic round trip; returns counted/duplicate/late per update and the buckets it closed.

        ``sources`` names every input partition ("topic:partition"); lateness applies once each has
        delivered an event (see the script above).
        """
        if not updates:
            return ApplyResult([], [])
        payload = orjson.dumps([
            [u.event_id, u.ts_ms, bucket_start(u.ts_ms, self.bucket_s), u.sentiment + 1, round(u.score * SCORE_SCALE), [list(e) for e in u.entities], u.source]
            for u in updates
        ])
        res, closed_raw = await self._apply(args=[self.prefix, self.retention_s, self.lateness_ms, payload, orjson.dumps(list(sources) or ["-"]), self.bucket_s])
        if len(res) != len(updates):
            raise RuntimeError(f"window script returned {len(res)} statuses for {len(updates)} events")
        closed = []
        for raw in closed_raw:
            parts = (raw.decode() if isinstance(raw, bytes) else raw).split("|")
            closed.append(ClosedBucket(parts[0], "|".join(parts[1:-1]), int(parts[-1])))
        closed.sort(key=lambda c: (c.end_s, c.kind, c.name))
        return ApplyResult([STATUS_NAMES[int(s)] for s in res], closed)

    async def examples(self, kind: str, name: str, end_s: int, window_s: int, limit: int = 3) -> list[str]:
        """Up to ``limit`` negative event ids from the window ending at ``end_s``, newest bucket first."""
        pipe = self.redis.pipeline(transaction=False)
        starts = list(range(end_s - self.bucket_s, end_s - window_s - 1, -self.bucket_s))
        for b in starts:
            pipe.lrange(f"{self.prefix}:ex:{kind}:{name}:{b}", 0, limit - 1)
        out: list[str] = []
        for ids in await pipe.execute():
            out.extend(i.decode() if isinstance(i, bytes) else i for i in ids)
            if len(out) >= limit:
                break
        return out[:limit]

    async def watermark_ms(self) -> int | None:
        v = await self.redis.get(f"{self.prefix}:wm")
        return int(v) if v is not None else None

    async def window_sums(self, queries: Sequence[tuple[str, str, int]], recent_s: int, baseline_s: int,
                          min_count: int = 0, floor: float = 0.0) -> list[WindowSums]:
        """Per (kind, name, end_s): recent [end-recent, end) and baseline [end-recent-baseline, end-recent) sums, one round trip.

        With ``min_count``/``floor``, a recent window that fails them skips the baseline (returned as -1).
        """
        if not queries:
            return []
        args: list[Any] = [self.prefix, self.bucket_s, min_count, floor]
        for kind, name, end_s in queries:
            mid = end_s - recent_s
            args += [kind, name, mid - baseline_s, mid, end_s]
        flat = await self._sums(args=args)
        return [WindowSums(*map(int, flat[i : i + 4])) for i in range(0, len(flat), 4)]

    async def claim_alert(self, rule: str, kind: str, name: str, window_end_ms: int, cooldown_s: int) -> bool:
        res = await self._claim(args=[self.prefix, rule, kind, name, window_end_ms, cooldown_s * 1000, self.retention_s])
        return bool(int(res))

    async def metrics(self) -> dict[str, int]:
        raw = await self.redis.hgetall(f"{self.prefix}:metrics")
        return {k.decode() if isinstance(k, bytes) else k: int(v) for k, v in raw.items()}

    async def entities(self, kind: str) -> list[str]:
        names = await self.redis.zrange(f"{self.prefix}:ent:{kind}", 0, -1)
        return [n.decode() if isinstance(n, bytes) else n for n in names]

    async def bucket(self, kind: str, name: str, bucket_s: int) -> dict[str, int]:
        raw = await self.redis.hgetall(f"{self.prefix}:b:{kind}:{name}:{bucket_s}")
        return {k.decode() if isinstance(k, bytes) else k: int(v) for k, v in raw.items()}

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
        for name, h in zip(names, rows):
            g = {(k.decode() if isinstance(k, bytes) else k): int(v) for k, v in h.items()}
            if g.get("n", 0) > 0:
                out.append(EntityTrend(kind, name, g.get("n", 0), g.get("neg", 0), g.get("neu", 0), g.get("pos", 0), g.get("ssum", 0) / SCORE_SCALE))
        return out


def entities_for(tickers: Iterable[str], topic: str | None) -> list[tuple[str, str]]:
    ents = [("ticker", t) for t in tickers]
    if topic:
        ents.append(("topic", topic))
    return ents
