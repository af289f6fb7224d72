"""Replay input formats: CSV, TSV, JSONL and Parquet, plain, gzip or zstd, a folder; read as a stream."""

from __future__ import annotations

import gzip
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from stream.cli.replay import InputFormatError, ReplayOptions, ReplayReport, ReplaySource, read_events
from stream.cli.replay.formats import format_of
from stream.events import NewsEvent, parse_event
from tests.support.replay_files import HEADLINE_COLUMNS, expected_times_ms, headline_rows, write_rows

N = 40
NAMES = [
    "news.csv",
    "news.tsv",
    "news.jsonl",
    "news.parquet",
    "news.csv.gz",
    "news.tsv.zst",
    "news.jsonl.gz",
    "news.jsonl.zst",
    "news.parquet.zst",
]


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, object]]:
    f = write_rows(tmp_path_factory.mktemp("ref") / "ref.csv", headline_rows(N), HEADLINE_COLUMNS)
    return read_events(f)


@pytest.mark.parametrize("name", NAMES)
def test_every_format_gives_the_same_events(name: str, tmp_path: Path, reference: list[dict[str, object]]) -> None:
    f = write_rows(tmp_path / name, headline_rows(N), HEADLINE_COLUMNS)
    events = read_events(f)
    assert events == reference
    assert len(events) == N  # every fifth headline was listed twice (two tickers): merged
    assert [NewsEvent.model_validate(e).published_at for e in events] == expected_times_ms(N)
    assert events[0]["tickers"] == ["AAPL", "GOOG"] and events[1]["tickers"] == ["MSFT"]
    for e in events:
        parsed = parse_event(__import__("orjson").dumps(e), 256 * 1024, 32 * 1024)
        assert isinstance(parsed, NewsEvent), parsed


def test_format_from_name_or_flag(tmp_path: Path) -> None:
    assert format_of(Path("a.TSV.GZ")) == "tsv" and format_of(Path("x.ndjson.zst")) == "jsonl"
    assert format_of(Path("data.txt"), "csv") == "csv"
    with pytest.raises(InputFormatError, match="--format"):
        format_of(Path("data.txt"))


def test_a_folder_is_replayed_in_time_order(tmp_path: Path) -> None:
    rows = headline_rows(30)
    # Interleaved in time across files of different formats (one a day's odd minutes, one its even ones).
    write_rows(tmp_path / "a.csv.gz", rows[0::2], HEADLINE_COLUMNS)
    write_rows(tmp_path / "b.parquet", rows[1::2], HEADLINE_COLUMNS)
    (tmp_path / "README.md").write_text("not data")
    events = read_events(tmp_path)
    times = [NewsEvent.model_validate(e).published_at for e in events]
    assert times == sorted(times) and len(set(times)) == 30


def test_broken_compression_is_a_clear_error(tmp_path: Path) -> None:
    f = tmp_path / "x.csv.gz"
    f.write_bytes(gzip.compress(b"text,date\nhello,2020-01-01\n" * 100)[:60])
    with pytest.raises(InputFormatError, match="x.csv.gz"):
        read_events(f)


def test_never_loads_a_whole_file(tmp_path: Path) -> None:
    """A 300 MB file read under a 200 MB address-space cap: only a stream can do it."""
    big = tmp_path / "big.csv"
    text = "x" * 3900
    block = "".join(f"r@_{i},{text} $AAPL,2020-01-02T{(i // 60) % 24:02d}:{i % 60:02d}:00Z\n" for i in range(1000))
    size = 0
    with open(big, "w") as f:
        f.write("id,text,date\n")
        n = 0
        while size < 300 * 1024 * 1024:
            f.write(block.replace("@", str(n)))
            size += len(block)
            n += 1
    rows = n * 1000
    code = textwrap.dedent(
        f"""
        import resource, sys
        from pathlib import Path
        from stream.cli.replay import ReplayOptions, ReplayReport, ReplaySource
        cap = 200 * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
        report = ReplayReport()
        n = sum(1 for _ in ReplaySource(Path({str(big)!r}), ReplayOptions(sort_buffer=100), report))
        try:
            Path({str(big)!r}).read_bytes()
            print("whole file loaded under the cap?")
        except MemoryError:
            pass
        print(n, report.rows)
        """
    )
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == [str(rows), str(rows)]
    assert time.perf_counter() - t0 < 60


def test_stream_reads_lazily(tmp_path: Path) -> None:
    f = write_rows(tmp_path / "n.jsonl", headline_rows(50), HEADLINE_COLUMNS)
    report = ReplayReport()
    it = iter(ReplaySource(f, ReplayOptions(sort_buffer=5), report))
    next(it)
    assert report.rows < 20  # a sort buffer's worth, not the file
