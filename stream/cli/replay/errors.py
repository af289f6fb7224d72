"""Why a replay cannot go on: typed, so the CLI turns each into one clear line (never a traceback)."""

from __future__ import annotations


class ReplayError(Exception):
    """Base of every error a replay reports to its user."""


class MappingError(ReplayError):
    """The input's columns cannot be mapped onto an event (no text or no time column, or a flag names none)."""


class InputFormatError(ReplayError):
    """A file cannot be read: unknown format, broken compression, unreadable CSV or Parquet."""


class BadRowError(ReplayError):
    """A bad row (or an out-of-order event) stopped a ``--strict`` replay."""


class TopicRangeError(ReplayError):
    """A topic-to-topic replay cannot start: no such topic, or an empty or reversed time range."""
