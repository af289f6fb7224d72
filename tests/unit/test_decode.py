"""The worker's compiled decoder (``decode_event``) accepts exactly what ``parse_event`` accepts, with the
same fields, and leaves every rejection (reason and detail) to ``parse_event``."""

from __future__ import annotations

import random
from typing import Any

import orjson
import pytest

from stream.events import InputEvent, NewsEvent, Rejection, decode_event, decode_event_or_reject, parse_event

LIMITS = dict(max_event_bytes=4096, max_text_bytes=1024)
BASE: dict[str, Any] = {"id": "e1", "text": "Apple beats $aapl estimates", "published_at": "2024-05-01T12:00:00Z"}

# Each value replaces one field of BASE (``...`` removes it): valid and invalid variants of every rule.
VARIANTS: dict[str, list[Any]] = {
    "id": [..., "", "x" * 256, "x" * 257, 12, None, True, ["a"], "ü-id"],
    "text": [..., "", "   ", "\n\t", "x" * 1024, "x" * 1025, "é" * 600, 42, None, "$MSFT up", "ok"],
    "published_at": [
        ...,
        None,
        True,
        False,
        1714564800000,
        1714564800,
        1714564800000.7,
        "1714564800000",
        " 1714564800000 ",
        "2024-05-01",
        "2024-05-01T12:00:00",
        "2024-05-01T14:00:00+02:00",
        "2024-13-01T00:00:00Z",
        "2024-02-30T00:00:00Z",
        "2024-05-01T24:00:00Z",
        "2024-05-01T12:60:00Z",
        "2024-05-01T12:00:60Z",
        "2024-05-01t12:00:00Z",
        "2024-05- 1T12:00:00Z",
        "2024-05-01T1 :00:00Z",
        "2024-05-01T12:00:0٣Z",
        "20240501T12:00:00ZZZ",
        "0001-01-01T00:00:00Z",
        "1969-12-31T23:59:59Z",
        "9999-12-31T23:59:59Z",
        "yesterday",
        10**18,
        1.5e300,
        253_402_300_799_999,
        253_402_300_800_000,
        [1],
        {},
    ],
    "source": [..., None, "news", 3, ""],
    "title": [..., None, "", "Title $goog", 5, ["t"]],
    "author": [..., None, "a", 1],
    "url": [..., None, "http://x", False],
    "lang": [..., None, "en", 2.5],
    "tickers": [
        ...,
        None,
        [],
        ["aapl", "$msft", " AAPL "],
        ["BRK.B", "brk-b"],
        ["not a ticker!"],
        [1],
        "AAPL",
        {"a": 1},
        [f"T{i}" for i in range(30)],
    ],
    "extra": [..., 1, {"nested": [1, 2]}],
}


def _raw(**fields: Any) -> bytes:
    d = {**BASE, **fields}
    return orjson.dumps({k: v for k, v in d.items() if v is not ...})


def _same(fast: InputEvent, slow: NewsEvent) -> None:
    assert (fast.id, fast.text, fast.published_at, fast.source, fast.title, fast.tickers) == (
        slow.id,
        slow.text,
        slow.published_at,
        slow.source,
        slow.title,
        slow.tickers,
    )
    assert fast.classify_text == slow.classify_text


def _check(raw: bytes | None) -> None:
    slow = parse_event(raw, **LIMITS)
    fast = decode_event(raw, **LIMITS) if raw is not None else None
    if fast is not None:
        assert isinstance(slow, NewsEvent), f"fast path accepted what parse_event refuses: {raw!r} -> {slow}"
        _same(fast, slow)
    both = decode_event_or_reject(raw, **LIMITS)
    if isinstance(slow, Rejection):
        assert both == slow
    else:
        assert isinstance(both, InputEvent)
        _same(both, slow)


@pytest.mark.parametrize("field", sorted(VARIANTS))
def test_every_field_rule_matches_parse_event(field: str) -> None:
    for value in VARIANTS[field]:
        _check(_raw(**{field: value}))


def test_random_combinations_and_raw_garbage_match_parse_event() -> None:
    rng = random.Random(12)
    for _ in range(3000):
        fields = {f: rng.choice(vs) for f, vs in VARIANTS.items() if rng.random() < 0.4}
        _check(_raw(**fields))
    for raw in [
        None,
        b"",
        b"{",
        b"[]",
        b'"s"',
        b"null",
        b"\xff\xfe",
        b'{"id":"a","id":"b","text":"t","published_at":1714564800000}',
    ]:
        _check(raw)
    big = _raw(text="y" * 5000)
    _check(big)


def test_typical_event_takes_the_fast_path() -> None:
    ev = decode_event(_raw(tickers=["aapl"]), **LIMITS)
    assert isinstance(ev, InputEvent) and ev.tickers == ["AAPL"] and ev.published_at == 1714564800000
    assert decode_event(_raw(), **LIMITS).tickers == ["AAPL"]  # type: ignore[union-attr]  # cashtag


def test_encoded_scored_records_read_back_as_the_model_writes_them() -> None:
    """``encode_scored`` writes the JSON of ``ScoredEvent`` (same fields, order and values) without the model."""
    import numpy as np

    from engine.heads import SENTIMENT_LABELS
    from stream.events import ScoredEvent, SentimentScore, TopicScore, WindowStatus, ms_to_iso, parse_scored
    from stream.processor import encode_scored

    evs = [
        InputEvent("a", "t", 1714564800000, "news", None, ["AAPL", "BRK.B"]),
        InputEvent('q"uote\\ü', "t", 1714564800123, 'so"urce', "T", []),
        InputEvent("c", "t", 253_402_300_799_999, "x", None, ["Z"]),
    ]
    sent = np.array([[0.1, 0.2, 0.7], [1.0, 0.0, 0.0], [1e-7, 0.5, 0.4999999]], dtype=np.float32)
    cls = sent.argmax(axis=1)
    scores = sent[:, 2] - sent[:, 0]
    tprobs = np.array([[0.25, 0.75], [0.5, 0.5], [0.9, 0.1]], dtype=np.float32)
    tidx = tprobs.argmax(axis=1)
    statuses: list[WindowStatus] = ["counted", "duplicate", "late"]
    topic_sets: list[list[str | None]] = [["X", 'Y"', "X"], [None, None, None]]
    # Novelty off (null, null), and on: a new story, a near-duplicate, an exact repost of an id to escape.
    novelty_cases: list[tuple[list[float] | None, list[str | None]]] = [
        (None, []),
        ([1.0, 0.2402, 0.0], [None, "a", 'q"uote\\ü']),
    ]
    cases = [
        (topics, tp, ti, nov, dup)
        for topics, tp, ti in ((topic_sets[0], tprobs, tidx), (topic_sets[1], None, None))
        for nov, dup in novelty_cases
    ]
    for topics, tp, ti, nov, dup in cases:
        got = encode_scored(
            evs,
            sent,
            cls,
            scores,
            tp,
            ti,
            topics,
            statuses,
            nov,
            dup,
            processed_at="2026-11-25T00:00:00Z",
            model_id="m",
            backend="b",
        )
        for i, (e, (key, value)) in enumerate(zip(evs, got, strict=True)):
            label = topics[i]
            want = ScoredEvent(
                id=e.id,
                tickers=e.tickers,
                source=e.source,
                published_at=e.published_at,
                published_at_iso=ms_to_iso(e.published_at),
                processed_at="2026-11-25T00:00:00Z",
                sentiment=SentimentScore(
                    label=SENTIMENT_LABELS[int(cls[i])],
                    probs={SENTIMENT_LABELS[k]: float(sent[i, k]) for k in range(3)},
                ),
                topic=TopicScore(label=label, prob=float(tprobs[i, tidx[i]])) if label is not None else None,
                score=float(scores[i]),
                model_id="m",
                backend="b",
                window_status=statuses[i],
                novelty=nov[i] if nov is not None else None,
                duplicate_of=dup[i] if dup else None,
            )
            assert key == e.id.encode()
            assert parse_scored(value) == want
            assert list(orjson.loads(value)) == list(orjson.loads(want.to_json()))  # field order
