"""The window store on a real 3-master Redis Cluster started by this module (redis-server
--cluster-enabled yes, redis-cli --cluster create): every Lua call stays on the slot of the prefix's
hash tag, writes, dedupe, closing and every read path the worker and the API use answer as on one
Redis, and a prefix without a tag is refused with the setting named."""

from __future__ import annotations

import socket
import uuid
from collections.abc import AsyncIterator, Iterator

import pytest
from redis.asyncio.cluster import RedisCluster

from stream.local.redis import LocalRedisCluster
from stream.security import redis_from_settings
from stream.settings import get_settings
from stream.windows import TimePolicy, WindowStore, WindowUpdate

pytestmark = [pytest.mark.redis_cluster]

BUCKET = 60
T0 = 1_700_000_000_000 - 1_700_000_000_000 % (BUCKET * 1000)
SOURCES = ["in:0", "in:1"]


def _free_ports(n: int) -> list[int]:
    # A cluster node also listens on port + 10000 (the cluster bus): keep both below 65536 and free.
    ports: list[int] = []
    while len(ports) < n:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            p = s.getsockname()[1]
        if p + 10000 < 65536 and p not in ports:
            with socket.socket() as bus:
                try:
                    bus.bind(("127.0.0.1", p + 10000))
                except OSError:
                    continue
            ports.append(p)
    return ports


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalRedisCluster]:
    folder = get_settings().local_dir / f"test-redis-cluster-{uuid.uuid4().hex[:8]}"
    c = LocalRedisCluster(folder, _free_ports(3))
    c.start()
    try:
        yield c
    finally:
        c.stop()


@pytest.fixture()
async def rc(cluster: LocalRedisCluster) -> AsyncIterator[RedisCluster]:
    s = get_settings().model_copy(update={"redis_url": cluster.url, "redis_cluster": True})
    r = redis_from_settings(s)
    assert isinstance(r, RedisCluster)
    yield r
    await r.aclose()


def _store(r: RedisCluster, tag: str | None = None) -> WindowStore:
    pol = TimePolicy(mode="replay", alert_lease_s=5, dedupe_horizon_s=120)
    return WindowStore(r, f"{{{tag or uuid.uuid4().hex[:8]}}}", BUCKET, 3600, lateness_s=120, time_policy=pol)


def _ev(i: int, ts: int, src: str, sent: int = 0, ticker: str = "AAA") -> WindowUpdate:
    return WindowUpdate(f"e{i}", ts, sent, -0.9 if sent == 0 else 0.5, [("ticker", ticker), ("topic", "Earnings")],
                        src, example=f"text {i}" if sent == 0 else None)  # fmt: skip


async def test_prefix_without_hash_tag_is_refused(rc: RedisCluster) -> None:
    with pytest.raises(ValueError, match="FINPULSE_REDIS_PREFIX"):
        WindowStore(rc, "finpulse", BUCKET, 3600, 120)


async def test_window_store_on_a_cluster_counts_dedupes_closes_and_reads(rc: RedisCluster) -> None:
    w = _store(rc)
    batch = [_ev(i, T0 + i * 1000, SOURCES[i % 2], sent=0 if i < 6 else 2, ticker="AAA" if i % 3 else "BBB")
             for i in range(10)]  # fmt: skip
    r = await w.apply(batch, SOURCES, now_ms=T0)
    assert r.statuses == ["counted"] * 10
    assert (await w.apply(batch[:3], SOURCES, now_ms=T0)).statuses == ["duplicate"] * 3
    # Both partitions move past the first bucket: it closes and is leased to us.
    r = await w.apply([_ev(20, T0 + 61_000, "in:0", 2), _ev(21, T0 + 62_000, "in:1", 2)], SOURCES, now_ms=T0)
    assert {(c.kind, c.name) for c in r.closed} == {("ticker", "AAA"), ("ticker", "BBB"), ("topic", "Earnings")}
    await w.settle(r.closed, [("rule", "ticker", "AAA", T0 + 60_000)])
    assert (await w.apply([], SOURCES, now_ms=T0 + 10_000)).closed == []

    end_s = T0 // 1000 + BUCKET
    (sums,) = await w.window_sums([("ticker", "AAA", end_s)], BUCKET, BUCKET, rule="rule")
    assert (sums.recent_n, sums.recent_neg, sums.last_alert_end_ms) == (6, 4, T0 + 60_000)
    ctx = await w.context("ticker", "AAA", end_s, BUCKET)
    assert [e[1] for e in ctx.examples] == ["text 1", "text 2", "text 4"] and ctx.top_topics == [("Earnings", 4)]
    (tot,) = await w.window_totals("topic", ["Earnings"], T0 // 1000, end_s + BUCKET)
    assert (tot.n, tot.neg, tot.pos) == (12, 6, 6)
    series = await w.series("ticker", "AAA", T0 // 1000, end_s + BUCKET, BUCKET)
    assert [b.n for b in series] == [6, 2]
    assert {t.name for t in await w.trends("ticker")} == {"AAA", "BBB"}
    assert await w.last_seen_ms("ticker", "AAA") == T0 + 62_000
    assert (await w.metrics())["counted"] == 12
    assert await w.watermark_ms() == T0 + 62_000

    # Every key of the store is in the one slot of its tag, so on one node.
    keys = [k async for k in rc.scan_iter(match=f"{w.prefix}:*")]
    slots = {await rc.execute_command("CLUSTER KEYSLOT", k) for k in keys}
    assert len(keys) > 10 and len(slots) == 1


async def test_stores_with_different_tags_spread_over_the_masters(rc: RedisCluster) -> None:
    """The unit of Redis scale-out is the store (its tag): separate streams or tenants land on different nodes."""
    nodes = set()
    for i in range(12):
        w = _store(rc, tag=f"stream{i}")
        await w.apply([_ev(1, T0, "in:0")], SOURCES, now_ms=T0)
        nodes.add(rc.get_node_from_key(f"{w.prefix}:wm").name)
    assert len(nodes) == 3
