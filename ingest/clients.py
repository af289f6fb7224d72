"""The ingester's Kafka producer and Redis client: built here and nowhere else in the package.

Both take their connection security (Kafka TLS/SASL, Redis ACL user, password, TLS) from
:mod:`stream.security`, as every other client of the project does.
"""

from __future__ import annotations

from aiokafka import AIOKafkaProducer
from redis.asyncio import Redis

from stream.security import kafka_client_kwargs, redis_from_settings
from stream.settings import StreamSettings


def kafka_producer(s: StreamSettings, *, request_timeout_s: float = 30.0) -> AIOKafkaProducer:
    """A producer that answers only for events the broker has durably written (acks=all, idempotent)."""
    return AIOKafkaProducer(
        **kafka_client_kwargs(s),
        acks="all",
        enable_idempotence=True,
        linger_ms=10,
        request_timeout_ms=int(request_timeout_s * 1000),
    )


def redis_client(s: StreamSettings) -> Redis:
    """A Redis client with short timeouts: an outage fails a poll (logged, retried next time), never hangs it."""
    return redis_from_settings(s, socket_timeout=5, socket_connect_timeout=2)
