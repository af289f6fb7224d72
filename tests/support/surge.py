"""Worker settings under which a short burst of negatives on one ticker raises an alert in a replay."""

from __future__ import annotations

from typing import Any

# Minute buckets, a 15-minute recent window against the 3 hours before it, at least 5 events;
# replay time (event time only), so which buckets close does not depend on batching.
REPLAY_SURGE: dict[str, Any] = {
    "bucket_seconds": 60,
    "alert_window_seconds": 900,
    "alert_baseline_seconds": 3 * 3600,
    "alert_min_count": 5,
    "allowed_lateness_seconds": 3600,
    "max_batch_size": 32,
    "max_wait_ms": 100,
    "time_mode": "replay",
}
