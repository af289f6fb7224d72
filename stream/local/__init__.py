"""Run Kafka and Redis on this machine without Docker (development, demo, tests). The worker never imports this."""

from stream.local.services import LocalKafka, LocalRedis, LocalServices, ServiceError

__all__ = ["LocalKafka", "LocalRedis", "LocalServices", "ServiceError"]
