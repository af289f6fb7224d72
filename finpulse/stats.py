"""Percentile summaries of latency samples measured by the benchmarks (the worker uses Prometheus histograms)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np


def percentiles(
    values: Iterable[float], ps: Sequence[float] = (50, 95, 99), *, ndigits: int = 3
) -> dict[str, float | None]:
    """``{"p50": ..., "p95": ..., "p99": ...}`` of ``values`` (linear interpolation), rounded to ``ndigits``.

    Every key is ``None`` when there are no values, so callers can serialise the result as it is.
    """
    arr = np.fromiter(values, dtype=np.float64)
    if arr.size == 0:
        return {_key(p): None for p in ps}
    return {_key(p): round(float(v), ndigits) for p, v in zip(ps, np.percentile(arr, list(ps)), strict=True)}


def _key(p: float) -> str:
    # p99.9 -> "p99.9", p50 -> "p50"
    return f"p{p:g}"
