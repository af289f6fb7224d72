"""From alerts and prices to the backtest's numbers, and the report folder (Markdown, PNG plots, CSV, JSON).

What is compared: negative-surge alerts on tickers (topic alerts have no price and are counted, then
left out) against two random baselines drawn from the same replayed stream (see
:func:`.analysis.draw_same_ticker`, the primary one, and :func:`.analysis.draw_same_time`). A hit is a
negative next-day excess return: the alert said "bad news" and the stock did worse than the market.
"""

from __future__ import annotations

import csv
import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import structlog

from stream.cli.backtest.analysis import (
    HORIZONS,
    Draw,
    Estimate,
    Joined,
    Market,
    PriceSeries,
    bootstrap,
    bootstrap_diff,
    draw_same_ticker,
    draw_same_time,
    hits,
    join_returns,
    present,
)
from stream.events import ms_to_iso

log = structlog.get_logger(__name__)

GROUPS = ("alerts", "random_same_ticker", "random_same_time")
GROUP_TITLES = {
    "alerts": "alerts",
    "random_same_ticker": "random: same ticker, random active day",
    "random_same_time": "random: same time, random active ticker",
}
SEVERITIES = ("warning", "critical")


@dataclass
class BacktestResult:
    """Everything the report shows; ``joined`` holds the real alerts' rows, ``nulls`` the random ones."""

    counts: dict[str, int]
    joined: list[Joined]
    nulls: dict[str, list[Joined]]
    draws: dict[str, list[Draw]]
    stats: dict[str, dict[str, Estimate]] = field(default_factory=dict)
    diffs: dict[str, dict[str, Estimate]] = field(default_factory=dict)
    by_severity: dict[str, dict[str, Estimate]] = field(default_factory=dict)


def _group_stats(rows: list[Joined], seed: int, n_boot: int) -> dict[str, Estimate]:
    out = {f"ret_{k}d": bootstrap(present(r.ret[k] for r in rows), n_boot=n_boot, seed=seed) for k in HORIZONS}
    out |= {f"excess_{k}d": bootstrap(present(r.excess(k) for r in rows), n_boot=n_boot, seed=seed) for k in HORIZONS}
    out["hit_1d"] = bootstrap(hits(r.excess(1) for r in rows), n_boot=n_boot, seed=seed)
    return out


def compute(
    alerts: list[dict[str, Any]],
    active: dict[str, Any],
    prices: dict[str, PriceSeries],
    draws: int = 20,
    seed: int = 0,
    n_boot: int = 2000,
) -> BacktestResult:
    """Join ticker alerts with returns, draw both random baselines (``draws`` per alert, ``seed``), bootstrap."""
    market = Market(prices)
    ticker_alerts = sorted(
        (a for a in alerts if a.get("entity_kind") == "ticker"), key=lambda a: (a["window_end"], a["entity"])
    )
    joined: list[Joined] = []
    no_price = 0
    for a in ticker_alerts:
        j = join_returns(a["entity"], int(a["window_end"]), a["severity"], prices, market)
        if j is None or j.ret[1] is None:
            no_price += 1
            continue
        joined.append(j)
    # Random alerts stand in for the joined ones only, so both sides cover the same tickers and days.
    keys = [(j.ticker, j.at_ms) for j in joined]
    rng = random.Random(seed)
    drawn = {
        "random_same_ticker": draw_same_ticker(keys, active, draws, rng),
        "random_same_time": draw_same_time(keys, active, draws, rng),
    }
    nulls: dict[str, list[Joined]] = {}
    for name, ds in drawn.items():
        rows = []
        for d in ds:
            j = join_returns(d.ticker, d.at_ms, joined[d.of_alert].severity, prices, market)
            if j is not None and j.ret[1] is not None:
                rows.append(j)
        nulls[name] = rows
    counts = {
        "alerts": len(alerts),
        "topic_alerts_skipped": sum(1 for a in alerts if a.get("entity_kind") == "topic"),
        "ticker_alerts": len(ticker_alerts),
        "ticker_alerts_without_prices": no_price,
        "ticker_alerts_joined": len(joined),
        "tickers_alerted": len({j.ticker for j in joined}),
        **{f"{name}_drawn": len(ds) for name, ds in drawn.items()},
        **{f"{name}_joined": len(rows) for name, rows in nulls.items()},
        **{f"severity_{s}": n for s, n in Counter(j.severity for j in joined).items()},
    }
    res = BacktestResult(counts, joined, nulls, drawn)
    groups = {"alerts": joined, **nulls}
    res.stats = {g: _group_stats(rows, seed, n_boot) for g, rows in groups.items()}
    for g, rows in nulls.items():
        res.diffs[g] = {
            f"excess_{k}d": bootstrap_diff(
                present(r.excess(k) for r in joined), present(r.excess(k) for r in rows), n_boot=n_boot, seed=seed
            )
            for k in HORIZONS
        }
        res.diffs[g]["hit_1d"] = bootstrap_diff(
            hits(r.excess(1) for r in joined), hits(r.excess(1) for r in rows), n_boot=n_boot, seed=seed
        )
    for sev in (*SEVERITIES, "all"):
        real = [r for r in joined if sev in ("all", r.severity)]
        rand = [r for r in nulls["random_same_ticker"] if sev in ("all", r.severity)]
        res.by_severity[sev] = {
            "alerts": bootstrap(hits(r.excess(1) for r in real), n_boot=n_boot, seed=seed),
            "random_same_ticker": bootstrap(hits(r.excess(1) for r in rand), n_boot=n_boot, seed=seed),
        }
    return res


# --- the report folder -----------------------------------------------------------------------------------
def _plot_returns(res: BacktestResult, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    metrics = [f"excess_{k}d" for k in HORIZONS] + [f"ret_{k}d" for k in HORIZONS]
    fig, ax = plt.subplots(figsize=(8, 4.5))
    width = 0.8 / len(GROUPS)
    for gi, g in enumerate(GROUPS):
        ests = [res.stats[g][m] for m in metrics]
        xs = [i + (gi - (len(GROUPS) - 1) / 2) * width for i in range(len(metrics))]
        vals = [e.value * 100 if e.n else 0.0 for e in ests]
        err = [
            [max(0.0, (e.value - e.low) * 100) if e.n else 0.0 for e in ests],
            [max(0.0, (e.high - e.value) * 100) if e.n else 0.0 for e in ests],
        ]
        ax.bar(xs, vals, width, yerr=err, capsize=3, label=f"{GROUP_TITLES[g]} (n={ests[0].n})")
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_xticks(range(len(metrics)), [m.replace("_", " ") for m in metrics])
    ax.set_ylabel("mean return, % (95% bootstrap CI)")
    ax.set_title("Returns after negative-surge alerts vs random alerts")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_hit_rate(res: BacktestResult, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sevs = [*SEVERITIES, "all"]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for gi, g in enumerate(("alerts", "random_same_ticker")):
        ests = [res.by_severity[s][g] for s in sevs]
        xs = [i + (gi - 0.5) * 0.38 for i in range(len(sevs))]
        vals = [e.value * 100 if e.n else 0.0 for e in ests]
        err = [
            [max(0.0, (e.value - e.low) * 100) if e.n else 0.0 for e in ests],
            [max(0.0, (e.high - e.value) * 100) if e.n else 0.0 for e in ests],
        ]
        ax.bar(xs, vals, 0.38, yerr=err, capsize=3, label=GROUP_TITLES[g])
        for x, e in zip(xs, ests, strict=True):
            ax.annotate(f"n={e.n}", (x, 2), ha="center", fontsize=7)
    ax.axhline(50, color="black", linewidth=0.8, linestyle="--")
    ax.set_xticks(range(len(sevs)), sevs)
    ax.set_ylim(0, 100)
    ax.set_ylabel("hit rate: % with negative next-day excess return")
    ax.set_title("Hit rate by severity (95% bootstrap CI)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _markdown(res: BacktestResult, meta: dict[str, Any]) -> str:
    c = res.counts
    lines = [
        "# finpulse backtest",
        "",
        f"Input: `{meta.get('input')}`; prices: `{meta.get('prices')}`; events replayed: {meta.get('events')} "
        f"({meta.get('since') or 'start'} to {meta.get('until') or 'end'}); scored {meta.get('scored')}, "
        f"dead-lettered {meta.get('dead')}; model `{meta.get('model_id')}` on `{meta.get('backend')}`; "
        f"pipeline time {meta.get('elapsed_s', 0):.0f} s.",
        "",
        f"Alert rule: {meta.get('rule')}.",
        "",
        f"Alerts: {c['alerts']} ({c['ticker_alerts']} on tickers, {c['topic_alerts_skipped']} on topics, left out: "
        f"a topic has no price). Ticker alerts joined with prices: {c['ticker_alerts_joined']} on "
        f"{c['tickers_alerted']} tickers ({c['ticker_alerts_without_prices']} without a price file or past its end).",
        "",
        "Entry: the first 16:00 New York close at or after the alert's window end, on the ticker's own trading "
        "days; k-day return to the close k trading days later (adjusted closes). Market: the equal-weighted mean "
        "of all tickers' returns over the same two days. Excess = ticker - market. Hit: a negative next-day "
        "excess return.",
        "",
        f"Random baselines ({meta.get('draws')} draws per joined alert, seed {meta.get('seed')}): "
        "**same ticker, random active day** (a day on which the replayed stream named the ticker, not one of its "
        "alert days, at the alert's UTC time of day) is the primary null: it keeps the ticker's drift and "
        "volatility and the stream's coverage, so only the timing the alert chose is tested; **same time, "
        "random active ticker** (another ticker named that UTC day, at the alert's instant) keeps the day's "
        "market. CIs: 95% percentile bootstrap "
        f"({meta.get('n_boot')} resamples, seed {meta.get('seed')}); differences resample both groups.",
        "",
        "## Returns after alerts vs random alerts",
        "",
        "| group | n | next-day return | next-day excess | 3-day excess | hit rate (next-day excess < 0) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for g in GROUPS:
        s = res.stats[g]
        lines.append(
            f"| {GROUP_TITLES[g]} | {s['excess_1d'].n} | {s['ret_1d'].fmt()} | {s['excess_1d'].fmt()} | "
            f"{s['excess_3d'].fmt()} | {s['hit_1d'].fmt(signed=False)} |"
        )
    lines += [
        "",
        "| alerts minus | next-day excess | 3-day excess | hit rate (points) |",
        "|---|---:|---:|---:|",
    ]
    for g, d in res.diffs.items():
        lines.append(f"| {GROUP_TITLES[g]} | {d['excess_1d'].fmt()} | {d['excess_3d'].fmt()} | {d['hit_1d'].fmt()} |")
    lines += [
        "",
        "## Hit rate by severity",
        "",
        "| severity | alerts | hit rate | random (same ticker) | hit rate |",
        "|---|---:|---:|---:|---:|",
    ]
    for sev, e in res.by_severity.items():
        lines.append(
            f"| {sev} | {e['alerts'].n} | {e['alerts'].fmt(signed=False)} | {e['random_same_ticker'].n} | "
            f"{e['random_same_ticker'].fmt(signed=False)} |"
        )
    lines += ["", "![returns](returns.png)", "", "![hit rate](hit_rate.png)", ""]
    lines += ["Rows: `alerts.csv` (each joined alert), `random.csv` (each random one); numbers: `summary.json`.", ""]
    return "\n".join(lines)


def _est(e: Estimate) -> dict[str, float | int | None]:
    def num(x: float) -> float | None:
        return None if x != x else round(x, 6)  # NaN -> null in JSON

    return {"value": num(e.value), "low": num(e.low), "high": num(e.high), "n": e.n}


def _row(j: Joined, group: str) -> dict[str, Any]:
    row: dict[str, Any] = {
        "group": group,
        "ticker": j.ticker,
        "at": ms_to_iso(j.at_ms),
        "severity": j.severity,
        "entry_day": j.entry.isoformat() if j.entry else "",
    }
    for k in HORIZONS:
        row[f"ret_{k}d"] = j.ret[k]
        row[f"market_{k}d"] = j.market[k]
        row[f"excess_{k}d"] = j.excess(k)
    return row


def write_report(res: BacktestResult, out_dir: Path, meta: dict[str, Any]) -> dict[str, Path]:
    """Write report.md, returns.png, hit_rate.png, alerts.csv, random.csv and summary.json into ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {
        "report": out_dir / "report.md",
        "returns_plot": out_dir / "returns.png",
        "hit_rate_plot": out_dir / "hit_rate.png",
        "alerts": out_dir / "alerts.csv",
        "random": out_dir / "random.csv",
        "summary": out_dir / "summary.json",
    }
    _plot_returns(res, paths["returns_plot"])
    _plot_hit_rate(res, paths["hit_rate_plot"])
    paths["report"].write_text(_markdown(res, meta))
    for key, rows in (
        ("alerts", [_row(j, "alerts") for j in res.joined]),
        ("random", [_row(j, g) for g, js in res.nulls.items() for j in js]),
    ):
        with paths[key].open("w", newline="") as fh:
            fields = list(_row(Joined("", 0, "", None, dict.fromkeys(HORIZONS), dict.fromkeys(HORIZONS)), "").keys())
            w = csv.DictWriter(fh, fieldnames=fields)
            w.writeheader()
            w.writerows(rows)
    summary = {
        "meta": meta,
        "counts": res.counts,
        "stats": {g: {m: _est(e) for m, e in s.items()} for g, s in res.stats.items()},
        "alerts_minus": {g: {m: _est(e) for m, e in s.items()} for g, s in res.diffs.items()},
        "hit_rate_by_severity": {sev: {g: _est(e) for g, e in s.items()} for sev, s in res.by_severity.items()},
    }
    paths["summary"].write_bytes(orjson.dumps(summary, option=orjson.OPT_INDENT_2, default=str))
    log.info("backtest_report_written", out_dir=str(out_dir), **res.counts)
    return paths
