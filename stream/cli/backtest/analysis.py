"""The backtest's arithmetic, without services: prices, alert-to-return joins, the random baseline, bootstrap CIs.

Entry rule (no look-ahead): an alert is known at its ``window_end`` (UTC). It is "bought" at the first
close at or after that instant, a close being 16:00 America/New_York on a day the ticker's own price
file lists (so weekends and holidays are whatever that file skips). The k-day return runs from that
close to the close k of the file's trading days later, on adjusted closes (splits and dividends).

Market: the equal-weighted mean of the same entry-to-exit return over every ticker of the price folder
that has both days (the alert's own ticker included); the excess return is the ticker's minus that.
"""

from __future__ import annotations

import bisect
import csv
import math
import random
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np
import structlog

log = structlog.get_logger(__name__)

HORIZONS = (1, 3)  # trading days after entry
_NEW_YORK = ZoneInfo("America/New_York")
_CLOSE = time(16, 0)
_DAY_MS = 86_400_000


class PriceDataError(ValueError):
    """The price folder is missing, empty, or has no usable rows."""


def close_ms(d: date) -> int:
    """Epoch ms of the 16:00 New York close on ``d`` (EST or EDT as that day had it)."""
    return int(datetime.combine(d, _CLOSE, tzinfo=_NEW_YORK).timestamp() * 1000)


@dataclass(frozen=True)
class PriceSeries:
    """One ticker's trading days (ascending) and adjusted closes."""

    ticker: str
    days: list[date]
    closes: list[float]
    close_times: list[int] = field(repr=False)
    index: dict[date, int] = field(repr=False)

    @classmethod
    def build(cls, ticker: str, rows: Iterable[tuple[date, float]]) -> PriceSeries:
        ordered = sorted({d: c for d, c in rows}.items())
        days = [d for d, _ in ordered]
        return cls(
            ticker, days, [c for _, c in ordered], [close_ms(d) for d in days], {d: i for i, d in enumerate(days)}
        )

    def entry_index(self, at_ms: int) -> int | None:
        """Index of the first close at or after ``at_ms``, or None past the file's end."""
        i = bisect.bisect_left(self.close_times, at_ms)
        return i if i < len(self.days) else None


def _read_price_file(path: Path) -> list[tuple[date, float]]:
    # Yahoo-style CSV: Date,Open,High,Low,Close,Adj Close,Volume. Adjusted close when present, else Close;
    # rows with a missing value ("null", empty) or a non-positive price are skipped.
    rows: list[tuple[date, float]] = []
    with path.open(newline="") as fh:
        reader = csv.DictReader(fh)
        col = "Adj Close" if reader.fieldnames and "Adj Close" in reader.fieldnames else "Close"
        for row in reader:
            try:
                d = date.fromisoformat(row["Date"][:10])
                c = float(row[col])
            except (KeyError, TypeError, ValueError):
                continue
            if math.isfinite(c) and c > 0:
                rows.append((d, c))
    return rows


def load_prices(folder: Path) -> dict[str, PriceSeries]:
    """Every ``TICKER.csv`` of ``folder`` (the StockNet price layout) as :class:`PriceSeries`."""
    if not folder.is_dir():
        raise PriceDataError(f"price folder {folder} does not exist")
    out: dict[str, PriceSeries] = {}
    for path in sorted(folder.glob("*.csv")):
        rows = _read_price_file(path)
        if len(rows) >= 2:
            out[path.stem.upper()] = PriceSeries.build(path.stem.upper(), rows)
    if not out:
        raise PriceDataError(f"no usable price files (TICKER.csv with Date and Close columns) in {folder}")
    return out


class Market:
    """Equal-weighted market returns between two dates, over all tickers that trade on both (memoised)."""

    def __init__(self, prices: dict[str, PriceSeries]) -> None:
        self.prices = prices
        self._memo: dict[tuple[date, date], float | None] = {}

    def ret(self, start: date, end: date) -> float | None:
        key = (start, end)
        if key not in self._memo:
            rs = [
                s.closes[s.index[end]] / s.closes[s.index[start]] - 1
                for s in self.prices.values()
                if start in s.index and end in s.index
            ]
            self._memo[key] = sum(rs) / len(rs) if rs else None
        return self._memo[key]


@dataclass(frozen=True)
class Joined:
    """One (real or random) alert with its returns; a missing horizon is None (past the prices' end)."""

    ticker: str
    at_ms: int
    severity: str
    entry: date | None
    ret: dict[int, float | None]
    market: dict[int, float | None]

    def excess(self, k: int) -> float | None:
        r, m = self.ret.get(k), self.market.get(k)
        return None if r is None or m is None else r - m


def join_returns(
    ticker: str, at_ms: int, severity: str, prices: dict[str, PriceSeries], market: Market
) -> Joined | None:
    """The ticker's k-day returns after ``at_ms`` and the market's over the same days; None without prices."""
    s = prices.get(ticker.upper())
    if s is None:
        return None
    i = s.entry_index(at_ms)
    if i is None:
        return None
    ret: dict[int, float | None] = {}
    mkt: dict[int, float | None] = {}
    for k in HORIZONS:
        j = i + k
        if j < len(s.days):
            ret[k] = s.closes[j] / s.closes[i] - 1
            mkt[k] = market.ret(s.days[i], s.days[j])
        else:
            ret[k] = mkt[k] = None
    return Joined(ticker.upper(), at_ms, severity, s.days[i], ret, mkt)


def utc_day(ms: int) -> date:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).date()


def active_days(events: Iterable[dict[str, Any]], parse_time: Callable[[Any], int]) -> dict[str, set[date]]:
    """Per ticker, the UTC days on which at least one replayed event named it."""
    out: dict[str, set[date]] = defaultdict(set)
    for e in events:
        day = utc_day(parse_time(e["published_at"]))
        for t in e.get("tickers") or ():
            out[str(t).upper()].add(day)
    return dict(out)


@dataclass(frozen=True)
class Draw:
    """A random alert: a ticker and an instant."""

    ticker: str
    at_ms: int
    of_alert: int  # index of the real alert it stands in for


def draw_same_ticker(
    alerts: Sequence[tuple[str, int]], active: dict[str, set[date]], draws: int, rng: random.Random
) -> list[Draw]:
    """The primary null: per real alert, ``draws`` instants on the same ticker, at the same UTC time of day, on
    days drawn uniformly (with replacement) from the ticker's active days, leaving out days on which the ticker
    had a real alert. Holds the ticker (its drift, volatility, coverage) and the time of day (so the entry rule
    treats both alike) fixed; only the day is random."""
    alert_days: dict[str, set[date]] = defaultdict(set)
    for t, ms in alerts:
        alert_days[t].add(utc_day(ms))
    out: list[Draw] = []
    for i, (t, ms) in enumerate(alerts):
        pool = sorted(active.get(t, set()) - alert_days[t])
        if not pool:
            continue
        tod = ms - int(datetime.combine(utc_day(ms), time(), tzinfo=UTC).timestamp() * 1000)
        for _ in range(draws):
            d = rng.choice(pool)
            out.append(Draw(t, int(datetime.combine(d, time(), tzinfo=UTC).timestamp() * 1000) + tod, i))
    return out


def draw_same_time(
    alerts: Sequence[tuple[str, int]], active: dict[str, set[date]], draws: int, rng: random.Random
) -> list[Draw]:
    """A second null: per real alert, ``draws`` other tickers (with replacement) active on the alert's UTC day,
    at the alert's exact instant. Holds the time (the market's day) fixed; only the ticker is random."""
    by_day: dict[date, list[str]] = defaultdict(list)
    for t, days in active.items():
        for d in days:
            by_day[d].append(t)
    out: list[Draw] = []
    for i, (t, ms) in enumerate(alerts):
        pool = sorted(x for x in by_day.get(utc_day(ms), []) if x != t)
        for _ in range(draws if pool else 0):
            out.append(Draw(rng.choice(pool), ms, i))
    return out


@dataclass(frozen=True)
class Estimate:
    """A statistic with its percentile bootstrap interval."""

    value: float
    low: float
    high: float
    n: int

    def fmt(self, signed: bool = True) -> str:
        """``value [low, high]`` in percent (with a sign for returns, without for rates)."""
        if self.n == 0 or math.isnan(self.value):
            return "n/a"
        spec = "+.2f" if signed else ".1f"
        return f"{self.value * 100:{spec}}% [{self.low * 100:{spec}}%, {self.high * 100:{spec}}%]"


def bootstrap(
    values: Sequence[float], stat: Callable[[np.ndarray], Any] = np.mean, n_boot: int = 2000, seed: int = 0
) -> Estimate:
    """``stat`` of ``values`` with a 95% percentile bootstrap CI (``n_boot`` resamples, fixed ``seed``)."""
    x = np.asarray(values, dtype=float)
    if x.size == 0:
        return Estimate(math.nan, math.nan, math.nan, 0)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, x.size, size=(n_boot, x.size))
    boots = np.apply_along_axis(stat, 1, x[idx]) if stat is not np.mean else x[idx].mean(axis=1)
    lo, hi = np.percentile(boots, [2.5, 97.5])
    return Estimate(float(stat(x)), float(lo), float(hi), int(x.size))


def bootstrap_diff(a: Sequence[float], b: Sequence[float], n_boot: int = 2000, seed: int = 0) -> Estimate:
    """mean(a) - mean(b), both groups resampled independently, with a 95% percentile CI."""
    xa, xb = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if xa.size == 0 or xb.size == 0:
        return Estimate(math.nan, math.nan, math.nan, 0)
    rng = np.random.default_rng(seed)
    ma = xa[rng.integers(0, xa.size, size=(n_boot, xa.size))].mean(axis=1)
    mb = xb[rng.integers(0, xb.size, size=(n_boot, xb.size))].mean(axis=1)
    lo, hi = np.percentile(ma - mb, [2.5, 97.5])
    return Estimate(float(xa.mean() - xb.mean()), float(lo), float(hi), int(xa.size))


def hits(values: Iterable[float | None]) -> list[float]:
    """1.0 where the (excess) return is negative (the alert was right), 0.0 where not; missing left out."""
    return [1.0 if v < 0 else 0.0 for v in values if v is not None]


def present(values: Iterable[float | None]) -> list[float]:
    return [v for v in values if v is not None]


def day_ms(d: date) -> int:
    """Midnight UTC of ``d`` in epoch ms (for tests and the report)."""
    return int(datetime.combine(d, time(), tzinfo=UTC).timestamp() * 1000)
