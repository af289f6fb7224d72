"""The backtest's arithmetic without services: price files, entry days, returns, market excess, random draws,
bootstrap (fixed seeds), and the report folder."""

from __future__ import annotations

import random
from datetime import date, datetime
from pathlib import Path

import numpy as np
import pytest

from stream.cli.backtest.analysis import (
    Market,
    PriceDataError,
    active_days,
    bootstrap,
    bootstrap_diff,
    close_ms,
    day_ms,
    draw_same_ticker,
    draw_same_time,
    hits,
    join_returns,
    load_prices,
    utc_day,
)
from stream.cli.backtest.report import compute, write_report
from stream.events import parse_event_time

# Trading days of the synthetic files: Thu 9, Fri 10, (weekend, Mon 13 a "holiday": missing), Tue 14, Wed 15, Thu 16.
DAYS = ["2014-01-08", "2014-01-09", "2014-01-10", "2014-01-14", "2014-01-15", "2014-01-16"]
CLOSES = {
    "AAA": [100.0, 100.0, 90.0, 81.0, 81.0, 72.9],
    "BBB": [50.0, 50.0, 55.0, 55.0, 60.5, 60.5],
    "CCC": [20.0, 20.0, 20.0, 22.0, 22.0, 22.0],
}


def write_prices(folder: Path, closes: dict[str, list[float]] = CLOSES, days: list[str] = DAYS) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for t, cs in closes.items():
        lines = ["Date,Open,High,Low,Close,Adj Close,Volume"]
        lines += [f"{d},1,1,1,{c * 2},{c},100" for d, c in zip(days, cs, strict=True)]
        (folder / f"{t}.csv").write_text("\n".join(lines) + "\n")
    return folder


def ms(text: str) -> int:
    return int(datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp() * 1000)


def test_prices_use_adjusted_close_and_skip_null_rows(tmp_path: Path) -> None:
    folder = write_prices(tmp_path / "p")
    (folder / "DDD.csv").write_text(
        "Date,Open,High,Low,Close,Adj Close,Volume\n2014-01-08,1,1,1,1,null,1\n2014-01-09,1,1,1,1,3.0,1\n"
        "2014-01-10,1,1,1,1,6.0,1\n"
    )
    prices = load_prices(folder)
    assert prices["AAA"].closes[:3] == [100.0, 100.0, 90.0]  # Adj Close, not Close (which is twice as big)
    assert prices["DDD"].days == [date(2014, 1, 9), date(2014, 1, 10)]
    with pytest.raises(PriceDataError):
        load_prices(tmp_path / "nowhere")


def test_entry_is_the_first_close_at_or_after_the_alert_in_new_york_time(tmp_path: Path) -> None:
    s = load_prices(write_prices(tmp_path / "p"))["AAA"]
    # January: EST, so the close is 21:00 UTC.
    assert close_ms(date(2014, 1, 9)) == ms("2014-01-09T21:00:00Z")
    assert s.days[s.entry_index(ms("2014-01-09T15:00:00Z")) or 0] == date(2014, 1, 9)  # before the close: that day
    assert s.days[s.entry_index(ms("2014-01-09T21:00:00Z")) or 0] == date(2014, 1, 9)  # at the close
    assert s.days[s.entry_index(ms("2014-01-09T22:00:00Z")) or 0] == date(2014, 1, 10)  # after it: the next day
    # Friday evening, the weekend and the missing Monday all enter at Tuesday's close.
    for t in ("2014-01-10T23:00:00Z", "2014-01-11T12:00:00Z", "2014-01-13T15:00:00Z"):
        assert s.days[s.entry_index(ms(t)) or 0] == date(2014, 1, 14)
    assert s.entry_index(ms("2014-01-17T00:00:00Z")) is None
    # Summer: EDT, so the close is 20:00 UTC.
    assert close_ms(date(2014, 7, 1)) == ms("2014-07-01T20:00:00Z")


def test_returns_and_market_excess_by_hand(tmp_path: Path) -> None:
    prices = load_prices(write_prices(tmp_path / "p"))
    market = Market(prices)
    j = join_returns("aaa", ms("2014-01-09T15:00:00Z"), "warning", prices, market)
    assert j is not None and j.ticker == "AAA" and j.entry == date(2014, 1, 9)
    # Next day: Jan 9 -> Jan 10. AAA -10%, BBB +10%, CCC 0%: market 0%.
    assert j.ret[1] == pytest.approx(-0.10)
    assert j.market[1] == pytest.approx(0.0)
    assert j.excess(1) == pytest.approx(-0.10)
    # Three trading days: Jan 9 -> Jan 15 (Jan 13 is not a trading day). AAA -19%, BBB +21%, CCC +10%.
    assert j.ret[3] == pytest.approx(-0.19)
    assert j.market[3] == pytest.approx((-0.19 + 0.21 + 0.10) / 3)
    assert j.excess(3) == pytest.approx(-0.19 - 0.04)
    # Near the end of the file: the 3-day return is missing, the next-day one is not.
    late = join_returns("AAA", ms("2014-01-14T12:00:00Z"), "warning", prices, market)
    assert late is not None and late.ret[1] == pytest.approx(0.0) and late.ret[3] is None and late.excess(3) is None
    assert join_returns("ZZZ", ms("2014-01-09T15:00:00Z"), "warning", prices, market) is None


def test_market_counts_only_tickers_trading_on_both_days(tmp_path: Path) -> None:
    folder = write_prices(tmp_path / "p")
    (folder / "NEW.csv").write_text("Date,Close\n2014-01-10,10\n2014-01-14,30\n")  # listed on Jan 10
    market = Market(load_prices(folder))
    assert market.ret(date(2014, 1, 9), date(2014, 1, 10)) == pytest.approx(0.0)  # NEW left out
    assert market.ret(date(2014, 1, 10), date(2014, 1, 14)) == pytest.approx((-0.1 + 0.0 + 0.1 + 2.0) / 4)


def _events() -> list[dict[str, object]]:
    return [
        {"published_at": "2014-01-05T10:00:00Z", "tickers": ["AAA", "BBB"]},
        {"published_at": "2014-01-06T10:00:00Z", "tickers": ["AAA"]},
        {"published_at": "2014-01-07T23:59:59Z", "tickers": ["AAA", "CCC"]},
        {"published_at": "2014-01-09T14:00:00Z", "tickers": ["AAA", "CCC"]},
        {"published_at": "2014-01-09T16:00:00Z", "tickers": ["BBB"]},
    ]


def test_active_days_are_utc_days_per_ticker() -> None:
    act = active_days(_events(), parse_event_time)
    assert act["AAA"] == {date(2014, 1, d) for d in (5, 6, 7, 9)}
    assert act["BBB"] == {date(2014, 1, 5), date(2014, 1, 9)}
    assert act["CCC"] == {date(2014, 1, 7), date(2014, 1, 9)}


def test_same_ticker_draws_keep_ticker_and_time_of_day_and_avoid_alert_days() -> None:
    act = active_days(_events(), parse_event_time)
    alert = ("AAA", ms("2014-01-09T15:00:00Z"))
    draws = draw_same_ticker([alert], act, 200, random.Random(1))
    assert len(draws) == 200
    assert {d.ticker for d in draws} == {"AAA"} and {d.of_alert for d in draws} == {0}
    assert {(d.at_ms - day_ms(utc_day(d.at_ms))) for d in draws} == {15 * 3600_000}
    days = {utc_day(d.at_ms) for d in draws}
    assert days == {date(2014, 1, 5), date(2014, 1, 6), date(2014, 1, 7)}  # every active day but the alert's
    # Same seed, same draws; a ticker active only on its alert day gets none.
    assert draws == draw_same_ticker([alert], act, 200, random.Random(1))
    assert (
        draw_same_ticker([("BBB", ms("2014-01-09T15:00:00Z"))], {"BBB": {date(2014, 1, 9)}}, 5, random.Random(0)) == []
    )


def test_same_time_draws_keep_the_instant_and_pick_other_active_tickers() -> None:
    act = active_days(_events(), parse_event_time)
    at = ms("2014-01-09T15:00:00Z")
    draws = draw_same_time([("AAA", at)], act, 100, random.Random(2))
    assert {d.at_ms for d in draws} == {at}
    assert {d.ticker for d in draws} == {"BBB", "CCC"}  # active on Jan 9, not AAA itself


def test_bootstrap_is_seeded_and_brackets_the_mean() -> None:
    rng = np.random.default_rng(7)
    x = list(rng.normal(0.01, 0.02, size=200))
    a = bootstrap(x, n_boot=1000, seed=3)
    assert a == bootstrap(x, n_boot=1000, seed=3)
    assert a.value == pytest.approx(float(np.mean(x)))
    assert a.low < a.value < a.high and a.n == 200
    # The percentile interval is about mean +- 1.96 standard errors for a sample this size.
    se = float(np.std(x, ddof=1) / np.sqrt(len(x)))
    assert a.low == pytest.approx(a.value - 1.96 * se, abs=0.4 * se)
    assert a.high == pytest.approx(a.value + 1.96 * se, abs=0.4 * se)
    c = bootstrap([0.5] * 10, seed=0)
    assert (c.value, c.low, c.high) == (0.5, 0.5, 0.5)
    assert bootstrap([], seed=0).n == 0 and bootstrap([], seed=0).fmt() == "n/a"
    d = bootstrap_diff([1.0, 1.0, 1.0], [0.0, 0.0], seed=0)
    assert (d.value, d.low, d.high) == (1.0, 1.0, 1.0)
    assert hits([-0.1, 0.2, None, 0.0, -0.01]) == [1.0, 0.0, 0.0, 1.0]


def test_compute_and_report_folder(tmp_path: Path) -> None:
    prices = load_prices(write_prices(tmp_path / "p"))
    act = active_days(_events(), parse_event_time)
    alerts = [
        {"entity_kind": "ticker", "entity": "AAA", "window_end": ms("2014-01-09T15:00:00Z"), "severity": "critical"},
        {"entity_kind": "topic", "entity": "Earnings", "window_end": ms("2014-01-09T15:00:00Z"), "severity": "warning"},
        {"entity_kind": "ticker", "entity": "ZZZ", "window_end": ms("2014-01-09T15:00:00Z"), "severity": "warning"},
    ]
    res = compute(alerts, act, prices, draws=10, seed=0, n_boot=200)
    c = res.counts
    assert (c["alerts"], c["topic_alerts_skipped"], c["ticker_alerts_joined"], c["ticker_alerts_without_prices"]) == (
        3,
        1,
        1,
        1,
    )
    assert res.stats["alerts"]["excess_1d"].value == pytest.approx(-0.10)
    assert res.stats["alerts"]["hit_1d"].value == 1.0
    assert res.by_severity["critical"]["alerts"].n == 1 and res.by_severity["warning"]["alerts"].n == 0
    assert c["random_same_ticker_drawn"] == 10 and c["random_same_time_drawn"] == 10
    assert compute(alerts, act, prices, draws=10, seed=0, n_boot=200).stats == res.stats  # seeded throughout
    paths = write_report(res, tmp_path / "out", {"draws": 10, "seed": 0, "n_boot": 200})
    for p in paths.values():
        assert p.is_file() and p.stat().st_size > 0
    assert paths["returns_plot"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = paths["report"].read_text()
    assert "Hit rate by severity" in text and "-10.00%" in text
