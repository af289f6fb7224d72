"""Hand-made ``Alert`` records for API tests (the worker's own model, so new fields keep their defaults)."""

from __future__ import annotations

from typing import Literal

from stream.events import Alert, ms_to_iso


def make_alert(
    alert_id: str,
    *,
    entity: str = "AAA",
    kind: str = "ticker",
    end_ms: int,
    severity: Literal["warning", "critical"] = "warning",
    window_ms: int = 900_000,
) -> Alert:
    """A surge alert on ``kind:entity`` for the window ending at ``end_ms``."""
    return Alert(
        id=alert_id,
        rule="neg_surge",
        entity_kind=kind,
        entity=entity,
        window_start=end_ms - window_ms,
        window_end=end_ms,
        window_start_iso=ms_to_iso(end_ms - window_ms),
        window_end_iso=ms_to_iso(end_ms),
        observed_share=0.8,
        baseline_share=0.2,
        count=10,
        negative=8,
        baseline_count=100,
        z=3.0,
        ratio=4.0,
        severity=severity,
        example_event_ids=["e1"],
        model_id="test-model",
        raised_at="2026-01-01T00:00:00Z",
    )
