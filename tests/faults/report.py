"""Render the fault suite's measured results as the Markdown table of RELIABILITY.md.

    .venv/bin/python -m tests.faults.report [.local/faults/results.jsonl] [--run RUN_ID]

Without ``--run`` it takes the newest run that has a row for every fault test.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import orjson

from tests.faults.infra import fault_base_settings

FAULTS: list[tuple[str, str]] = [
    ("a_worker_kill9", "(a) worker kill -9 x4 (outside, before_ack, after_redis_apply, after_alert_send), restarted"),
    ("b_kafka_kill9", "(b) Kafka broker kill -9 mid-stream, restarted on its log dir"),
    ("c_redis_kill9", "(c) Redis kill -9 mid-stream, restarted on its AOF"),
    ("d_sigterm", "(d) worker SIGTERM mid-stream, restarted"),
    ("e_rebalance", "(e) 2nd worker joins under load, 1st leaves (SIGTERM)"),
    ("f_idle_partitions", "(f) surge on 1 of 4 partitions, 3 silent (live)"),
    ("f_live_wall_clock_close", "(f') surge, then silence on all partitions (live)"),
    ("g_future_timestamps", "(g) 5 events dated 2099, then 201 normal ones (live)"),
    ("h_fuzz", "(h) hypothesis: malformed payloads mixed with good events"),
]


def load(path: Path) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines() if line.strip()]


def pick_run(rows: list[dict[str, Any]], run: str | None) -> str:
    if run:
        return run
    wanted = {name for name, _ in FAULTS}
    runs: dict[str, set[str]] = {}
    for r in rows:
        runs.setdefault(r["run"], set()).add(r["test"])
    complete = [k for k, tests in runs.items() if wanted <= tests]
    if not complete:
        raise SystemExit("no run has a row for every fault test")
    return max(complete)


def _recovery(r: dict[str, Any]) -> str:
    t = r["test"]
    if t == "a_worker_kill9":
        return f"replacement scoring {', '.join(f'{x:g}' for x in r['recovery_s'])} s after launch"
    if t in ("b_kafka_kill9", "c_redis_kill9"):
        health = "/".join(r.get("health_during_outage") or []) or "?"
        return (
            f"outage {r['outage_s']:g} s (restart {r['service_restart_s']:g} s, /health during it: {health}); "
            f"worker scoring again {r['recovery_s']:g} s after the service answered"
        )
    if t == "d_sigterm":
        return (
            f"exit {r['exit_s']:g} s after SIGTERM (session timeout {r['session_timeout_s']:g} s, "
            f"code {r['exit_code']})"
        )
    if t == "e_rebalance":
        return f"newcomer working {r['join_to_work_s']:g} s after launch; leaver exit {r['w1_exit_s']:g} s"
    if t == "f_idle_partitions":
        return (
            f"alert {r['alert_after_follow_up_s']:g} s after its partition passed the bucket end "
            f"(bound {r['bound_s']:g} s)"
        )
    if t == "f_live_wall_clock_close":
        return f"alert {r['alert_after_surge_s']:g} s after the surge (bound {r['bound_s']:g} s)"
    return "-"


def _row(name: str, label: str, r: dict[str, Any] | None) -> str:
    if r is None:
        return f"| {label} | - | - | - | - | - | not run |"
    t = r["test"]
    if t == "h_fuzz":
        ev = f"{r['payloads']} ({r['good']} good, {r['bad']} bad)"
        counted = "-"
        scored = f"{r['scored']} scored, {r['dlq']} DLQ"
        alerts = "-"
        rec = f"/health {r['health']}" if r.get("health") else "worker not running at the end"
    elif t in ("f_idle_partitions", "f_live_wall_clock_close"):
        ev = f"4 warm-up + {r['surge_events']} surge"
        counted = scored = "all"
        alerts = f"1 / {1 if r['alert_raised'] else 0}"
        rec = _recovery(r)
    elif t == "g_future_timestamps":
        ev = f"{r['future_events']} + {r['normal_events']}"
        counted = f"{r['counted']} (late {r['late']})"
        scored = f"{r['scored']}; DLQ {r['dlq']} ({', '.join(r['dlq_reasons'])})"
        alerts = "-"
        rec = "-"
    else:
        ev = f"{r['events_in']} + {r['bad_in']} bad"
        counted = f"{r['counted']} (late {r['late']})"
        scored = f"{r['scored_distinct']} ids in {r['scored_records']} records; DLQ {r['dlq_records']}"
        doubled = len(r.get("alerts_doubled") or [])
        alerts = f"{r['alerts_expected']} / {r['alerts_raised']} ({r['alert_records']} records, {doubled} id twice)"
        rec = _recovery(r)
    verdict = "**pass**" if r["outcome"] == "pass" else "**FAIL**"
    return f"| {label} | {ev} | {counted} | {scored} | {alerts} | {rec} | {verdict} |"


def table(rows: list[dict[str, Any]], run: str) -> str:
    mine = {r["test"]: r for r in rows if r["run"] == run}
    lines = [
        "| fault | events in | counted in Redis | scored | alerts expected / raised | recovery | result |",
        "|---|---|---|---|---|---|---|",
    ]
    lines += [_row(name, label, mine.get(name)) for name, label in FAULTS]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("path", nargs="?", type=Path, default=fault_base_settings().local_dir / "results.jsonl")
    ap.add_argument("--run", default=None)
    args = ap.parse_args(argv)
    rows = load(args.path)
    run = pick_run(rows, args.run)
    machine = next((r["machine"] for r in rows if r["run"] == run), "?")
    sys.stdout.write(f"run {run} on {machine}\n\n{table(rows, run)}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
