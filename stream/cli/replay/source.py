"""From input rows to finpulse events: times, ids, tickers, bad rows, time order, multi-ticker merge.

The pipeline for one file: rows (file order) -> one candidate per row (bad rows counted by reason)
-> a bounded sort buffer (time order) -> rows of one time and one id merged (a StockNet tweet naming
several tickers is one row per ticker) -> each event checked with :class:`stream.events.NewsEvent`.
A folder is its files' ordered streams merged by event time. Memory is bounded by the sort buffer,
never by the file.
"""

from __future__ import annotations

import email.utils
import hashlib
import heapq
import math
import re
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, tzinfo
from functools import lru_cache
from pathlib import Path
from typing import IO, Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import orjson
from pydantic import ValidationError

from stream import security
from stream.cli.replay.errors import BadRowError, ReplayError
from stream.cli.replay.formats import BadLine, RowSource, folder_files, format_of
from stream.cli.replay.mapping import ColumnFlags, ColumnMapping, choose_mapping
from stream.events import NewsEvent, ms_to_iso
from stream.settings import get_settings

DEFAULT_SORT_BUFFER = 10_000
DEFAULT_BAD_SAMPLE = 100
# Already a keyed pseudonym (an export of finpulse events replayed again): sent as is. The old unkeyed
# form (u_ + 12 hex, before issue 14) is not trusted: it is keyed again like any other author.
PSEUDONYM_RE = security.PSEUDONYM_RE
_TICKER_SPLIT = re.compile(r"[,;|\s]+")
# Beyond these, a clock is broken (or the number is not a time): a bad row, not a 1970 or 5138 date.
MIN_MS = 0
MAX_MS = 253_402_300_799_999
# Time formats fromisoformat does not read: Twitter's API, and slashes.
_EXTRA_TIME_FORMATS = ("%a %b %d %H:%M:%S %z %Y", "%Y/%m/%d %H:%M:%S", "%Y/%m/%d %H:%M", "%Y/%m/%d")


@lru_cache(maxsize=1)
def _process_key() -> bytes:
    return security.pseudonym_key(get_settings())


def pseudonymise(user_id: str, key: bytes | None = None) -> str:
    """The author as sent: a keyed pseudonym (HMAC, ``FINPULSE_PSEUDONYM_KEY``), so the raw user id never
    leaves this process and nobody without the key can match a pseudonym to a known user id.

    Migration (issue 14): pseudonyms were ``u_`` + an unkeyed SHA-256 (48 bits) before; they are now ``p_`` +
    80 bits of HMAC-SHA256, so every author's pseudonym changed, and so did the derived id of events
    without an id column (see :func:`derive_id`).
    """
    return security.pseudonymise(user_id, key if key is not None else _process_key())


def resolve_tz(name: str | None) -> tzinfo:
    """``--tz``: an IANA zone name (``America/New_York``) or ``UTC``; naive input times are read in it."""
    if not name or name.upper() in ("UTC", "Z"):
        return UTC
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ReplayError(f"unknown time zone {name!r}: use an IANA name such as UTC or America/New_York") from exc


def _epoch_ms(x: float) -> int:
    # A bare number's unit is told by its size: seconds up to 1e11 (year 5138), then ms, µs, ns.
    # Below 1e8 s (1973) a number is a count or a code more likely than a time.
    a = abs(x)
    if a < 1e8:
        raise ValueError(f"{x!r} is too small to be an epoch time")
    if a < 1e11:
        return round(x * 1000)
    if a < 1e14:
        return round(x)
    if a < 1e17:
        return round(x / 1000)
    return round(x / 1_000_000)


def parse_input_time(value: Any, tz: tzinfo = UTC) -> int:
    """An input time as epoch ms (UTC): ISO-8601 or other common text forms, epoch numbers, datetimes.

    Timezone-aware values keep their offset; naive ones are read in ``tz``. Raises ``ValueError``.
    """
    if value is None or isinstance(value, bool):
        raise ValueError("no time")
    if isinstance(value, (int, float)):
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError("time is not a finite number")
        ms = _epoch_ms(value)
    elif isinstance(value, datetime):
        dt = value if value.tzinfo is not None else value.replace(tzinfo=tz)
        ms = int(dt.timestamp() * 1000)
    elif isinstance(value, date):
        ms = int(datetime.combine(value, time(), tzinfo=tz).timestamp() * 1000)
    elif isinstance(value, str):
        s = value.strip()
        if not s:
            raise ValueError("empty time")
        if s.isdigit() or (s[0] in "+-" and s[1:].isdigit()):
            return parse_input_time(int(s), tz)
        try:
            return parse_input_time(datetime.fromisoformat(s), tz)  # the common case, first
        except ValueError:
            pass
        try:
            return parse_input_time(float(s), tz)
        except ValueError:
            pass
        return parse_input_time(_parse_time_text(s), tz)
    else:
        raise ValueError(f"a {type(value).__name__} is not a time")
    if not MIN_MS <= ms <= MAX_MS:
        raise ValueError(f"time {value!r} is out of range")
    return ms


def _parse_time_text(s: str) -> datetime:
    t = s
    for suffix in (" UTC", " GMT", " Z"):
        if t.upper().endswith(suffix):
            t = t[: -len(suffix)] + "+00:00"
            break
    try:
        return datetime.fromisoformat(t.replace("Z", "+00:00"))
    except ValueError:
        pass
    for fmt in _EXTRA_TIME_FORMATS:
        try:
            return datetime.strptime(t, fmt)
        except ValueError:
            continue
    try:
        return email.utils.parsedate_to_datetime(s)  # RFC 2822, as in RSS feeds
    except (TypeError, ValueError, IndexError):
        pass
    raise ValueError(f"{s[:40]!r} is not a time")


def derive_id(text: str, title: str | None, author: str | None, ms: int) -> str:
    """A stable id for an input without one: the same content at the same time is the same event.

    Tickers are left out on purpose: a headline listed once per ticker becomes one event with all of them.
    """
    # ``author`` is the pseudonym, never the raw user id: the id is sent beside the title, text and time,
    # so hashing the raw id into it would let anyone test candidate user ids against it.
    h = hashlib.sha256("\x1f".join((title or "", text, author or "", str(ms))).encode("utf-8", "surrogatepass"))
    return "h_" + h.hexdigest()[:24]


def parse_tickers(value: Any) -> list[str]:
    """Tickers from a list or from text (``AAPL``, ``AAPL,MSFT``, ``['AAPL', 'MSFT']``, ``$aapl``), upper-cased."""
    if value is None:
        return []
    items = value if isinstance(value, (list, tuple)) else _TICKER_SPLIT.split(str(value).strip("[](){} \t"))
    out: dict[str, None] = {}
    for item in items:
        if item is None:
            continue
        t = str(item).strip().strip("'\"").strip().lstrip("$").upper()
        if t:
            out.setdefault(t, None)
    return list(out)


def _text(value: Any) -> str | None:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return value if isinstance(value, str) else str(value)


@dataclass
class ReplayReport:
    """What a replay read and skipped: bad rows by reason, order, merges. Optionally samples bad rows to a file."""

    strict: bool = False
    bad_rows_out: IO[bytes] | None = None
    bad_sample: int = DEFAULT_BAD_SAMPLE
    rows: int = 0
    events: int = 0
    merged_rows: int = 0
    reordered: int = 0
    out_of_order: int = 0
    bad: Counter[str] = field(default_factory=Counter)
    first_ms: int | None = None
    last_ms: int | None = None
    _sampled: int = 0

    def bad_row(
        self, reason: str, detail: str, file: Path, where: str, row: dict[str, Any] | str | None = None
    ) -> None:
        """Count a skipped row (and sample it); under ``strict``, stop the replay instead."""
        self.bad[reason] += 1
        if self.bad_rows_out is not None and self._sampled < self.bad_sample:
            self._sampled += 1
            rec = {"reason": reason, "detail": detail, "file": str(file), "where": where, "row": row}
            self.bad_rows_out.write(orjson.dumps(rec, default=str) + b"\n")
        if self.strict:
            raise BadRowError(f"{file}: {where}: {reason}: {detail} (--strict)")

    def late(self, file: Path, where: str, ms: int, behind_ms: int) -> None:
        """An event older than one already sent: beyond the sort buffer. Sent anyway, counted (strict: stop)."""
        self.out_of_order += 1
        if self.strict:
            raise BadRowError(
                f"{file}: {where}: out of time order by {behind_ms / 1000:.0f}s ({ms_to_iso(ms)}), beyond the "
                "sort buffer: sort the input or raise --sort-buffer (--strict)"
            )

    def as_dict(self) -> dict[str, Any]:
        """The report as the CLI prints it."""
        return {
            "rows": self.rows,
            "events": self.events,
            "merged_rows": self.merged_rows,
            "bad_rows": dict(sorted(self.bad.items())),
            "reordered": self.reordered,
            "out_of_order": self.out_of_order,
            "first_event": ms_to_iso(self.first_ms) if self.first_ms is not None else None,
            "last_event": ms_to_iso(self.last_ms) if self.last_ms is not None else None,
        }


@dataclass
class _Candidate:
    """One row made into an event, before the multi-ticker merge and the final check."""

    ms: int
    event: dict[str, Any]
    file: Path
    where: str


@dataclass(frozen=True)
class ReplayOptions:
    """How files are read: columns, format, time zone, range, order buffer, strictness."""

    flags: ColumnFlags = ColumnFlags()
    fmt: str | None = None
    tz: str | None = None
    default_source: str | None = None
    since: str | None = None
    until: str | None = None
    limit: int | None = None
    sort_buffer: int = DEFAULT_SORT_BUFFER


class ReplaySource:
    """The events of a file or a folder of files, in event-time order, streamed.

    The mappings are chosen when this is built, so a file that cannot be mapped fails before
    anything is sent. Iterate to get event dicts (the JSON the input topic takes), each valid as a
    :class:`stream.events.NewsEvent`.
    """

    def __init__(self, path: Path, options: ReplayOptions | None = None, report: ReplayReport | None = None) -> None:
        self.path = path
        self.options = options or ReplayOptions()
        self.report = report or ReplayReport()
        self.tz = resolve_tz(self.options.tz)
        self.since_ms = self._bound(self.options.since, "since")
        self.until_ms = self._bound(self.options.until, "until")
        files = folder_files(path) if path.is_dir() else [path]
        self.sources: list[tuple[RowSource, ColumnMapping]] = []
        for f in files:
            src = RowSource(f, format_of(f, self.options.fmt))
            mapping = choose_mapping(src.columns, self.options.flags, self.options.default_source, where=str(f))
            self.sources.append((src, mapping))

    def _bound(self, value: str | None, name: str) -> int | None:
        if not value:
            return None
        try:
            return parse_input_time(value, self.tz)
        except ValueError as exc:
            raise ReplayError(f"--{name} {value!r}: {exc}") from exc

    def describe(self) -> list[str]:
        """The mapping chosen, one line per distinct mapping (naming the files when they differ)."""
        by_mapping: dict[str, list[str]] = {}
        for src, m in self.sources:
            by_mapping.setdefault(f"{src.fmt}: {m.describe()}", []).append(src.path.name)
        if len(by_mapping) == 1:
            (line,) = by_mapping
            n = len(self.sources)
            return [f"mapping ({n} files) {line}" if n > 1 else f"mapping {line}"]
        return [f"mapping for {', '.join(names)}: {line}" for line, names in by_mapping.items()]

    def __iter__(self) -> Iterator[dict[str, Any]]:
        streams = [self._ordered(self._candidates(src, m)) for src, m in self.sources]
        merged = streams[0] if len(streams) == 1 else heapq.merge(*streams, key=lambda c: c.ms)
        limit = self.options.limit
        if limit is not None and limit <= 0:
            return
        sent = 0
        for cand in self._merge_same_event(merged):
            try:
                NewsEvent.model_validate(cand.event)
            except ValidationError as exc:
                errs = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()[:3])
                self.report.bad_row("invalid_event", errs[:300], cand.file, cand.where, cand.event)
                continue
            sent += 1
            r = self.report
            r.events += 1
            r.first_ms = cand.ms if r.first_ms is None else min(r.first_ms, cand.ms)
            r.last_ms = cand.ms if r.last_ms is None else max(r.last_ms, cand.ms)
            yield cand.event
            if limit is not None and sent >= limit:
                return

    def _candidates(self, src: RowSource, m: ColumnMapping) -> Iterator[_Candidate]:
        wanted = {c for c in (m.text, m.time, m.id, m.tickers, m.title, m.source, m.author, m.lang, m.url) if c}
        report, tz, since = self.report, self.tz, self.since_ms
        for row in src.rows(wanted):
            report.rows += 1
            if isinstance(row, BadLine):
                report.bad_row(row.reason, row.detail, src.path, row.where, row.raw)
                continue
            v = row.values
            try:
                ms = parse_input_time(v.get(m.time), tz)
            except ValueError as exc:
                report.bad_row("bad_time", str(exc), src.path, row.where, self._sample(v, m))
                continue
            text = _text(v.get(m.text))
            if text is None or not text.strip():
                report.bad_row("empty_text", f"column {m.text!r} is empty", src.path, row.where, self._sample(v, m))
                continue
            if since is not None and ms < since:
                continue
            yield _Candidate(ms, self._event(v, m, ms, text), src.path, row.where)

    @staticmethod
    def _sample(values: dict[str, Any], m: ColumnMapping) -> dict[str, Any]:
        out = {k: (v[:500] if isinstance(v, str) else v) for k, v in values.items() if k is not None}
        if m.author and out.get(m.author) is not None:
            out[m.author] = pseudonymise(str(out[m.author]))  # a bad-row sample is a log: no raw user ids
        return out

    @staticmethod
    def _event(v: dict[str, Any], m: ColumnMapping, ms: int, text: str) -> dict[str, Any]:
        # Field order and presence as the StockNet replay always sent them: id, text, published_at,
        # source, tickers, author, lang; title and url only where the input has them.
        title = _text(v.get(m.title)) if m.title else None
        raw_author = _text(v.get(m.author)) if m.author else None
        author = None
        if raw_author and raw_author.strip():
            author = raw_author if PSEUDONYM_RE.match(raw_author) else pseudonymise(raw_author)
        raw_id = _text(v.get(m.id)) if m.id else None
        ev: dict[str, Any] = {
            "id": raw_id.strip() if raw_id and raw_id.strip() else derive_id(text, title, author, ms),
            "text": text,
            "published_at": ms_to_iso(ms),
            "source": (_text(v.get(m.source)) if m.source else None) or m.default_source,
        }
        if m.title:
            ev["title"] = title or None
        if m.tickers:
            ev["tickers"] = parse_tickers(v.get(m.tickers))
        if m.author:
            ev["author"] = author
        if m.lang:
            ev["lang"] = _text(v.get(m.lang)) or None
        if m.url:
            ev["url"] = _text(v.get(m.url)) or None
        return ev

    def _ordered(self, cands: Iterable[_Candidate]) -> Iterator[_Candidate]:
        """Time order within a bounded buffer; an event older than one already let out is late (reported)."""
        size = max(1, self.options.sort_buffer)
        report, until = self.report, self.until_ms
        heap: list[tuple[int, int, _Candidate]] = []
        last_out: int | None = None
        max_in: int | None = None
        for seq, c in enumerate(cands):
            if max_in is not None and c.ms < max_in:
                report.reordered += 1
            max_in = c.ms if max_in is None else max(max_in, c.ms)
            if last_out is not None and c.ms < last_out:
                report.late(c.file, c.where, c.ms, last_out - c.ms)
                yield c
                continue
            heapq.heappush(heap, (c.ms, seq, c))
            if len(heap) > size:
                ms, _, out = heapq.heappop(heap)
                if until is not None and ms >= until:
                    return  # in time order from here on: nothing later can fall before --until
                last_out = ms
                yield out
        while heap:
            ms, _, out = heapq.heappop(heap)
            if until is not None and ms >= until:
                return
            yield out

    def _merge_same_event(self, cands: Iterable[_Candidate]) -> Iterator[_Candidate]:
        # One event listed once per ticker shares its id and time: merge the rows of each time by id,
        # in order of first appearance (the rows need not be adjacent within the second).
        group: dict[str, _Candidate] = {}
        current: int | None = None
        for c in cands:
            if c.ms != current:
                yield from group.values()
                group = {}
                current = c.ms
            first = group.get(c.event["id"])
            if first is None:
                group[c.event["id"]] = c
                continue
            self.report.merged_rows += 1
            if "tickers" in c.event:
                tickers = first.event.setdefault("tickers", [])
                for t in c.event["tickers"]:
                    if t not in tickers:
                        tickers.append(t)
        yield from group.values()


def read_events(
    path: Path,
    since: str | None = None,
    until: str | None = None,
    limit: int | None = None,
    *,
    options: ReplayOptions | None = None,
    report: ReplayReport | None = None,
) -> list[dict[str, Any]]:
    """The events of a file or folder as a list, in time order (for tests, benchmarks and the demo).

    ``since``/``until``/``limit`` override those of ``options``. The CLI streams :class:`ReplaySource`
    instead, so a large file is never held in memory.
    """
    base = options or ReplayOptions()
    opts = ReplayOptions(
        flags=base.flags,
        fmt=base.fmt,
        tz=base.tz,
        default_source=base.default_source,
        since=since if since is not None else base.since,
        until=until if until is not None else base.until,
        limit=limit if limit is not None else base.limit,
        sort_buffer=base.sort_buffer,
    )
    return list(ReplaySource(path, opts, report))
