"""Data for the query API's integration tests: hand-made window events and alerts, loaded into the real
Redis (through the worker's own Lua) and Kafka."""

from __future__ import annotations

import random

from aiokafka import AIOKafkaProducer
from redis.asyncio import Redis

from stream.events import Alert
from stream.settings import StreamSettings
from stream.windows import TimePolicy, WindowStore, WindowUpdate
from tests.support.alerts import make_alert

BUCKET = 60
T0 = 1_750_000_000_000 - 1_750_000_000_000 % 3_600_000  # an hour boundary (ms)
TICKERS = ["AAA", "BBB", "CCC", "BRK.B", "DDD", "EEE"]
TOPICS = ["Earnings", "Fed / Central Banks", "M&A / Investments"]


def make_events(n: int, seed: int = 7) -> list[WindowUpdate]:
    """``n`` events over the 3 hours before T0, on 1-2 tickers and a topic each, in time order."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        ts = T0 - 1 - rng.randrange(3 * 3_600_000)
        ents = [("ticker", t) for t in rng.sample(TICKERS, rng.choice([1, 1, 2]))] + [("topic", rng.choice(TOPICS))]
        sentiment = rng.choices([0, 1, 2], [3, 5, 2])[0]
        out.append(WindowUpdate(f"ev{i}", ts, sentiment, rng.randint(-1000, 1000) / 1000, ents, "in:0"))
    return sorted(out, key=lambda u: u.ts_ms)


def sample_alerts() -> list[Alert]:
    """Three alerts: a ticker warning 2 h before T0, a topic critical 1 h before, a ticker warning at T0."""
    return [
        make_alert("a1", entity="AAA", end_ms=T0 - 2 * 3_600_000),
        make_alert("a2", entity="Fed / Central Banks", kind="topic", end_ms=T0 - 3_600_000, severity="critical"),
        make_alert("a3", entity="BBB", end_ms=T0),
    ]


async def fill_windows(settings: StreamSettings, events: list[WindowUpdate]) -> None:
    """Count ``events`` under the settings' prefix with ``WindowStore.apply`` (replay time), then send the first
    20 again: redelivered events must change nothing."""
    r = Redis.from_url(settings.redis_url)
    try:
        store = WindowStore(
            r, settings.redis_prefix, settings.bucket_seconds, 86400, 6 * 3600, TimePolicy(mode="replay")
        )
        for i in range(0, len(events), 50):
            res = await store.apply(events[i : i + 50], ["in:0"], now_ms=T0)
            assert set(res.statuses) == {"counted"}, res.statuses
        assert set((await store.apply(events[:20], ["in:0"], now_ms=T0)).statuses) == {"duplicate"}
    finally:
        await r.aclose()


async def publish_alerts(bootstrap: str, topic: str, alerts: list[Alert]) -> None:
    """Send ``alerts`` (keyed by id, acks=all) in order."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        for a in alerts:
            await producer.send_and_wait(topic, a.model_dump_json().encode(), key=a.id.encode())
    finally:
        await producer.stop()
