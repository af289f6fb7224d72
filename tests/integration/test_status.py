"""``finpulse status`` against the real Kafka: lag per partition and the commit rate of a group."""

from __future__ import annotations

import asyncio

import orjson
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.structs import OffsetAndMetadata
from click.testing import CliRunner

from stream.cli.status import group_status, status_cmd
from stream.settings import StreamSettings
from stream.topics import delete_topics, ensure_topics

pytestmark = [pytest.mark.kafka]


async def _produce(bootstrap: str, topic: str, per_partition: dict[int, int]) -> None:
    p = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await p.start()
    try:
        for part, n in per_partition.items():
            for i in range(n):
                await p.send_and_wait(topic, orjson.dumps({"i": i}), partition=part)
    finally:
        await p.stop()


async def _commit(bootstrap: str, group: str, topic: str, offsets: dict[int, int]) -> None:
    """Commit as a member of ``group`` would (manual assignment, explicit offsets)."""
    c = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    await c.start()
    try:
        tps = {TopicPartition(topic, p): OffsetAndMetadata(o, "") for p, o in offsets.items()}
        c.assign(list(tps))
        await c.commit(tps)
    finally:
        await c.stop()


async def test_lag_and_rate_per_partition(isolated_settings: StreamSettings) -> None:
    s = isolated_settings
    topic, group = s.input_topic, s.consumer_group
    await ensure_topics(s.kafka_bootstrap, {topic: 3})
    try:
        await _produce(s.kafka_bootstrap, topic, {0: 10, 1: 5})
        await _commit(s.kafka_bootstrap, group, topic, {0: 4, 1: 5})

        once = await group_status(s.kafka_bootstrap, group, topic, interval_s=0)
        by = {p.partition: p for p in once.partitions}
        assert (by[0].committed, by[0].end, by[0].lag) == (4, 10, 6)
        assert (by[1].committed, by[1].end, by[1].lag) == (5, 5, 0)
        assert (by[2].committed, by[2].end, by[2].lag) == (None, 0, 0)  # nothing committed, nothing to read
        assert once.lag == 6 and once.events_per_s == 0

        # The group moves partition 0 on by 6 while status watches: that is its rate.
        watch = asyncio.create_task(group_status(s.kafka_bootstrap, group, topic, interval_s=3.0))
        await asyncio.sleep(0.5)
        await _commit(s.kafka_bootstrap, group, topic, {0: 10})
        st = await watch
        by = {p.partition: p for p in st.partitions}
        assert by[0].lag == 0 and by[1].events_per_s == 0
        assert 6 / 3.5 <= by[0].events_per_s <= 6 / 2.5 and st.events_per_s == by[0].events_per_s

        # The command prints the same as JSON (what an operator's script would read).
        res = await asyncio.to_thread(
            CliRunner().invoke,
            status_cmd,
            ["--interval", "0", "--group", group, "--topic", topic, "--json"],
            env={"FINPULSE_KAFKA_BOOTSTRAP": s.kafka_bootstrap},
        )
        assert res.exit_code == 0, res.output
        out = orjson.loads(res.output)
        assert out["lag"] == 0 and [p["end"] for p in out["partitions"]] == [10, 5, 0]

        # An unknown topic is a clear error, not a traceback.
        res = await asyncio.to_thread(
            CliRunner().invoke,
            status_cmd,
            ["--interval", "0", "--topic", f"{topic}.missing"],
            env={"FINPULSE_KAFKA_BOOTSTRAP": s.kafka_bootstrap},
        )
        assert res.exit_code == 1 and "does not exist" in res.output
    finally:
        await delete_topics(s.kafka_bootstrap, [topic])
