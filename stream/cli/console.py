"""Terminal rendering of trends and alerts (rich tables)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from rich.console import Console
from rich.table import Table

from stream.indices import INDEX_WINDOWS, EntityIndex
from stream.windows import EntityTrend


def trends_table(title: str, rows: Iterable[EntityTrend], top: int, min_count: int) -> Table:
    """Entities ranked by negative share (ties by count), those under ``min_count`` left out."""
    ranked = sorted((r for r in rows if r.n >= min_count), key=lambda r: (-r.negative_share, -r.n, r.name))[:top]
    t = Table(title=title, title_justify="left")
    for col, just in (
        ("entity", "left"),
        ("events", "right"),
        ("novel", "right"),
        ("neg", "right"),
        ("neu", "right"),
        ("pos", "right"),
        ("neg share", "right"),
        ("mean score", "right"),
    ):
        t.add_column(col, justify=just)  # type: ignore[arg-type]
    for r in ranked:
        t.add_row(
            r.name,
            str(r.n),
            str(r.novel),
            str(r.neg),
            str(r.neu),
            str(r.pos),
            f"{r.negative_share:.1%}",
            f"{r.mean_score:+.3f}",
        )
    return t


def alerts_table(alerts: list[dict[str, Any]]) -> Table:
    t = Table(title=f"Alerts raised ({len(alerts)})", title_justify="left")
    for col in ("window end (UTC)", "entity", "severity", "neg", "base", "n", "z"):
        t.add_column(col, overflow="fold", no_wrap=col != "entity")
    t.add_column("why: topics and negative examples", overflow="fold", ratio=1)
    for a in sorted(alerts, key=lambda a: (a["window_end"], a["entity_kind"], a["entity"])):
        t.add_row(
            a["window_end_iso"][:16].replace("T", " "),
            f"{a['entity_kind']}:{a['entity']}",
            a["severity"],
            f"{a['observed_share']:.0%}",
            f"{a['baseline_share']:.0%}",
            str(a["count"]),
            f"{a['z']:.1f}",
            "\n".join(alert_reasons(a)),
        )
    return t


def alert_reasons(alert: dict[str, Any], examples: int = 2, chars: int = 100) -> list[str]:
    """Why an alert fired, as short lines: the topics behind a ticker alert, then example texts
    (ids for alerts raised before alerts carried texts)."""
    lines = []
    if alert.get("top_topics"):
        lines.append("topics: " + ", ".join(f"{t['topic']} ({t['negative']})" for t in alert["top_topics"]))
    quoted = [x for x in alert.get("examples") or [] if x.get("text")]
    for x in quoted[:examples]:
        text = x["text"] if len(x["text"]) <= chars else x["text"][: chars - 1] + "\u2026"
        lines.append(f"\u201c{text}\u201d")
    if not quoted and alert.get("example_event_ids"):
        lines.append("e.g. " + ", ".join(alert["example_event_ids"][:3]))
    return lines


def make_console() -> Console:
    import shutil

    # Tables of tickers, topics and alerts need about 120 columns; wider terminals get their width.
    return Console(highlight=False, width=max(120, shutil.get_terminal_size((120, 40)).columns))


def indices_table(title: str, rows: Iterable[tuple[str, EntityIndex]]) -> Table:
    """Entity indices, one row per (entity, window): buzz, shares, mean score, buzz z against its baseline."""
    t = Table(title=title, title_justify="left")
    for col in ("entity", "window", "buzz", "novel", "neg share", "pos share", "mean score", "baseline", "buzz z"):
        t.add_column(col, justify="left" if col in ("entity", "window") else "right")
    for name, x in rows:
        t.add_row(
            name,
            x.window if x.window_seconds == INDEX_WINDOWS.get(x.window) else f"{x.window} ({x.window_seconds // 60}m)",
            str(x.count),
            str(x.novel),
            f"{x.neg_share:.1%}",
            f"{x.pos_share:.1%}",
            f"{x.mean_score:+.3f}",
            f"{x.baseline_mean:.1f} \u00b1 {x.baseline_std:.1f} ({x.baseline_windows})",
            "-" if x.buzz_z is None else f"{x.buzz_z:+.1f}",
        )
    return t
