"""Entity indices (issue 16, part 2): per ticker or topic and window length, its buzz (count), negative and
positive shares, mean score, and the buzz z-score against its own recent past.

Read from the window store's bucket hashes through :meth:`stream.windows.WindowStore.series` only (the one
read path, summed in Redis by ``counts.lua``): no key format is known here.

Buzz z-score: the count of the current window against the counts of the ``baseline`` windows of the same
length just before it (default 24: a day of hours, 24 days of days), ``(count - mean) / max(std, 1)``
with the population std. The std is floored at one event so that an entity that was silent (std 0) and
says one thing does not read as an infinite surprise. Baseline windows older than the store's retention
are left out (their buckets have expired: zeros there would be missing data, not silence); with none
left, the z-score is None.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from stream.windows import BucketCounts, WindowStore, bucket_start

#: The index windows of the issue, by label.
INDEX_WINDOWS: dict[str, int] = {"1m": 60, "5m": 300, "15m": 900, "1h": 3600, "1d": 86400}
DEFAULT_BASELINE = 24
MAX_BASELINE = 48


@dataclass(frozen=True)
class EntityIndex:
    """One entity's index for one window length, ending at ``end_s`` (exclusive)."""

    window: str
    window_seconds: int  # whole buckets: a window shorter than a bucket reads one bucket
    start_s: int
    end_s: int
    count: int
    neg: int
    pos: int
    novel: int  # events that are not near-duplicates of an earlier story (count is the buzz)
    novel_neg: int
    neg_share: float
    pos_share: float
    mean_score: float
    baseline_windows: int  # how many past windows the z-score compares with (after retention)
    baseline_mean: float
    baseline_std: float
    buzz_z: float | None


def window_seconds(window_s: int, bucket_s: int) -> int:
    """The window in whole buckets (as the API's windows are read): rounded up to the bucket."""
    return max(1, math.ceil(window_s / bucket_s)) * bucket_s


def baseline_windows(win_s: int, retention_s: int, wanted: int) -> int:
    """Past windows that fit inside the retention beside the current one (at most ``wanted``)."""
    return max(0, min(wanted, retention_s // win_s - 1))


def index_from_series(label: str, points: Sequence[BucketCounts]) -> EntityIndex:
    """The index from consecutive same-length slices, oldest first: the last is the current window, the ones
    before it are the baseline."""
    cur, base = points[-1], [p.n for p in points[:-1]]
    mean = sum(base) / len(base) if base else 0.0
    std = math.sqrt(sum((x - mean) ** 2 for x in base) / len(base)) if base else 0.0
    z = (cur.n - mean) / max(std, 1.0) if base else None
    return EntityIndex(
        window=label,
        window_seconds=cur.end_s - cur.start_s,
        start_s=cur.start_s,
        end_s=cur.end_s,
        count=cur.n,
        neg=cur.neg,
        pos=cur.pos,
        novel=cur.novel,
        novel_neg=cur.novel_neg,
        neg_share=cur.neg / cur.n if cur.n else 0.0,
        pos_share=cur.pos / cur.n if cur.n else 0.0,
        mean_score=cur.score_sum / cur.n if cur.n else 0.0,
        baseline_windows=len(base),
        baseline_mean=mean,
        baseline_std=std,
        buzz_z=z,
    )


def index_buckets(bucket_s: int, retention_s: int, baseline: int, windows: Sequence[str]) -> int:
    """Bucket reads one entity's indices cost (callers bound requests with it)."""
    total = 0
    for w in windows:
        win = window_seconds(INDEX_WINDOWS[w], bucket_s)
        total += (baseline_windows(win, retention_s, baseline) + 1) * (win // bucket_s)
    return total


async def entity_indices(
    store: WindowStore,
    kind: str,
    name: str,
    end_ms: int,
    windows: Sequence[str] = tuple(INDEX_WINDOWS),
    baseline: int = DEFAULT_BASELINE,
    max_buckets: int = 5_000,
) -> list[EntityIndex]:
    """One entity's indices for each of ``windows``, the current window ending at the end of ``end_ms``'s bucket.

    Each window length is one :meth:`WindowStore.series` read (in Redis calls of at most ``max_buckets``).
    """
    b = store.bucket_s
    end_s = bucket_start(end_ms, b) + b
    out: list[EntityIndex] = []
    for w in windows:
        win = window_seconds(INDEX_WINDOWS[w], b)
        n_base = baseline_windows(win, store.retention_s, baseline)
        points = await store.series(kind, name, end_s - (n_base + 1) * win, end_s, win, max_buckets=max_buckets)
        out.append(index_from_series(w, points))
    return out
