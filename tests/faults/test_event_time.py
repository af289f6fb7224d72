"""Event time in live mode: (f) idle partitions, (f') wall-clock closing, (g) future timestamps.

(f) Four partitions, one warm-up event on each, then a surge of negative events on ONE partition
    only, timestamps near now, while the other three stay silent. The surge's partition keeps
    delivering (a keyed producer), the others do not: once they have been silent for
    ``idle_partition_s`` they must stop holding the low watermark back, so the surge's bucket closes
    as soon as its own partition passes the bucket's end, long before the wall-clock bound.
(f') The same surge with nothing at all after it: the bucket closes by the wall clock once it is
    ``live_close_delay_s`` past its end, so the alert arrives within bucket + delay (+ one tick).
(g) A few valid events dated 2099, then a normal stream: the 2099 events go to the DLQ
    (``future_timestamp``) and every normal event is counted, none late.
"""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

from engine.runtime import load_classifier
from engine.settings import EngineSettings
from stream.events import ms_to_iso
from stream.settings import StreamSettings
from stream.topics import ensure_topics
from stream.worker import topic_plan
from tests.faults.harness import (
    ResultLog,
    Worker,
    diff_states,
    expected_window_state,
    normalise_state,
    novelty_problems,
    produce_raw,
    read_outputs,
    read_topic,
    redis_metrics,
    wait_caught_up,
    wait_until,
    window_state,
    with_settings,
    without_novelty,
)
from tests.faults.streams import BURST_PHRASES
from tests.support.surge import negative_stories

pytestmark = [pytest.mark.fault, pytest.mark.kafka, pytest.mark.redis, pytest.mark.slow, pytest.mark.timeout(180)]

BUCKET_S = 5
SURGE = 10


def _live(settings: StreamSettings, **update: Any) -> StreamSettings:
    return with_settings(
        settings,
        partitions=4,
        time_mode="live",
        bucket_seconds=BUCKET_S,
        alert_window_seconds=BUCKET_S,
        alert_baseline_seconds=12 * BUCKET_S,
        alert_min_count=5,
        allowed_lateness_seconds=60,
        max_batch_size=32,
        max_wait_ms=50,
        broker_session_timeout_s=6.0,
        **update,
    )


def _surge_texts(engine: EngineSettings, model_dir: Path, ticker: str) -> list[str]:
    return negative_stories(load_classifier(engine, model_dir), ticker, SURGE, BURST_PHRASES)


def _now_ms() -> int:
    return int(time.time() * 1000)


async def _wait_bucket_start(margin_s: float = 1.0) -> None:
    """Sleep into a fresh bucket when the current one ends within ``margin_s`` (one surge, one bucket)."""
    left = BUCKET_S - (time.time() % BUCKET_S)
    if left < margin_s:
        await asyncio.sleep(left + 0.05)


async def _warm_up(s: StreamSettings, w: Worker, tag: str) -> None:
    """One event on each partition (they all deliver once, then three fall silent)."""
    warm = [
        {
            "id": f"warm-{tag}-{p}",
            "text": f"Markets open quietly, desk note {p}",
            "published_at": _now_ms(),
            "source": "news",
        }
        for p in range(s.partitions)
    ]
    await produce_raw(
        s.kafka_bootstrap, s.input_topic, [(e["id"].encode(), orjson.dumps(e), p) for p, e in enumerate(warm)]
    )
    await wait_until(lambda: w.metric("scored") >= s.partitions or not w.alive, 60, "warm-up scored")
    assert w.alive, w.log_tail()


async def _first_alert_for(s: StreamSettings, entity: str, timeout: float) -> tuple[dict[str, Any] | None, float]:
    """Poll the alert topic; (alert, monotonic time it was seen)."""
    deadline = time.monotonic() + timeout
    while True:
        for r in await read_topic(s.kafka_bootstrap, s.alerts_topic):
            a = orjson.loads(r.value) if r.value else {}
            if a.get("entity") == entity:
                return a, time.monotonic()
        if time.monotonic() >= deadline:
            return None, time.monotonic()
        await asyncio.sleep(0.1)


async def test_idle_partitions_do_not_hold_the_watermark(
    fault_settings: StreamSettings,
    null_engine: EngineSettings,
    tiny_model_dir: Path,
    workers: Callable[..., Worker],
    results: ResultLog,
) -> None:
    # The wall-clock bound is far away here (30 s): only idleness can close the bucket quickly.
    s = _live(fault_settings, idle_partition_s=2.0, live_close_delay_s=30.0)
    ticker = "ZQIDL"
    texts = _surge_texts(null_engine, tiny_model_dir, ticker)
    await ensure_topics(s.kafka_bootstrap, topic_plan(s))
    w = workers(s, null_engine, "worker")
    await w.await_ready()
    await _warm_up(s, w, "idle")
    t_warm = time.monotonic()
    await _wait_bucket_start()
    ts = _now_ms()
    surge = [{"id": f"surge-{i}", "text": t, "published_at": ts, "source": "news"} for i, t in enumerate(texts)]
    await produce_raw(s.kafka_bootstrap, s.input_topic, [(e["id"].encode(), orjson.dumps(e), 0) for e in surge])
    bucket_end_ms = ts - ts % (BUCKET_S * 1000) + BUCKET_S * 1000
    # The surge's partition goes on delivering once event time has left the surge's bucket (and the
    # other three have been silent longer than idle_partition_s); they stay silent.
    await asyncio.sleep(
        max(bucket_end_ms / 1000 - time.time(), t_warm + s.idle_partition_s + 0.5 - time.monotonic(), 0) + 0.2
    )
    # Nothing may close the bucket before event time has passed its end (all partitions idle: the
    # newest partition time, the surge's own, still lies inside the bucket).
    early, _ = await _first_alert_for(s, ticker, timeout=0.0)
    follow = [
        {"id": f"follow-{i}", "text": f"Desk note {i}: trading resumes", "published_at": _now_ms(), "source": "news"}
        for i in range(3)
    ]
    await produce_raw(s.kafka_bootstrap, s.input_topic, [(e["id"].encode(), orjson.dumps(e), 0) for e in follow])
    t_follow = time.monotonic()
    alert, seen = await _first_alert_for(s, ticker, timeout=s.live_close_delay_s + 10)
    latency = seen - t_follow
    bound = 5.0  # the follow-up batch itself closes the bucket; 5 s covers processing on 2 busy cores
    h = w.health() or {}
    row = {
        "partitions": s.partitions,
        "surge_events": SURGE,
        "surge_partition": 0,
        "idle_partition_s": s.idle_partition_s,
        "live_close_delay_s": s.live_close_delay_s,
        "bucket_s": BUCKET_S,
        "alert_raised": alert is not None,
        "alert_after_follow_up_s": round(latency, 2),
        "bound_s": bound,
        "health": h.get("status"),
        "scored": (h.get("metrics") or {}).get("scored"),
        "alert_before_follow_up": early is not None,
    }
    problems = []
    if early is not None:
        problems.append(f"the surge bucket was judged before event time passed its end: {early}")
    if alert is None:
        problems.append(
            f"no alert for {ticker} within {s.live_close_delay_s + 10:.0f}s: the silent partitions held the watermark"
        )
    elif latency > bound:
        problems.append(f"alert {latency:.1f}s after the surge's partition passed the bucket end (bound {bound}s)")
    results.write("f_idle_partitions", "fail" if problems else "pass", **row, problems=problems)
    assert not problems, "\n".join(problems)
    assert alert is not None and alert["entity_kind"] == "ticker" and alert["window_end"] == bucket_end_ms


async def test_live_bucket_closes_by_wall_clock(
    fault_settings: StreamSettings,
    null_engine: EngineSettings,
    tiny_model_dir: Path,
    workers: Callable[..., Worker],
    results: ResultLog,
) -> None:
    # Partitions never go idle here (30 s): only the wall clock can close the last bucket.
    s = _live(fault_settings, idle_partition_s=30.0, live_close_delay_s=2.0)
    ticker = "ZQCLK"
    texts = _surge_texts(null_engine, tiny_model_dir, ticker)
    await ensure_topics(s.kafka_bootstrap, topic_plan(s))
    w = workers(s, null_engine, "worker")
    await w.await_ready()
    await _warm_up(s, w, "clock")
    await _wait_bucket_start()
    ts = _now_ms()
    surge = [{"id": f"surge-{i}", "text": t, "published_at": ts, "source": "news"} for i, t in enumerate(texts)]
    await produce_raw(s.kafka_bootstrap, s.input_topic, [(e["id"].encode(), orjson.dumps(e), 0) for e in surge])
    bucket_end_ms = ts - ts % (BUCKET_S * 1000) + BUCKET_S * 1000
    tick = float(getattr(s, "close_tick_s", 1.0))
    alert, _ = await _first_alert_for(s, ticker, timeout=BUCKET_S + s.live_close_delay_s + 30)
    seen_ms = _now_ms()
    # From the surge's event time: at most the rest of its bucket, the close delay, one tick, and slack.
    bound_s = BUCKET_S + s.live_close_delay_s + tick + 3.0
    latency = (seen_ms - ts) / 1000
    row = {
        "surge_events": SURGE,
        "bucket_s": BUCKET_S,
        "live_close_delay_s": s.live_close_delay_s,
        "close_tick_s": tick,
        "alert_raised": alert is not None,
        "alert_after_surge_s": round(latency, 2),
        "alert_after_bucket_end_s": round((seen_ms - bucket_end_ms) / 1000, 2),
        "bound_s": bound_s,
    }
    problems = []
    if alert is None:
        problems.append(f"no alert for {ticker}: the last bucket before a quiet spell was never judged")
    elif latency > bound_s:
        problems.append(f"alert {latency:.1f}s after the surge, over the bound {bound_s:.1f}s")
    results.write("f_live_wall_clock_close", "fail" if problems else "pass", **row, problems=problems)
    assert not problems, "\n".join(problems)


async def test_future_timestamps_go_to_dlq(
    fault_settings: StreamSettings, null_engine: EngineSettings, workers: Callable[..., Worker], results: ResultLog
) -> None:
    s = with_settings(
        fault_settings,
        partitions=4,
        time_mode="live",
        bucket_seconds=60,
        allowed_lateness_seconds=60,
        max_future_skew_s=300.0,
        max_batch_size=32,
        max_wait_ms=50,
        broker_session_timeout_s=6.0,
    )
    now = _now_ms()
    future = [
        {
            "id": f"y2099-{i}",
            "text": f"$ZQFUT guidance from a broken clock {i}",
            "published_at": f"2099-0{i + 1}-01T00:00:00Z",
            "source": "news",
        }
        for i in range(5)
    ]
    # A normal stream over the last five minutes, in order, plus one event just inside the skew bound.
    normal = [
        {
            "id": f"now-{i}",
            "text": f"$ZQNOW desk note {i}: markets steady",
            "published_at": ms_to_iso(now - 300_000 + i * 1_500),
            "source": "news",
        }
        for i in range(200)
    ]
    near = {
        "id": "near-future",
        "text": "$ZQNOW slightly early clock",
        "published_at": now + int(s.max_future_skew_s * 1000 / 2),
        "source": "news",
    }
    valid = [*normal, near]
    records = [(str(e["id"]).encode(), orjson.dumps(e), None) for e in [*future, *normal, near]]
    await ensure_topics(s.kafka_bootstrap, topic_plan(s))
    w = workers(s, null_engine, "worker")
    await w.await_ready()
    await produce_raw(s.kafka_bootstrap, s.input_topic, records)
    await wait_caught_up(s, 90, [w])
    out = await read_outputs(s)
    metrics = await redis_metrics(s)
    state = await window_state(s)
    statuses = {e["id"]: e["window_status"] for e in out.scored}
    dlq = {orjson.loads(base64.b64decode(d["value_b64"]))["id"]: d["reason"] for d in out.dlq}
    problems = []
    if dlq != {e["id"]: "future_timestamp" for e in future}:
        problems.append(f"DLQ {dlq}, expected the five 2099 events with reason future_timestamp")
    if set(statuses) != {e["id"] for e in valid}:
        problems.append(
            f"scored ids: {len(statuses)}; missing {sorted({e['id'] for e in valid} - set(statuses))[:5]}, "
            f"extra {sorted(set(statuses) - {e['id'] for e in valid})[:5]}"
        )
    not_counted = {i: st for i, st in statuses.items() if st != "counted"}
    if not_counted:
        problems.append(f"{len(not_counted)} normal events not counted: {dict(list(not_counted.items())[:5])}")
    if metrics.get("counted", 0) != len(valid) or metrics.get("late", 0):
        problems.append(f"Redis metrics {metrics}, expected counted={len(valid)} and no late")
    want = expected_window_state([e for e in out.scored if e["id"] in statuses], s.bucket_seconds)
    if normalise_state(without_novelty(state)) != normalise_state(want):
        problems.append("Redis windows differ from the normal events: " + diff_states(want, without_novelty(state)))
    problems += novelty_problems(state)
    results.write(
        "g_future_timestamps",
        "fail" if problems else "pass",
        future_events=len(future),
        normal_events=len(valid),
        dlq=len(out.dlq),
        dlq_reasons=sorted(set(dlq.values())),
        counted=metrics.get("counted", 0),
        late=metrics.get("late", 0),
        scored=len(out.scored),
        problems=problems,
    )
    assert not problems, "\n".join(problems)
