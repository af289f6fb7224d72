"""(d) SIGTERM mid-stream, and (e) a rebalance under load (a second worker joins, the first leaves).

(d) In-flight batches must finish and be committed before the worker exits, and it must exit
within the consumer group's session timeout. Checked from outside once it is gone: every input
below the committed offsets has its outputs (commits never run ahead), and every event the worker
scored is below them (nothing it finished was left uncommitted). A restarted worker then finds
nothing lost and redoes nothing: exact counts, and no event scored as a duplicate.

(e) Events keep arriving at a steady rate while a second worker joins the group and the first is
then stopped with SIGTERM. Exact counts, every alert id of the reference run present, none twice.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import orjson
import pytest

from engine.settings import EngineSettings
from stream.settings import StreamSettings
from stream.topics import ensure_topics
from stream.worker import topic_plan
from tests.faults.conftest import PIPELINE
from tests.faults.harness import (
    ResultLog,
    Worker,
    committed_offsets,
    produce_raw,
    read_topic,
    redis_metrics,
    wait_caught_up,
    wait_until,
    with_settings,
)
from tests.faults.streams import FaultStream
from tests.faults.verify import verify_exact, wait_for_alerts

pytestmark = [pytest.mark.fault, pytest.mark.kafka, pytest.mark.redis, pytest.mark.slow, pytest.mark.timeout(300)]


async def test_sigterm_mid_stream(
    fault_settings: StreamSettings,
    fault_stream: FaultStream,
    reference: dict[str, Any],
    null_engine: EngineSettings,
    workers: Callable[..., Worker],
    results: ResultLog,
) -> None:
    s = with_settings(fault_settings, **PIPELINE)
    await ensure_topics(s.kafka_bootstrap, topic_plan(s))
    t_start = time.monotonic()
    await produce_raw(s.kafka_bootstrap, s.input_topic, fault_stream.records)
    w1 = workers(s, null_engine, "w1-sigterm")
    await w1.await_ready()
    await wait_until(lambda: w1.metric("scored") >= 800 or not w1.alive, 90, "w1 scores 800")
    scored_at_term = w1.metric("scored")
    exit_s = await asyncio.to_thread(w1.terminate, 60.0)
    rc = w1.proc.returncode if w1.proc else None

    # What the stopped worker left behind.
    committed = await committed_offsets(s)
    inputs = await read_topic(s.kafka_bootstrap, s.input_topic)
    id_of = {v: k.decode() for k, v, _ in fault_stream.records if k is not None}
    below = {id_of[r.value] for r in inputs if r.value in id_of and r.offset < committed[r.partition]}
    scored_then = {orjson.loads(r.value)["id"] for r in await read_topic(s.kafka_bootstrap, s.scored_topic) if r.value}
    counted_then = (await redis_metrics(s)).get("counted", 0)

    w2 = workers(s, null_engine, "w2-after-sigterm")
    await w2.await_ready()
    restart_s = await wait_until(lambda: w2.metric("scored") > 0 or not w2.alive, 90, "w2 scores")
    await wait_caught_up(s, 120, [w2])
    alert_wait = await wait_for_alerts(s, reference["alert_ids"], timeout=s.alert_lease_s + 20)
    figures = await verify_exact(s, fault_stream, reference)
    figures.update(
        scored_at_sigterm=scored_at_term,
        exit_s=round(exit_s, 2),
        exit_code=rc,
        session_timeout_s=s.broker_session_timeout_s,
        committed_at_exit=sum(committed.values()),
        scored_at_exit=len(scored_then),
        counted_at_exit=counted_then,
        restart_to_first_batch_s=round(restart_s, 2),
        alert_wait_after_caught_up_s=round(alert_wait, 2),
        total_s=round(time.monotonic() - t_start, 1),
    )
    p = figures["problems"]
    if not exit_s < s.broker_session_timeout_s:
        p.append(
            f"worker took {exit_s:.1f}s to exit after SIGTERM, over the session timeout {s.broker_session_timeout_s}s"
        )
    if rc != 0:
        p.append(f"worker exit code after SIGTERM: {rc}")
    if ahead := below - scored_then:
        p.append(
            f"{len(ahead)} committed inputs have no scored output (commit ran ahead of outputs), "
            f"e.g. {sorted(ahead)[:3]}"
        )
    if uncommitted := scored_then - below:
        p.append(
            f"{len(uncommitted)} events scored before the exit were not committed (in-flight batches not committed), "
            f"e.g. {sorted(uncommitted)[:3]}"
        )
    if counted_then != len(scored_then):
        p.append(f"at exit Redis counted {counted_then} but {len(scored_then)} events were scored")
    if figures["scored_statuses"].get("duplicate"):
        p.append(f"the restarted worker redid {figures['scored_statuses']['duplicate']} events (scored as duplicate)")
    results.write("d_sigterm", "fail" if p else "pass", **figures)
    assert not p, "\n".join(p)


async def test_rebalance_under_load(
    fault_settings: StreamSettings,
    fault_stream: FaultStream,
    reference: dict[str, Any],
    null_engine: EngineSettings,
    workers: Callable[..., Worker],
    results: ResultLog,
) -> None:
    s = with_settings(fault_settings, **PIPELINE)
    await ensure_topics(s.kafka_bootstrap, topic_plan(s))
    t_start = time.monotonic()
    rate = 100.0
    producing = asyncio.ensure_future(produce_raw(s.kafka_bootstrap, s.input_topic, fault_stream.records, rate=rate))
    try:
        w1 = workers(s, null_engine, "w1")
        await w1.await_ready()
        await wait_until(lambda: w1.metric("scored") >= 600 or not w1.alive, 90, "w1 scores 600")
        w2 = workers(s, null_engine, "w2-joins")
        t_join = time.monotonic()
        await w2.await_ready()
        # The newcomer got partitions and works: the rebalance happened under load.
        await wait_until(lambda: w2.metric("scored") >= 100 or not w2.alive, 90, "w2 scores 100")
        join_to_work_s = time.monotonic() - t_join
        assert not producing.done(), (
            "the stream ended before the first worker could leave: raise the stream or lower the rate"
        )
        w1_scored = w1.metric("scored")
        exit_s = await asyncio.to_thread(w1.terminate, 60.0)
        await producing
    finally:
        if not producing.done():
            producing.cancel()
    await wait_caught_up(s, 120, [w2])
    alert_wait = await wait_for_alerts(s, reference["alert_ids"], timeout=s.alert_lease_s + 20)
    figures = await verify_exact(s, fault_stream, reference, no_duplicate_alerts=True)
    figures.update(
        rate_per_s=rate,
        w1_scored=w1_scored,
        w2_scored=w2.metric("scored"),
        join_to_work_s=round(join_to_work_s, 2),
        w1_exit_s=round(exit_s, 2),
        alert_wait_after_caught_up_s=round(alert_wait, 2),
        total_s=round(time.monotonic() - t_start, 1),
    )
    results.write("e_rebalance", "fail" if figures["problems"] else "pass", **figures)
    assert not figures["problems"], "\n".join(figures["problems"])
