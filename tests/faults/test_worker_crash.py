"""(a) kill -9 the worker mid-stream, several times, at different points; restart it each time.

Five deaths in one run, each followed by a fresh worker in the same consumer group:

1. kill -9 from outside once the worker has scored a few hundred events;
2. the worker SIGKILLs itself after a batch's outputs are durable, before its inputs are acked
   (``fault_crash_point=before_ack``): the whole batch comes back as duplicates;
3. (a clean SIGTERM, so that the next crash lands exactly where it must)
4. the worker SIGKILLs itself right after the Redis call of the batch that closes a surge's bucket,
   before that alert is sent (``after_redis_apply``): the case that used to lose alerts for good.
   To hit it deterministically, the last partition is held back at the surge bucket's end while
   the other partitions run to the end; then the held-back rest arrives, and the very first batch
   closes the bucket (the low watermark is the minimum over partitions) and dies. The test checks
   that this is what happened: Redis counted the batch, the surge's alert is not in the topic;
4. the worker SIGKILLs itself right after sending an alert, before settling it (``after_alert_send``);
5. a last worker finishes.

Then exact counts: every valid input counted exactly once in Redis, every id scored, every bad
input dead-lettered, and every alert id of the fault-free reference run present (duplicates are
allowed: delivery is at least once, keyed by alert id).
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


async def _self_crash(w: Worker, timeout: float = 90.0) -> dict[str, Any]:
    """Wait for a worker that was told to kill itself at a crash point; it must die by SIGKILL."""
    await w.await_ready()
    t0 = time.monotonic()
    last = 0
    while w.alive and time.monotonic() - t0 < timeout:
        last = w.metric("scored") or last
        await asyncio.sleep(0.1)
    assert not w.alive, f"{w.log_path.name}: crash point {w.settings.fault_crash_point} never reached in {timeout:.0f}s"
    assert w.proc is not None and w.proc.returncode == -9, (
        f"{w.log_path.name} exited with {w.proc.returncode if w.proc else None}, expected SIGKILL (-9):\n{w.log_tail()}"
    )
    assert "fault_injected_crash" in w.log_text(), (
        f"{w.log_path.name} died, but not at its crash point:\n{w.log_tail()}"
    )
    return {
        "how": f"crash point {w.settings.fault_crash_point} #{w.settings.fault_crash_after}",
        "scored_before_at_last_poll": last,
    }


async def _alert_ids(s: StreamSettings) -> set[str]:
    return {orjson.loads(r.value)["id"] for r in await read_topic(s.kafka_bootstrap, s.alerts_topic) if r.value}


async def test_worker_kill9_mid_stream(
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

    # The first surge alert of the reference run, and where its bucket ends in event time.
    surge = min(
        (a for a in reference["alerts"] if a["entity"] in fault_stream.burst_tickers), key=lambda a: a["window_end"]
    )
    held = fault_stream.partitions - 1
    # Records of the held partition from its first event at or after the surge bucket's end on
    # (bad ones included, in order) wait for phase 2.
    cut = next(
        i
        for i, (r, ts) in enumerate(zip(fault_stream.records, fault_stream.record_ts, strict=True))
        if r[2] == held and ts is not None and ts >= surge["window_end"]
    )
    phase1 = [r for i, r in enumerate(fault_stream.records) if not (r[2] == held and i >= cut)]
    phase2 = [r for i, r in enumerate(fault_stream.records) if r[2] == held and i >= cut]
    await produce_raw(s.kafka_bootstrap, s.input_topic, phase1)

    deaths: list[dict[str, Any]] = []
    recoveries: list[float] = []

    async def recovered(w: Worker) -> None:
        # Recovery: from launching the replacement until it has scored its first batch.
        t0 = w.started_at
        await wait_until(lambda: w.metric("scored") > 0 or not w.alive, 90, f"{w.log_path.name} scores")
        recoveries.append(round(time.monotonic() - t0, 2))

    # 1. kill -9 from outside after 500 scored events
    w = workers(s, null_engine, "w1-kill9")
    await w.await_ready()
    await wait_until(lambda: w.metric("scored") >= 500 or not w.alive, 90, "w1 scores 500")
    assert w.alive, f"w1 died by itself:\n{w.log_tail()}"
    scored = w.metric("scored")
    w.kill9()
    deaths.append({"how": "kill -9 from outside", "scored_before": scored})

    # 2. crash after a batch's outputs are durable, before its inputs are acked (10th batch)
    w = workers(s, null_engine, "w2-before-ack", fault_crash_point="before_ack", fault_crash_after=10)
    deaths.append(await _self_crash(w))

    # 3. a worker finishes phase 1 and stops cleanly (the held partition now sits at the surge bucket's end)
    w = workers(s, null_engine, "w3-phase1")
    await recovered(w)
    await wait_caught_up(s, 120, [w])
    w.terminate()
    assert surge["id"] not in await _alert_ids(s), "the surge bucket closed before its partition passed its end"

    # 4. the first batch of the held partition's rest closes the surge bucket: crash before the alert is sent
    counted_before = (await redis_metrics(s)).get("counted", 0)
    await produce_raw(s.kafka_bootstrap, s.input_topic, phase2)
    w = workers(s, null_engine, "w4-after-redis-apply", fault_crash_point="after_redis_apply", fault_crash_after=1)
    deaths.append(await _self_crash(w))
    counted_after = (await redis_metrics(s)).get("counted", 0)
    assert counted_after > counted_before, "the crash came before the batch reached Redis"
    pending_at_crash = sorted(
        {a["id"] for a in reference["alerts"] if a["window_end"] <= surge["window_end"]} - await _alert_ids(s)
    )
    assert surge["id"] in pending_at_crash, "the surge alert was sent before the crash: the crash point missed its spot"
    deaths[-1].update(
        counted_by_crashed_batch=counted_after - counted_before, alerts_unsent_at_crash=len(pending_at_crash)
    )

    # 5. crash right after an alert was sent, before it is settled in Redis
    w = workers(s, null_engine, "w5-after-alert-send", fault_crash_point="after_alert_send", fault_crash_after=1)
    deaths.append(await _self_crash(w))

    # 6. a last worker finishes the stream
    w = workers(s, null_engine, "w6-final")
    await recovered(w)
    await wait_caught_up(s, 120, [w])
    alert_wait = await wait_for_alerts(s, reference["alert_ids"], timeout=s.alert_lease_s + 20)
    figures = await verify_exact(s, fault_stream, reference)
    figures.update(
        deaths=deaths,
        recovery_s=recoveries,
        alert_wait_after_caught_up_s=round(alert_wait, 2),
        total_s=round(time.monotonic() - t_start, 1),
    )
    results.write("a_worker_kill9", "fail" if figures["problems"] else "pass", **figures)
    assert not figures["problems"], "\n".join(figures["problems"])
