"""Run Kafka and Redis on this machine without Docker (development, demo, tests). The worker never imports this.

``process`` holds the pid-file lifecycle both share, ``kafka`` and ``redis`` one service each,
``services`` both together.
"""

from stream.local.kafka import LocalKafka
from stream.local.process import LocalService, ServiceError
from stream.local.redis import LocalRedis
from stream.local.services import LocalServices

__all__ = ["LocalKafka", "LocalRedis", "LocalService", "LocalServices", "ServiceError"]
