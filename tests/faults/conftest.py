"""Fault-suite fixtures: a Kafka and a Redis of its own (ports 19092/19093 and 16379, data in
``.local/faults``), fresh names per test, worker processes that are always cleaned up, the input
stream, and one fault-free reference run whose alert ids every fault test must reproduce.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from engine.settings import EngineSettings
from stream.settings import StreamSettings
from stream.topics import delete_topics, ensure_topics
from stream.worker import topic_plan
from tests.faults.harness import (
    Outputs,
    ResultLog,
    Worker,
    clear_prefix,
    fresh_names,
    produce_raw,
    read_outputs,
    redis_metrics,
    wait_caught_up,
    window_state,
    with_settings,
)
from tests.faults.infra import FaultInfra
from tests.faults.streams import FaultStream, build_fault_stream

# Settings of the pipeline faults (a)-(e). Hourly buckets: the StockNet stream has about 150 tweets a
# day over 87 tickers. time_mode=replay: pure event time, so alerts do not depend on batching,
# timing or which worker ran what (that is what lets a crashed run be compared with a clean one).
PIPELINE = dict(
    partitions=4,
    time_mode="replay",
    bucket_seconds=3600,
    alert_window_seconds=3600,
    alert_baseline_seconds=3 * 3600,
    alert_min_count=5,
    allowed_lateness_seconds=3600,
    max_batch_size=32,
    max_wait_ms=50,
    broker_session_timeout_s=6.0,
    infra_retry_max_seconds=2.0,
    alert_lease_s=4.0,
)


@pytest.fixture(scope="session")
def fault_infra() -> Iterator[FaultInfra]:
    infra = FaultInfra()
    infra.start_fresh()
    try:
        yield infra
    finally:
        infra.stop()


@pytest.fixture(autouse=True)
def _services_up(request: pytest.FixtureRequest) -> None:
    """A test that killed Kafka or Redis and failed before restarting it must not break the next one."""
    if "fault_infra" not in request.fixturenames:
        return
    infra: FaultInfra = request.getfixturevalue("fault_infra")
    for svc in infra.services.services.values():
        if svc.managed_pid() is None:
            svc.start(wait=True, timeout=120)


@pytest.fixture(scope="session")
def results(fault_infra: FaultInfra) -> ResultLog:
    return ResultLog(fault_infra.settings.local_dir / "results.jsonl")


@pytest.fixture(scope="session")
def null_engine(tiny_model_dir: Path) -> EngineSettings:
    """The ``null`` backend (labels by a hash of the tokens) on a tiny checkpoint's tokenizer."""
    return EngineSettings(backend="null", model_dir=tiny_model_dir, max_batch_size=64)


@pytest.fixture()
def fault_settings(fault_infra: FaultInfra) -> Iterator[StreamSettings]:
    """Fresh topics, group, Redis prefix and web port on the suite's own Kafka and Redis."""
    s = fresh_names(fault_infra.settings)
    yield s

    # Best effort: the test may have left a service down on purpose (the autouse fixture restarts it).
    async def cleanup() -> None:
        await delete_topics(s.kafka_bootstrap, list(topic_plan(s)))
        await clear_prefix(s)

    try:
        asyncio.run(asyncio.wait_for(cleanup(), 60))
    except Exception:  # noqa: BLE001
        pass


@pytest.fixture()
def workers(tmp_path: Path) -> Iterator[Callable[..., Worker]]:
    """``start(settings, engine, name, **update) -> Worker``; every worker is killed at teardown."""
    started: list[Worker] = []

    def start(settings: StreamSettings, engine: EngineSettings, name: str, **update: Any) -> Worker:
        w = Worker.start(settings, engine, tmp_path, name, **update)
        started.append(w)
        return w

    yield start
    for w in started:
        if w.alive:
            w.kill9()


@pytest.fixture(scope="session")
def fault_stream(fault_infra: FaultInfra, null_engine: EngineSettings, tiny_model_dir: Path) -> FaultStream:
    return build_fault_stream(fault_infra.settings, null_engine, tiny_model_dir, partitions=int(PIPELINE["partitions"]))


@pytest.fixture(scope="session")
def reference(
    fault_infra: FaultInfra,
    fault_stream: FaultStream,
    null_engine: EngineSettings,
    tmp_path_factory: pytest.TempPathFactory,
    results: ResultLog,
) -> dict[str, Any]:
    """The same input once without faults: its alert ids (and counts) are what every fault run must give.

    Alert ids hash rule, entity and window only, so they do not depend on topic names or prefix.
    """
    s = with_settings(fresh_names(fault_infra.settings), **PIPELINE)
    log_dir = tmp_path_factory.mktemp("reference")

    async def run() -> tuple[Outputs, dict[str, int], dict[str, dict[str, int]]]:
        await ensure_topics(s.kafka_bootstrap, topic_plan(s))
        w = Worker.start(s, null_engine, log_dir, "reference")
        try:
            await w.await_ready()
            await produce_raw(s.kafka_bootstrap, s.input_topic, fault_stream.records)
            await wait_caught_up(s, 180, [w])
            out = await read_outputs(s)
            return out, await redis_metrics(s), await window_state(s)
        finally:
            w.stop()

    try:
        out, metrics, state = asyncio.run(run())
    finally:

        async def cleanup() -> None:
            await delete_topics(s.kafka_bootstrap, list(topic_plan(s)))
            await clear_prefix(s)

        asyncio.run(cleanup())
    ids = out.alert_ids
    assert len(out.scored) == len(fault_stream.events), "reference run: not every event scored once"
    assert sorted(d["reason"] for d in out.dlq) == sorted(r for _, r in fault_stream.bad)
    assert ids, "reference run raised no alert: the fault stream must contain surges"
    assert all(n == 1 for n in ids.values()), f"reference run repeated an alert: {ids.most_common(3)}"
    burst_entities = {a["entity"] for a in out.alerts if a["entity_kind"] == "ticker"}
    missing = set(fault_stream.burst_tickers) - burst_entities
    results.write(
        "reference",
        "ok",
        events_in=len(fault_stream.events),
        counted=metrics.get("counted"),
        scored=len(out.scored),
        alerts=len(ids),
        bursts_alerted=len(fault_stream.burst_tickers) - len(missing),
    )
    return {"alert_ids": set(ids), "alerts": out.alerts, "metrics": metrics, "state": state, "statuses": out.statuses()}
