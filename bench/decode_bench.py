"""`finpulse bench decode`: the worker's per-event CPU stages in isolation, on real events.

Measures, in-process and single-threaded (no Kafka, no Redis):
  * the compiled decoder (``stream.events.decode_event``, orjson plus the NewsEvent rules) on valid
    events, against the pydantic path (``parse_event``) on the same bytes;
  * invalid inputs through the worker's full rule (fast path, then ``parse_event`` for the reason);
  * scored-record encoding (``stream.processor.encode_scored``) against one ``ScoredEvent`` model each;
  * the tokenizer's own texts/s (``BatchTokenizer.tokenize`` in the worker's take size), the stage
    that now runs on its own thread ahead of inference.
Each figure is the best of ``--rounds`` passes (the machine is shared; the best pass is the least disturbed).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
import numpy as np
import orjson

from bench.common import machine_info, now_iso, stream_texts
from engine.heads import SENTIMENT_LABELS
from engine.settings import EngineSettings
from engine.tokenize import BatchTokenizer
from stream.cli.models import resolve_model_dir
from stream.events import (
    ScoredEvent,
    SentimentScore,
    TopicScore,
    decode_event,
    decode_event_or_reject,
    ms_to_iso,
    parse_event,
    parse_scored,
)
from stream.processor import encode_scored
from stream.settings import get_settings

INVALID: list[bytes] = [
    b"{this is not json",
    b"[1, 2, 3]",
    orjson.dumps({"id": "bad-missing-text", "published_at": "2014-05-01T00:00:00Z"}),
    orjson.dumps({"id": 12345, "text": "id is a number", "published_at": "2014-05-01T00:00:00Z"}),
    orjson.dumps({"id": "bad-empty", "text": "  ", "published_at": "2014-05-01T00:00:00Z"}),
    orjson.dumps({"id": "bad-time", "text": "when?", "published_at": "last tuesday"}),
    orjson.dumps({"id": "bad-ticker", "text": "x", "published_at": 1398000000000, "tickers": ["no way!"]}),
]


def _rate(n: int, fn: Callable[[], object], rounds: int) -> float:
    best = float("inf")
    for _ in range(rounds):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return round(n / best, 1)


def run_decode_bench(events: list[dict[str, Any]], model_dir: Path, batch: int, rounds: int) -> dict[str, Any]:
    s = get_settings()
    max_event, max_text = s.max_event_bytes, s.max_text_bytes
    raws = [orjson.dumps(e) for e in events]
    n = len(raws)
    fast_ok = sum(1 for r in raws if decode_event(r, max_event, max_text) is not None)
    invalid = (INVALID * (n // len(INVALID) + 1))[:n]

    # Scored records for the whole set, as a batch of the null backend would give them.
    decoded = [decode_event(r, max_event, max_text) for r in raws]
    evs = [e for e in decoded if e is not None]
    rng = np.random.default_rng(0)
    sent = rng.dirichlet((1, 1, 1), size=len(evs)).astype(np.float32)
    cls = sent.argmax(axis=1)
    scores = sent[:, 2] - sent[:, 0]
    topic_labels = [f"topic {i}" for i in range(20)]
    tprobs = rng.dirichlet((1,) * 20, size=len(evs)).astype(np.float32)
    tidx = tprobs.argmax(axis=1)
    topics: list[str | None] = [topic_labels[i] for i in tidx]
    statuses = ["counted"] * len(evs)
    now = "2026-11-25T00:00:00Z"

    def encode_fast() -> list[tuple[bytes, bytes]]:
        out: list[tuple[bytes, bytes]] = []
        for i in range(0, len(evs), batch):
            sl = slice(i, i + batch)
            out += encode_scored(
                evs[sl],
                sent[sl],
                cls[sl],
                scores[sl],
                tprobs[sl],
                tidx[sl],
                topics[sl],
                statuses[sl],  # type: ignore[arg-type]
                processed_at=now,
                model_id="m",
                backend="null",
            )
        return out

    def encode_model() -> None:
        for i, e in enumerate(evs):
            p = sent[i]
            ScoredEvent(
                id=e.id,
                tickers=e.tickers,
                source=e.source,
                published_at=e.published_at,
                published_at_iso=ms_to_iso(e.published_at),
                processed_at=now,
                sentiment=SentimentScore(
                    label=SENTIMENT_LABELS[int(cls[i])],
                    probs={SENTIMENT_LABELS[k]: float(p[k]) for k in range(3)},
                ),
                topic=TopicScore(label=topics[i] or "", prob=float(tprobs[i, tidx[i]])),
                score=float(scores[i]),
                model_id="m",
                backend="null",
                window_status="counted",
            ).to_json()

    # The encoded records read back as the same ScoredEvent the model path writes (checked, not assumed).
    sample = encode_fast()[:50]
    assert all(parse_scored(v).id == k.decode() for k, v in sample)

    tok = BatchTokenizer.from_model_dir(model_dir)
    texts = [str(e.classify_text) for e in evs]

    def tokenize_all() -> None:
        for i in range(0, len(texts), batch):
            tok.tokenize(texts[i : i + batch])

    tokens = sum(int(tok.tokenize(texts[i : i + batch]).lengths.sum()) for i in range(0, len(texts), batch))
    decode_rate = _rate(n, lambda: [decode_event(r, max_event, max_text) for r in raws], rounds)
    pydantic_rate = _rate(n, lambda: [parse_event(r, max_event, max_text) for r in raws], rounds)
    return {
        "events": n,
        "mean_event_bytes": round(sum(map(len, raws)) / n, 1),
        "valid_on_fast_path": fast_ok,
        "decode_valid_events_per_s": decode_rate,
        "parse_event_pydantic_valid_events_per_s": pydantic_rate,
        "decode_vs_pydantic": round(decode_rate / pydantic_rate, 2),
        "invalid_events_per_s": _rate(
            n, lambda: [decode_event_or_reject(r, max_event, max_text) for r in invalid], rounds
        ),
        "encode_scored_records_per_s": _rate(len(evs), encode_fast, rounds),
        "scored_event_model_records_per_s": _rate(len(evs), encode_model, rounds),
        "tokenizer": {
            "model_dir": str(model_dir),
            "batch": batch,
            "texts_per_s": _rate(len(texts), tokenize_all, rounds),
            "mean_tokens": round(tokens / max(len(texts), 1), 1),
            "rayon_threads": os.environ.get("RAYON_NUM_THREADS", "default (all cores)"),
        },
    }


@click.command("decode")
@click.option("--events", "n", type=int, default=30000, show_default=True, help="Real StockNet events to use.")
@click.option("--batch", type=int, default=256, show_default=True, help="Events per batch (the worker's take).")
@click.option("--rounds", type=int, default=5, show_default=True, help="Passes; the best one is reported.")
@click.option("--model", "model_dir", type=click.Path(path_type=Path), default=None, help="For the tokenizer.")
@click.option("--out", type=click.Path(path_type=Path), default=None, help="Also write the JSON here.")
def bench_decode_cmd(n: int, batch: int, rounds: int, model_dir: Path | None, out: Path | None) -> None:
    """Decoder events/s (valid and invalid), scored-record encoding and tokenizer texts/s, in-process."""
    base = get_settings()
    mdir = model_dir or resolve_model_dir(base, EngineSettings())
    events = stream_texts(base.require_data_dir(), n)
    result = {
        "benchmark": "decode",
        "date": now_iso(),
        "machine": machine_info(),
        "load_avg": os.getloadavg(),
        **run_decode_bench(events, mdir, batch, rounds),
    }
    text = orjson.dumps(result, option=orjson.OPT_INDENT_2).decode()
    click.echo(text)
    if out:
        out.write_text(text)
