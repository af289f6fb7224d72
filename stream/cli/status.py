"""``finpulse status``: what the consumer group is doing, read from Kafka itself.

Lag per input partition is the partition's end offset minus the group's committed offset, and the
rate is how far the committed offsets moved between two reads ``interval`` seconds apart. Both come
from Kafka, not from a worker, so the view covers every worker of the group (on any machine) and
works while a worker is down, when lag matters most.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import asdict, dataclass
from typing import Any

import click
import orjson
from rich.table import Table

from stream.security import kafka_bootstrap_of, kafka_client_kwargs
from stream.settings import StreamSettings, get_settings
from stream.topics import partition_count


@dataclass(frozen=True)
class PartitionStatus:
    """One input partition: the group's committed offset, the end offset, the lag and the commit rate."""

    partition: int
    committed: int | None  # None: the group has committed nothing on this partition yet
    end: int
    lag: int
    events_per_s: float


@dataclass(frozen=True)
class GroupStatus:
    """The consumer group on the input topic, summed over its partitions."""

    group: str
    topic: str
    interval_s: float
    partitions: list[PartitionStatus]

    @property
    def lag(self) -> int:
        return sum(p.lag for p in self.partitions)

    @property
    def events_per_s(self) -> float:
        return round(sum(p.events_per_s for p in self.partitions), 1)

    def as_dict(self) -> dict[str, Any]:
        return {
            "group": self.group,
            "topic": self.topic,
            "interval_s": self.interval_s,
            "lag": self.lag,
            "events_per_s": self.events_per_s,
            "partitions": [asdict(p) for p in self.partitions],
        }


async def group_status(bootstrap: str | StreamSettings, group: str, topic: str, interval_s: float = 2.0) -> GroupStatus:
    """Read committed and end offsets twice, ``interval_s`` apart (0: once, and no rate)."""
    from aiokafka import AIOKafkaConsumer, TopicPartition
    from aiokafka.admin import AIOKafkaAdminClient

    n = await partition_count(bootstrap, topic)
    if not n:
        raise click.ClickException(f"topic {topic!r} does not exist on {kafka_bootstrap_of(bootstrap)}")
    tps = [TopicPartition(topic, i) for i in range(n)]
    admin = AIOKafkaAdminClient(**kafka_client_kwargs(bootstrap), request_timeout_ms=10_000)
    # A consumer outside the group (no group_id): it only asks for end offsets and never joins.
    consumer = AIOKafkaConsumer(**kafka_client_kwargs(bootstrap), enable_auto_commit=False, request_timeout_ms=10_000)
    await admin.start()
    await consumer.start()
    try:

        async def read() -> tuple[float, dict[int, int | None]]:
            offsets = await admin.list_consumer_group_offsets(group, partitions=tps)
            committed = {tp.partition: (om.offset if om.offset >= 0 else None) for tp, om in offsets.items()}
            return time.monotonic(), committed

        t0, first = await read()
        if interval_s > 0:
            await asyncio.sleep(interval_s)
        t1, second = await read()
        ends = await consumer.end_offsets(tps)
    finally:
        await consumer.stop()
        await admin.close()
    dt = t1 - t0
    out = []
    for tp in tps:
        c0, c1 = first.get(tp.partition), second.get(tp.partition)
        end = int(ends[tp])
        # A partition with no commit at the first read has no rate yet (its first commit could be anywhere).
        rate = (c1 - c0) / dt if interval_s > 0 and c0 is not None and c1 is not None and dt > 0 else 0.0
        out.append(PartitionStatus(tp.partition, c1, end, end - (c1 or 0), round(rate, 1)))
    return GroupStatus(group, topic, interval_s, out)


def status_table(st: GroupStatus) -> Table:
    t = Table(
        title=f"group {st.group} on {st.topic}: lag {st.lag}, {st.events_per_s:g} events/s "
        f"(committed offsets over {st.interval_s:g}s)",
        title_justify="left",
    )
    for col in ("partition", "committed", "end", "lag", "events/s"):
        t.add_column(col, justify="right")
    for p in st.partitions:
        t.add_row(
            str(p.partition),
            "-" if p.committed is None else str(p.committed),
            str(p.end),
            str(p.lag),
            f"{p.events_per_s:g}",
        )
    return t


@click.command("status")
@click.option("--interval", type=float, default=2.0, show_default=True, help="Seconds between the two offset reads.")
@click.option("--group", default=None, help="Consumer group (default: FINPULSE_CONSUMER_GROUP).")
@click.option("--topic", default=None, help="Input topic (default: FINPULSE_INPUT_TOPIC).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def status_cmd(interval: float, group: str | None, topic: str | None, as_json: bool) -> None:
    """Consumer lag per input partition and events/s, for the whole consumer group."""
    s: StreamSettings = get_settings()
    st = asyncio.run(group_status(s, group or s.consumer_group, topic or s.input_topic, interval))
    if as_json:
        click.echo(orjson.dumps(st.as_dict()).decode())
        return
    from stream.cli.console import make_console

    make_console().print(status_table(st))
