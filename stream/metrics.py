"""Prometheus metrics of one worker (``prometheus_client``), served at ``/metrics``.

Each worker keeps its own ``CollectorRegistry`` rather than the process-global default one, so that
tests and benchmarks can build several apps in one process without name clashes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

__all__ = ["CONTENT_TYPE_LATEST", "WorkerMetrics"]

# Micro-batches are taken up to FINPULSE_MAX_BATCH_SIZE (256 by default) events.
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
# One engine call per micro-batch: sub-millisecond (null backend) to seconds (CPU transformer).
_INFER_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# Processing time minus event time: seconds when live, years when a historical stream is replayed.
_LAG_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, 86400, 7 * 86400, 365 * 86400)


class WorkerMetrics:
    """Counters, histograms and gauges of one worker, and their text exposition."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        r = self.registry = registry or CollectorRegistry()
        self.events_in = Counter("finpulse_events_in", "Input records taken from Kafka.", registry=r)
        self.scored = Counter("finpulse_events_scored", "Events classified and sent to the scored topic.", registry=r)
        self.window = Counter(
            "finpulse_events_window",
            "Scored events by window status (counted, duplicate, late).",
            ["status"],
            registry=r,
        )
        self.dead_letters = Counter(
            "finpulse_dead_letters", "Inputs sent to the DLQ, by reason.", ["reason"], registry=r
        )
        self.alerts = Counter("finpulse_alerts", "Alerts published, by severity.", ["severity"], registry=r)
        self.retries = Counter(
            "finpulse_infra_retries", "Retries of Redis and Kafka operations, by operation.", ["op"], registry=r
        )
        self.batch_size = Histogram(
            "finpulse_batch_events", "Events per micro-batch taken from Kafka.", buckets=_BATCH_BUCKETS, registry=r
        )
        self.inference = Histogram(
            "finpulse_inference_seconds", "Engine time per micro-batch.", buckets=_INFER_BUCKETS, registry=r
        )
        self.event_lag = Histogram(
            "finpulse_event_lag_seconds",
            "Processing time minus event time, per scored event.",
            buckets=_LAG_BUCKETS,
            registry=r,
        )
        self.consumer_lag = Gauge(
            "finpulse_consumer_lag",
            "Input records not yet committed, per assigned partition (high watermark minus committed offset).",
            ["topic", "partition"],
            registry=r,
        )
        self.degraded = Gauge(
            "finpulse_degraded", "1 while a Redis or Kafka operation is waiting on an outage.", ["op"], registry=r
        )
        self.engine = Info("finpulse_engine", "Backend, device, precision and model id the worker serves.", registry=r)

    def set_engine(self, describe: Mapping[str, object]) -> None:
        """The info gauge from the classifier's description."""
        self.engine.info({k: str(describe.get(k)) for k in ("backend", "device", "precision", "model_id")})

    def observe_event_lag(self, now_ms: int, event_ms: Iterable[int]) -> None:
        for ts in event_ms:
            self.event_lag.observe(max(0.0, (now_ms - ts) / 1000))

    def exposition(self, consumer_lag: Callable[[], Mapping[tuple[str, int], int]] | None = None) -> bytes:
        """The text format; per-partition consumer lag is read at scrape time."""
        if consumer_lag is not None:
            self.consumer_lag.clear()
            for (topic, partition), lag in consumer_lag().items():
                self.consumer_lag.labels(topic, str(partition)).set(lag)
        return generate_latest(self.registry)
