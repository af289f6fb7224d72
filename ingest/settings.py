"""Settings of the feed ingester (env prefix ``FINPULSE_INGEST_``) and the feeds file it reads.

Only what is the ingester's own lives here. Where events go and where its state lives (Kafka
bootstrap, input topic, Redis URL and prefix, event size limits) are read from
:class:`stream.settings.StreamSettings`, the one definition the worker uses too.

The feeds come from a TOML or JSON file (``feeds_file``), from the ``feeds`` setting (a JSON list), or
both::

    [[feeds]]
    url = "https://example.com/markets.rss"
    name = "example-markets"     # the events' source (default: the URL's host)
    interval_s = 300             # default: FINPULSE_INGEST_INTERVAL_S
    tickers = ["ACME"]           # added to every entry of this feed (a company's own feed)

    [symbols]                    # company names -> tickers, matched as whole words, case-sensitive
    "Acme Corp" = "ACME"
"""

from __future__ import annotations

import json
import tomllib
from functools import lru_cache
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from stream.events import TICKER_RE


class FeedConfigError(ValueError):
    """The feeds file or the feed settings cannot be used (the message names the file or setting)."""


def _ticker(value: str) -> str:
    t = value.strip().lstrip("$").upper()
    if not TICKER_RE.match(t):
        raise ValueError(f"invalid ticker {value[:12]!r}")
    return t


class FeedConfig(BaseModel):
    """One feed to poll."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    url: str = Field(description="http(s) URL of an RSS or Atom feed")
    name: str | None = Field(
        default=None, max_length=100, description="the events' source; default the URL's host name"
    )
    interval_s: float | None = Field(default=None, ge=1, description="seconds between polls of this feed")
    tickers: tuple[str, ...] = Field(default=(), description="tickers added to every entry of this feed")

    @field_validator("url")
    @classmethod
    def _http_url(cls, v: str) -> str:
        parts = urlsplit(v.strip())
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("a feed URL must be http:// or https:// with a host")
        return v.strip()

    @field_validator("tickers", mode="before")
    @classmethod
    def _tickers(cls, v: Any) -> tuple[str, ...]:
        if v is None:
            return ()
        if isinstance(v, str):
            v = [v]
        return tuple(dict.fromkeys(_ticker(str(t)) for t in v))

    @property
    def source(self) -> str:
        """The events' ``source``: the configured name, else the host (never the path or query: may hold keys)."""
        return self.name or (urlsplit(self.url).hostname or "feed")


class FeedsFile(BaseModel):
    """The contents of a feeds file: the feeds and an optional name-to-ticker map."""

    model_config = ConfigDict(extra="forbid")

    feeds: list[FeedConfig] = Field(default_factory=list)
    symbols: dict[str, str] = Field(default_factory=dict)

    @field_validator("symbols")
    @classmethod
    def _symbols(cls, v: dict[str, str]) -> dict[str, str]:
        out: dict[str, str] = {}
        for name, ticker in v.items():
            if not name.strip():
                raise ValueError("a symbol map name is empty")
            out[name.strip()] = _ticker(ticker)
        return out


def load_feeds_file(path: Path) -> FeedsFile:
    """Read a TOML (``.toml``) or JSON (any other suffix) feeds file; :class:`FeedConfigError` names what is wrong."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise FeedConfigError(f"feeds file {path}: {exc.strerror or exc}") from exc
    try:
        data = tomllib.loads(text) if Path(path).suffix.lower() == ".toml" else json.loads(text)
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as exc:
        raise FeedConfigError(f"feeds file {path}: {exc}") from exc
    try:
        return FeedsFile.model_validate(data)
    except ValidationError as exc:
        errs = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()[:5])
        raise FeedConfigError(f"feeds file {path}: {errs}") from exc


class IngestSettings(BaseSettings):
    """Which feeds, how often, and how patiently (timeouts, retries, sizes) they are fetched."""

    model_config = SettingsConfigDict(env_prefix="FINPULSE_INGEST_", env_file=None, extra="ignore")

    feeds_file: Path | None = Field(default=None, description="TOML or JSON file listing the feeds (and symbols).")
    feeds: list[FeedConfig] = Field(
        default_factory=list, description='More feeds, as a JSON list: [{"url": "...", "name": "..."}].'
    )
    symbols: dict[str, str] = Field(
        default_factory=dict, description='Company names to tickers, as JSON: {"Acme Corp": "ACME"}.'
    )
    interval_s: float = Field(default=300.0, ge=1, description="Seconds between polls of a feed without its own.")
    timeout_s: float = Field(
        default=10.0, gt=0, description="Most seconds one fetch attempt may take, connection to last byte."
    )
    connect_timeout_s: float = Field(default=5.0, gt=0, description="Most seconds to connect to a feed's server.")
    max_attempts: int = Field(default=3, ge=1, le=10, description="Attempts per poll on timeouts, 429 and 5xx.")
    backoff_initial_s: float = Field(default=1.0, ge=0, description="First wait between attempts (doubles, jittered).")
    backoff_max_s: float = Field(default=30.0, ge=0, description="Longest wait between attempts.")
    max_feed_bytes: int = Field(
        default=5 * 1024 * 1024, ge=1024, description="A feed document larger than this is refused (too_large)."
    )
    concurrency: int = Field(default=8, ge=1, le=256, description="Feeds fetched at the same time.")
    seen_retention_s: int = Field(
        default=30 * 86400,
        ge=3600,
        description="An entry id is remembered this long after it was last seen in a feed (Redis sorted set).",
    )
    kafka_timeout_s: float = Field(
        default=30.0, gt=0, description="Most seconds to wait for Kafka to acknowledge a poll's events."
    )
    user_agent: str = Field(default="finpulse-ingest/0.1 (+feed reader)", description="Sent with every request.")

    def feed_list(self) -> tuple[list[FeedConfig], dict[str, str]]:
        """The feeds (file first, then the setting; a URL listed twice is polled once) and the symbol map."""
        feeds: list[FeedConfig] = []
        symbols: dict[str, str] = {}
        if self.feeds_file is not None:
            listed = load_feeds_file(self.feeds_file)
            feeds.extend(listed.feeds)
            symbols.update(listed.symbols)
        feeds.extend(self.feeds)
        symbols.update({k.strip(): _ticker(v) for k, v in self.symbols.items()})
        by_url: dict[str, FeedConfig] = {}
        for f in feeds:
            by_url.setdefault(f.url, f)  # the first listing of a URL wins
        unique = list(by_url.values())
        if not unique:
            raise FeedConfigError("no feeds: set FINPULSE_INGEST_FEEDS_FILE (or --feeds-file) or FINPULSE_INGEST_FEEDS")
        return unique, symbols


@lru_cache(maxsize=1)
def get_ingest_settings() -> IngestSettings:
    """Process-wide ingest settings, read once from the environment."""
    return IngestSettings()
