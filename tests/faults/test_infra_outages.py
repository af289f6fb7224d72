"""(b) kill -9 the Kafka broker mid-stream and restart it; (c) the same with Redis.

The worker is left alone: it must wait through the outage (retrying, not dropping, not dying) and
resume by itself once the service is back on its old data (Kafka's log dir, Redis's append-only
file). Then the same exact counts and alert ids as the fault-free reference run.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import pytest

from engine.settings import EngineSettings
from stream.settings import StreamSettings
from stream.topics import ensure_topics
from stream.worker import topic_plan
from tests.faults.conftest import PIPELINE
from tests.faults.harness import (
    ResultLog,
    Worker,
    produce_raw,
    redis_for,
    wait_caught_up,
    wait_until,
    with_settings,
)
from tests.faults.infra import FaultInfra
from tests.faults.streams import FaultStream
from tests.faults.verify import verify_exact, wait_for_alerts

pytestmark = [pytest.mark.fault, pytest.mark.kafka, pytest.mark.redis, pytest.mark.slow, pytest.mark.timeout(300)]

KILL_AT_SCORED = 800
OUTAGE_S = 3.0


async def _aof(s: StreamSettings) -> dict[str, str]:
    r = redis_for(s)
    try:
        cfg = await r.config_get("append*")
    finally:
        await r.aclose()
    text = {
        (k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v) for k, v in cfg.items()
    }
    return {k: v for k, v in text.items() if k in ("appendonly", "appendfsync")}


async def _outage(
    service: str,
    fault_infra: FaultInfra,
    s: StreamSettings,
    fault_stream: FaultStream,
    reference: dict[str, Any],
    null_engine: EngineSettings,
    workers: Callable[..., Worker],
) -> dict[str, Any]:
    await ensure_topics(s.kafka_bootstrap, topic_plan(s))
    t_start = time.monotonic()
    await produce_raw(s.kafka_bootstrap, s.input_topic, fault_stream.records)
    w = workers(s, null_engine, "worker")
    await w.await_ready()
    await wait_until(lambda: w.metric("scored") >= KILL_AT_SCORED or not w.alive, 90, f"worker scores {KILL_AT_SCORED}")
    scored_at_kill = w.metric("scored")
    kill, restart = {
        "kafka": (fault_infra.kill_kafka, fault_infra.restart_kafka),
        "redis": (fault_infra.kill_redis, fault_infra.restart_redis),
    }[service]
    t_kill = time.monotonic()
    await asyncio.to_thread(kill)
    # During the outage: the worker stays up, and says why it is degraded.
    degraded: list[str] = []
    statuses: set[str] = set()
    while time.monotonic() - t_kill < OUTAGE_S:
        h = w.health() or {}
        statuses.add(str(h.get("status")))
        if h.get("status") == "degraded":
            degraded = list(h.get("degraded_reasons") or []) or ["(no reason given)"]
        await asyncio.sleep(0.2)
    assert w.alive, f"the worker died while {service} was down:\n{w.log_tail()}"
    scored_during = w.metric("scored")
    restart_s = await asyncio.to_thread(restart)
    t_back = time.monotonic()
    # Recovery: from the service answering again until the worker scores new events.
    await wait_until(
        lambda: w.metric("scored") > scored_during or not w.alive, 120, f"worker resumes after {service} restart"
    )
    recovery_s = time.monotonic() - t_back
    await wait_caught_up(s, 120, [w])
    alert_wait = await wait_for_alerts(s, reference["alert_ids"], timeout=s.alert_lease_s + 20)
    status_after = (w.health() or {}).get("status")
    figures = await verify_exact(s, fault_stream, reference)
    m = (w.health() or {}).get("metrics", {})
    figures.update(
        scored_at_kill=scored_at_kill,
        scored_while_down=scored_during - scored_at_kill,
        outage_s=round(t_back - t_kill, 1),
        service_restart_s=round(restart_s, 1),
        recovery_s=round(recovery_s, 2),
        degraded_reasons_seen=degraded,
        health_during_outage=sorted(statuses),
        redis_aof=await _aof(s),
        health_after=status_after,
        infra_retries=m.get("infra_retries"),
        alert_wait_after_caught_up_s=round(alert_wait, 2),
        total_s=round(time.monotonic() - t_start, 1),
    )
    if not w.alive:
        figures["problems"].append(f"the worker exited with {w.proc.returncode if w.proc else None}")
    if status_after != "ok":
        figures["problems"].append(f"/health still says {status_after!r} after recovery")
    return figures


async def test_kafka_broker_kill9_and_restart(
    fault_infra: FaultInfra,
    fault_settings: StreamSettings,
    fault_stream: FaultStream,
    reference: dict[str, Any],
    null_engine: EngineSettings,
    workers: Callable[..., Worker],
    results: ResultLog,
) -> None:
    s = with_settings(fault_settings, **PIPELINE)
    figures = await _outage("kafka", fault_infra, s, fault_stream, reference, null_engine, workers)
    results.write("b_kafka_kill9", "fail" if figures["problems"] else "pass", **figures)
    assert not figures["problems"], "\n".join(figures["problems"])


async def test_redis_kill9_and_restart(
    fault_infra: FaultInfra,
    fault_settings: StreamSettings,
    fault_stream: FaultStream,
    reference: dict[str, Any],
    null_engine: EngineSettings,
    workers: Callable[..., Worker],
    results: ResultLog,
) -> None:
    s = with_settings(fault_settings, **PIPELINE)
    figures = await _outage("redis", fault_infra, s, fault_stream, reference, null_engine, workers)
    # Every batch needs Redis, so the outage must show in /health while it lasts.
    if not figures["degraded_reasons_seen"]:
        figures["problems"].append("/health never said 'degraded' while Redis was down")
    results.write("c_redis_kill9", "fail" if figures["problems"] else "pass", **figures)
    assert not figures["problems"], "\n".join(figures["problems"])
