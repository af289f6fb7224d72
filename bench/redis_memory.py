"""`finpulse bench redis-memory`: Redis bytes per event held by the window store, per key family.

The window store's memory is what Redis holds for the windows (bucket hashes, totals, entity indexes,
pending/lease sets, alert examples) and for exact dedupe (the seen ids). This benchmark feeds
synthetic events (18-digit ids, one ticker and one topic each, a short text on negatives, as
StockNet tweets look) through ``WindowStore.apply`` in worker-sized batches, settling the buckets it
is offered as the worker does, at a few *event-time* rates (events per second of event time: how
dense the stream is, not how fast the benchmark runs), and reports:

* ``steady_bytes_per_event``: the growth of ``used_memory`` per event over the second half of the
  run, after the stream has run longer than ``allowed lateness + dedupe horizon`` in event time. By
  then what Redis drops by event time (seen ids, example texts) has reached its plateau, so this is
  what each further event costs for as long as the retention keeps it: the "per event at steady
  state" figure. Memory at steady state = this x events per retention + ``plateau_bytes``.
* ``plateau_bytes``: what the event-time-bounded families hold at the end (independent of the
  retention), and ``plateau_bytes_at``: the same scaled to production settings (lateness, horizon).
* per key family (``b``, ``tot``, ``ent``, ``seen``, ``ex``, ``pending``, ...): keys and
  ``MEMORY USAGE`` bytes at the end, and its growth per event over the second half.

It starts its own throwaway ``redis-server`` (no persistence, a free port, under
``<local_dir>/bench-redis-memory-*``) so that ``used_memory`` sees nothing but this run, unless
``--redis-url`` names one to use.
"""

from __future__ import annotations

import asyncio
import random
import shutil
import socket
import subprocess
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import click
import orjson
from redis.asyncio import Redis

from bench.common import machine_info, now_iso
from stream.settings import get_settings
from stream.windows import TimePolicy, WindowStore, WindowUpdate

_WORDS = (
    "shares fall after earnings miss guidance cut downgrade lawsuit recall probe weak sales margin pressure "
    "investors worry selloff plunge analyst warns revenue drop layoffs delay outage fine"
).split()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start_redis(folder: Path) -> tuple[subprocess.Popen[bytes], int]:
    """A private redis-server with no persistence: ``used_memory`` counts this benchmark only."""
    port = _free_port()
    exe = shutil.which("redis-server") or "redis-server"
    proc = subprocess.Popen(
        [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(folder)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return proc, port
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError("bench redis-server did not start")


def _family(key: str, prefix: str) -> str:
    """``b``, ``tot``, ``seen``, ... : the part of the key after the prefix, up to the next colon."""
    rest = key[len(prefix) + 1 :]
    return rest.split(":", 1)[0]


async def _families(r: Redis, prefix: str) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = defaultdict(lambda: {"keys": 0, "bytes": 0})
    async for raw in r.scan_iter(match=f"{prefix}:*", count=2000):
        key = raw.decode()
        fam = out[_family(key, prefix)]
        fam["keys"] += 1
        fam["bytes"] += int(await r.memory_usage(raw, samples=0) or 0)
    return dict(out)


def _events(
    n: int, rate: float, t0_ms: int, tickers: int, topics: int, seed: int, bands: int = 0
) -> list[WindowUpdate]:
    """``bands``: LSH band keys per event (novelty on), random, so that every event is novel and writes all
    of them: the novelty index's worst case."""
    rng = random.Random(seed)
    names = [f"T{i:03d}" for i in range(tickers)]
    weights = [1.0 / (i + 1) for i in range(tickers)]  # a few busy tickers, a long tail, as on StockNet
    topic_names = [f"topic{i:02d}" for i in range(topics)]
    out = []
    step = 1000.0 / rate
    for i in range(n):
        sent = rng.choices((0, 1, 2), (0.3, 0.4, 0.3))[0]
        text = " ".join(rng.choices(_WORDS, k=rng.randint(8, 24)))[:200] if sent == 0 else None
        out.append(
            WindowUpdate(
                event_id=str(10**17 + seed * 10**12 + i),
                ts_ms=t0_ms + int(i * step),
                sentiment=sent,
                score=rng.random(),
                entities=[("ticker", rng.choices(names, weights)[0]), ("topic", rng.choice(topic_names))],
                source=f"in:{i % 4}",
                example=text,
                bands=[f"{rng.getrandbits(32):08x}" for _ in range(bands)],
            )
        )
    return out


async def _run_rate(
    r: Redis,
    rate: float,
    events: int,
    batch: int,
    tickers: int,
    topics: int,
    lateness_s: int,
    horizon_s: int,
    novelty_horizon_s: int = 0,
) -> dict[str, Any]:
    prefix = f"{{benchmem{int(rate * 1000)}}}"
    policy = TimePolicy(mode="replay", dedupe_horizon_s=horizon_s) if _has_horizon() else TimePolicy(mode="replay")
    params = get_settings().novelty_params()
    on = novelty_horizon_s > 0 and params is not None
    bands = params.bands if on and params is not None else 0
    novelty: dict[str, int] = {}
    if on and params is not None:
        novelty = {"novelty_horizon_s": novelty_horizon_s, "novelty_min_votes": params.min_votes}
    store = WindowStore(r, prefix, 60, 7 * 86400, lateness_s, policy, **novelty)
    sources = [f"in:{p}" for p in range(4)]
    t0 = 1_700_000_000_000
    evs = _events(events, rate, t0, tickers, topics, seed=int(rate * 7) + 1, bands=bands)
    base = int((await r.info("memory"))["used_memory"])
    await r.config_resetstat()
    half_mem, half_n = 0, 0
    t_start = time.perf_counter()
    for i in range(0, len(evs), batch):
        res = await store.apply(evs[i : i + batch], sources, now_ms=t0)
        if res.closed:
            await store.settle(res.closed, [])  # as the worker does once the alerts are acknowledged
        if half_n == 0 and i + batch >= len(evs) // 2:
            half_n = i + batch
            half_mem = int((await r.info("memory"))["used_memory"])
    elapsed = time.perf_counter() - t_start
    end_mem = int((await r.info("memory"))["used_memory"])
    # Server-side time of the window script alone (no client, no network): what one slot can take.
    lua = (await r.info("commandstats")).get("cmdstat_evalsha", {})
    fams = await _families(r, prefix)
    span_s = events / rate
    # Dropped by event time behind the dedupe floor: constant at steady state, whatever the retention.
    bounded = {"seenb", "seenk", "seenc", "seent", "seenfloor", "exb", "nov", "novg"}
    plateau = sum(v["bytes"] for k, v in fams.items() if k in bounded)
    counts: list[Any] = await r.zrange(f"{prefix}:seenc", 0, -1, withscores=True)
    held_ids = int(sum(float(pair[1]) for pair in counts))
    seen_bytes = fams.get("seenb", {}).get("bytes", 0)
    steady = (end_mem - half_mem) / max(1, events - half_n)
    out: dict[str, Any] = {
        "rate_events_per_event_s": rate,
        "events": events,
        "event_time_span_s": round(span_s),
        "lateness_s": lateness_s,
        "dedupe_horizon_s": horizon_s if _has_horizon() else None,
        "novelty_horizon_s": novelty_horizon_s if bands else None,
        "apply_wall_s": round(elapsed, 2),
        "used_memory_delta": end_mem - base,
        "bytes_per_event_total": round((end_mem - base) / events, 1),
        "steady_bytes_per_event": round(steady, 1),
        "plateau_bytes": plateau,
        "seen_ids_held": held_ids,
        "seen_bytes_per_held_id": round(seen_bytes / held_ids, 1) if held_ids else None,
        # The plateau scales with the event time it covers: lateness + horizon (+ about two buckets).
        "plateau_bytes_at_defaults": round(plateau * (1800 + 3600 + 120) / (lateness_s + horizon_s + 120)),
        "apply_events_per_s": round(events / elapsed),
        "redis_lua_us_per_event": round(float(lua.get("usec", 0)) / events, 2),
        "families": {k: {**v, "bytes_per_event": round(v["bytes"] / events, 1)} for k, v in sorted(fams.items())},
    }
    await _unlink(r, prefix)
    return out


def _has_horizon() -> bool:
    return "dedupe_horizon_s" in TimePolicy.__dataclass_fields__


async def _unlink(r: Redis, prefix: str) -> None:
    keys = [k async for k in r.scan_iter(match=f"{prefix}:*", count=2000)]
    for i in range(0, len(keys), 1000):
        await r.unlink(*keys[i : i + 1000])


@click.command("redis-memory")
@click.option("--rates", default="5,1000", show_default=True, help="Event-time rates (events per event-second).")
@click.option(
    "--span-s", type=int, default=720, show_default=True, help="Event time covered per rate (at least --min-events)."
)
@click.option("--min-events", type=int, default=30_000, show_default=True)
@click.option("--batch", type=int, default=256, show_default=True)
@click.option("--tickers", type=int, default=88, show_default=True)
@click.option("--topics", type=int, default=20, show_default=True)
@click.option(
    "--lateness-s", type=int, default=120, show_default=True, help="Kept short so the run reaches steady state."
)
@click.option("--horizon-s", type=int, default=120, show_default=True, help="Dedupe horizon for the run (short: idem).")
@click.option(
    "--novelty-horizon-s",
    type=int,
    default=0,
    show_default=True,
    help="Story novelty on with this horizon (short, so the run passes two of them); every event novel. 0: off.",
)
@click.option("--redis-url", default=None, help="Use this Redis instead of a private one (used_memory then sees all).")
def bench_redis_memory_cmd(
    rates: str,
    span_s: int,
    min_events: int,
    batch: int,
    tickers: int,
    topics: int,
    lateness_s: int,
    horizon_s: int,
    novelty_horizon_s: int,
    redis_url: str | None,
) -> None:
    """Redis memory per event of the window store at a few event-time rates (JSON)."""

    async def main(url: str) -> list[dict[str, Any]]:
        r = Redis.from_url(url)
        try:
            return [
                await _run_rate(
                    r,
                    float(x),
                    max(min_events, int(float(x) * span_s)),
                    batch,
                    tickers,
                    topics,
                    lateness_s,
                    horizon_s,
                    novelty_horizon_s,
                )
                for x in rates.split(",")
            ]
        finally:
            await r.aclose()

    s = get_settings()
    proc = None
    if redis_url is None:
        s.local_dir.mkdir(parents=True, exist_ok=True)
        folder = Path(tempfile.mkdtemp(prefix="bench-redis-memory-", dir=s.local_dir))
        proc, port = _start_redis(folder)
        redis_url = f"redis://127.0.0.1:{port}/0"
    try:
        results = asyncio.run(main(redis_url))
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(10)
            shutil.rmtree(folder, ignore_errors=True)
    click.echo(
        orjson.dumps(
            {"bench": "redis-memory", "at": now_iso(), "machine": machine_info(), "results": results},
            option=orjson.OPT_INDENT_2,
        ).decode()
    )
