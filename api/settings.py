"""Settings of the query API (env prefix ``FINPULSE_API_``).

Only what is the API's own lives here. Where the data is (Redis URL, password and prefix, bucket
size, Kafka bootstrap, alert topic) is read from :class:`stream.settings.StreamSettings`, the one
definition the worker uses too, so the two services can never disagree on a name.
"""

from __future__ import annotations

from functools import lru_cache

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class ApiSettings(BaseSettings):
    """Host, port and the bounds that keep every request cheap for Redis and for this process."""

    model_config = SettingsConfigDict(env_prefix="FINPULSE_API_", env_file=None, extra="ignore")

    host: str = Field(default="127.0.0.1", description="Interface `finpulse serve` binds (loopback by default).")
    port: int = Field(default=8080, ge=1, le=65535)
    max_page_size: int = Field(default=500, ge=1, le=10_000, description="Largest `limit` a list endpoint accepts.")
    alert_buffer_size: int = Field(
        default=10_000, ge=1, description="Alerts kept in memory (newest kept; older ones fall out)."
    )
    max_series_points: int = Field(
        default=1_440, ge=1, description="Most buckets one series response may hold (window / step)."
    )
    max_entities: int = Field(
        default=1_000,
        ge=1,
        description="Most entities one /v1/entities request reads (the most recently active first); a response "
        "that hit it says `capped`.",
    )
    redis_buckets_per_call: int = Field(
        default=5_000,
        ge=1,
        description="Bucket reads per Redis script call when summing windows (a call blocks Redis for its length: "
        "about 15 ms at 5,000 on a 2-core machine), so the worker never waits for a whole request.",
    )
    entities_cache_seconds: float = Field(
        default=5.0,
        ge=0,
        description="How long one /v1/entities read of Redis is shared by identical requests (0: never).",
    )
    sse_ping_seconds: float = Field(default=15.0, gt=0, description="Keep-alive comment period on /v1/alerts/stream.")
    sse_queue_size: int = Field(
        default=1_000, ge=1, description="Alerts queued per SSE client; a client this far behind misses alerts."
    )
    health_timeout_seconds: float = Field(
        default=2.0, gt=0, description="How long /healthz waits for Redis or Kafka before calling it down."
    )
    tokens: list[SecretStr] = Field(
        default_factory=list,
        description="Bearer tokens accepted by /v1/*, the dashboard and /static (a JSON list, several allowed for "
        "rotation); empty: no authentication. /healthz stays open.",
    )
    ingest_max_events: int = Field(
        default=500, ge=1, le=100_000, description="Most events one POST /v1/events may carry (more: 413)."
    )
    ingest_max_body_bytes: int = Field(
        default=4 * 1024 * 1024, ge=1024, description="Largest POST /v1/events body in bytes (more: 413)."
    )
    ingest_kafka_timeout_seconds: float = Field(
        default=10.0,
        gt=0,
        description="How long POST /v1/events waits for Kafka (connecting, then acknowledging) before a 503.",
    )


@lru_cache(maxsize=1)
def get_api_settings() -> ApiSettings:
    """Process-wide API settings, read once from the environment."""
    return ApiSettings()
