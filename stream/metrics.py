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
# Engine time per micro-batch or per backend call: sub-millisecond (null backend) to seconds (CPU
# transformer). Buckets grow by 1.5x from 0.5 ms to 12 s, so a quantile estimated from them (see
# ``histogram_quantile``) is within about 25% of the true value: what /health and the benchmark need.
_INFER_BUCKETS = tuple(round(0.0005 * 1.5**k, 6) for k in range(26))
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
        # Which stage sets the rate: a batch is counted and published before the next one is counted, so when
        # count + publish p50 is near the interval between batches that chain (Redis, then Kafka) is the limit.
        self.stage = Histogram(
            "finpulse_batch_stage_seconds",
            "Time of one micro-batch in a stage: count (the Redis window script, retries included) or publish "
            "(scored records, dead letters and alert judging until Kafka acknowledged them).",
            ["stage"],
            buckets=_INFER_BUCKETS,
            registry=r,
        )
        self.engine_call = Histogram(
            "finpulse_engine_call_seconds",
            "Time of one backend call (a micro-batch may be split into several by the token budget).",
            buckets=_INFER_BUCKETS,
            registry=r,
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

    def value(self, name: str, **labels: str) -> float:
        """One sample's current value (0 when it has not been observed yet)."""
        return self.registry.get_sample_value(name, labels) or 0.0

    def by_label(self, metric: str, label: str) -> dict[str, int]:
        """A labelled counter's totals per label value, e.g. dead letters per reason."""
        out: dict[str, int] = {}
        for family in self.registry.collect():
            for sample in family.samples:
                if sample.name == metric and label in sample.labels:
                    out[sample.labels[label]] = int(sample.value)
        return out

    def quantile_ms(self, histogram: str, q: float, **labels: str) -> float | None:
        """Estimated ``q`` quantile of a seconds histogram (of its series with ``labels``), in ms (None before
        any observation)."""
        buckets: list[tuple[float, float]] = []
        for family in self.registry.collect():
            for sample in family.samples:
                if sample.name == f"{histogram}_bucket" and all(sample.labels.get(k) == v for k, v in labels.items()):
                    buckets.append((float(sample.labels["le"]), sample.value))
        v = histogram_quantile(q, buckets)
        return None if v is None else round(v * 1000, 2)

    def summary(self) -> dict[str, object]:
        """/health's short summary, read from the same counters that /metrics exposes."""
        retries = self.by_label("finpulse_infra_retries_total", "op")
        window = self.by_label("finpulse_events_window_total", "status")
        return {
            "batches": int(self.value("finpulse_batch_events_count")),
            "received": int(self.value("finpulse_events_in_total")),
            "scored": int(self.value("finpulse_events_scored_total")),
            "counted": window.get("counted", 0),
            "duplicate": window.get("duplicate", 0),
            "late": window.get("late", 0),
            "dead_letters": sum(self.by_label("finpulse_dead_letters_total", "reason").values()),
            "rejections": self.by_label("finpulse_dead_letters_total", "reason"),
            "alerts": sum(self.by_label("finpulse_alerts_total", "severity").values()),
            "infra_retries": sum(retries.values()),
            "retries_by_op": retries,
            "batch_infer_ms_p50": self.quantile_ms("finpulse_inference_seconds", 0.5),
            "batch_infer_ms_p99": self.quantile_ms("finpulse_inference_seconds", 0.99),
            "engine_call_ms_p50": self.quantile_ms("finpulse_engine_call_seconds", 0.5),
            "engine_call_ms_p99": self.quantile_ms("finpulse_engine_call_seconds", 0.99),
            **{
                f"{stage}_ms_{name}": self.quantile_ms("finpulse_batch_stage_seconds", q, stage=stage)
                for stage in ("count", "publish")
                for name, q in (("p50", 0.5), ("p99", 0.99))
            },
        }

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


def histogram_quantile(q: float, buckets: Iterable[tuple[float, float]]) -> float | None:
    """The ``q`` quantile from cumulative histogram buckets ``(upper bound, count)``, interpolated
    linearly inside the bucket that holds it, as PromQL's ``histogram_quantile`` does.

    prometheus_client records histograms but has no reader for them, hence these few lines. A
    quantile in the ``+Inf`` bucket is reported as the highest finite bound.
    """
    ordered = sorted(buckets)
    if not ordered or ordered[-1][1] <= 0:
        return None
    rank = q * ordered[-1][1]
    lower, below = 0.0, 0.0
    for upper, count in ordered:
        if count >= rank:
            if upper == float("inf"):
                return lower
            if count == below:
                return upper
            return lower + (upper - lower) * (rank - below) / (count - below)
        lower, below = upper, count
    return lower
