"""Kafka topic admin for the worker and the tools: create the topics a deployment needs, delete test topics.

Faust does not create source topics with the partition count we want, so every topic is created
here (through aiokafka's admin client) before a worker starts.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping
from typing import Any

import structlog

from stream.security import kafka_client_kwargs
from stream.settings import StreamSettings

log = structlog.get_logger(__name__)


async def ensure_topics(
    bootstrap: str | StreamSettings,
    topics: Mapping[str, int],
    *,
    replication_factor: int = 1,
    configs: Mapping[str, Mapping[str, str]] | None = None,
    timeout: float = 30.0,
) -> list[str]:
    """Create the missing topics with the given partition counts; return the names created.

    Existing topics are left as they are (a partition count lower than asked is logged as a
    warning, since Faust needs source and changelog partition counts to agree). Waits until
    every partition of the created topics has a leader, so producing right after does not
    race the controller.
    """
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic
    from aiokafka.errors import TopicAlreadyExistsError, for_code

    admin = AIOKafkaAdminClient(**kafka_client_kwargs(bootstrap), request_timeout_ms=int(timeout * 1000))
    created: list[str] = []
    try:
        async with asyncio.timeout(timeout):
            await admin.start()
            existing = await _partition_counts(admin, list(topics))
            for name, have in existing.items():
                if have < topics[name]:
                    log.warning(
                        "topic has fewer partitions than wanted", topic=name, partitions=have, wanted=topics[name]
                    )
            missing = [name for name in topics if name not in existing]
            if missing:
                response = await admin.create_topics(
                    [
                        NewTopic(
                            name, topics[name], replication_factor, topic_configs=dict((configs or {}).get(name, {}))
                        )
                        for name in missing
                    ],
                    timeout_ms=int(timeout * 1000),
                )
                for name, code, message in _topic_errors(response):
                    if code == 0:
                        created.append(name)
                        continue
                    err = for_code(code)
                    if err is TopicAlreadyExistsError:  # created concurrently: fine
                        continue
                    raise err(f"creating topic {name}: {message}")
                await _wait_for_leaders(admin, {n: topics[n] for n in created})
    finally:
        await admin.close()
    if created:
        log.info("topics created", topics={n: topics[n] for n in created})
    return created


async def delete_topics(bootstrap: str | StreamSettings, topics: Iterable[str], *, timeout: float = 30.0) -> list[str]:
    """Delete the topics that exist (unknown names are ignored); return the names deleted."""
    from aiokafka.admin import AIOKafkaAdminClient
    from aiokafka.errors import UnknownTopicOrPartitionError, for_code

    names = list(topics)
    admin = AIOKafkaAdminClient(**kafka_client_kwargs(bootstrap), request_timeout_ms=int(timeout * 1000))
    deleted: list[str] = []
    try:
        async with asyncio.timeout(timeout):
            await admin.start()
            present = [n for n in names if n in set(await admin.list_topics())]
            if present:
                response = await admin.delete_topics(present, timeout_ms=int(timeout * 1000))
                for name, code, *_ in _topic_errors(response):
                    if code == 0:
                        deleted.append(name)
                    elif for_code(code) is not UnknownTopicOrPartitionError:
                        raise for_code(code)(f"deleting topic {name}")
    finally:
        await admin.close()
    if deleted:
        log.info("topics deleted", topics=deleted)
    return deleted


def _topic_errors(response: Any) -> list[tuple[str, int, str | None]]:
    """(name, error_code, message) per topic from a Create/DeleteTopics response of any version."""
    obj = response.to_object()
    rows = obj.get("topic_errors") or obj.get("topic_error_codes") or obj.get("topics") or []
    out: list[tuple[str, int, str | None]] = []
    for row in rows:
        name = row.get("topic") or row.get("name")
        out.append((str(name), int(row.get("error_code", 0)), row.get("error_message")))
    return out


async def partition_count(bootstrap: str | StreamSettings, topic: str, *, timeout: float = 10.0) -> int | None:
    """How many partitions ``topic`` has, or None when it does not exist."""
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(**kafka_client_kwargs(bootstrap), request_timeout_ms=int(timeout * 1000))
    try:
        async with asyncio.timeout(timeout):
            await admin.start()
            return (await _partition_counts(admin, [topic])).get(topic)
    finally:
        await admin.close()


async def _partition_counts(admin: Any, names: list[str]) -> dict[str, int]:
    """``{topic: partitions}`` for those of ``names`` that exist."""
    if not names:
        return {}
    present = set(await admin.list_topics())
    wanted = [n for n in names if n in present]
    if not wanted:
        return {}
    return {t["topic"]: len(t["partitions"]) for t in await admin.describe_topics(wanted) if t["error_code"] == 0}


async def _wait_for_leaders(admin: Any, topics: Mapping[str, int]) -> None:
    """Poll metadata until every partition of ``topics`` exists and has a leader."""
    while topics:
        meta = await admin.describe_topics(list(topics))
        ready = {
            t["topic"]
            for t in meta
            if t["error_code"] == 0
            and len(t["partitions"]) >= topics[t["topic"]]
            and all(p["leader"] >= 0 for p in t["partitions"])
        }
        if ready >= set(topics):
            return
        await asyncio.sleep(0.1)
