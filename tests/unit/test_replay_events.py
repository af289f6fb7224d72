"""Replay rows to events: ids, times and zones, bad rows, the sort buffer, StockNet and JSONL layouts, pacing."""

from __future__ import annotations

from datetime import UTC, date, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import orjson
import pytest

from stream.cli.replay import (
    BadRowError,
    ColumnFlags,
    ReplayError,
    ReplayOptions,
    ReplayReport,
    ReplaySource,
    parse_input_time,
    pseudonymise,
    read_events,
)
from stream.cli.replay.kafka import Pacer
from stream.events import NewsEvent, parse_event_time
from tests.support.replay_files import HEADLINE_COLUMNS, headline_rows, write_rows

MS_2020 = 1_590_969_600_000  # 2020-06-01T00:00:00Z


def _ms(iso: str) -> int:
    return parse_event_time(iso)


# --- time ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2020-06-01T00:00:00Z", MS_2020),
        ("2020-06-01 00:00:00+00:00", MS_2020),
        ("2020-05-31 20:00:00-04:00", MS_2020),
        ("2020-06-01", MS_2020),
        ("Mon Jun 01 00:00:00 +0000 2020", MS_2020),
        ("Mon, 01 Jun 2020 02:00:00 +0200", MS_2020),
        ("2020/06/01 00:00:00", MS_2020),
        ("2020-06-01 00:00:00 UTC", MS_2020),
        (MS_2020, MS_2020),
        (MS_2020 // 1000, MS_2020),
        (str(MS_2020 // 1000), MS_2020),
        (MS_2020 * 1000, MS_2020),
        (float(MS_2020 // 1000), MS_2020),
        (datetime(2020, 6, 1, tzinfo=UTC), MS_2020),
        (date(2020, 6, 1), MS_2020),
    ],
)
def test_times_are_read_as_utc(value: object, expected: int) -> None:
    assert parse_input_time(value) == expected


def test_naive_times_follow_tz_aware_ones_keep_their_offset() -> None:
    ny = ZoneInfo("America/New_York")
    assert parse_input_time("2020-05-31 20:00:00", ny) == MS_2020  # EDT, -4h
    assert parse_input_time("2020-01-01 00:00:00", ny) == _ms("2020-01-01T05:00:00Z")  # EST, -5h
    assert parse_input_time("2020-06-01T00:00:00+00:00", ny) == MS_2020
    assert parse_input_time(datetime(2020, 5, 31, 20), ny) == MS_2020


@pytest.mark.parametrize("value", [None, "", "soon", "31/31/2020", True, float("nan"), 12, "2", "99999-01-01"])
def test_bad_times(value: object) -> None:
    with pytest.raises(ValueError):
        parse_input_time(value)


def test_tz_flag_changes_naive_rows(tmp_path: Path) -> None:
    f = tmp_path / "n.csv"
    f.write_text("text,date\nhello $AAPL,2020-05-31 20:00:00\nworld,2020-06-01T00:00:00Z\n")
    utc = read_events(f)
    ny = read_events(f, options=ReplayOptions(tz="America/New_York"))
    assert [e["published_at"] for e in utc] == ["2020-05-31T20:00:00Z", "2020-06-01T00:00:00Z"]
    assert [e["published_at"] for e in ny] == ["2020-06-01T00:00:00Z", "2020-06-01T00:00:00Z"]
    with pytest.raises(ReplayError, match="unknown time zone"):
        ReplaySource(f, ReplayOptions(tz="Mars/Olympus"))


# --- ids ----------------------------------------------------------------------------------------
def test_derived_ids_are_stable_and_distinct(tmp_path: Path) -> None:
    f = write_rows(tmp_path / "h.csv", headline_rows(30), HEADLINE_COLUMNS)
    first, second = read_events(f), read_events(f)
    ids = [e["id"] for e in first]
    assert ids == [e["id"] for e in second]  # a second replay sends the same ids: the worker dedupes
    assert len(set(ids)) == 30 and all(i.startswith("h_") for i in ids)
    # The same headline at another time is another event; the pandas index column plays no part.
    g = tmp_path / "g.csv"
    g.write_text(
        ",title,date,stock\n7,Same words,2020-06-01,AAPL\n8,Same words,2020-06-02,AAPL\n9,Same words,2020-06-02,MSFT\n"
    )
    evs = read_events(g)
    assert len(evs) == 2 and evs[0]["id"] != evs[1]["id"] and evs[1]["tickers"] == ["AAPL", "MSFT"]


# --- bad rows -----------------------------------------------------------------------------------
def _bad_file(tmp_path: Path) -> Path:
    f = tmp_path / "bad.csv"
    f.write_text(
        "id,text,date,ticker,user_id\n"
        "1,fine $AAPL,2020-06-01T00:00:00Z,AAPL,alice\n"
        "2,,2020-06-01T00:01:00Z,AAPL,bob\n"
        "3,no time,yesterday,AAPL,carol\n"
        "4,   ,2020-06-01T00:02:00Z,MSFT,dave\n"
        "5,bad ticker,2020-06-01T00:03:00Z,NOT/A/TICKER,erin\n"
        "6,fine too,2020-06-01T00:04:00Z,MSFT,frank\n"
    )
    return f


def test_bad_rows_are_counted_by_reason_and_sampled(tmp_path: Path) -> None:
    sample = tmp_path / "bad.jsonl"
    with open(sample, "wb") as out:
        report = ReplayReport(bad_rows_out=out)
        events = list(ReplaySource(_bad_file(tmp_path), report=report))
    assert [e["id"] for e in events] == ["1", "6"]
    assert dict(report.bad) == {"empty_text": 2, "bad_time": 1, "invalid_event": 1}
    lines = [orjson.loads(x) for x in sample.read_bytes().splitlines()]
    assert [x["reason"] for x in lines] == ["empty_text", "bad_time", "empty_text", "invalid_event"]
    assert lines[1]["where"] == "line 4" and lines[1]["row"]["text"] == "no time"
    raw = sample.read_text()
    assert "carol" not in raw and pseudonymise("carol") in raw  # the sample is a log: no raw user ids


def test_strict_stops_at_the_first_bad_row(tmp_path: Path) -> None:
    with pytest.raises(BadRowError, match=r"line 3: empty_text"):
        list(ReplaySource(_bad_file(tmp_path), report=ReplayReport(strict=True)))


def test_jsonl_lines_that_are_not_objects(tmp_path: Path) -> None:
    f = tmp_path / "e.jsonl"
    good = {
        "id": "a",
        "text": "hi $AAPL",
        "published_at": MS_2020,
        "source": "news",
        "author": "p_0123456789abcdef0123",
    }
    f.write_bytes(orjson.dumps(good) + b"\n{not json\n[1,2]\n\n")
    report = ReplayReport()
    events = list(ReplaySource(f, report=report))
    assert report.bad == {"not_json": 2}
    # The finpulse event format reads as itself; an author that is already a pseudonym stays as it is.
    assert events == [
        {
            "id": "a",
            "text": "hi $AAPL",
            "published_at": "2020-06-01T00:00:00Z",
            "source": "news",
            "author": good["author"],
        }
    ]


# --- order --------------------------------------------------------------------------------------
def _shuffled_file(tmp_path: Path, displacement: int) -> Path:
    rows = [f"{i},event {i},{datetime.fromtimestamp(MS_2020 / 1000 + 60 * i, UTC).isoformat()}" for i in range(60)]
    # Every 10th row moved ``displacement`` rows later in the file.
    for i in range(0, 50, 10):
        rows.insert(i + displacement, rows.pop(i))
    f = tmp_path / "s.csv"
    f.write_text("id,text,date\n" + "\n".join(rows) + "\n")
    return f


def test_disorder_within_the_sort_buffer_is_sorted(tmp_path: Path) -> None:
    report = ReplayReport()
    events = list(ReplaySource(_shuffled_file(tmp_path, 4), ReplayOptions(sort_buffer=8), report))
    assert [e["id"] for e in events] == [str(i) for i in range(60)]
    assert report.reordered > 0 and report.out_of_order == 0


def test_disorder_beyond_the_buffer_is_reported(tmp_path: Path) -> None:
    report = ReplayReport()
    events = list(ReplaySource(_shuffled_file(tmp_path, 6), ReplayOptions(sort_buffer=2), report))
    assert len(events) == 60 and report.out_of_order > 0
    with pytest.raises(BadRowError, match="out of time order"):
        list(ReplaySource(_shuffled_file(tmp_path, 6), ReplayOptions(sort_buffer=2), ReplayReport(strict=True)))


def test_since_until_limit(tmp_path: Path) -> None:
    f = _shuffled_file(tmp_path, 0)
    ev = read_events(f, since="2020-06-01T00:10:00Z", until="2020-06-01T00:20:00Z")
    assert [e["id"] for e in ev] == [str(i) for i in range(10, 20)]
    assert len(read_events(f, limit=7)) == 7


# --- layouts ------------------------------------------------------------------------------------
def test_stocknet_layout_is_read_as_before(tmp_path: Path) -> None:
    f = tmp_path / "stream.csv"
    f.write_text(
        "created_at,ticker,tweet_id,user_id,lang,text\n"
        "2014-01-01T10:00:00Z,AAPL,100,42,en,$AAPL and $GOOG up\n"
        "2014-01-01T10:00:00Z,MSFT,101,43,,$MSFT news\n"
        "2014-01-01T10:00:00Z,GOOG,100,42,en,$AAPL and $GOOG up\n"
        "2014-01-01T10:00:05Z,AAPL,102,42,en,later\n"
    )
    events = read_events(f)
    assert events == [
        {
            "id": "100",
            "text": "$AAPL and $GOOG up",
            "published_at": "2014-01-01T10:00:00Z",
            "source": "tweet",
            "tickers": ["AAPL", "GOOG"],
            "author": pseudonymise("42"),
            "lang": "en",
        },
        {
            "id": "101",
            "text": "$MSFT news",
            "published_at": "2014-01-01T10:00:00Z",
            "source": "tweet",
            "tickers": ["MSFT"],
            "author": pseudonymise("43"),
            "lang": None,
        },
        {
            "id": "102",
            "text": "later",
            "published_at": "2014-01-01T10:00:05Z",
            "source": "tweet",
            "tickers": ["AAPL"],
            "author": pseudonymise("42"),
            "lang": "en",
        },
    ]
    assert all(NewsEvent.model_validate(e) for e in events)


def test_explicit_columns_and_ticker_lists(tmp_path: Path) -> None:
    f = tmp_path / "x.tsv"
    f.write_text(
        "when\tbody\theadline\tsyms\twho\tkind\n2020-06-01T00:00:00Z\tbody\tHead\t['aapl', '$msft']\tann\tblog\n"
    )
    flags = ColumnFlags(text="body", time="when", title="headline", tickers="syms", author="who", source="kind")
    (ev,) = read_events(f, options=ReplayOptions(flags=flags))
    assert ev["title"] == "Head" and ev["tickers"] == ["AAPL", "MSFT"] and ev["source"] == "blog"
    assert ev["author"] == pseudonymise("ann")


# --- pacing -------------------------------------------------------------------------------------
class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_pacer_follows_event_time_at_speed() -> None:
    clock = _Clock()
    p = Pacer(speed=60.0, _clock=clock)
    assert p.delay(MS_2020) == 0
    assert p.delay(MS_2020 + 60_000) == pytest.approx(1.0)  # a minute of events in a second
    clock.now += 1.0
    assert p.delay(MS_2020 + 30 * 60_000) == pytest.approx(29.0)


def test_pacer_rate_cap_and_max_gap() -> None:
    clock = _Clock()
    p = Pacer(rate=10.0, _clock=clock)
    assert [p.delay(None) for _ in range(3)] == pytest.approx([0.0, 0.1, 0.2])
    clock2 = _Clock()
    g = Pacer(speed=1.0, max_gap_s=2.0, _clock=clock2)
    g.delay(MS_2020)
    assert g.delay(MS_2020 + 3_600_000) == pytest.approx(2.0)  # an hour's silence cut to 2 s
    clock2.now += 2.0
    assert g.delay(MS_2020 + 3_601_000) == pytest.approx(1.0)  # and the schedule goes on from there
