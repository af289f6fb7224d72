"""Reading rows from CSV, TSV, JSONL and Parquet files, plain or gzip/zstd-compressed, one row at a time.

Nothing here loads a whole file: text formats are decoded line by line from a (decompressing)
stream, Parquet is read a record batch at a time. A compressed Parquet file (``.parquet.zst``) is
first decompressed to a temporary file on disk, since Parquet needs to seek to its footer.
"""

from __future__ import annotations

import csv
import gzip
import io
import shutil
import sys
import tempfile
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Literal, cast

import orjson
import zstandard

from stream.cli.replay.errors import InputFormatError

Format = Literal["csv", "tsv", "jsonl", "parquet"]
FORMATS: tuple[Format, ...] = ("csv", "tsv", "jsonl", "parquet")
SUFFIX_FORMAT: dict[str, Format] = {
    ".csv": "csv",
    ".tsv": "tsv",
    ".tab": "tsv",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "jsonl",
    ".parquet": "parquet",
    ".pq": "parquet",
}
COMPRESSION_SUFFIXES = (".gz", ".gzip", ".zst", ".zstd")
GZIP_MAGIC = b"\x1f\x8b"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
PARQUET_BATCH_ROWS = 2048
JSONL_PEEK_LINES = 50
# What reading a broken file raises (gzip's BadGzipFile is an OSError, pyarrow's ArrowInvalid a ValueError).
READ_ERRORS = (OSError, EOFError, csv.Error, ValueError, zstandard.ZstdError)
# Python's csv refuses fields over 128 KiB by default; a long article is a legitimate text (the
# worker dead-letters oversized ones with a reason), so allow up to 64 MiB per field.
csv.field_size_limit(min(sys.maxsize, 64 * 1024 * 1024))


@dataclass(frozen=True)
class Row:
    """One input row: its values by column, and where it is (``line 12`` / ``row 7``) for reports."""

    values: dict[str, Any]
    where: str


@dataclass(frozen=True)
class BadLine:
    """A line that is not a row at all (a JSONL line that is not a JSON object)."""

    reason: str
    detail: str
    where: str
    raw: str


def format_of(path: Path, override: str | None = None) -> Format:
    """The format of ``path`` from its suffix (ignoring ``.gz``/``.zst``), or ``override``."""
    if override:
        if override not in FORMATS:
            raise InputFormatError(f"unknown format {override!r}: use one of {', '.join(FORMATS)}")
        return override
    suffixes = [s.lower() for s in path.suffixes]
    while suffixes and suffixes[-1] in COMPRESSION_SUFFIXES:
        suffixes.pop()
    fmt = SUFFIX_FORMAT.get(suffixes[-1]) if suffixes else None
    if fmt is None:
        raise InputFormatError(
            f"{path}: cannot tell the format from the name: use --format ({', '.join(FORMATS)}), "
            "or name it .csv, .tsv, .jsonl or .parquet (optionally .gz or .zst)"
        )
    return fmt


def is_replayable(path: Path) -> bool:
    """Whether a folder entry is a file replay reads (a known suffix, not hidden)."""
    if not path.is_file() or path.name.startswith((".", "_")):
        return False
    try:
        format_of(path)
    except InputFormatError:
        return False
    return True


def folder_files(folder: Path) -> list[Path]:
    """The replayable files directly in ``folder``, by name."""
    files = sorted(p for p in folder.iterdir() if is_replayable(p))
    if not files:
        raise InputFormatError(
            f"{folder}: no .csv, .tsv, .jsonl or .parquet files (optionally .gz or .zst) in this folder"
        )
    return files


@contextmanager
def open_binary(path: Path) -> Iterator[IO[bytes]]:
    """``path`` as a binary stream, decompressed on the fly when it starts with a gzip or zstd header."""
    with ExitStack() as stack:
        raw = stack.enter_context(open(path, "rb"))
        magic = raw.read(4)
        raw.seek(0)
        if magic.startswith(GZIP_MAGIC):
            yield cast(IO[bytes], stack.enter_context(gzip.GzipFile(fileobj=raw, mode="rb")))
        elif magic.startswith(ZSTD_MAGIC):
            reader = stack.enter_context(zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True))
            yield stack.enter_context(io.BufferedReader(reader))
        else:
            yield raw


@contextmanager
def _open_text(path: Path) -> Iterator[IO[str]]:
    with open_binary(path) as b:
        # A BOM is dropped; a stray non-UTF-8 byte becomes U+FFFD rather than ending the replay.
        yield io.TextIOWrapper(b, encoding="utf-8-sig", errors="replace", newline="")


class RowSource:
    """The rows of one file, in file order. ``columns`` is known before the first row is read."""

    def __init__(self, path: Path, fmt: Format) -> None:
        self.path = path
        self.fmt = fmt
        self.columns: list[str] = self._columns()

    def _columns(self) -> list[str]:
        try:
            if self.fmt in ("csv", "tsv"):
                with _open_text(self.path) as f:
                    header = next(csv.reader(f, delimiter="\t" if self.fmt == "tsv" else ","), None)
                return list(header or [])
            if self.fmt == "jsonl":
                seen: dict[str, None] = {}
                with open_binary(self.path) as b:
                    for n, line in enumerate(b):
                        if n >= JSONL_PEEK_LINES:
                            break
                        try:
                            obj = orjson.loads(line)
                        except orjson.JSONDecodeError:
                            continue
                        if isinstance(obj, dict):
                            seen.update(dict.fromkeys(obj))
                return list(seen)
            with self._parquet() as pf:
                return list(pf.schema_arrow.names)
        except READ_ERRORS as exc:
            raise InputFormatError(f"{self.path}: cannot read as {self.fmt}: {exc}") from exc

    @contextmanager
    def _parquet(self) -> Iterator[Any]:
        try:
            import pyarrow.parquet as pq  # type: ignore[import-untyped]
        except ModuleNotFoundError as exc:  # pragma: no cover - pyarrow is a base dependency
            raise InputFormatError("reading Parquet needs pyarrow") from exc
        with open(self.path, "rb") as raw:
            magic = raw.read(4)
        if magic.startswith(GZIP_MAGIC) or magic.startswith(ZSTD_MAGIC):
            # Parquet seeks to its footer: spill the decompressed file to disk, never to memory.
            with tempfile.TemporaryFile(prefix="finpulse-replay-") as tmp:
                with open_binary(self.path) as b:
                    shutil.copyfileobj(b, tmp, 1024 * 1024)
                tmp.seek(0)
                yield pq.ParquetFile(tmp)
        else:
            with pq.ParquetFile(self.path) as pf:
                yield pf

    def rows(self, wanted: set[str] | None = None) -> Iterator[Row | BadLine]:
        """Every row in file order (``wanted``: the columns to read, where the format can skip others)."""
        try:
            if self.fmt in ("csv", "tsv"):
                yield from self._csv_rows()
            elif self.fmt == "jsonl":
                yield from self._jsonl_rows()
            else:
                yield from self._parquet_rows(wanted)
        except READ_ERRORS as exc:
            raise InputFormatError(f"{self.path}: cannot read as {self.fmt}: {exc}") from exc

    def _csv_rows(self) -> Iterator[Row]:
        with _open_text(self.path) as f:
            reader = csv.DictReader(f, delimiter="\t" if self.fmt == "tsv" else ",")
            for values in reader:
                yield Row(values, f"line {reader.line_num}")

    def _jsonl_rows(self) -> Iterator[Row | BadLine]:
        with open_binary(self.path) as b:
            for n, line in enumerate(b, 1):
                line = line.strip()
                if not line:
                    continue
                try:
                    obj = orjson.loads(line)
                except orjson.JSONDecodeError as exc:
                    yield BadLine("not_json", str(exc)[:200], f"line {n}", line[:500].decode("utf-8", "replace"))
                    continue
                if not isinstance(obj, dict):
                    yield BadLine(
                        "not_json",
                        f"a JSON {type(obj).__name__}, not an object",
                        f"line {n}",
                        line[:500].decode("utf-8", "replace"),
                    )
                    continue
                yield Row(obj, f"line {n}")

    def _parquet_rows(self, wanted: set[str] | None) -> Iterator[Row]:
        with self._parquet() as pf:
            cols = [c for c in pf.schema_arrow.names if wanted is None or c in wanted]
            n = 0
            for batch in pf.iter_batches(batch_size=PARQUET_BATCH_ROWS, columns=cols):
                for values in batch.to_pylist():
                    n += 1
                    yield Row(values, f"row {n}")
