"""Shared benchmark plumbing: real texts, machine description, percentiles, BENCHMARKS.md rows."""

from __future__ import annotations

import csv
import os
import platform
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

import numpy as np


def machine_info() -> dict[str, Any]:
    """CPU model and core count (what every benchmark row must say)."""
    model = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = None
    try:
        import torch

        if torch.cuda.is_available():
            gpu = torch.cuda.get_device_name(0)
    except Exception:  # noqa: BLE001 - a machine description never fails a benchmark
        gpu = None
    return {"cpu": model, "cores": os.cpu_count(), "gpu": gpu, "python": platform.python_version(), "host": platform.node()}


def percentiles(values: Sequence[float], ps: Sequence[float] = (50, 95, 99)) -> dict[str, float]:
    if not values:
        return {f"p{int(p)}": float("nan") for p in ps}
    arr = np.asarray(values, dtype=np.float64)
    return {f"p{int(p)}": round(float(np.percentile(arr, p)), 3) for p in ps}


def stream_texts(data_dir: Path, n: int, since: str = "2014-04-20T00:00:00Z") -> list[dict[str, Any]]:
    """``n`` real events from the StockNet stream (one per tweet), in time order."""
    from stream.replay import read_events

    return [e for e in read_events(data_dir / "stocknet-tweets" / "stream.csv", since=since, limit=n) if isinstance(e, dict)]


def sentiment_texts(data_dir: Path, n: int) -> list[str]:
    with open(data_dir / "twitter-financial-news-sentiment" / "valid.csv", newline="", encoding="utf-8") as f:
        return [row["text"] for _, row in zip(range(n), csv.DictReader(f))]


def now_iso() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def append_markdown_row(path: Path, section: str, row: str) -> None:
    """Append a table row under a '## section' heading of BENCHMARKS.md (created if missing)."""
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    marker = f"## {section}"
    if marker not in text:
        text = text.rstrip() + f"\n\n{marker}\n\n"
    lines = text.splitlines()
    idx = next(i for i, line in enumerate(lines) if line.strip() == marker)
    end = idx + 1
    while end < len(lines) and not lines[end].startswith("## "):
        end += 1
    while end > idx + 1 and not lines[end - 1].strip():
        end -= 1
    lines.insert(end, row)
    path.write_text("\n".join(lines) + "\n")
