"""Pure helpers of `finpulse bench soak` (the benchmark itself is a command, not a test)."""

from __future__ import annotations

from bench.soak import EventSource, summarize_rss


def test_event_source_cycles_with_fresh_ids_and_later_event_times() -> None:
    events = [
        {"id": "a", "text": "x", "published_at": "2014-01-01T00:00:00Z", "tickers": ["AAPL"]},
        {"id": "b", "text": "y", "published_at": "2014-01-01T00:10:00Z", "tickers": ["MSFT"]},
    ]
    src = EventSource(events, "run1", gap_ms=60_000)
    seq = [src.event(i) for i in range(5)]
    assert [e["id"] for e in seq] == [f"run1-{i}" for i in range(5)]
    assert [e["text"] for e in seq] == ["x", "y", "x", "y", "x"]
    times = [e["published_at"] for e in seq]
    assert times == sorted(times)  # event time keeps moving forward across cycles
    assert times[2] - times[0] == 10 * 60_000 + 60_000  # shifted by the span plus the gap
    assert events[0]["id"] == "a"  # the source events are not modified


def test_rss_verdict_uses_the_second_half_of_the_overload() -> None:
    flat = [{"t": t, "worker_rss_mb": 300.0 + (50.0 if t < 300 else 1.0)} for t in range(0, 601, 10)]
    res = summarize_rss(flat, 600)
    assert res["bounded"] is True  # the early climb (filling buffers) does not count
    growing = [{"t": t, "worker_rss_mb": 300.0 + t / 10} for t in range(0, 601, 10)]
    res = summarize_rss(growing, 600)
    assert res["bounded"] is False
    assert res["second_half_slope_mb_per_min"] == 6.0
    # Drain samples (after the overload) are left out.
    assert summarize_rss(growing + [{"t": 900, "worker_rss_mb": 1.0}], 600) == res
