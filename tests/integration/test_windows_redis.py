"""The window script on the real Redis: watermarks (replay vs live idleness), wall-clock closing,
leased hand-off of closed buckets, settle, and per-entity order. The wall clock is passed in."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from stream.local import LocalServices
from stream.windows import TimePolicy, WindowStore, WindowUpdate

pytestmark = [pytest.mark.redis]

BUCKET = 60
T0 = 1_700_000_000_000 - 1_700_000_000_000 % (BUCKET * 1000)  # a bucket boundary, in ms
SOURCES = ["in:0", "in:1"]


@pytest.fixture()
async def redis(services: LocalServices) -> AsyncIterator[Redis]:
    r = Redis.from_url(services.settings.redis_url)
    yield r
    await r.aclose()


def store(r: Redis, mode: str, **kw: float) -> WindowStore:
    pol = TimePolicy(
        mode=mode,
        idle_partition_s=kw.get("idle", 30),
        live_close_delay_s=kw.get("delay", 10),
        alert_lease_s=kw.get("lease", 5),
    )  # type: ignore[arg-type]
    return WindowStore(r, f"test:{uuid.uuid4().hex[:10]}", BUCKET, 3600, lateness_s=120, time_policy=pol)


def neg(i: int, ts: int, src: str, ticker: str = "AAA") -> WindowUpdate:
    return WindowUpdate(f"e{i}", ts, 0, -0.9, [("ticker", ticker)], src)


async def test_replay_closes_on_the_low_watermark_and_leases_until_settled(redis: Redis) -> None:
    w = store(redis, "replay")
    now = T0  # wall clock is irrelevant in replay mode except for leases
    r = await w.apply([neg(1, T0 + 1000, "in:0"), neg(2, T0 + 2000, "in:1")], SOURCES, now_ms=now)
    assert r.statuses == ["counted", "counted"] and r.closed == []
    # Partition 0 moves past the bucket, partition 1 does not: the low watermark holds it open.
    r = await w.apply([neg(3, T0 + 70_000, "in:0")], SOURCES, now_ms=now)
    assert r.closed == []
    r = await w.apply([neg(4, T0 + 65_000, "in:1")], SOURCES, now_ms=now)
    assert [(c.name, c.end_s) for c in r.closed] == [("AAA", T0 // 1000 + BUCKET)]
    first = r.closed
    # Leased: nobody else gets it while the lease runs, whatever they send.
    assert (await w.apply([], SOURCES, now_ms=now + 1000)).closed == []
    # Not settled (the judge died): offered again once the lease ran out, the same bucket.
    again = await w.apply([], SOURCES, now_ms=now + 6000)
    assert again.closed == first
    await w.settle(again.closed, [("rule", "ticker", "AAA", T0 + 60_000)])
    assert (await w.apply([], SOURCES, now_ms=now + 60_000)).closed == []
    assert int(await redis.get(f"{w.prefix}:cooldown:rule:ticker:AAA")) == T0 + 60_000
    # A replayed event is a duplicate and changes nothing.
    assert (await w.apply([neg(1, T0 + 1000, "in:0")], SOURCES, now_ms=now)).statuses == ["duplicate"]


async def test_replay_ignores_the_wall_clock(redis: Redis) -> None:
    w = store(redis, "replay")
    await w.apply([neg(1, T0 + 1000, "in:0"), neg(2, T0 + 2000, "in:1")], SOURCES, now_ms=T0)
    # Hours of wall-clock silence close nothing in replay mode: only event time does.
    assert (await w.apply([], SOURCES, now_ms=T0 + 10 * 3600_000)).closed == []


async def test_live_idle_partition_stops_holding_the_watermark(redis: Redis) -> None:
    w = store(redis, "live", idle=30, delay=3600)
    await w.apply([neg(1, T0 + 1000, "in:1")], SOURCES, now_ms=T0 + 1000)  # warm-up on partition 1
    await w.apply([neg(2, T0 + 2000, "in:0")], SOURCES, now_ms=T0 + 2000)
    # Partition 1 spoke 1 s ago: it still holds the watermark at T0+1s, the bucket stays open.
    r = await w.apply([neg(3, T0 + 70_000, "in:0")], SOURCES, now_ms=T0 + 2000)
    assert r.closed == []
    # 40 s later partition 1 is idle: partition 0 alone moves the watermark and the bucket closes.
    r = await w.apply([neg(4, T0 + 71_000, "in:0")], SOURCES, now_ms=T0 + 42_000)
    assert [c.end_s for c in r.closed] == [T0 // 1000 + BUCKET]
    # Partition 1 rejoins with an event older than watermark - lateness: late, not counted.
    r = await w.apply([neg(5, T0 - 200_000, "in:1")], SOURCES, now_ms=T0 + 43_000)
    assert r.statuses == ["late"]


async def test_live_wall_clock_closes_the_last_bucket_of_a_quiet_spell(redis: Redis) -> None:
    w = store(redis, "live", idle=3600, delay=10)
    await w.apply([neg(i, T0 + 1000 * i, f"in:{i % 2}") for i in range(1, 6)], SOURCES, now_ms=T0 + 5000)
    assert (await w.apply([], SOURCES, now_ms=T0 + 60_000 + 9_000)).closed == []  # within the bound
    r = await w.apply([], SOURCES, now_ms=T0 + 60_000 + 11_000)  # past bucket end + delay
    assert [(c.name, c.end_s) for c in r.closed] == [("AAA", T0 // 1000 + BUCKET)]


async def test_entity_buckets_are_offered_in_order(redis: Redis) -> None:
    w = store(redis, "replay", lease=5)
    ups = [neg(1, T0 + 1000, "in:0"), neg(2, T0 + 1000, "in:1")]
    r = await w.apply(ups, SOURCES, now_ms=T0)
    r = await w.apply([neg(3, T0 + 61_000, "in:0"), neg(4, T0 + 61_000, "in:1")], SOURCES, now_ms=T0)
    held = r.closed
    assert [c.end_s for c in held] == [T0 // 1000 + 60]
    # The next bucket closes while the first is still leased by someone else: it must wait.
    r = await w.apply([neg(5, T0 + 125_000, "in:0"), neg(6, T0 + 125_000, "in:1")], SOURCES, now_ms=T0 + 1000)
    assert r.closed == []
    # Lease expired (that judge died): both come back together, oldest first.
    r = await w.apply([], SOURCES, now_ms=T0 + 10_000)
    assert [c.end_s for c in r.closed] == [T0 // 1000 + 60, T0 // 1000 + 120]


async def test_negatives_reaching_a_bucket_being_judged_get_it_judged_again(redis: Redis) -> None:
    w = store(redis, "replay")
    await w.apply([neg(1, T0 + 1000, "in:0"), neg(2, T0 + 1000, "in:1")], SOURCES, now_ms=T0)
    r = await w.apply([neg(3, T0 + 61_000, "in:0"), neg(4, T0 + 61_000, "in:1")], SOURCES, now_ms=T0)
    judged = r.closed
    # A late (but allowed) negative lands in the bucket while it is being judged.
    assert (await w.apply([neg(5, T0 + 2000, "in:0")], SOURCES, now_ms=T0)).statuses == ["counted"]
    await w.settle(judged, [])
    assert (await w.apply([], SOURCES, now_ms=T0 + 1000)).closed == judged


async def test_alert_context_quotes_negative_texts_and_counts_topics_per_ticker(redis: Redis) -> None:
    w = store(redis, "replay")
    long_text = "word " * 100
    ups = [
        WindowUpdate("n1", T0 + 1000, 0, -0.9, [("ticker", "AAA"), ("topic", "Macro")], "in:0", "first bad"),
        WindowUpdate("n2", T0 + 2000, 0, -0.9, [("ticker", "AAA"), ("topic", "Macro")], "in:1", long_text),
        WindowUpdate("n3", T0 + 3000, 0, -0.8, [("ticker", "AAA"), ("topic", "Earnings")], "in:0", "third"),
        WindowUpdate("n4", T0 + 4000, 0, -0.8, [("ticker", "AAA"), ("topic", "Earnings")], "in:0", "fourth"),
        WindowUpdate("n5", T0 + 5000, 0, -0.7, [("ticker", "AAA"), ("topic", "Macro")], "in:1"),  # no text
        WindowUpdate("p1", T0 + 6000, 2, 0.9, [("ticker", "AAA"), ("topic", "Earnings")], "in:0"),  # positive
        WindowUpdate("o1", T0 + 65_000, 0, -0.9, [("ticker", "AAA"), ("topic", "Legal")], "in:1", "next bucket"),
    ]
    await w.apply(ups, SOURCES, now_ms=T0)
    end_s = T0 // 1000 + BUCKET
    ctx = await w.context("ticker", "AAA", end_s, BUCKET)
    # The first three negatives of the bucket, with their words (the store keeps what it was given).
    assert ctx.examples == [("n1", "first bad"), ("n2", long_text), ("n3", "third")]
    # Negatives per topic in the window only (the positive and the next bucket's event do not count).
    assert ctx.top_topics == [("Macro", 3), ("Earnings", 2)]
    # A topic alert names no topics; a wider window reaches the newer bucket's example first.
    assert (await w.context("topic", "Macro", end_s, BUCKET)).top_topics == []
    wide = await w.context("ticker", "AAA", end_s + BUCKET, 2 * BUCKET, limit=2)
    assert wide.examples == [("o1", "next bucket"), ("n1", "first bad")]
    assert wide.top_topics == [("Macro", 3), ("Earnings", 2), ("Legal", 1)]


async def test_seen_ids_are_dropped_behind_the_horizon_and_older_events_are_never_counted_twice(
    redis: Redis,
) -> None:
    """Live mode: an idle partition stops holding the watermark, the dedupe floor passes its bucket and the
    seen ids there are dropped; when it rejoins with a replay of an old event, the watermark moves back
    far enough for the lateness rule to admit it, but the floor refuses it: late, not counted again."""
    pol = TimePolicy(mode="live", idle_partition_s=30, live_close_delay_s=3600, alert_lease_s=5, dedupe_horizon_s=60)
    w = WindowStore(redis, f"test:{uuid.uuid4().hex[:10]}", BUCKET, 3600, lateness_s=120, time_policy=pol)
    assert (await w.apply([neg(1, T0 + 1000, "in:0")], SOURCES, now_ms=T0)).statuses == ["counted"]
    assert (await w.apply([neg(1, T0 + 1000, "in:0")], SOURCES, now_ms=T0)).statuses == ["duplicate"]
    # in:0 falls silent; in:1 is ten minutes of event time ahead and alone sets the low watermark.
    r = await w.apply([neg(2, T0 + 600_000, "in:1", "BBB")], SOURCES, now_ms=T0 + 40_000)
    assert r.statuses == ["counted"]
    floor = int(await redis.get(f"{w.prefix}:seenfloor"))
    assert floor == T0 + 600_000 - 120_000 - 60_000
    assert [k async for k in redis.scan_iter(match=f"{w.prefix}:seenb:{T0 // 1000}:*")] == []
    # in:0 rejoins with the old event again, and a new one of the same minute.
    r = await w.apply([neg(1, T0 + 1000, "in:0"), neg(3, T0 + 2000, "in:0")], SOURCES, now_ms=T0 + 41_000)
    assert r.statuses == ["late", "late"]
    assert int(await redis.hget(f"{w.prefix}:b:ticker:AAA:{T0 // 1000}", "n")) == 1
    m = await w.metrics()
    assert (m["counted"], m["late"], m["late_past_dedupe_horizon"]) == (2, 2, 2)


async def test_seen_hashes_shard_by_the_densest_held_bucket_and_a_floor_move_drops_only_buckets_behind_it(
    redis: Redis,
) -> None:
    pol = TimePolicy(mode="replay", dedupe_horizon_s=60)
    w = WindowStore(redis, f"test:{uuid.uuid4().hex[:10]}", BUCKET, 3600, lateness_s=120, time_policy=pol)
    src = ["in:0"]
    b0, b1, b8, b10 = (T0 // 1000 + m * BUCKET for m in (0, 1, 8, 10))
    # 300 ids in the first bucket (nothing held before it: one shard), then one id in the next bucket.
    dense = [WindowUpdate(f"d{i}", T0 + i, 1, 0.0, [("ticker", "AAA")], "in:0") for i in range(300)]
    assert (await w.apply(dense, src)).statuses == ["counted"] * 300
    assert (await w.apply([neg(1, (b1 + 1) * 1000, "in:0")], src)).statuses == ["counted"]
    k = await redis.hmget(f"{w.prefix}:seenk", [str(b0), str(b1)])
    # The next bucket is sharded for the densest one held: 300 ids x 1.25 / 96 per shard -> 4 shards.
    assert [int(x) for x in k] == [1, 4]
    assert await redis.zscore(f"{w.prefix}:seenc", str(b0)) == 300
    # A replayed id is found in its shard.
    assert (await w.apply([neg(1, (b1 + 1) * 1000, "in:0")], src)).statuses == ["duplicate"]
    # One event 8 minutes on, then one at 10 minutes: the floor is then 10 min - lateness 2 min - horizon 1 min
    # = 7 min, so the buckets of minutes 0 and 1 go, and minute 8's stays.
    await w.apply([neg(2, b8 * 1000, "in:0")], src)
    await w.apply([neg(3, b10 * 1000, "in:0")], src)
    assert int(await redis.get(f"{w.prefix}:seenfloor")) == (b10 - 180) * 1000
    left = {k.decode().split(":")[-2] async for k in redis.scan_iter(match=f"{w.prefix}:seenb:*")}
    assert left == {str(b8), str(b10)}
    assert [m.decode() for m in await redis.zrange(f"{w.prefix}:seent", 0, -1)] == [str(b8), str(b10)]
    assert sorted(m.decode() for m in await redis.zrange(f"{w.prefix}:seenc", 0, -1)) == [str(b8), str(b10)]
    assert sorted(k.decode() for k in await redis.hkeys(f"{w.prefix}:seenk")) == [str(b8), str(b10)]


async def test_a_store_from_before_the_sorted_seen_sets_is_carried_over(redis: Redis) -> None:
    """Upgrade: the held buckets' id counts used to be a hash (p:seenn); the first call moves them over."""
    w = store(redis, "replay")
    b0 = T0 // 1000
    await redis.hset(f"{w.prefix}:seenn", str(b0), 500)
    await redis.hset(f"{w.prefix}:seenk", str(b0), 7)
    assert (await w.apply([neg(1, (b0 + BUCKET) * 1000, "in:0")], ["in:0"])).statuses == ["counted"]
    assert not await redis.exists(f"{w.prefix}:seenn")
    assert await redis.zscore(f"{w.prefix}:seenc", str(b0)) == 500
    assert await redis.zscore(f"{w.prefix}:seent", str(b0)) == b0
    # The new bucket is sharded for the densest carried-over one: 500 x 1.25 / 96 -> 7 shards.
    assert int(await redis.hget(f"{w.prefix}:seenk", str(b0 + BUCKET))) == 7


async def test_the_dedupe_floor_waits_for_commits_so_a_redelivered_batch_is_duplicate_not_late(redis: Redis) -> None:
    """A sparse replay: one partition's batches span more event time than lateness + horizon. What was
    counted but not committed (a worker killed before its periodic commit) is redelivered: with the
    committed times passed, the floor has not passed it and it reads duplicate; without them (a caller
    whose counts are durable at once) the same redelivery would have been refused as late."""
    pol = TimePolicy(mode="replay", dedupe_horizon_s=60)
    src = ["in:0"]

    def fresh() -> WindowStore:
        return WindowStore(redis, f"test:{uuid.uuid4().hex[:10]}", BUCKET, 3600, lateness_s=120, time_policy=pol)

    first = [neg(1, T0 + 1000, "in:0")]
    later = [neg(2, T0 + 600_000, "in:0")]  # ten minutes on: far past lateness (2 min) + horizon (1 min)
    for committed, expected in ((None, "late"), ({}, "duplicate")):
        w = fresh()
        await w.apply(first, src, committed=committed)
        await w.apply(later, src, committed=committed)
        # Redelivered from the last commit (none): the first event again, then the later one.
        again = await w.apply(first + later, src, committed=committed)
        assert again.statuses == [expected, "duplicate"], committed
        m = await w.metrics()
        assert m["counted"] == 2 and m.get("late", 0) == (1 if expected == "late" else 0)

    # Once both are committed the floor moves (ids behind it dropped); an event behind it is then late.
    await w.apply([], src, committed={"in:0": T0 + 600_000})
    assert int(await redis.get(f"{w.prefix}:seenfloor")) == T0 + 600_000 - 120_000 - 60_000
    assert (await w.apply(first, src, committed={"in:0": T0 + 1000})).statuses == ["late"]
    # Committed times only move forward, whichever caller reports them.
    assert int(await redis.hget(f"{w.prefix}:wmc", "in:0")) == T0 + 600_000


async def test_a_partition_with_counted_uncommitted_events_holds_the_floor_even_when_idle(redis: Redis) -> None:
    """Live mode: an idle partition stops holding the watermark, but while it has counted events that were
    never committed (its worker died) it still holds the dedupe floor; once they are committed it lets go."""
    pol = TimePolicy(mode="live", idle_partition_s=30, live_close_delay_s=3600, alert_lease_s=5, dedupe_horizon_s=60)
    w = WindowStore(redis, f"test:{uuid.uuid4().hex[:10]}", BUCKET, 3600, lateness_s=120, time_policy=pol)
    marks: dict[str, int] = {}
    assert (await w.apply([neg(1, T0 + 1000, "in:0")], SOURCES, now_ms=T0, committed=marks)).statuses == ["counted"]
    # in:0's worker dies before committing; in:1 runs ten minutes of event time ahead and commits.
    await w.apply([neg(2, T0 + 600_000, "in:1", "BBB")], SOURCES, now_ms=T0 + 40_000, committed=marks)
    marks["in:1"] = T0 + 600_000
    await w.apply([], SOURCES, now_ms=T0 + 41_000, committed=marks)
    assert await redis.get(f"{w.prefix}:seenfloor") is None
    # in:0 is redelivered to a new owner: a duplicate, not late.
    r = await w.apply([neg(1, T0 + 1000, "in:0")], SOURCES, now_ms=T0 + 42_000, committed=marks)
    assert r.statuses == ["duplicate"]
    marks["in:0"] = T0 + 1000
    # Committed and idle again: the floor follows in:1 alone.
    await w.apply([], SOURCES, now_ms=T0 + 80_000, committed=marks)
    assert int(await redis.get(f"{w.prefix}:seenfloor")) == T0 + 600_000 - 120_000 - 60_000
