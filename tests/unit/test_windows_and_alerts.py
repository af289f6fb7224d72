"""Window bucketing and the negative-surge rule on hand-built series."""

from __future__ import annotations

from dataclasses import replace

import pytest

from stream.alerts import alert_id, evaluate_surge
from stream.settings import StreamSettings
from stream.windows import bucket_start

P = replace(
    StreamSettings().surge_params(), min_count=5, method="z", min_z=2.0, floor=0.4, prior_share=0.2, prior_weight=10.0
)


@pytest.mark.parametrize(
    ("ts_ms", "bucket", "expected"),
    [
        (1388534400000, 60, 1388534400),
        (1388534459999, 60, 1388534400),
        (1388534460000, 60, 1388534460),
        (1388538000000 - 1, 3600, 1388534400),
        (1388538000000, 3600, 1388538000),
    ],
)
def test_bucket_start(ts_ms: int, bucket: int, expected: int) -> None:
    assert bucket_start(ts_ms, bucket) == expected


def series(neg: int, total: int) -> tuple[int, int]:
    return total, neg


def test_fires_on_surge_over_quiet_baseline() -> None:
    d = evaluate_surge(*series(8, 10), *series(10, 100), P)
    assert d.fire and d.share == 0.8
    assert d.baseline_share == pytest.approx((10 + 2) / 110)
    assert d.severity == "critical"


def test_does_not_fire_below_min_count() -> None:
    assert not evaluate_surge(*series(4, 4), *series(0, 100), P).fire


def test_does_not_fire_when_baseline_is_as_negative() -> None:
    assert not evaluate_surge(*series(6, 10), *series(60, 100), P).fire


def test_does_not_fire_under_absolute_floor() -> None:
    # 3 of 10 is far above a 1% baseline, but below the 40% floor.
    assert not evaluate_surge(*series(3, 10), *series(1, 1000), P).fire


def test_ratio_method() -> None:
    p = replace(P, method="ratio", min_ratio=2.0, prior_weight=0.0)
    assert evaluate_surge(*series(5, 10), *series(20, 100), p).fire  # 0.5 vs 0.2: ratio 2.5
    assert not evaluate_surge(*series(5, 10), *series(30, 100), p).fire  # ratio 1.67


def test_no_history_uses_prior() -> None:
    d = evaluate_surge(*series(9, 10), 0, 0, P)
    assert d.baseline_share == pytest.approx(0.2)
    assert d.fire


def test_alert_id_is_deterministic_and_distinct() -> None:
    a = alert_id("negative_surge", "ticker", "AAPL", 0, 900_000)
    assert a == alert_id("negative_surge", "ticker", "AAPL", 0, 900_000)
    assert a != alert_id("negative_surge", "ticker", "AAPL", 60_000, 960_000)
    assert a != alert_id("negative_surge", "topic", "AAPL", 0, 900_000)
