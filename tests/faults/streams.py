"""Input streams of the fault suite, built from the real StockNet tweet stream.

The base is a slice of ``stocknet-tweets/stream.csv`` (real texts, tickers and times). Into it go a
few negative bursts on made-up tickers, so that every run has several alerts to lose or double. The
burst texts are picked by asking the engine the worker runs (the ``null`` backend on the test
checkpoint) which candidate sentences it reads as negative: nothing depends on hard-coded outputs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from engine.runtime import load_classifier
from engine.settings import EngineSettings
from stream.cli.replay import read_events
from stream.events import ms_to_iso, parse_event_time
from stream.settings import StreamSettings
from tests.support.surge import negative_stories

BASE_SINCE = "2014-04-20T00:00:00Z"
BASE_EVENTS = 3000
BURST_TICKERS = ("ZQAA", "ZQAB", "ZQAC", "ZQAD", "ZQAE", "ZQAF")
BURST_SIZE = 8
BURST_PHRASES = (
    "shares crash after fraud probe",
    "plunges on bankruptcy fears",
    "collapses as lawsuit widens",
    "tumbles after profit warning",
    "sinks as regulators open inquiry",
    "slumps on guidance cut",
)

# A few inputs that must be dead-lettered, whatever happens to the worker (reason per README).
BAD_INPUTS: tuple[tuple[bytes, str], ...] = (
    (b"{this is not json", "not_json"),
    (b"[1, 2, 3]", "not_object"),
    (b'{"id": "bad-no-text", "published_at": "2014-05-01T00:00:00Z"}', "invalid_schema"),
    (b'{"id": 7, "text": "id is a number", "published_at": "2014-05-01T00:00:00Z"}', "invalid_schema"),
    (b'{"id": "bad-empty", "text": "   ", "published_at": "2014-05-01T00:00:00Z"}', "empty_text"),
    (b'{"id": "bad-time", "text": "when?", "published_at": "last tuesday"}', "invalid_schema"),
)


@dataclass
class FaultStream:
    events: list[dict[str, Any]]  # valid events, in event-time order
    bad: list[tuple[bytes, str]]  # payloads that must be dead-lettered, with their reason
    records: list[tuple[bytes | None, bytes, int | None]] = field(
        default_factory=list
    )  # (key, value, partition), in order
    record_ts: list[int | None] = field(default_factory=list)  # event time of each record (None: a bad one)
    burst_tickers: tuple[str, ...] = ()
    partitions: int = 4

    @property
    def valid_ids(self) -> set[str]:
        return {str(e["id"]) for e in self.events}


def build_fault_stream(
    settings: StreamSettings,
    engine: EngineSettings,
    model_dir: Path,
    partitions: int = 4,
    n_base: int = BASE_EVENTS,
    bursts: tuple[str, ...] = BURST_TICKERS,
) -> FaultStream:
    """StockNet slice plus bursts, in event-time order, dealt round-robin over ``partitions``
    (keyed by id as usual; the explicit partition lets a test hold one partition back)."""
    base = read_events(settings.require_data_dir() / "stocknet-tweets" / "stream.csv", since=BASE_SINCE, limit=n_base)
    events: list[dict[str, Any]] = [dict(e) for e in base if isinstance(e, dict)]
    assert len(events) == n_base, f"StockNet slice has {len(events)} events, wanted {n_base}"
    times = [parse_event_time(e["published_at"]) for e in events]
    clf = load_classifier(engine, model_dir)
    for k, ticker in enumerate(bursts):
        # Spread over the stream; each burst sits inside one hour, 20 minutes after the hour begins.
        anchor = times[(k + 1) * len(events) // (len(bursts) + 1)]
        start = anchor - anchor % 3_600_000 + 20 * 60_000
        for j, text in enumerate(negative_stories(clf, ticker, BURST_SIZE, BURST_PHRASES)):
            events.append(
                {
                    "id": f"burst-{ticker}-{j}",
                    "text": text,
                    "published_at": ms_to_iso(start + j * 60_000),
                    "source": "news",
                    "tickers": [ticker],
                }
            )
    # Stable sort by event time: every partition then delivers in event-time order, as a replay does.
    events.sort(key=lambda e: parse_event_time(e["published_at"]))
    rows: list[tuple[bytes | None, bytes, int | None]] = [
        (str(e["id"]).encode(), orjson.dumps(e), parse_event_time(e["published_at"])) for e in events
    ]
    bad = list(BAD_INPUTS)
    for i, (raw, _) in enumerate(bad):
        rows.insert((i + 1) * len(rows) // (len(bad) + 1), (None, raw, None))
    records = [(k, v, i % partitions) for i, (k, v, _) in enumerate(rows)]
    return FaultStream(
        events=events,
        bad=bad,
        records=records,
        record_ts=[ts for _, _, ts in rows],
        burst_tickers=tuple(bursts),
        partitions=partitions,
    )
