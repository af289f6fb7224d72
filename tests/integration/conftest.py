"""Integration fixtures: the real Kafka and Redis, started by the test session itself.

They are never skipped: if a service cannot start, every integration test errors with the reason.
Only what this session started is stopped at the end.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from stream.local import LocalServices
from stream.settings import StreamSettings, get_settings
from tests.support.tiny_bert import make_keyword_model


@pytest.fixture(scope="session")
def services() -> Iterator[LocalServices]:
    svc = LocalServices(get_settings())
    svc.ensure_installed()
    started = svc.start(timeout=120)
    svc.wait_ready(120)
    try:
        yield svc
    finally:
        svc.stop([name for name, mine in started.items() if mine])


@pytest.fixture()
def isolated_settings(services: LocalServices, tmp_path: Path) -> StreamSettings:
    """Fresh topic names, consumer group, Redis prefix and web port for one test."""
    tag = uuid.uuid4().hex[:10]
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return get_settings().model_copy(
        update={
            "input_topic": f"t.{tag}.events",
            "scored_topic": f"t.{tag}.scored",
            "alerts_topic": f"t.{tag}.alerts",
            "dlq_topic": f"t.{tag}.dlq",
            "consumer_group": f"g-{tag}",
            "redis_prefix": f"test:{tag}",
            "worker_web_port": port,
            "partitions": 3,
            "local_dir": get_settings().local_dir,
        }
    )


@pytest.fixture(scope="session")
def keyword_model_dir(tmp_path_factory: pytest.TempPathFactory, sample_texts: list[str]) -> Path:
    """A tiny BERT trained in seconds to call texts with crash-words negative (so an alert can be provoked)."""
    return make_keyword_model(tmp_path_factory.mktemp("kw") / "kw", sample_texts)
