"""Event, scored-event, alert and dead-letter models, and the parsing that decides which is which.

Parsing never raises: every input becomes either a valid ``NewsEvent`` or a ``Rejection`` that
names its reason, so the worker can route it and go on.
"""

from __future__ import annotations

import functools
import math
import re
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, StrictStr, ValidationError, field_validator

from engine.heads import SentimentLabel

CASHTAG_RE = re.compile(r"(?<![\w$])\$([A-Za-z][A-Za-z0-9]{0,5}(?:[.\-][A-Za-z]{1,2})?)(?![\w])")
TICKER_RE = re.compile(r"^[A-Z][A-Z0-9]{0,5}(?:[.\-][A-Z]{1,2})?$")
MAX_TICKERS = 20
# 9999-12-31T23:59:59.999Z, the last instant an ISO-8601 date (and Python's datetime) can name.
MAX_EVENT_MS = 253_402_300_799_999

RejectReason = Literal[
    "oversized_event",
    "not_utf8",
    "not_json",
    "not_object",
    "invalid_schema",
    "empty_text",
    "oversized_text",
]


def extract_cashtags(*texts: str | None) -> list[str]:
    """Tickers named as cashtags (``$AAPL``, ``$brk.b``), upper-cased, first occurrence order, no duplicates."""
    seen: dict[str, None] = {}
    for text in texts:
        if text:
            for m in CASHTAG_RE.finditer(text):
                seen.setdefault(m.group(1).upper(), None)
    return list(seen)[:MAX_TICKERS]


def parse_event_time(value: Any) -> int:
    """Event time as epoch milliseconds, from ISO-8601 (naive means UTC) or epoch ms."""
    if isinstance(value, bool):  # bool is an int subclass; True is not a timestamp
        raise ValueError("published_at must be ISO-8601 or epoch milliseconds, not a boolean")
    if isinstance(value, (int, float)):
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError("published_at must be a finite number")
        ms = int(value)
        # Epoch seconds slip through as 1970 dates; refuse rather than mis-bucket them.
        if ms < 10**11:
            raise ValueError("published_at as a number must be epoch milliseconds")
        # Past year 9999 no date can name it (and formatting it would raise): invalid, not a crash.
        if ms > MAX_EVENT_MS:
            raise ValueError("published_at is beyond the year 9999")
        return ms
    if isinstance(value, str):
        s = value.strip()
        if s.isdigit():
            return parse_event_time(int(s))
        try:
            dt = datetime.fromisoformat(s.replace("Z", "+00:00"))
        except ValueError as exc:
            raise ValueError(f"published_at {s[:40]!r} is not ISO-8601") from exc
        if dt.tzinfo is None:
            dt = dt.replace(tzinfo=UTC)
        return int(dt.timestamp() * 1000)
    raise ValueError("published_at must be ISO-8601 or epoch milliseconds")


def ms_to_iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).isoformat().replace("+00:00", "Z")


class NewsEvent(BaseModel):
    """One input event (news headline, comment, tweet)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    id: StrictStr = Field(min_length=1, max_length=256)
    text: StrictStr
    published_at: int = Field(description="event time, epoch ms")
    source: StrictStr = "unknown"
    title: StrictStr | None = None
    tickers: list[str] = Field(default_factory=list)
    author: StrictStr | None = None
    url: StrictStr | None = None
    lang: StrictStr | None = None

    @field_validator("published_at", mode="before")
    @classmethod
    def _event_time(cls, v: Any) -> int:
        return parse_event_time(v)

    @field_validator("tickers", mode="before")
    @classmethod
    def _tickers(cls, v: Any) -> list[str]:
        if v is None:
            return []
        if not isinstance(v, list) or not all(isinstance(t, str) for t in v):
            raise ValueError("tickers must be a list of strings")
        out: dict[str, None] = {}
        for t in v:
            t = t.strip().lstrip("$").upper()
            if not TICKER_RE.match(t):
                raise ValueError(f"invalid ticker {t[:12]!r}")
            out.setdefault(t, None)
        return list(out)[:MAX_TICKERS]

    @property
    def classify_text(self) -> str:
        """What the model reads: the title (when there is one) and the body."""
        return f"{self.title}. {self.text}" if self.title else self.text


def partition_key(event: NewsEvent) -> bytes:
    """The Kafka key an event is produced with by the ingesters (feeds, HTTP): its first ticker, else its id.

    Keyed by ticker, every event about one company lands on one partition, so one worker sees that
    ticker's news in the order it was sent, and a re-send of the same event (same tickers) goes where the
    original went. An event without a ticker is keyed by its id: spread evenly, and still one partition
    per event. (A very hot ticker makes a hot partition: the price of per-ticker order.)
    """
    return (event.tickers[0] if event.tickers else event.id).encode()


@dataclass(frozen=True)
class Rejection:
    """Why an input could not become an event."""

    reason: RejectReason
    detail: str


def parse_event(raw: bytes | str | None, max_event_bytes: int, max_text_bytes: int) -> NewsEvent | Rejection:
    """Validate one raw Kafka value. Tickers default to the cashtags found in title and text."""
    if raw is None:
        return Rejection("not_json", "empty message value")
    if isinstance(raw, str):
        raw = raw.encode("utf-8", "surrogatepass")
    if len(raw) > max_event_bytes:
        return Rejection("oversized_event", f"{len(raw)} bytes > limit {max_event_bytes}")
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        if isinstance(exc.__cause__, UnicodeDecodeError) or "utf-8" in str(exc).lower():
            return Rejection("not_utf8", str(exc)[:200])
        return Rejection("not_json", str(exc)[:200])
    if not isinstance(data, dict):
        return Rejection("not_object", f"top-level JSON {type(data).__name__}, expected object")
    text = data.get("text")
    if isinstance(text, str):
        if not text.strip():
            return Rejection("empty_text", "text is empty or whitespace")
        if len(text.encode("utf-8", "surrogatepass")) > max_text_bytes:
            return Rejection("oversized_text", f"text over {max_text_bytes} bytes")
    try:
        event = NewsEvent.model_validate(data)
    except ValidationError as exc:
        errs = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or '<root>'}: {e['msg']}" for e in exc.errors()[:5])
        return Rejection("invalid_schema", errs[:500])
    if not event.tickers:
        tags = extract_cashtags(event.title, event.text)
        if tags:
            event = event.model_copy(update={"tickers": tags})
    return event


class InputEvent:
    """A valid input event as the worker's hot path carries it: the fields it uses, nothing per field to validate.

    :class:`NewsEvent` stays the one schema of an input event (the API, the ingesters and replay validate
    with it, and it documents the format); :func:`decode_event` is its compiled fast path, accepting
    exactly what :func:`parse_event` accepts with the same result (tests compare them input for input),
    and building this small object instead of a pydantic model (about 5 us each at 10,000 events/s).
    """

    __slots__ = ("id", "text", "published_at", "source", "title", "tickers")

    def __init__(
        self, id: str, text: str, published_at: int, source: str, title: str | None, tickers: list[str]
    ) -> None:
        self.id = id
        self.text = text
        self.published_at = published_at
        self.source = source
        self.title = title
        self.tickers = tickers

    @classmethod
    def from_news(cls, e: NewsEvent) -> InputEvent:
        return cls(e.id, e.text, e.published_at, e.source, e.title, list(e.tickers))

    @property
    def classify_text(self) -> str:
        """What the model reads: the title (when there is one) and the body (as :attr:`NewsEvent.classify_text`)."""
        return f"{self.title}. {self.text}" if self.title else self.text

    def __repr__(self) -> str:
        return f"InputEvent(id={self.id!r}, published_at={self.published_at}, tickers={self.tickers!r})"


_OPTIONAL_STR = ("title", "author", "url", "lang")
# Ticker spellings already seen -> normalised form: most events name a few hundred tickers at most.
_TICKERS: dict[str, str] = {}
_TICKER_CACHE_MAX = 50_000


def _normalise_ticker(t: object) -> str | None:
    """NewsEvent's ticker rule for one item (None when invalid), remembered for the next event."""
    if type(t) is not str:
        return None
    norm = t.strip().lstrip("$").upper()
    if not TICKER_RE.match(norm):
        return None
    if len(_TICKERS) >= _TICKER_CACHE_MAX:
        _TICKERS.clear()
    _TICKERS[t] = norm
    return norm


_EPOCH_ORDINAL = date(1970, 1, 1).toordinal()


@functools.lru_cache(maxsize=4096)
def _day_ms(day: str) -> int | None:
    """Epoch ms of a ``YYYY-MM-DD`` day at 00:00 UTC (the parser ``datetime.fromisoformat`` uses for the
    date part), or None when it is no valid date."""
    try:
        return (date.fromisoformat(day).toordinal() - _EPOCH_ORDINAL) * 86_400_000
    except ValueError:
        return None


def _iso_z_ms(s: str) -> int | None:
    """``YYYY-MM-DDTHH:MM:SSZ`` (the usual form) as epoch ms, exactly as :func:`parse_event_time` reads it;
    None for any other form or an invalid value (the caller then asks parse_event_time)."""
    if s[10] != "T" or s[13] != ":" or s[16] != ":" or s[19] != "Z":
        return None
    hh, mm, ss = s[11:13], s[14:16], s[17:19]
    if not (hh.isdigit() and mm.isdigit() and ss.isdigit() and hh.isascii() and mm.isascii() and ss.isascii()):
        return None
    h, m, sec = int(hh), int(mm), int(ss)
    if h > 23 or m > 59 or sec > 59:
        return None
    day = _day_ms(s[:10]) if s[4] == "-" and s[7] == "-" else None
    return None if day is None else day + h * 3_600_000 + m * 60_000 + sec * 1000


def decode_event(raw: bytes, max_event_bytes: int, max_text_bytes: int) -> InputEvent | None:
    """The fast path of :func:`parse_event` for one raw value: an :class:`InputEvent`, or None when the
    input is not a plainly valid event (the caller then asks :func:`parse_event`, which names the reason).

    orjson plus a few checks, each the rule a :class:`NewsEvent` field applies: anything unusual falls
    back rather than being judged here, so dead-letter reasons and details stay exactly parse_event's.
    Never raises.
    """
    if len(raw) > max_event_bytes:
        return None
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    if type(data) is not dict:
        return None
    eid = data.get("id")
    text = data.get("text")
    if type(eid) is not str or type(text) is not str or not 0 < len(eid) <= 256 or not text.strip():
        return None
    # A JSON string never decodes to more UTF-8 bytes than its literal took, so a small input needs no count.
    if len(raw) > max_text_bytes and len(text.encode("utf-8", "surrogatepass")) > max_text_bytes:
        return None
    source = data.get("source", "unknown")
    if type(source) is not str:
        return None
    for name in _OPTIONAL_STR:
        v = data.get(name)
        if v is not None and type(v) is not str:
            return None
    if "published_at" not in data:
        return None
    when = data["published_at"]
    published_at = _iso_z_ms(when) if type(when) is str and len(when) == 20 else None
    if published_at is None:
        try:
            published_at = parse_event_time(when)
        except (ValueError, TypeError, OverflowError):
            return None
    title = data.get("title")
    raw_tickers = data.get("tickers")
    tickers: list[str] = []
    if type(raw_tickers) is list:
        for t in raw_tickers:
            norm = _TICKERS.get(t) if type(t) is str else None
            if norm is None:
                norm = _normalise_ticker(t)
                if norm is None:
                    return None
            if norm not in tickers:
                tickers.append(norm)
        del tickers[MAX_TICKERS:]
    elif raw_tickers is not None:
        return None
    if not tickers:
        tickers = extract_cashtags(title, text)
    return InputEvent(eid, text, published_at, source, title, tickers)


def decode_event_or_reject(raw: bytes | None, max_event_bytes: int, max_text_bytes: int) -> InputEvent | Rejection:
    """:func:`decode_event`, falling back to :func:`parse_event` for whatever the fast path does not accept."""
    if raw is not None and not isinstance(raw, str):
        fast = decode_event(raw, max_event_bytes, max_text_bytes)
        if fast is not None:
            return fast
    parsed = parse_event(raw, max_event_bytes, max_text_bytes)
    return parsed if isinstance(parsed, Rejection) else InputEvent.from_news(parsed)


class DeadLetter(BaseModel):
    """What goes to the dead-letter topic: the original bytes (base64 and, when decodable, text) and why."""

    reason: str
    detail: str
    topic: str
    partition: int
    offset: int
    key: str | None = None
    value_b64: str | None = Field(
        default=None, description="The original bytes, base64 (None when FINPULSE_DLQ_KEEP_RAW is off)."
    )
    value_preview: str | None = Field(
        default=None, description="The first FINPULSE_DLQ_PREVIEW_CHARS characters when the bytes are UTF-8 text."
    )
    received_at: str


WindowStatus = Literal["counted", "duplicate", "late"]


class SentimentScore(BaseModel):
    """The sentiment part of a scored record: the winning label and all three probabilities."""

    model_config = ConfigDict(frozen=True)

    label: SentimentLabel
    probs: dict[SentimentLabel, float]


class TopicScore(BaseModel):
    """The topic part of a scored record: the winning label and its probability."""

    model_config = ConfigDict(frozen=True)

    label: str
    prob: float


class ScoredEvent(BaseModel):
    """One classified event as written to the scored topic (keyed by event id): the one definition of that record.

    The worker builds it and serialises it with :meth:`to_json`; consumers read it back with
    :func:`parse_scored`. ``topic`` is ``None`` for a model without a topic head.
    """

    model_config = ConfigDict(frozen=True)

    id: str
    tickers: list[str]
    source: str
    published_at: int = Field(description="event time, epoch ms")
    published_at_iso: str
    processed_at: str = Field(description="when the worker scored it, ISO-8601 UTC")
    sentiment: SentimentScore
    topic: TopicScore | None
    score: float = Field(description="P(positive) - P(negative)")
    model_id: str
    backend: str
    window_status: WindowStatus
    novelty: float | None = Field(
        default=None,
        description="1 - estimated similarity to the most similar earlier event within the novelty horizon "
        "(1.0: nothing like it; 0.0: the same story again); null when novelty is off",
    )
    duplicate_of: str | None = Field(
        default=None, description="id of the earlier event this one repeats (a near-duplicate), else null"
    )

    def to_json(self) -> bytes:
        """The Kafka record value (JSON, fields in declaration order)."""
        # pydantic-core serialises straight to JSON: cheaper than model_dump() plus orjson (measured).
        return self.model_dump_json().encode()


def parse_scored(raw: bytes | str) -> ScoredEvent:
    """A scored-topic record value as a :class:`ScoredEvent`; ``pydantic.ValidationError`` when it is not one."""
    return ScoredEvent.model_validate_json(raw)


EXAMPLE_TEXT_CHARS = 200  # how much of an event's text an alert quotes


def example_text(text: str, limit: int = EXAMPLE_TEXT_CHARS) -> str:
    """An event's text as an alert quotes it: whitespace collapsed, cut to ``limit`` characters."""
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1].rstrip() + "\u2026"


class AlertExample(BaseModel):
    """One negative event behind an alert: its id and its words (title and text, cut short; never the author)."""

    id: str
    text: str | None = None


class TopicCount(BaseModel):
    """A topic behind a ticker alert, with its negative events in the alert window."""

    topic: str
    negative: int


class Alert(BaseModel):
    """A negative-sentiment surge on one entity (ticker or topic)."""

    id: str
    rule: str
    entity_kind: str
    entity: str
    window_start: int
    window_end: int
    window_start_iso: str
    window_end_iso: str
    observed_share: float
    baseline_share: float
    count: int
    negative: int
    baseline_count: int
    counts: Literal["novel", "all"] = Field(
        default="all",
        description="which events count, negative and baseline_count (and the shares) are of: novel events only "
        "(near-duplicates of an earlier story left out), or all",
    )
    z: float
    ratio: float
    severity: Literal["warning", "critical"]
    example_event_ids: list[str]
    examples: list[AlertExample] = Field(default_factory=list, description="up to 3 negative events, with text")
    top_topics: list[TopicCount] = Field(
        default_factory=list, description="ticker alerts: topics of the window's negative events, most first"
    )
    model_id: str
    raised_at: str
