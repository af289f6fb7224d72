"""Against the local Kafka and Redis that the test session starts (see tests/integration/conftest.py).

Creates a uniquely named 3-partition topic with ``ensure_topics``, checks its metadata, round-trips
one message through a consumer group (which also proves the broker's internal
``__consumer_offsets`` settings work on a single node), PINGs Redis, and deletes the topic.
"""

from __future__ import annotations

import asyncio
import uuid

import pytest

from stream.local import LocalRedis
from stream.settings import get_settings
from stream.topics import delete_topics, ensure_topics

pytestmark = [pytest.mark.kafka, pytest.mark.redis, pytest.mark.timeout(60)]


@pytest.fixture(scope="module")
def bootstrap(services: object) -> str:
    return get_settings().kafka_bootstrap


@pytest.fixture(scope="module")
def redis_service(services: object) -> LocalRedis:
    return LocalRedis(get_settings())


@pytest.mark.asyncio
async def test_topic_roundtrip_and_redis_ping(bootstrap: str, redis_service: LocalRedis) -> None:
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
    from aiokafka.admin import AIOKafkaAdminClient

    topic = f"finpulse-test-{uuid.uuid4().hex[:12]}"
    try:
        assert await ensure_topics(bootstrap, {topic: 3}) == [topic]
        # Idempotent: a second call finds it and creates nothing.
        assert await ensure_topics(bootstrap, {topic: 3}) == []

        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        await admin.start()
        try:
            (meta,) = await admin.describe_topics([topic])
        finally:
            await admin.close()
        assert meta["error_code"] == 0
        assert sorted(p["partition"] for p in meta["partitions"]) == [0, 1, 2]

        producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
        await producer.start()
        try:
            record = await producer.send_and_wait(topic, b'{"hello": "finpulse"}', key=b"k1", partition=2)
        finally:
            await producer.stop()
        assert record.partition == 2

        consumer = AIOKafkaConsumer(
            topic,
            bootstrap_servers=bootstrap,
            group_id=f"{topic}-group",
            auto_offset_reset="earliest",
            session_timeout_ms=6000,
            heartbeat_interval_ms=500,
        )
        await consumer.start()
        try:
            msg = await asyncio.wait_for(consumer.getone(), timeout=20)
            await consumer.commit()
        finally:
            await consumer.stop()
        assert (msg.key, msg.value, msg.partition) == (b"k1", b'{"hello": "finpulse"}', 2)
    finally:
        await delete_topics(bootstrap, [topic])

    await redis_service.ping(timeout=5)
