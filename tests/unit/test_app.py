"""The Faust app can be built (batch consumer, timer and web page wired) without any service running."""

from __future__ import annotations

from pathlib import Path

from redis.asyncio import Redis

from engine.runtime import load_classifier
from engine.settings import EngineSettings
from stream.app import create_app
from stream.settings import StreamSettings


def test_create_app_wires_consumer_timer_and_health(tiny_model_dir: Path) -> None:
    clf = load_classifier(EngineSettings(backend="null"), tiny_model_dir)
    # redis-py connects lazily: building the app must not need a server.
    app = create_app(StreamSettings(time_mode="replay"), clf, redis=Redis.from_url("redis://127.0.0.1:1/0"))
    # The input topic is read by the batch consumer (a start-up task), not by a Faust agent, and
    # Faust's own consumer is off: one kind of member in the worker's consumer group.
    assert not app.agents
    assert not app.boot_strategy._should_enable_kafka_consumer()
    # Faust keeps timers and tasks among the app's start-up tasks (private, but there is no public listing).
    names = {getattr(t, "__name__", "") for t in app._app_tasks}
    assert {"close_tick", "consume"} <= names
    assert app.finpulse_processor.store.time.mode == "replay"  # type: ignore[attr-defined]
    # Faust's table data stays with the local state, not in the directory the worker started in.
    settings = StreamSettings()
    assert Path(app.conf.datadir).parent == settings.local_dir / "faust"


def test_histogram_quantile_interpolates_like_promql() -> None:
    from stream.metrics import WorkerMetrics, histogram_quantile

    inf = float("inf")
    # 10 observations: 4 in (0, 1], 4 in (1, 2], 2 in (2, 4]; cumulative counts per upper bound.
    buckets = [(1.0, 4), (2.0, 8), (4.0, 10), (inf, 10)]
    assert histogram_quantile(0.5, buckets) == 1.25  # rank 5: a quarter into (1, 2]
    assert histogram_quantile(0.9, buckets) == 3.0  # rank 9: half into (2, 4]
    assert histogram_quantile(0.99, [(1.0, 0), (inf, 5)]) == 1.0  # beyond the last bound: that bound
    assert histogram_quantile(0.5, [(1.0, 0), (inf, 0)]) is None
    # And through the worker's own registry: quantiles of what was observed, in ms, within a bucket.
    m = WorkerMetrics()
    assert m.summary()["batch_infer_ms_p99"] is None
    for v in [0.010] * 98 + [0.200] * 2:
        m.inference.observe(v)
    s = m.summary()
    assert 0.75 * 10 <= s["batch_infer_ms_p50"] <= 1.25 * 10  # type: ignore[operator]
    assert 0.75 * 200 <= s["batch_infer_ms_p99"] <= 1.25 * 200  # type: ignore[operator]
    # A labelled histogram: each stage's quantiles come from its own series only.
    assert s["count_ms_p50"] is None
    for v in [0.040] * 10:
        m.stage.labels("count").observe(v)
    for v in [0.005] * 10:
        m.stage.labels("publish").observe(v)
    s = m.summary()
    assert 0.75 * 40 <= s["count_ms_p50"] <= 1.25 * 40  # type: ignore[operator]
    assert 0.75 * 5 <= s["publish_ms_p50"] <= 1.25 * 5  # type: ignore[operator]
