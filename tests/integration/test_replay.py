"""``finpulse replay`` against the real Kafka: every format end to end, the mapping, bad rows, pacing
measured on the broker's record timestamps, and a topic's time range copied into another topic."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from click.testing import CliRunner, Result

from stream.cli.replay import read_events
from stream.cli.replay.command import replay_cmd
from stream.events import NewsEvent, ms_to_iso, parse_event
from stream.settings import StreamSettings
from stream.topics import ensure_topics
from tests.support.replay_files import HEADLINE_COLUMNS, headline_rows, write_rows

pytestmark = [pytest.mark.kafka]

N = 40


async def _read_topic(bootstrap: str, topic: str, n: int, timeout: float = 30.0) -> list[Any]:
    """Every record of ``topic`` once ``n`` have arrived (and a moment more, to see any extra)."""
    c = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=None, auto_offset_reset="earliest")
    await c.start()
    out: list[Any] = []
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            batch = await c.getmany(timeout_ms=300)
            out += [m for msgs in batch.values() for m in msgs]
            if len(out) >= n and not batch:
                break
    finally:
        await c.stop()
    return out


def _replay(*args: str) -> tuple[Result, dict[str, Any]]:
    res = CliRunner().invoke(replay_cmd, [*args, "--no-progress"])
    assert res.exit_code == 0, res.output
    return res, orjson.loads(res.stdout.strip().splitlines()[-1])


def _events(records: list[Any]) -> list[NewsEvent]:
    out = []
    for m in records:
        ev = parse_event(m.value, 256 * 1024, 32 * 1024)
        assert isinstance(ev, NewsEvent), ev
        assert m.key == ev.id.encode()  # keyed by id, as produce() always did
        out.append(ev)
    return out


@pytest.mark.parametrize("name", ["news.csv", "news.tsv.gz", "news.jsonl.zst", "news.parquet", "folder"])
def test_each_format_end_to_end(name: str, isolated_settings: StreamSettings, tmp_path: Path) -> None:
    s = isolated_settings
    rows = headline_rows(N)
    if name == "folder":
        path = tmp_path / "days"
        path.mkdir()
        write_rows(path / "a.csv.gz", rows[: len(rows) // 2], HEADLINE_COLUMNS)
        write_rows(path / "b.parquet.zst", rows[len(rows) // 2 :], HEADLINE_COLUMNS)
    else:
        path = write_rows(tmp_path / name, rows, HEADLINE_COLUMNS)
    res, summary = _replay(str(path), "--topic", s.input_topic, "--limit", "100")
    assert "text=title time=date" in res.output and "tickers=stock" in res.output  # the mapping it chose
    assert summary["sent"] == N and summary["report"]["merged_rows"] == 8 and summary["report"]["bad_rows"] == {}
    got = _events(asyncio.run(_read_topic(s.kafka_bootstrap, s.input_topic, N)))
    expected = read_events(path)
    assert sorted(e.id for e in got) == sorted(e["id"] for e in expected)
    assert {e.id: e.tickers for e in got} == {e["id"]: e["tickers"] for e in expected}
    assert all(e.source == "news" and e.title is None for e in got)


def test_bad_rows_and_a_second_replay(isolated_settings: StreamSettings, tmp_path: Path) -> None:
    s = isolated_settings
    f = tmp_path / "mixed.csv"
    f.write_text(
        "headline,when,sym\n"
        "Apple beats,2020-06-01 09:30:00,AAPL\n"
        ",2020-06-01 09:31:00,AAPL\n"
        "No date,someday,MSFT\n"
        "Microsoft slips,2020-06-01 09:32:00,MSFT\n"
    )
    sample = tmp_path / "bad.jsonl"
    args = [str(f), "--topic", s.input_topic, "--text", "headline", "--time", "when", "--tickers", "sym"]
    res, summary = _replay(*args, "--tz", "America/New_York", "--bad-rows", str(sample))
    assert summary["sent"] == 2 and summary["report"]["bad_rows"] == {"bad_time": 1, "empty_text": 1}
    assert "skipped 2 bad rows: bad_time 1, empty_text 1" in res.output
    assert [orjson.loads(x)["reason"] for x in sample.read_bytes().splitlines()] == ["empty_text", "bad_time"]
    _replay(*args, "--tz", "America/New_York")  # the same file again: the same ids, for the worker to dedupe
    got = _events(asyncio.run(_read_topic(s.kafka_bootstrap, s.input_topic, 4)))
    assert len(got) == 4 and len({e.id for e in got}) == 2
    assert sorted(ms_to_iso(e.published_at) for e in got)[0] == "2020-06-01T13:30:00Z"  # EDT read as UTC-4

    strict = CliRunner().invoke(replay_cmd, [*args, "--strict", "--no-progress", "--topic", s.input_topic + ".x"])
    assert strict.exit_code == 1 and "line 3: empty_text" in strict.output and "Traceback" not in strict.output


@pytest.mark.parametrize(("flag", "value"), [("--speed", "20"), ("--rate", "20")])
def test_pacing_is_measured_within_ten_percent(
    flag: str, value: str, isolated_settings: StreamSettings, tmp_path: Path
) -> None:
    """41 events a second apart in event time: at 20x, and at 20 events/s, both take 2.0 s of wall time."""
    s = isolated_settings
    f = tmp_path / "paced.jsonl"
    t0 = 1_590_969_600_000
    f.write_bytes(
        b"".join(
            orjson.dumps({"id": f"p{i}", "text": f"tick {i} $AAPL", "published_at": t0 + i * 1000}) + b"\n"
            for i in range(41)
        )
    )
    asyncio.run(ensure_topics(s.kafka_bootstrap, {s.input_topic: 1}))
    _, summary = _replay(str(f), "--topic", s.input_topic, flag, value)
    records = asyncio.run(_read_topic(s.kafka_bootstrap, s.input_topic, 41))
    stamps = sorted(m.timestamp for m in records)  # CreateTime: when the replay handed each one over
    assert len(stamps) == 41
    span = (stamps[-1] - stamps[0]) / 1000
    assert span == pytest.approx(2.0, rel=0.10), span
    if flag == "--speed":
        # Every event on its own schedule, not only the total.
        order = sorted(records, key=lambda m: m.timestamp)
        for m in order:
            i = int(orjson.loads(m.value)["id"][1:])
            assert (m.timestamp - stamps[0]) / 1000 == pytest.approx(i / 20, abs=0.1)


def test_topic_to_topic_time_range(isolated_settings: StreamSettings) -> None:
    """Records stamped over three days; the middle day is copied, keys, values and headers byte for byte."""
    s = isolated_settings
    src, dst = s.input_topic + ".history", s.input_topic
    day = 86_400_000
    base = (int(time.time() * 1000) // day - 3) * day  # midnight UTC three days ago

    async def fill() -> list[tuple[int, bytes | None, bytes, list[tuple[str, bytes]]]]:
        await ensure_topics(s.kafka_bootstrap, {src: 3})
        p = AIOKafkaProducer(bootstrap_servers=s.kafka_bootstrap, acks="all")
        await p.start()
        sent = []
        try:
            for i in range(90):
                ts = base + i * (day // 30)  # 30 a day over three days, spread over all partitions
                key = None if i % 7 == 0 else f"k{i % 11}".encode()
                value = b"\xff\x00not json" if i % 13 == 0 else orjson.dumps({"id": f"e{i}", "n": i})
                headers = [("h", str(i).encode())]
                await p.send_and_wait(src, value, key=key, timestamp_ms=ts, headers=headers)
                sent.append((ts, key, value, headers))
        finally:
            await p.stop()
        return sent

    sent = asyncio.run(fill())
    start, end = base + day, base + 2 * day
    want = [r for r in sent if start <= r[0] < end]
    assert len(want) == 30
    _, summary = _replay("--from-topic", src, "--from", ms_to_iso(start), "--to", ms_to_iso(end), "--topic", dst)
    assert summary["sent"] == 30 and summary["from_topic"] == src
    got = asyncio.run(_read_topic(s.kafka_bootstrap, dst, 30))
    assert sorted((m.key or b"", m.value, list(m.headers)) for m in got) == sorted(
        (k or b"", v, h) for _, k, v, h in want
    )
    # Sent in record-time order: within each output partition the source times only go forward.
    src_ts = {v + bytes(h[0][1]): ts for ts, _, v, h in want}
    for part in {m.partition for m in got}:
        times = [src_ts[m.value + m.headers[0][1]] for m in sorted(got, key=lambda m: m.offset) if m.partition == part]
        assert times == sorted(times)
