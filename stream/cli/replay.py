"""Replay a historical stream into the input topic through the same path live events take.

Reads the StockNet CSV layout (``created_at,ticker,tweet_id,user_id,lang,text``; a tweet naming
several tickers appears once per ticker and becomes one event with all of them) or JSONL events.
Authors are pseudonymised before they leave this process: the raw user id is never sent or logged.
"""

from __future__ import annotations

import asyncio
import csv
import hashlib
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson
import structlog
from aiokafka import AIOKafkaProducer

log = structlog.get_logger(__name__)


def pseudonymise(user_id: str) -> str:
    return "u_" + hashlib.sha256(f"finpulse:{user_id}".encode()).hexdigest()[:12]


def _stocknet_events(path: Path, since: str | None, until: str | None) -> Iterator[dict[str, Any]]:
    # A tweet naming several tickers is one row per ticker, all with the same timestamp (not always
    # adjacent): gather the rows of one timestamp, merge them by tweet id, then emit in file order.
    def flush(group: dict[str, dict[str, Any]]) -> Iterator[dict[str, Any]]:
        yield from group.values()
        group.clear()

    group: dict[str, dict[str, Any]] = {}
    current_ts: str | None = None
    with open(path, newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            ts = row["created_at"]
            if since and ts < since:
                continue
            if until and ts >= until:
                break
            if ts != current_ts:
                yield from flush(group)
                current_ts = ts
            ev = group.get(row["tweet_id"])
            if ev is None:
                group[row["tweet_id"]] = {
                    "id": row["tweet_id"],
                    "text": row["text"],
                    "published_at": ts,
                    "source": "tweet",
                    "tickers": [row["ticker"]],
                    "author": pseudonymise(row["user_id"]),
                    "lang": row.get("lang") or None,
                }
            elif row["ticker"] not in ev["tickers"]:
                ev["tickers"].append(row["ticker"])
    yield from flush(group)


def _jsonl_events(path: Path) -> Iterator[dict[str, Any] | bytes]:
    with open(path, "rb") as f:
        for line in f:
            line = line.strip()
            if line:
                yield line  # sent as-is: validation is the worker's job (bad lines must reach the DLQ)


def read_events(
    path: Path, since: str | None = None, until: str | None = None, limit: int | None = None
) -> list[dict[str, Any] | bytes]:
    """Events from a CSV (StockNet layout) or JSONL file, in file order."""
    it: Iterator[Any]
    if path.suffix in (".jsonl", ".json", ".ndjson"):
        it = _jsonl_events(path)
    else:
        it = _stocknet_events(path, since, until)
    out: list[Any] = []
    for ev in it:
        out.append(ev)
        if limit is not None and len(out) >= limit:
            break
    return out


@dataclass
class ReplayStats:
    sent: int
    seconds: float

    @property
    def rate(self) -> float:
        return self.sent / self.seconds if self.seconds else 0.0


async def produce(
    bootstrap: str,
    topic: str,
    events: Sequence[dict[str, Any] | bytes],
    rate: float = 0.0,
    progress: Callable[[int], None] | None = None,
) -> ReplayStats:
    """Send events keyed by id (so one event always lands on one partition); ``rate`` 0 means as fast as possible."""
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        linger_ms=20,
        max_batch_size=256 * 1024,
        acks="all",
        enable_idempotence=True,
        compression_type=None,
    )
    await producer.start()
    t0 = time.perf_counter()
    try:
        pending = []
        for i, ev in enumerate(events):
            if isinstance(ev, bytes):
                value, key = ev, None
                try:
                    k = orjson.loads(ev).get("id")
                    key = str(k).encode() if k is not None else None
                except Exception:  # noqa: BLE001 - malformed lines are sent unkeyed, for the DLQ to catch
                    key = None
            else:
                value, key = orjson.dumps(ev), str(ev["id"]).encode()
            pending.append(await producer.send(topic, value=value, key=key))
            if rate > 0:
                ahead = (i + 1) / rate - (time.perf_counter() - t0)
                if ahead > 0:
                    await asyncio.sleep(ahead)
            if len(pending) >= 2000:
                await asyncio.gather(*pending)
                if progress:
                    progress(len(pending))
                pending.clear()
        await producer.flush()
        if pending:
            await asyncio.gather(*pending)
            if progress:
                progress(len(pending))
    finally:
        await producer.stop()
    return ReplayStats(sent=len(events), seconds=time.perf_counter() - t0)


def parse_when(value: str | None) -> str | None:
    """Accept a date or datetime; keep the ISO-8601 'Z' form the CSV uses so string comparison works."""
    if not value:
        return None
    dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
    return dt.strftime("%Y-%m-%dT%H:%M:%SZ")
