"""Schema validation and cashtag extraction."""

from __future__ import annotations

import orjson
import pytest
from pydantic import ValidationError

from stream.events import (
    EXAMPLE_TEXT_CHARS,
    MAX_EVENT_MS,
    NewsEvent,
    Rejection,
    ScoredEvent,
    example_text,
    extract_cashtags,
    ms_to_iso,
    parse_event,
    parse_event_time,
    parse_scored,
)

LIMITS = dict(max_event_bytes=4096, max_text_bytes=1024)


def ok(**fields: object) -> bytes:
    base = {"id": "e1", "text": "Apple beats estimates", "published_at": "2024-05-01T12:00:00Z", "source": "news"}
    base.update(fields)
    return orjson.dumps({k: v for k, v in base.items() if v is not ...})


def test_valid_event_parses_with_iso_time() -> None:
    ev = parse_event(ok(), **LIMITS)
    assert isinstance(ev, NewsEvent)
    assert ev.published_at == 1714564800000
    assert ev.source == "news"


def test_epoch_ms_and_iso_agree() -> None:
    a = parse_event(ok(published_at=1714564800000), **LIMITS)
    b = parse_event(ok(published_at="2024-05-01T14:00:00+02:00"), **LIMITS)
    assert isinstance(a, NewsEvent) and isinstance(b, NewsEvent)
    assert a.published_at == b.published_at


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"{not json", "not_json"),
        (b"\xff\xfe\x00garbage", "not_json"),
        (b"[1, 2, 3]", "not_object"),
        (b'"just a string"', "not_object"),
        (ok(id=...), "invalid_schema"),
        (ok(id=123), "invalid_schema"),
        (ok(text=...), "invalid_schema"),
        (ok(text=42), "invalid_schema"),
        (ok(text="   "), "empty_text"),
        (ok(text="x" * 2000), "oversized_text"),
        (ok(published_at=...), "invalid_schema"),
        (ok(published_at="yesterday"), "invalid_schema"),
        (ok(published_at=True), "invalid_schema"),
        (ok(published_at=1714564800), "invalid_schema"),  # seconds, not ms
        (ok(tickers="AAPL"), "invalid_schema"),
        (ok(tickers=["not a ticker!"]), "invalid_schema"),
        (b"{" + b'"a": "' + b"y" * 5000 + b'"}', "oversized_event"),
        (None, "not_json"),
    ],
)
def test_bad_inputs_are_rejected_with_reason(raw: bytes | None, reason: str) -> None:
    res = parse_event(raw, **LIMITS)
    assert isinstance(res, Rejection), res
    assert res.reason in (reason, "not_utf8") if reason == "not_json" else res.reason == reason
    assert res.detail


def test_tickers_default_to_cashtags_of_title_and_text() -> None:
    ev = parse_event(ok(title="$msft and $AAPL", text="also $AAPL and $TSLA, not $100 or US$5"), **LIMITS)
    assert isinstance(ev, NewsEvent)
    assert ev.tickers == ["MSFT", "AAPL", "TSLA"]


def test_explicit_tickers_win_and_are_normalised() -> None:
    ev = parse_event(ok(text="$AAPL up", tickers=["$goog", "GOOG", "brk.b"]), **LIMITS)
    assert isinstance(ev, NewsEvent)
    assert ev.tickers == ["GOOG", "BRK.B"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("$AAPL to the moon", ["AAPL"]),
        ("Buy $brk.b and $BF-B", ["BRK.B", "BF-B"]),
        ("costs $5 or $5.50", []),
        ("email a$b and $$AAPL", []),
        ("($NVDA), $AMD.", ["NVDA", "AMD"]),
        ("no tags here", []),
    ],
)
def test_extract_cashtags(text: str, expected: list[str]) -> None:
    assert extract_cashtags(text) == expected


def test_parse_event_time_naive_is_utc() -> None:
    assert parse_event_time("2014-01-01T00:00:00") == parse_event_time("2014-01-01T00:00:00Z") == 1388534400000


SCORED = {
    "id": "e1",
    "tickers": ["AAPL"],
    "source": "tweet",
    "published_at": 1398902640000,
    "published_at_iso": "2014-05-01T00:04:00Z",
    "processed_at": "2026-11-25T09:00:00.000000Z",
    "sentiment": {"label": "negative", "probs": {"negative": 0.7, "neutral": 0.2, "positive": 0.1}},
    "topic": {"label": "Earnings", "prob": 0.5},
    "score": -0.6,
    "model_id": "m",
    "backend": "null",
    "window_status": "counted",
    "novelty": 0.0,
    "duplicate_of": "e0",
}


def test_scored_event_round_trips_the_record_the_worker_writes() -> None:
    event = parse_scored(orjson.dumps(SCORED))
    assert event.sentiment.probs["negative"] == 0.7 and event.topic is not None and event.topic.label == "Earnings"
    assert orjson.loads(event.to_json()) == SCORED
    # Field order is the record's: consumers reading raw JSON see what they saw before the model.
    assert list(orjson.loads(event.to_json())) == list(SCORED)
    assert parse_scored(ScoredEvent.model_validate({**SCORED, "topic": None}).to_json()).topic is None


@pytest.mark.parametrize("bad", [{"window_status": "maybe"}, {"sentiment": {"label": "up", "probs": {}}}, {"id": None}])
def test_parse_scored_rejects_what_is_not_a_scored_record(bad: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        parse_scored(orjson.dumps({**SCORED, **bad}))


@pytest.mark.parametrize("value", [10**16, 2**63, 1e300, "253402300800000"])
def test_timestamps_past_year_9999_are_invalid_not_a_crash(value: object) -> None:
    raw = orjson.dumps({"id": "x", "text": "$AAPL up", "published_at": value})
    out = parse_event(raw, 256 * 1024, 32 * 1024)
    assert isinstance(out, Rejection) and out.reason == "invalid_schema"


def test_last_nameable_instant_is_valid() -> None:
    out = parse_event(
        orjson.dumps({"id": "x", "text": "$AAPL up", "published_at": MAX_EVENT_MS}), 256 * 1024, 32 * 1024
    )
    assert isinstance(out, NewsEvent) and ms_to_iso(out.published_at).startswith("9999-12-31T23:59:59")


def test_example_text_is_short_and_on_one_line() -> None:
    assert example_text("  Shares\n\tplunge  after   recall ") == "Shares plunge after recall"
    long = "x" * 150 + " " + "y" * 150
    cut = example_text(long)
    assert len(cut) == EXAMPLE_TEXT_CHARS and cut.endswith("\u2026") and cut.startswith("x" * 150)
    assert example_text("a" * EXAMPLE_TEXT_CHARS) == "a" * EXAMPLE_TEXT_CHARS
