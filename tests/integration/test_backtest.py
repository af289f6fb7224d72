"""``finpulse backtest`` end to end on the real Kafka and Redis with a real worker process (the tiny keyword model).

A synthetic JSONL stream (a week of hourly neutral tweets on three tickers, and a negative burst on one of
them at a known hour) and a synthetic price folder with known returns: the alert, its joins with next-day
and 3-day returns and the market, and both random baselines are checked by hand. Then a slice of the real
StockNet stream with its real price files: every event scored, every ticker alert joined by the stated rules.
"""

from __future__ import annotations

import asyncio
import csv
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import orjson
import pytest

from engine.runtime import load_classifier
from engine.settings import EngineSettings
from stream.cli.backtest.run import BACKTEST_OVERRIDES, backtest_settings, run_backtest
from stream.cli.supervise import clear_redis_prefix
from stream.settings import StreamSettings
from tests.support.surge import negative_stories
from tests.support.tiny_bert import NEGATIVE_PHRASES

pytestmark = [pytest.mark.kafka, pytest.mark.redis, pytest.mark.slow, pytest.mark.timeout(240)]

TICKERS = ("AAA", "BBB", "CCC")
START = datetime(2014, 1, 5, tzinfo=UTC)  # a Sunday
DAYS_OF_STREAM = 7
BURST_AT = datetime(2014, 1, 9, 14, 0, tzinfo=UTC)  # Thursday 14:00-14:55 UTC: the 15:00 bucket end judges it
# Trading days Jan 2-17, 2014 but Jan 13 (a "holiday" the prices skip), and the closes around the alert.
TRADING = [date(2014, 1, d) for d in (2, 3, 6, 7, 8, 9, 10, 14, 15, 16, 17)]
MOVES = {  # daily moves from the Jan 9 close: AAA falls, BBB rises, CCC flat then up
    "AAA": {date(2014, 1, 10): 0.90, date(2014, 1, 14): 0.90},
    "BBB": {date(2014, 1, 10): 1.10, date(2014, 1, 15): 1.10},
    "CCC": {date(2014, 1, 14): 1.10},
}


def _write_prices(folder: Path) -> Path:
    folder.mkdir()
    for t in TICKERS:
        close, lines = 100.0, ["Date,Open,High,Low,Close,Adj Close,Volume"]
        for d in TRADING:
            close *= MOVES[t].get(d, 1.0)
            lines.append(f"{d.isoformat()},1,1,1,{close},{close},1000")
        (folder / f"{t}.csv").write_text("\n".join(lines) + "\n")
    return folder


def _stream(texts: list[str], stories: list[str]) -> tuple[list[dict[str, object]], list[dict[str, object]]]:
    background = []
    for h in range(DAYS_OF_STREAM * 24):
        for k, t in enumerate(TICKERS):
            at = START + timedelta(hours=h, minutes=10 + 7 * k)
            background.append(
                {
                    "id": f"bg-{t}-{h}",
                    "text": f"{texts[(h * 3 + k) % len(texts)]} ${t}",
                    "published_at": at.isoformat().replace("+00:00", "Z"),
                    "source": "tweet",
                    "tickers": [t],
                }
            )
    burst = [
        {
            "id": f"burst-{i}",
            "text": text,
            "published_at": (BURST_AT + timedelta(minutes=5 * i)).isoformat().replace("+00:00", "Z"),
            "source": "news",
            "tickers": ["AAA"],
        }
        for i, text in enumerate(stories)
    ]
    return background, burst


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


def test_backtest_end_to_end(
    isolated_settings: StreamSettings, keyword_model_dir: Path, sample_texts: list[str], tmp_path: Path
) -> None:
    engine = EngineSettings(backend="torch", model_dir=keyword_model_dir, max_batch_size=64)
    # Precondition, checked rather than assumed: the test model reads the burst as negative, the rest mostly not.
    # The burst is twelve distinct stories: the rule counts novel events, not one story reposted.
    clf = load_classifier(engine, keyword_model_dir)
    stories = negative_stories(clf, "AAA", 12, NEGATIVE_PHRASES)
    background, burst = _stream([t for t in sample_texts if "$" not in t][:200] or sample_texts, stories)
    assert (clf.classify([str(b["text"]) for b in burst])["sentiment"].argmax(axis=1) == 0).all()
    bg_neg = (clf.classify([str(b["text"]) for b in background[:300]])["sentiment"].argmax(axis=1) == 0).mean()
    assert bg_neg < 0.1
    events = sorted(background + burst, key=lambda e: str(e["published_at"]))
    stream_file = tmp_path / "stream.jsonl"
    stream_file.write_bytes(b"\n".join(orjson.dumps(e) for e in events) + b"\n")
    prices = _write_prices(tmp_path / "prices")

    settings = backtest_settings(isolated_settings, {"max_wait_ms": 100})
    assert settings.bucket_seconds == BACKTEST_OVERRIDES["bucket_seconds"] == 3600  # the demo's alert settings
    assert settings.time_mode == "replay" and settings.redis_prefix != isolated_settings.redis_prefix
    out = tmp_path / "report"
    try:
        outcome = run_backtest(
            settings, engine, stream_file, prices, out, draws=20, seed=0, n_boot=200, start_services=False
        )
    finally:
        asyncio.run(clear_redis_prefix(settings))  # the run keeps its windows in Redis; a test leaves nothing

    # 1. the report folder
    for name in ("report.md", "returns.png", "hit_rate.png", "alerts.csv", "random.csv", "summary.json"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    assert (out / "returns.png").read_bytes()[:4] == b"\x89PNG"
    assert outcome.meta["scored"] == len(events)

    # 2. the alert on AAA and its joins, by hand: enters at Jan 9's close (21:00 UTC, after the 15:00 alert)
    (row,) = [r for r in _rows(out / "alerts.csv") if r["ticker"] == "AAA"]
    assert row["at"] == "2014-01-09T15:00:00Z" and row["entry_day"] == "2014-01-09"
    # Next day, Jan 9 -> 10: AAA -10%, BBB +10%, CCC 0 -> market 0.
    assert float(row["ret_1d"]) == pytest.approx(-0.10)
    assert float(row["market_1d"]) == pytest.approx(0.0, abs=1e-12)
    assert float(row["excess_1d"]) == pytest.approx(-0.10)
    # Three trading days, Jan 9 -> 15 (Jan 13 skipped): AAA -19%, BBB +21%, CCC +10% -> market +4%.
    assert float(row["ret_3d"]) == pytest.approx(-0.19)
    assert float(row["market_3d"]) == pytest.approx(0.04)
    assert float(row["excess_3d"]) == pytest.approx(-0.23)
    assert len(_rows(out / "alerts.csv")) == outcome.result.counts["ticker_alerts_joined"] == 1

    # 3. the random baselines, drawn as specified
    rand = _rows(out / "random.csv")
    same_ticker = [r for r in rand if r["group"] == "random_same_ticker"]
    assert len(same_ticker) == 20  # 20 draws for the one alert, every one with prices
    assert {r["ticker"] for r in same_ticker} == {"AAA"}
    assert {r["at"][10:] for r in same_ticker} == {"T15:00:00Z"}  # the alert's time of day
    active = {(START + timedelta(days=d)).date().isoformat() for d in range(DAYS_OF_STREAM)}
    assert {r["at"][:10] for r in same_ticker} <= active - {"2014-01-09"}  # active days, not the alert's
    same_time = [r for r in rand if r["group"] == "random_same_time"]
    assert len(same_time) == 20 and {r["at"] for r in same_time} == {"2014-01-09T15:00:00Z"}
    assert {r["ticker"] for r in same_time} <= {"BBB", "CCC"}
    summary = orjson.loads((out / "summary.json").read_bytes())
    assert summary["stats"]["alerts"]["excess_1d"]["value"] == pytest.approx(-0.10)
    assert summary["hit_rate_by_severity"]["all"]["alerts"] == {"value": 1.0, "low": 1.0, "high": 1.0, "n": 1}


def test_backtest_on_a_slice_of_the_real_stream(
    isolated_settings: StreamSettings, keyword_model_dir: Path, tmp_path: Path
) -> None:
    """The command on a slice of StockNet with its real prices: every event scored, every ticker alert
    joined by the stated rules (checked against the price files themselves), 20 random draws each.

    The ``null`` backend labels events from a hash of their tokens (15% negative): enough negatives
    on real tickers for alerts to fire, where the keyword model finds almost none in real tweets."""
    engine = EngineSettings(backend="null", model_dir=keyword_model_dir, max_batch_size=64)
    data = isolated_settings.require_data_dir() / "stocknet-tweets"
    settings = backtest_settings(isolated_settings, {"max_wait_ms": 100})
    out = tmp_path / "slice"
    try:
        outcome = run_backtest(
            settings,
            engine,
            data / "stream.csv",
            data / "prices",
            out,
            since="2015-10-01",
            limit=1500,
            draws=20,
            seed=0,
            n_boot=200,
            start_services=False,
        )
    finally:
        asyncio.run(clear_redis_prefix(settings))
    for name in ("report.md", "returns.png", "hit_rate.png", "alerts.csv", "random.csv", "summary.json"):
        assert (out / name).is_file(), name
    assert outcome.meta["scored"] + outcome.meta["dead"] == outcome.meta["events"] == 1500
    alerts = _rows(out / "alerts.csv")
    assert alerts, "no ticker alert to join: the slice no longer exercises the joins"
    assert len(alerts) == outcome.result.counts["ticker_alerts_joined"]
    assert len(_rows(out / "random.csv")) <= 2 * 20 * len(alerts)
    for row in alerts:
        # Entry at a close on or after the alert, on the ticker's own trading days; returns from its own closes.
        closes = {r["Date"]: float(r["Adj Close"]) for r in _rows(data / "prices" / f"{row['ticker']}.csv")}
        days = sorted(closes)
        assert row["entry_day"] in closes and row["entry_day"] >= row["at"][:10]
        nxt = days[days.index(row["entry_day"]) + 1]
        assert float(row["ret_1d"]) == pytest.approx(closes[nxt] / closes[row["entry_day"]] - 1, rel=1e-6)
        assert float(row["excess_1d"]) == pytest.approx(float(row["ret_1d"]) - float(row["market_1d"]), abs=1e-12)
