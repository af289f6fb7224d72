"""`finpulse bench redis-durability`: what Redis AOF persistence costs the window store.

The worker counts each micro-batch with one Lua call (``WindowStore.apply``), so under
``appendfsync always`` every batch pays one fsync before Redis replies. This benchmark runs the
same realistic batches (real StockNet tweets: their tickers and event times, a fixed per-text
sentiment and topic as the null backend assigns them) against the local Redis under three
persistence settings, switched with ``CONFIG SET``:

* ``no``: ``appendonly no`` (no AOF at all: what the first sessions ran);
* ``everysec``: ``appendonly yes``, ``appendfsync everysec`` (may lose about 1 s of writes on a crash);
* ``always``: ``appendonly yes``, ``appendfsync always`` (the default of ``finpulse up``).

Modes are interleaved over ``--rounds`` rounds (each round: every mode on the same batches under
its own fresh prefix), so a slow spell on a shared machine hits every mode alike. Reported per
mode: batches/s, events/s, p50/p95/p99 latency of one ``apply`` call, AOF bytes written, and the
ratios against ``no``. The original ``appendonly``/``appendfsync`` are restored afterwards, and
the benchmark's keys are deleted. Note that ``CONFIG SET`` applies to the whole Redis: while the
``no`` mode runs (a few seconds), nothing else written to that Redis is persisted either.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
import uuid
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import click
import orjson

from bench.common import append_markdown_row, machine_info, now_iso, stream_texts
from finpulse.stats import percentiles
from stream.cli.supervise import unlink_prefix
from stream.settings import StreamSettings, get_settings
from stream.windows import TimePolicy, WindowStore, WindowUpdate, entities_for
from training.data import TOPIC_LABELS

#: Persistence modes: name -> the CONFIG SET pairs that select it.
MODES: dict[str, tuple[tuple[str, str], ...]] = {
    "no": (("appendonly", "no"),),
    "everysec": (("appendfsync", "everysec"), ("appendonly", "yes")),
    "always": (("appendfsync", "always"), ("appendonly", "yes")),
}


def _ts_ms(value: Any) -> int:
    if isinstance(value, (int, float)):
        return int(value)
    return int(datetime.fromisoformat(str(value).replace("Z", "+00:00")).timestamp() * 1000)


def window_updates(
    events: Sequence[dict[str, Any]], run: str, partitions: int, topic: str = "bench.durability"
) -> list[WindowUpdate]:
    """One ``WindowUpdate`` per event, as the worker would build it.

    Labels are fixed per text (a hash, like the null backend: 15% negative, 60% neutral, 25%
    positive; a uniform topic), ids are ``{run}-{id}`` (fresh, so every event is counted), and the
    source partition is a hash of the id, as a keyed producer would place it.
    """
    out = []
    for e in events:
        h = int.from_bytes(hashlib.blake2b(e["text"].encode(), digest_size=8).digest(), "big")
        r = h % 1000
        cls = 0 if r < 150 else (1 if r < 750 else 2)
        score = (-0.8, 0.0, 0.7)[cls]
        eid = f"{run}-{e['id']}"
        part = int.from_bytes(hashlib.blake2b(eid.encode(), digest_size=4).digest(), "big") % partitions
        out.append(
            WindowUpdate(
                eid,
                _ts_ms(e["published_at"]),
                cls,
                score,
                entities_for(e.get("tickers") or [], TOPIC_LABELS[(h >> 16) % len(TOPIC_LABELS)]),
                f"{topic}:{part}",
            )
        )
    return out


async def _wait_aof_idle(r: Any, timeout: float = 120.0) -> None:
    """Wait until no AOF rewrite is running or scheduled (switching AOF on starts one)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        p = await r.info("persistence")
        if not int(p.get("aof_rewrite_in_progress", 0)) and not int(p.get("aof_rewrite_scheduled", 0)):
            return
        await asyncio.sleep(0.1)
    raise TimeoutError("AOF rewrite still running")


async def _set_mode(r: Any, mode: str) -> None:
    for key, value in MODES[mode]:
        await r.config_set(key, value)
    await _wait_aof_idle(r)


async def _aof_size(r: Any) -> int:
    p = await r.info("persistence")
    return int(p.get("aof_current_size", 0) or 0)


async def run_durability(
    settings: StreamSettings,
    events: list[dict[str, Any]],
    batches: int,
    batch_size: int,
    modes: Sequence[str],
    rounds: int,
) -> dict[str, Any]:
    """Time ``batches`` apply calls of ``batch_size`` events per mode; restores the Redis config."""
    from stream.app import redis_client

    r = redis_client(settings)
    tag = uuid.uuid4().hex[:8]
    sources = [f"bench.durability:{i}" for i in range(settings.partitions)]
    per_round = max(1, batches // rounds)
    lat: dict[str, list[float]] = {m: [] for m in modes}
    busy: dict[str, float] = {m: 0.0 for m in modes}  # seconds inside apply calls
    aof_bytes: dict[str, int] = {m: 0 for m in modes}
    statuses: dict[str, dict[str, int]] = {m: {} for m in modes}
    forks: dict[str, int] = {m: 0 for m in modes}  # background AOF rewrites (forks) while the mode ran
    original: dict[str, str] = {k: str((await r.config_get(k))[k]) for k in ("appendonly", "appendfsync")}
    server = await r.info("server")
    try:
        for rnd in range(rounds):
            chunk = events[rnd * per_round * batch_size : (rnd + 1) * per_round * batch_size]
            if len(chunk) < per_round * batch_size:  # fewer texts than asked: reuse them (ids stay fresh per round)
                chunk = [
                    events[i % len(events)]
                    for i in range(rnd * per_round * batch_size, (rnd + 1) * per_round * batch_size)
                ]
            for mode in modes:
                prefix = f"bench:durability:{tag}:{mode}:{rnd}"
                store = WindowStore(
                    r,
                    prefix,
                    settings.bucket_seconds,
                    settings.retention_seconds,
                    settings.allowed_lateness_seconds,
                    TimePolicy(mode="replay"),
                )
                updates = window_updates(chunk, f"{tag}{mode}{rnd}", settings.partitions)
                await _set_mode(r, mode)
                await store.apply([], sources)  # loads the script; not timed
                size = await _aof_size(r)
                forks0 = int((await r.info("stats")).get("total_forks", 0))
                for i in range(per_round):
                    batch = updates[i * batch_size : (i + 1) * batch_size]
                    t0 = time.perf_counter()
                    res = await store.apply(batch, sources)
                    dt = time.perf_counter() - t0
                    lat[mode].append(dt * 1000)
                    busy[mode] += dt
                    for s in res.statuses:
                        statuses[mode][s] = statuses[mode].get(s, 0) + 1
                    if mode != "no":  # outside the timer; an automatic AOF rewrite shrinks the size (skipped)
                        size1 = await _aof_size(r)
                        aof_bytes[mode] += max(0, size1 - size)
                        size = size1
                forks[mode] += int((await r.info("stats")).get("total_forks", 0)) - forks0
                await unlink_prefix(r, prefix)
    finally:
        # Back to what it was, AOF switched on last (turning it on starts a rewrite).
        await r.config_set("appendfsync", original["appendfsync"])
        await r.config_set("appendonly", original["appendonly"])
        await _wait_aof_idle(r)
        restored = {k: (await r.config_get(k))[k] for k in ("appendonly", "appendfsync")}
        await r.aclose()
    out: dict[str, Any] = {}
    for mode in modes:
        n = len(lat[mode])
        out[mode] = {
            "config": dict(MODES[mode]),
            "batches": n,
            "events": n * batch_size,
            "batches_per_s": round(n / busy[mode], 1),
            "events_per_s": round(n * batch_size / busy[mode]),
            "apply_ms": percentiles(lat[mode]),
            "apply_ms_mean": round(sum(lat[mode]) / n, 3),
            "aof_bytes_per_batch": round(aof_bytes[mode] / n) if mode != "no" else 0,
            "background_forks": forks[mode],
            "statuses": statuses[mode],
        }
    ref = out.get("no")
    if ref:
        for mode in modes:
            out[mode]["events_per_s_vs_no"] = round(out[mode]["events_per_s"] / ref["events_per_s"], 3)
            p50, rp50 = out[mode]["apply_ms"]["p50"], ref["apply_ms"]["p50"]
            out[mode]["p50_vs_no"] = round(p50 / rp50, 2) if p50 and rp50 else None
    return {
        "redis_version": server.get("redis_version"),
        "original_config": original,
        "restored_config": restored,
        "modes": out,
    }


@click.command("redis-durability")
@click.option(
    "--batches", type=int, default=300, show_default=True, help="Timed apply calls per mode (over all rounds)."
)
@click.option(
    "--batch-size", type=int, default=256, show_default=True, help="Events per apply call (the worker's take size)."
)
@click.option("--rounds", type=int, default=3, show_default=True, help="Interleave the modes this many times.")
@click.option("--mode", "modes", multiple=True, type=click.Choice(list(MODES)), default=tuple(MODES), show_default=True)
@click.option("--data-dir", type=click.Path(path_type=Path), default=None)
@click.option("--out", type=click.Path(path_type=Path), default=None, help="Also write the JSON here.")
@click.option(
    "--record", type=click.Path(path_type=Path), default=None, help="Append a row per mode to this BENCHMARKS.md."
)
def bench_redis_durability_cmd(
    batches: int,
    batch_size: int,
    rounds: int,
    modes: tuple[str, ...],
    data_dir: Path | None,
    out: Path | None,
    record: Path | None,
) -> None:
    """Cost of Redis AOF (off / everysec / always) on the worker's one-Lua-call-per-batch writes."""
    from stream.local import LocalServices

    base = get_settings()
    if data_dir:
        base = base.model_copy(update={"data_dir": data_dir})
    services = LocalServices(base)
    started = services.start(["redis"])
    try:
        events = stream_texts(base.require_data_dir(), batches * batch_size)
        res = asyncio.run(run_durability(base, events, batches, batch_size, modes, rounds))
    finally:
        services.stop([k for k, v in started.items() if v])
    import os

    results = {
        "benchmark": "redis-durability",
        "date": now_iso(),
        "machine": machine_info(),
        "load_avg_1_5_15": [round(x, 2) for x in os.getloadavg()],
        "batch_size": batch_size,
        "rounds": rounds,
        "distinct_texts": len(events),
        **res,
    }
    text = orjson.dumps(results, option=orjson.OPT_INDENT_2).decode()
    click.echo(text)
    if out:
        out.write_text(text)
    if record:
        m = results["machine"]
        for mode, v in res["modes"].items():
            append_markdown_row(
                record,
                "Redis durability (`finpulse bench redis-durability`)",
                f"| {results['date']} | {m['cpu']} ({m['cores']} cores, {m['gpu'] or 'no GPU'}) | {mode} "
                f"| {v['batches']} x {batch_size} "
                f"| {v['batches_per_s']} | {v['events_per_s']} | {v['apply_ms']['p50']} / {v['apply_ms']['p99']} "
                f"| {v.get('events_per_s_vs_no')} | {v['aof_bytes_per_batch']} |",
            )
