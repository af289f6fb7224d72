"""Input files for the replay tests: a headline table (``,title,date,stock``, as public news-headline
CSVs have it) written as CSV, TSV, JSONL or Parquet, plain, gzip or zstd."""

from __future__ import annotations

import csv
import gzip
import io
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import orjson
import zstandard

HEADLINE_COLUMNS = ["", "title", "date", "stock"]
T0 = datetime(2020, 6, 1, 13, 30, tzinfo=UTC)
NEW_YORK_SUMMER = timezone(timedelta(hours=-4))


def headline_rows(n: int, start: datetime = T0, step_s: float = 60.0) -> list[dict[str, Any]]:
    """``n`` headline rows, ``step_s`` apart, times with a -04:00 offset (as the public file has them);
    every fifth headline is listed a second time for another ticker, as such files list them."""
    rows: list[dict[str, Any]] = []
    tickers = ["AAPL", "MSFT", "TSLA", "AMZN", "NVDA"]
    for i in range(n):
        stamp = (start + timedelta(seconds=i * step_s)).astimezone(NEW_YORK_SUMMER).isoformat(sep=" ")
        row = {"": len(rows), "title": f"Headline {i}: shares move on news", "date": stamp, "stock": tickers[i % 5]}
        rows.append(row)
        if i % 5 == 0:
            rows.append({**row, "": len(rows), "stock": "GOOG"})
    return rows


def expected_times_ms(n: int, start: datetime = T0, step_s: float = 60.0) -> list[int]:
    """The event times of :func:`headline_rows` (one per headline), epoch ms UTC."""
    return [int((start + timedelta(seconds=i * step_s)).timestamp() * 1000) for i in range(n)]


def _compress(data: bytes, compression: str | None) -> bytes:
    if compression == "gz":
        return gzip.compress(data)
    if compression == "zst":
        return zstandard.ZstdCompressor().compress(data)
    return data


def write_rows(path: Path, rows: list[dict[str, Any]], columns: list[str] | None = None) -> Path:
    """Write ``rows`` in the format named by ``path``'s suffixes (``.csv``, ``.tsv.gz``, ``.jsonl.zst``,
    ``.parquet``, ...)."""
    suffixes = path.suffixes
    compression = suffixes[-1][1:] if suffixes and suffixes[-1] in (".gz", ".zst") else None
    fmt = (suffixes[-2] if compression else suffixes[-1])[1:]
    columns = columns or list(rows[0])
    if fmt == "parquet":
        import pyarrow as pa  # type: ignore[import-untyped]
        import pyarrow.parquet as pq  # type: ignore[import-untyped]

        table = pa.table({c: [r.get(c) for r in rows] for c in columns})
        buf = io.BytesIO()
        pq.write_table(table, buf, row_group_size=64)
        data = buf.getvalue()
    elif fmt == "jsonl":
        data = b"".join(orjson.dumps({c: r.get(c) for c in columns if c}) + b"\n" for r in rows)
    else:
        out = io.StringIO()
        w = csv.DictWriter(out, columns, delimiter="\t" if fmt == "tsv" else ",", lineterminator="\n")
        w.writeheader()
        w.writerows({c: r.get(c) for c in columns} for r in rows)
        data = out.getvalue().encode()
    path.write_bytes(_compress(data, compression))
    return path
