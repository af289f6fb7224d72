"""The exact-count verdict shared by the pipeline faults (a)-(e)."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from typing import Any

from stream.settings import StreamSettings
from tests.faults.harness import (
    Outputs,
    diff_states,
    expected_window_state,
    normalise_state,
    novelty_problems,
    read_outputs,
    read_topic,
    redis_metrics,
    window_state,
    without_novelty,
)
from tests.faults.streams import FaultStream


async def wait_for_alerts(settings: StreamSettings, expected: set[str], timeout: float) -> float:
    """Poll the alert topic until every expected id is there (a bucket abandoned by a crash is
    re-offered after ``alert_lease_s``); seconds waited. Returns even when some never came: the
    verdict below names them."""
    import orjson

    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        recs = await read_topic(settings.kafka_bootstrap, settings.alerts_topic)
        if expected <= {orjson.loads(r.value)["id"] for r in recs if r.value}:
            break
        await asyncio.sleep(0.5)
    return time.monotonic() - t0


async def verify_exact(
    settings: StreamSettings, stream: FaultStream, reference: dict[str, Any], *, no_duplicate_alerts: bool = False
) -> dict[str, Any]:
    """Every valid input counted exactly once in Redis, scored, every bad one dead-lettered, every
    expected alert present by id (and, when asked, none twice). Returns the measured figures."""
    out: Outputs = await read_outputs(settings)
    metrics = await redis_metrics(settings)
    state = await window_state(settings)
    valid = stream.valid_ids
    scored_ids = out.scored_ids
    alert_ids = out.alert_ids
    expected_alerts: set[str] = reference["alert_ids"]
    figures = {
        "events_in": len(stream.events),
        "bad_in": len(stream.bad),
        "counted": metrics.get("counted", 0),
        "late": metrics.get("late", 0),
        "scored_distinct": len(set(scored_ids) & valid),
        "scored_records": len(out.scored),
        "scored_statuses": dict(out.statuses()),
        "dlq_records": len(out.dlq),
        "alerts_expected": len(expected_alerts),
        "alerts_raised": len(set(alert_ids) & expected_alerts),
        "alert_records": len(out.alerts),
        "alerts_missing": sorted(expected_alerts - set(alert_ids)),
        "alerts_unexpected": sorted(set(alert_ids) - expected_alerts),
        "alerts_doubled": sorted(i for i, n in alert_ids.items() if n > 1),
    }
    problems: list[str] = []
    if missing := valid - set(scored_ids):
        problems.append(f"{len(missing)} valid events never scored, e.g. {sorted(missing)[:5]}")
    if foreign := set(scored_ids) - valid:
        problems.append(f"scored ids that were never valid input: {sorted(foreign)[:5]}")
    want_bad = Counter(raw for raw, _ in stream.bad)
    import base64

    got_bad = {base64.b64decode(d["value_b64"]): d["reason"] for d in out.dlq}
    for raw, reason in stream.bad:
        if raw not in got_bad:
            problems.append(f"bad input {raw[:40]!r} missing from the DLQ")
        elif got_bad[raw] != reason:
            problems.append(f"bad input {raw[:40]!r}: DLQ reason {got_bad[raw]!r}, expected {reason!r}")
    if set(got_bad) - set(want_bad):
        problems.append(
            f"{len(set(got_bad) - set(want_bad))} unexpected dead letters, e.g. "
            f"{[d['reason'] + ': ' + d['detail'][:80] for d in out.dlq][:3]}"
        )
    if metrics.get("counted", 0) != len(valid):
        problems.append(f"Redis metrics counted={metrics.get('counted', 0)}, expected exactly {len(valid)}")
    if metrics.get("late", 0):
        problems.append(f"Redis metrics late={metrics['late']}, expected 0 (an ordered replay)")
    want_state = expected_window_state(out.scored, settings.bucket_seconds)
    if normalise_state(without_novelty(state)) != normalise_state(want_state):
        problems.append(
            "Redis windows differ from one count per distinct scored event: "
            + diff_states(want_state, without_novelty(state))
        )
    problems += novelty_problems(state)
    if normalise_state(state) != normalise_state(reference["state"]):
        problems.append(
            "Redis windows differ from the fault-free reference run: " + diff_states(reference["state"], state)
        )
    if figures["alerts_missing"]:
        problems.append(
            f"alerts LOST: {len(figures['alerts_missing'])} of {len(expected_alerts)} expected ids missing: "
            + ", ".join(_describe(reference["alerts"], i) for i in figures["alerts_missing"][:5])
        )
    if figures["alerts_unexpected"]:
        problems.append(
            f"alerts not in the reference run: {[_describe(out.alerts, i) for i in figures['alerts_unexpected'][:5]]}"
        )
    if no_duplicate_alerts and figures["alerts_doubled"]:
        problems.append(f"alerts DOUBLED: {[_describe(out.alerts, i) for i in figures['alerts_doubled'][:5]]}")
    bad_keys = [
        k for k, a in zip(out.alert_keys, out.alerts, strict=True) if k != f"{a['entity_kind']}:{a['entity']}".encode()
    ]
    if bad_keys:
        problems.append(f"alert records not keyed kind:entity: {bad_keys[:3]}")
    figures["problems"] = problems
    return figures


def _describe(alerts: list[dict[str, Any]], alert_id: str) -> str:
    for a in alerts:
        if a["id"] == alert_id:
            end = a.get("window_end_iso", a.get("window_end"))
            return f"{alert_id} ({a['entity_kind']}:{a['entity']} window_end {end})"
    return alert_id
