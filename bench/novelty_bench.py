"""`finpulse bench novelty`: near-duplicates in a real stream, what they cost, and how precise they are.

The StockNet tweet stream (or any stream ``read_events`` reads) goes through the real novelty path:
band keys from ``stream.novelty.Sketcher`` and the real window script (``WindowStore.apply``) on a
private ``redis-server``, in event-time order and worker-sized batches, once with novelty on and once
off (same events, same run). It reports:

* the share of events flagged as near-duplicates, and the share that are exact reposts (all bands shared);
* the sketcher's own texts/s, and the window script's events/s with novelty on and off, with the ratio;
* the novelty index's Redis memory per event;
* precision against hand labels: ``--sample N`` flagged (event, duplicate_of) pairs are drawn (the first N
  flagged events under a seeded hash of their id, so a small change of what is flagged keeps most of the
  sample) and written to ``--pairs-out`` (texts included, for labelling: that file stays out of git, as the
  data does); ``--labels`` (CSV ``event_id,duplicate_of,label``, label ``same`` or ``different``; ids
  only, no text) is joined back to report precision with a Wilson 95% interval.

Sentiment and topics do not matter to novelty; every event is counted as neutral on its tickers.
"""

from __future__ import annotations

import asyncio
import csv
import hashlib
import math
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import click
import orjson
from redis.asyncio import Redis

from bench.common import machine_info, now_iso
from bench.redis_memory import _families, _start_redis, _unlink
from stream.cli.replay import read_events
from stream.events import parse_event_time
from stream.novelty import NoveltyParams, Sketcher, shingles
from stream.settings import get_settings
from stream.windows import TimePolicy, WindowStore, WindowUpdate


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a proportion k/n."""
    if n == 0:
        return (0.0, 1.0)
    p = k / n
    d = 1 + z * z / n
    c = (p + z * z / (2 * n)) / d
    h = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return (round(c - h, 4), round(c + h, 4))


def jaccard(a: str, b: str, ta: list[str], tb: list[str]) -> float:
    """Exact Jaccard similarity of the two events' shingle sets (what the MinHash estimates)."""
    sa, sb = set(shingles(a, ta)), set(shingles(b, tb))
    return len(sa & sb) / len(sa | sb) if sa | sb else 1.0


async def _run(
    r: Redis,
    events: list[dict[str, Any]],
    bands: list[list[str]],
    params: NoveltyParams | None,
    horizon_s: int,
    batch: int,
    prefix: str,
) -> dict[str, Any]:
    store = WindowStore(
        r,
        prefix,
        60,
        30 * 86400,
        3600,
        TimePolicy(mode="replay", dedupe_horizon_s=86400),
        novelty_horizon_s=horizon_s if params else 0,
        novelty_min_votes=params.min_votes if params else 1,
    )
    updates = [
        WindowUpdate(
            str(e["id"]),
            parse_event_time(e["published_at"]),
            1,
            0.0,
            [("ticker", t) for t in e.get("tickers") or []],
            "in:0",
            None,
            bands[i] if params else (),
        )
        for i, e in enumerate(events)
    ]
    base = int((await r.info("memory"))["used_memory"])
    votes: list[int] = []
    dups: list[str | None] = []
    t0 = time.perf_counter()
    for i in range(0, len(updates), batch):
        res = await store.apply(updates[i : i + batch], ["in:0"], now_ms=0)
        if res.closed:
            await store.settle(res.closed, [])
        votes += res.votes
        dups += res.duplicate_of
    elapsed = time.perf_counter() - t0
    fams = await _families(r, prefix)
    used = int((await r.info("memory"))["used_memory"]) - base
    held = {int(g) for g in await r.smembers(f"{prefix}:novg")}
    await _unlink(r, prefix)
    return {
        "elapsed_s": elapsed,
        "events_per_s": len(updates) / elapsed,
        "used_memory_delta": used,
        "nov_bytes": fams.get("nov", {}).get("bytes", 0),
        "votes": votes,
        "duplicate_of": dups,
        "held_generations": held,
    }


@click.command("novelty")
@click.option("--data", "data_path", type=click.Path(path_type=Path), default=None, help="Stream file or folder.")
@click.option("--limit", type=int, default=None, help="First N events only (default: the whole stream).")
@click.option("--batch", type=int, default=256, show_default=True)
@click.option("--sample", type=int, default=200, show_default=True, help="Flagged pairs to draw for labelling.")
@click.option("--seed", type=int, default=20261203, show_default=True)
@click.option(
    "--pairs-out", type=click.Path(path_type=Path), default=None, help="JSONL of the drawn pairs, with texts."
)
@click.option("--labels", type=click.Path(path_type=Path, exists=True), default=None, help="Hand labels (CSV).")
def bench_novelty_cmd(
    data_path: Path | None,
    limit: int | None,
    batch: int,
    sample: int,
    seed: int,
    pairs_out: Path | None,
    labels: Path | None,
) -> None:
    """Near-duplicate share, cost (novelty on vs off) and precision on hand labels (JSON)."""
    s = get_settings()
    # The configured shape and threshold, also when the worker's novelty is switched off.
    params = NoveltyParams(bands=s.novelty_bands, rows=s.novelty_rows, threshold=s.novelty_threshold)
    path = data_path or s.require_data_dir() / "stocknet-tweets" / "stream.csv"
    events = [dict(e) for e in read_events(path, limit=limit)]
    texts = [str(e["text"]) for e in events]
    sketcher = Sketcher(params)
    t0 = time.perf_counter()
    tickers = [list(e.get("tickers") or []) for e in events]
    bands: list[list[str]] = []
    for i in range(0, len(texts), batch):  # in worker-sized batches, as the worker sketches
        bands += sketcher.band_keys(texts[i : i + batch], tickers[i : i + batch])
    sketch_s = time.perf_counter() - t0

    async def main(url: str) -> tuple[dict[str, Any], dict[str, Any]]:
        r = Redis.from_url(url)
        try:
            on = await _run(r, events, bands, params, s.novelty_horizon_seconds, batch, "{benchnov_on}")
            off = await _run(r, events, bands, None, s.novelty_horizon_seconds, batch, "{benchnov_off}")
            return on, off
        finally:
            await r.aclose()

    s.local_dir.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix="bench-novelty-", dir=s.local_dir))
    proc, port = _start_redis(folder)
    try:
        on, off = asyncio.run(main(f"redis://127.0.0.1:{port}/0"))
    finally:
        proc.terminate()
        proc.wait(10)
        shutil.rmtree(folder, ignore_errors=True)

    n = len(events)
    flagged = [i for i, d in enumerate(on["duplicate_of"]) if d is not None]
    exact = sum(1 for i in flagged if on["votes"][i] == params.bands)
    index = {str(e["id"]): i for i, e in enumerate(events)}
    # The sample: the flagged events whose id ranks first under a seeded hash. A change that flags a few more
    # or fewer events leaves the rest of the sample as it was, so earlier labels keep their use.
    ranked = sorted(flagged, key=lambda i: hashlib.sha256(f"{seed}:{events[i]['id']}".encode()).digest())
    drawn = sorted(ranked[:sample])
    pairs = []
    for i in drawn:
        j = index[str(on["duplicate_of"][i])]
        pairs.append(
            {
                "event_id": str(events[i]["id"]),
                "duplicate_of": str(events[j]["id"]),
                "votes": on["votes"][i],
                "estimated_similarity": round(params.similarity(on["votes"][i]), 3),
                "jaccard": round(
                    jaccard(texts[i], texts[j], events[i].get("tickers") or [], events[j].get("tickers") or []), 3
                ),
                "tickers": events[i].get("tickers") or [],
                "duplicate_of_tickers": events[j].get("tickers") or [],
                "hours_apart": round(
                    (parse_event_time(events[i]["published_at"]) - parse_event_time(events[j]["published_at"]))
                    / 3_600_000,
                    2,
                ),
                "text": texts[i],
                "duplicate_of_text": texts[j],
            }
        )
    if pairs_out is not None:
        pairs_out.parent.mkdir(parents=True, exist_ok=True)
        pairs_out.write_bytes(b"".join(orjson.dumps(p) + b"\n" for p in pairs))
    jac = sorted(p["jaccard"] for p in pairs)
    # The index holds the generations still in reach: what it costs per event (and per novel event) held.
    gen_ms = s.novelty_horizon_seconds * 1000
    held = [i for i, e in enumerate(events) if parse_event_time(e["published_at"]) // gen_ms in on["held_generations"]]
    held_novel = sum(1 for i in held if on["duplicate_of"][i] is None)
    out: dict[str, Any] = {
        "bench": "novelty",
        "at": now_iso(),
        "machine": machine_info(),
        "stream": str(path.name if data_path is None else path),
        "events": n,
        "params": {
            "bands": params.bands,
            "rows": params.rows,
            "threshold": params.threshold,
            "min_votes": params.min_votes,
            "horizon_s": s.novelty_horizon_seconds,
            "shingle": "byte 5-grams of the normalised text, plus 8 salted shingles per ticker",
        },
        "near_duplicates": len(flagged),
        "near_duplicate_share": round(len(flagged) / n, 4) if n else None,
        "all_bands_shared": exact,
        "all_bands_shared_share": round(exact / n, 4) if n else None,
        "sketch_texts_per_s": round(n / sketch_s),
        "apply_events_per_s_novelty_on": round(on["events_per_s"]),
        "apply_events_per_s_novelty_off": round(off["events_per_s"]),
        "apply_ratio_on_over_off": round(on["events_per_s"] / off["events_per_s"], 3),
        "novelty_index_bytes_at_end": on["nov_bytes"],
        "novelty_index_events_held": len(held),
        "novelty_index_bytes_per_held_event": round(on["nov_bytes"] / len(held), 1) if held else None,
        "novelty_index_bytes_per_held_novel_event": round(on["nov_bytes"] / held_novel, 1) if held_novel else None,
        "used_memory_delta_on_minus_off": on["used_memory_delta"] - off["used_memory_delta"],
        "sample": {
            "pairs": len(pairs),
            "seed": seed,
            "jaccard_min": jac[0] if jac else None,
            "jaccard_median": jac[len(jac) // 2] if jac else None,
            "below_threshold": sum(1 for x in jac if x < params.threshold),
        },
    }
    if labels is not None:
        with labels.open(newline="") as f:
            lab = {(row["event_id"], row["duplicate_of"]): row["label"].strip() for row in csv.DictReader(f)}
        judged = [lab[(p["event_id"], p["duplicate_of"])] for p in pairs if (p["event_id"], p["duplicate_of"]) in lab]
        same = sum(1 for x in judged if x == "same")
        out["precision"] = {
            "labelled": len(judged),
            "unlabelled_in_sample": len(pairs) - len(judged),
            "same_story": same,
            "precision": round(same / len(judged), 4) if judged else None,
            "wilson_95": wilson(same, len(judged)),
        }
    click.echo(orjson.dumps(out, option=orjson.OPT_INDENT_2).decode())
