"""Replay a historical stream into the input topic through the same path live events take.

Inputs: CSV, TSV, JSONL or Parquet files (plain, gzip or zstd), or a folder of them, with their
columns named by flags or recognised (:mod:`.mapping`), read as a stream (:mod:`.formats`) and made
into events in time order (:mod:`.source`); or a time range of an existing topic, copied byte for
byte (:func:`.kafka.topic_range`). Sending is paced by event time or a fixed rate (:func:`.kafka.produce`).

The StockNet CSV layout (``created_at,ticker,tweet_id,user_id,lang,text``; a tweet naming several
tickers appears once per ticker and becomes one event with all of them) and JSONL files of finpulse
events are read exactly as before. Authors are pseudonymised before they leave this process: the
raw user id is never sent or logged. The worker never imports this package.
"""

from __future__ import annotations

from stream.cli.replay.errors import BadRowError, InputFormatError, MappingError, ReplayError, TopicRangeError
from stream.cli.replay.kafka import RawRecord, ReplayStats, parse_when, produce, topic_range
from stream.cli.replay.mapping import ColumnFlags, ColumnMapping, choose_mapping
from stream.cli.replay.source import (
    ReplayOptions,
    ReplayReport,
    ReplaySource,
    derive_id,
    parse_input_time,
    pseudonymise,
    read_events,
)

__all__ = [
    "BadRowError",
    "ColumnFlags",
    "ColumnMapping",
    "InputFormatError",
    "MappingError",
    "RawRecord",
    "ReplayError",
    "ReplayOptions",
    "ReplayReport",
    "ReplaySource",
    "ReplayStats",
    "TopicRangeError",
    "choose_mapping",
    "derive_id",
    "parse_input_time",
    "parse_when",
    "produce",
    "pseudonymise",
    "read_events",
    "topic_range",
]
