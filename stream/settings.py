"""Typed settings for the streaming side of finpulse (env prefix ``FINPULSE_``)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from finpulse.paths import PROJECT_ROOT
from finpulse.paths import default_data_dir as _default_data_dir

if TYPE_CHECKING:
    from stream.alerts import SurgeParams


class StreamSettings(BaseSettings):
    """Everything the worker, replay, CLI and local services read from the environment."""

    model_config = SettingsConfigDict(env_prefix="FINPULSE_", env_file=None, extra="ignore")

    # --- local state -------------------------------------------------------------------
    local_dir: Path = Field(default=PROJECT_ROOT / ".local", description="Kafka jars/data, redis data, pid files, logs.")
    data_dir: Path | None = Field(default_factory=_default_data_dir, description="Folder holding the shared data sets.")

    # --- Kafka ---------------------------------------------------------------------------
    kafka_bootstrap: str = "127.0.0.1:9092"
    kafka_controller_port: int = 9093
    kafka_version: str = "4.1.1"
    kafka_heap: str = "1g"
    input_topic: str = "finpulse.events"
    scored_topic: str = "finpulse.scored"
    alerts_topic: str = "finpulse.alerts"
    dlq_topic: str = "finpulse.dlq"
    partitions: int = 4
    consumer_group: str = "finpulse-worker"

    # --- Redis ---------------------------------------------------------------------------
    redis_url: str = "redis://127.0.0.1:6379/0"
    redis_password: SecretStr | None = None
    redis_prefix: str = "finpulse"
    redis_appendfsync: Literal["always", "everysec"] = Field(
        default="always",
        description="AOF fsync policy of the Redis that finpulse starts (local and docker-compose): 'always' loses "
        "nothing that Redis acknowledged; 'everysec' is faster and may lose up to about 1 s of writes on a crash.",
    )

    # --- worker --------------------------------------------------------------------------
    worker_web_port: int = 6066
    max_batch_size: int = Field(default=256, description="Events taken from Kafka per micro-batch (the engine splits it further).")
    max_wait_ms: int = 50
    broker_session_timeout_s: float = Field(default=10.0, gt=0, description="Kafka consumer-group session timeout (a dead worker's partitions move after this).")
    pipeline_depth: int = Field(default=2, ge=1, le=8, description="Micro-batches in flight: the next one is validated and classified while the previous one is written (1: strictly one at a time).")
    max_text_bytes: int = 32 * 1024
    max_event_bytes: int = 256 * 1024

    # --- windows ---------------------------------------------------------------------------
    bucket_seconds: int = 60
    retention_seconds: int = 7 * 24 * 3600
    allowed_lateness_seconds: int = 30 * 60

    # --- alerts ----------------------------------------------------------------------------
    alert_window_seconds: int = 15 * 60
    alert_baseline_seconds: int = 3 * 3600
    alert_min_count: int = 5
    alert_method: Literal["z", "ratio"] = "z"
    alert_min_ratio: float = 2.0
    alert_min_z: float = 2.0
    alert_floor: float = 0.4
    alert_prior_share: float = 0.2
    alert_prior_weight: float = 10.0
    alert_critical_share: float = 0.75
    alert_cooldown_seconds: int = 30 * 60

    # --- processing ------------------------------------------------------------------------
    infra_retry_max_seconds: float = Field(default=30.0, description="Backoff cap while Redis/Kafka are unreachable.")

    # --- model (the engine's own settings, FINPULSE_ENGINE_*, pick backend and batching) -----
    default_model_dir: Path = Field(default=PROJECT_ROOT / ".local" / "models", description="Cache of the default model and its bundle.")

    def surge_params(self) -> "SurgeParams":
        from stream.alerts import SurgeParams

        return SurgeParams(
            min_count=self.alert_min_count, method=self.alert_method, min_z=self.alert_min_z,
            min_ratio=self.alert_min_ratio, floor=self.alert_floor, prior_share=self.alert_prior_share,
            prior_weight=self.alert_prior_weight, critical_share=self.alert_critical_share,
        )

    @property
    def kafka_dir(self) -> Path:
        return self.local_dir / "kafka"

    @property
    def redis_dir(self) -> Path:
        return self.local_dir / "redis"

    @property
    def run_dir(self) -> Path:
        return self.local_dir / "run"

    @property
    def log_dir(self) -> Path:
        return self.local_dir / "logs"

    def require_data_dir(self) -> Path:
        """The data folder, or a clear error naming the setting to use."""
        if self.data_dir is None or not Path(self.data_dir).is_dir():
            raise FileNotFoundError(
                f"data folder {self.data_dir!s} not found: set FINPULSE_DATA_DIR or pass --data-dir"
            )
        return Path(self.data_dir)


@lru_cache(maxsize=1)
def get_settings() -> StreamSettings:
    """Process-wide settings, read once from the environment."""
    return StreamSettings()
