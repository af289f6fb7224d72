"""Typed settings for the streaming side of finpulse (env prefix ``FINPULSE_``)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from finpulse.paths import PROJECT_ROOT
from finpulse.paths import default_data_dir as _default_data_dir

if TYPE_CHECKING:
    from stream.alerts import SurgeParams
    from stream.novelty import NoveltyParams
    from stream.windows import TimePolicy


class StreamSettings(BaseSettings):
    """Everything the worker, replay, CLI and local services read from the environment."""

    model_config = SettingsConfigDict(env_prefix="FINPULSE_", env_file=None, extra="ignore")

    # --- local state -------------------------------------------------------------------
    local_dir: Path = Field(
        default=PROJECT_ROOT / ".local", description="Kafka jars/data, redis data, pid files, logs."
    )
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
    # Security of every Kafka client (stream.security turns these into aiokafka / Faust arguments).
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        default="PLAINTEXT",
        description="PLAINTEXT (local only), SSL (TLS; with a client certificate: mutual TLS), SASL_SSL (TLS plus a "
        "username and password), SASL_PLAINTEXT (password in clear on the wire: avoid).",
    )
    kafka_sasl_mechanism: Literal["SCRAM-SHA-512", "SCRAM-SHA-256", "PLAIN"] = "SCRAM-SHA-512"
    kafka_username: str | None = None
    kafka_password: SecretStr | None = None
    kafka_ssl_cafile: Path | None = Field(default=None, description="CA bundle that signs the brokers (PEM).")
    kafka_ssl_certfile: Path | None = Field(default=None, description="Client certificate chain for mutual TLS (PEM).")
    kafka_ssl_keyfile: Path | None = Field(default=None, description="The client certificate's private key (PEM).")
    kafka_ssl_key_password: SecretStr | None = None
    kafka_ssl_check_hostname: bool = Field(
        default=True, description="Check that the broker certificate names the host connected to."
    )

    # --- Redis ---------------------------------------------------------------------------
    redis_url: str = Field(
        default="redis://127.0.0.1:6379/0",
        description="redis:// or rediss:// (TLS). A user and password written into the URL are moved to "
        "redis_username/redis_password when the settings are read, so the URL itself never holds a secret.",
    )
    redis_username: str | None = Field(default=None, description="Redis ACL user (None: the default user).")
    redis_password: SecretStr | None = None
    redis_ssl_ca_file: Path | None = Field(default=None, description="CA that signs the Redis server (rediss://).")
    redis_ssl_cert_file: Path | None = Field(default=None, description="Client certificate when Redis asks for one.")
    redis_ssl_key_file: Path | None = None
    redis_ssl_check_hostname: bool = True
    redis_prefix: str = Field(
        default="{finpulse}",
        description="Start of every key finpulse writes. The braces are a Redis Cluster hash tag: the whole window "
        "store lives in one slot, so each of its Lua calls touches one slot (required on a cluster).",
    )
    redis_cluster: bool = Field(
        default=False,
        description="redis_url names one node of a Redis Cluster: clients discover the others and follow slots.",
    )
    redis_appendfsync: Literal["always", "everysec"] = Field(
        default="always",
        description="AOF fsync policy of the Redis that finpulse starts (local and docker-compose): 'always' loses "
        "nothing that Redis acknowledged; 'everysec' is faster and may lose up to about 1 s of writes on a crash.",
    )

    # --- worker --------------------------------------------------------------------------
    worker_web_host: str = Field(
        default="127.0.0.1",
        description="Address the worker's web server (/health, /metrics) binds; 0.0.0.0 in a container.",
    )
    worker_web_port: int = 6066
    worker_processes: int = Field(
        default=1,
        ge=1,
        le=64,
        description="`finpulse worker` runs this many workers of one consumer group on this machine (web ports "
        "worker_web_port, +1, ...); more than the input partitions leaves some idle.",
    )
    max_batch_size: int = Field(
        default=256, description="Events taken from Kafka per micro-batch (the engine splits it further)."
    )
    max_wait_ms: int = 50
    broker_session_timeout_s: float = Field(
        default=10.0,
        gt=0,
        description="Kafka consumer-group session timeout (a dead worker's partitions move after this).",
    )
    pipeline_depth: int = Field(
        default=3,
        ge=1,
        le=8,
        description="Micro-batches in flight: one is validated and classified while the one before is counted in "
        "Redis and the one before that is published to Kafka (1: strictly one at a time).",
    )
    max_text_bytes: int = 32 * 1024
    max_event_bytes: int = 256 * 1024
    worker_metrics_tokens: list[SecretStr] = Field(
        default_factory=list,
        description="Bearer tokens that may read the worker's /metrics (a JSON list); empty: /metrics is open. "
        "/health stays open and holds nothing secret.",
    )

    # --- personal data -------------------------------------------------------------------------
    pseudonym_key: SecretStr | None = Field(
        default=None,
        description="HMAC key for author pseudonyms; unset: a random key kept in <local_dir>/pseudonym.key (one "
        "machine only). Changing it changes every pseudonym.",
    )
    dlq_keep_raw: bool = Field(
        default=True,
        description="Dead letters keep the refused message's original bytes (value_b64) so nothing is lost; "
        "false keeps only where it was and why (the bytes may hold personal data).",
    )
    dlq_preview_chars: int = Field(
        default=64, ge=0, le=512, description="Characters of the refused message's text kept as a readable preview."
    )

    # --- windows ---------------------------------------------------------------------------
    bucket_seconds: int = 60
    retention_seconds: int = 7 * 24 * 3600
    allowed_lateness_seconds: int = 30 * 60
    dedupe_horizon_seconds: int = Field(
        # A day, not an hour: on a sparse stream (StockNet: ~150 events a day) one redelivered batch
        # spans many hours of event time, and a batch redelivered after a crash must read as duplicate.
        default=24 * 3600,
        ge=0,
        description="Seen event ids are kept this long in event time behind the lateness cut (low watermark minus "
        "allowed lateness), then dropped; an event older than that is refused as late, never counted twice.",
    )

    # --- novelty (near-duplicate stories) ------------------------------------------------------
    novelty_enabled: bool = Field(
        default=True,
        description="Judge every event's novelty against recent events (MinHash LSH, state in Redis); off: every "
        "event counts as novel and scored records carry novelty null.",
    )
    novelty_horizon_seconds: int = Field(
        default=24 * 3600,
        ge=60,
        description="Event-time generation of the novelty index: an event is compared with the events of its own "
        "generation and the one before (one to two horizons back; a repost a day later is still old news). "
        "The index is dropped by event time behind that.",
    )
    novelty_threshold: float = Field(
        default=0.7,
        gt=0,
        le=1,
        description="Estimated Jaccard similarity (character 5-grams of the normalised text) from which an event "
        "is a near-duplicate of an earlier one.",
    )
    novelty_bands: int = Field(default=12, ge=1, le=64, description="LSH bands (index entries per novel event).")
    novelty_rows: int = Field(default=4, ge=1, le=8, description="MinHash values per LSH band.")

    # --- event time ------------------------------------------------------------------------
    time_mode: Literal["live", "replay"] = Field(
        default="live",
        description="live: idle partitions stop holding the watermark back and buckets also close by the wall clock; "
        "replay: pure event time, so a replay raises the same alerts whatever the batching "
        "(the demo and replays use it).",
    )
    idle_partition_s: float = Field(
        default=30.0,
        gt=0,
        description="Live mode: a partition silent this long (wall clock) stops holding the low watermark back.",
    )
    live_close_delay_s: float = Field(
        default=60.0,
        ge=0,
        description="Live mode: a bucket closes once the wall clock is this far past its end, even without newer "
        "events.",
    )
    max_future_skew_s: float = Field(
        default=300.0,
        gt=0,
        description="An event dated further than this ahead of the wall clock goes to the DLQ (future_timestamp).",
    )
    close_tick_s: float = Field(
        default=1.0,
        gt=0,
        description="How often the worker closes buckets and re-offers abandoned ones without new input.",
    )
    alert_lease_s: float = Field(
        default=30.0,
        gt=0,
        description="A closed bucket handed to a worker for judging is offered again if not settled within this "
        "(the worker died).",
    )

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
    alert_events: Literal["novel", "all"] = Field(
        default="novel",
        description="Which events the surge rule counts: novel ones (one story reposted 50 times is one event) or "
        "all of them (the buzz). Without novelty (novelty_enabled false) every event is novel.",
    )

    # --- processing ------------------------------------------------------------------------
    infra_retry_max_seconds: float = Field(
        default=5.0,
        gt=0,
        description="Cap of the jittered exponential backoff while Redis/Kafka are unreachable (retried forever: "
        "the consumer waits).",
    )

    # --- fault injection (tests only; off by default) ---------------------------------------
    fault_crash_point: Literal["after_redis_apply", "after_alert_send", "before_ack"] | None = Field(
        default=None,
        description="Fault tests: the worker SIGKILLs itself at this point of a batch (never set in production).",
    )
    fault_crash_after: int = Field(
        default=1, ge=1, description="Fault tests: crash the Nth time the crash point is reached."
    )

    # --- model (the engine's own settings, FINPULSE_ENGINE_*, pick backend and batching) -----
    default_model_dir: Path = Field(
        default=PROJECT_ROOT / ".local" / "models", description="Cache of the default model and its bundle."
    )

    @model_validator(mode="after")
    def _check_security(self) -> StreamSettings:
        """Credentials out of the URL into the secret fields, and contradictions refused with the setting named."""
        from stream.security import SecurityConfigError, split_url_credentials

        clean, user, password = split_url_credentials(self.redis_url)
        if clean != self.redis_url:
            if password and self.redis_password is not None and self.redis_password.get_secret_value() != password:
                raise SecurityConfigError(
                    "FINPULSE_REDIS_URL", "holds a password that differs from FINPULSE_REDIS_PASSWORD"
                )
            if user and self.redis_username and user != self.redis_username:
                raise SecurityConfigError(
                    "FINPULSE_REDIS_URL", "names a user that differs from FINPULSE_REDIS_USERNAME"
                )
            self.redis_url = clean
            if user:
                self.redis_username = user
            if password:
                self.redis_password = SecretStr(password)
        if self.redis_ssl_cert_file is not None and self.redis_ssl_key_file is None:
            raise SecurityConfigError("FINPULSE_REDIS_SSL_KEY_FILE", "a client certificate needs its key")
        if self.redis_ssl_ca_file is not None and not self.redis_url.startswith("rediss://"):
            raise SecurityConfigError("FINPULSE_REDIS_URL", "TLS files are set but the URL is not rediss://")
        if self.kafka_security_protocol.startswith("SASL_") and (not self.kafka_username or not self.kafka_password):
            raise SecurityConfigError(
                "FINPULSE_KAFKA_USERNAME", f"{self.kafka_security_protocol} needs FINPULSE_KAFKA_USERNAME and _PASSWORD"
            )
        if (self.kafka_ssl_certfile is None) != (self.kafka_ssl_keyfile is None):
            raise SecurityConfigError("FINPULSE_KAFKA_SSL_KEYFILE", "a client certificate and its key go together")
        return self

    def surge_params(self) -> SurgeParams:
        from stream.alerts import SurgeParams

        return SurgeParams(
            min_count=self.alert_min_count,
            method=self.alert_method,
            min_z=self.alert_min_z,
            min_ratio=self.alert_min_ratio,
            floor=self.alert_floor,
            prior_share=self.alert_prior_share,
            prior_weight=self.alert_prior_weight,
            critical_share=self.alert_critical_share,
        )

    def novelty_params(self) -> NoveltyParams | None:
        """The LSH shape and threshold, or None when novelty is off."""
        from stream.novelty import NoveltyParams

        if not self.novelty_enabled:
            return None
        return NoveltyParams(bands=self.novelty_bands, rows=self.novelty_rows, threshold=self.novelty_threshold)

    def time_policy(self) -> TimePolicy:
        from stream.windows import TimePolicy

        return TimePolicy(
            mode=self.time_mode,
            idle_partition_s=self.idle_partition_s,
            live_close_delay_s=self.live_close_delay_s,
            alert_lease_s=self.alert_lease_s,
            dedupe_horizon_s=float(self.dedupe_horizon_seconds),
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
