"""Which input column feeds which event field: named by flags, or recognised from common names."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields

from stream.cli.replay.errors import MappingError

# Recognised column names, best first, compared case-insensitively. Text falls back to a headline or
# title column (a headline file has nothing else); time and tickers are the names the issue lists.
TEXT_NAMES = ("text", "body", "content", "tweet", "message", "summary")
HEADLINE_NAMES = ("title", "headline")
TIME_NAMES = ("published_at", "created_at", "date", "timestamp", "datetime", "time")
TICKER_NAMES = ("tickers", "ticker", "stock", "symbol", "symbols", "stocks")
ID_NAMES = ("id", "event_id", "tweet_id", "news_id", "uuid")
SOURCE_NAMES = ("source",)
AUTHOR_NAMES = ("author", "user_id", "user", "username", "screen_name")
LANG_NAMES = ("lang", "language")
URL_NAMES = ("url", "link")

FLAG_FOR = {
    "text": "--text",
    "time": "--time",
    "id": "--id",
    "tickers": "--tickers",
    "title": "--title",
    "source": "--source",
    "author": "--author",
}


@dataclass(frozen=True)
class ColumnFlags:
    """Columns named explicitly (``--text`` and the others); ``None`` means "recognise it"."""

    text: str | None = None
    time: str | None = None
    id: str | None = None
    tickers: str | None = None
    title: str | None = None
    source: str | None = None
    author: str | None = None

    def any(self) -> bool:
        """Whether any column was named."""
        return any(getattr(self, f.name) for f in fields(self))


@dataclass(frozen=True)
class ColumnMapping:
    """The columns one input file is read with. Only ``text`` and ``time`` are required."""

    text: str
    time: str
    id: str | None = None
    tickers: str | None = None
    title: str | None = None
    source: str | None = None
    author: str | None = None
    lang: str | None = None
    url: str | None = None
    default_source: str = "unknown"

    def describe(self) -> str:
        """One line for the user: each field and its column, what is derived, the default source."""
        parts = [f"text={self.text}", f"time={self.time}"]
        parts.append(f"id={self.id}" if self.id else "id=(derived from text, author and time)")
        parts.append(f"tickers={self.tickers}" if self.tickers else "tickers=(cashtags in the text)")
        for name in ("title", "author", "lang", "url"):
            col = getattr(self, name)
            if col:
                parts.append(f"{name}={col}")
        parts.append(f"source={self.source}" if self.source else f"source={self.default_source!r}")
        return " ".join(parts)


def _find(columns: Sequence[str], names: Sequence[str], exclude: set[str]) -> str | None:
    by_lower: dict[str, str] = {}
    for c in columns:
        by_lower.setdefault(c.strip().lower(), c)
    for n in names:
        col = by_lower.get(n)
        if col is not None and col not in exclude:
            return col
    return None


def choose_mapping(
    columns: Sequence[str], flags: ColumnFlags | None = None, default_source: str | None = None, where: str = "input"
) -> ColumnMapping:
    """The mapping for a file with ``columns``: the flags first, then the recognised names.

    Raises :class:`MappingError` naming the columns found and the flags to use when a flag names a
    column that is not there, or when no text or no time column can be found.
    """
    flags = flags or ColumnFlags()
    found = ", ".join(repr(c) for c in columns) or "none"
    for name in FLAG_FOR:
        col = getattr(flags, name)
        if col is not None and col not in columns:
            raise MappingError(f"{where}: {FLAG_FOR[name]} {col!r} is not a column; columns found: {found}")
    used = {c for c in (getattr(flags, f.name) for f in fields(flags)) if c}

    def pick(explicit: str | None, names: Sequence[str]) -> str | None:
        if explicit:
            return explicit
        col = _find(columns, names, used)
        if col is not None:
            used.add(col)
        return col

    time_col = pick(flags.time, TIME_NAMES)
    id_col = pick(flags.id, ID_NAMES)
    tickers_col = pick(flags.tickers, TICKER_NAMES)
    text_col = pick(flags.text, TEXT_NAMES)
    title_col = pick(flags.title, HEADLINE_NAMES)
    headline_only = False
    if text_col is None and title_col is not None and flags.title is None:
        # A headline file (``,title,date,stock``): the headline is the text, not a title over nothing.
        text_col, title_col, headline_only = title_col, None, True
    missing = [name for name, col in (("text", text_col), ("time", time_col)) if col is None]
    if missing:
        need = " and ".join(f"{FLAG_FOR[m]} COLUMN" for m in missing)
        raise MappingError(
            f"{where}: no {' or '.join(missing)} column recognised among the columns found: {found}; "
            f"name it with {need} (also --id, --tickers, --title, --source, --author)"
        )
    assert text_col is not None and time_col is not None
    source_col = pick(flags.source, SOURCE_NAMES)
    author_col = pick(flags.author, AUTHOR_NAMES)
    if default_source is None:
        lowered = {c.strip().lower() for c in columns}
        if "tweet_id" in lowered or text_col.strip().lower() == "tweet":
            default_source = "tweet"
        elif headline_only or title_col is not None:
            default_source = "news"
        else:
            default_source = "unknown"
    return ColumnMapping(
        text=text_col,
        time=time_col,
        id=id_col,
        tickers=tickers_col,
        title=title_col,
        source=source_col,
        author=author_col,
        lang=pick(None, LANG_NAMES),
        url=pick(None, URL_NAMES),
        default_source=default_source,
    )
