"""Entity indices from bucket series (pure): buzz, shares, mean score, the buzz z-score and its baseline."""

from __future__ import annotations

import math

import pytest

from stream.cli.console import indices_table
from stream.indices import baseline_windows, index_buckets, index_from_series, window_seconds
from stream.windows import BucketCounts


def _series(counts: list[int], step: int = 3600) -> list[BucketCounts]:
    return [
        BucketCounts(i * step, (i + 1) * step, n, n // 2, n - n // 2 - n // 4, n // 4, 0.1 * n)
        for i, n in enumerate(counts)
    ]


def test_index_of_the_last_slice_against_the_ones_before() -> None:
    x = index_from_series("1h", _series([2, 4, 2, 4, 20]))
    assert (x.window, x.window_seconds, x.start_s, x.end_s) == ("1h", 3600, 4 * 3600, 5 * 3600)
    assert (x.count, x.neg, x.pos) == (20, 10, 5)
    assert x.neg_share == 0.5 and x.pos_share == 0.25 and x.mean_score == pytest.approx(0.1)
    assert (x.baseline_windows, x.baseline_mean, x.baseline_std) == (4, 3.0, 1.0)  # population std
    assert x.buzz_z == pytest.approx(17.0)


def test_buzz_z_floors_the_std_at_one_event_and_needs_a_baseline() -> None:
    silent = index_from_series("1h", _series([0, 0, 0, 3]))
    assert silent.baseline_std == 0.0 and silent.buzz_z == 3.0  # not infinite
    assert index_from_series("1h", _series([5, 5, 5])).buzz_z == 0.0
    alone = index_from_series("1d", _series([7]))
    assert alone.baseline_windows == 0 and alone.buzz_z is None
    empty = index_from_series("1h", _series([1, 0]))
    assert empty.neg_share == empty.pos_share == empty.mean_score == 0.0 and not math.isnan(empty.buzz_z or 0)


def test_windows_are_whole_buckets_and_baselines_stay_inside_retention() -> None:
    assert window_seconds(60, 3600) == 3600 and window_seconds(86400, 60) == 86400 and window_seconds(90, 60) == 120
    assert baseline_windows(3600, 7 * 86400, 24) == 24
    assert baseline_windows(86400, 7 * 86400, 24) == 6  # 7 days kept: the current day and 6 before it
    assert baseline_windows(86400, 86400, 24) == 0
    # 60 s buckets, 7 days: 1m 25, 5m 25*5, 15m 25*15, 1h 25*60, 1d 7*1440 bucket reads.
    assert index_buckets(60, 7 * 86400, 24, ["1m", "5m", "15m", "1h", "1d"]) == 25 + 125 + 375 + 1500 + 10080


def test_indices_table_renders_each_row() -> None:
    from rich.console import Console

    rows = [("AAA", index_from_series("1h", _series([2, 4, 2, 4, 20]))), ("AAA", index_from_series("1m", _series([1])))]
    console = Console(width=160, record=True)
    console.print(indices_table("ticker indices", rows))
    text = console.export_text()
    assert "+17.0" in text and "3.0 ± 1.0 (4)" in text and "1m (60m)" in text
