"""(h) Property-based fuzzing: thousands of malformed payloads mixed with good events, one real worker.

Hypothesis generates the payloads: not JSON, truncated JSON, non-UTF-8, JSON that is not an
object, wrong types and missing fields, empty and oversized texts, oversized events, deep nesting,
huge and non-finite numbers, odd but valid timestamps and timestamps that are not, tombstones and
empty values, random keys. A worker round trip per example would be far too slow, so the examples
only collect payloads; all of them then go through one worker in one stream, and every single
payload is traced to its one outcome through the dead letter's source partition/offset or the
scored record's id:

- every good event is scored exactly once, and nothing else is;
- every bad payload is in the DLQ exactly once, with its reason (one of those the README names for
  its kind), a detail, its source offset and its exact original bytes;
- the worker is still running and healthy at the end, and its counters agree.

A payload whose fate the README leaves open (a number JSON allows but a double cannot hold, in a
field the worker ignores) only has to end in exactly one place.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaProducer
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from hypothesis.configuration import set_hypothesis_home_dir

from engine.settings import EngineSettings
from stream.settings import StreamSettings
from stream.topics import ensure_topics
from stream.worker import topic_plan
from tests.faults.harness import ResultLog, Worker, read_outputs, wait_caught_up, with_settings
from tests.faults.infra import fault_base_settings

pytestmark = [pytest.mark.fault, pytest.mark.kafka, pytest.mark.redis, pytest.mark.slow, pytest.mark.timeout(240)]

MAX_EVENT = 16 * 1024
MAX_TEXT = 4 * 1024
GOOD = "good"
EITHER = "either"  # must end in exactly one place, scored or dead-lettered
ID = "\x00<id>\x00"  # replaced by a unique id when the payload is rendered
MARK = "\u2603MARK\u2603"  # replaced by invalid UTF-8 bytes
RAW = re.compile(rb'"@@RAW:([^@"]*)@@"')  # "@@RAW:1e999@@" renders as the bare JSON number 1e999


def raw_number(text: str) -> str:
    """A JSON number orjson cannot write from Python (beyond 64 bits, or beyond a double)."""
    return f"@@RAW:{text}@@"


EXAMPLES = 300


@dataclass(frozen=True)
class Case:
    kind: str
    expect: str | frozenset[str]  # GOOD, EITHER, or the DLQ reasons acceptable for it
    body: Any  # a dict/list template (rendered with orjson) or raw bytes, or None (tombstone)
    key: bytes | None = None
    splice: bytes | None = None  # raw bytes to put where MARK is
    cut: float | None = None  # keep this fraction of the rendered bytes

    def render(self, uid: str) -> tuple[bytes | None, bytes | None]:
        if self.body is None or isinstance(self.body, bytes):
            return self.key, self.body
        raw = RAW.sub(rb"\1", orjson.dumps(_replace_id(self.body, uid)))
        if self.splice is not None:
            raw = raw.replace(MARK.encode(), self.splice)
        if self.cut is not None:
            raw = raw[: max(1, min(len(raw) - 1, int(len(raw) * self.cut)))]
        key = uid.encode() if self.key is None and _has_id(self.body) else self.key
        return key, raw


def _replace_id(obj: Any, uid: str) -> Any:
    if isinstance(obj, dict):
        return {k: (uid if v == ID else _replace_id(v, uid)) for k, v in obj.items()}
    return obj


def _has_id(obj: Any) -> bool:
    return isinstance(obj, dict) and obj.get("id") == ID


def _bad(*reasons: str) -> frozenset[str]:
    return frozenset(reasons)


# --- strategies ---------------------------------------------------------------------------------

texts = st.text(st.characters(exclude_categories=("Cs",)), min_size=1, max_size=200).filter(lambda t: bool(t.strip()))
short = st.text(st.characters(exclude_categories=("Cs",)), max_size=40)
offsets = st.builds(lambda m: timezone(timedelta(minutes=m)), st.integers(-(23 * 60 + 59), 23 * 60 + 59))
past = st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2024, 12, 31))
MS_LO, MS_HI = 946_684_800_000, 1_735_689_600_000

valid_times = st.one_of(
    past.map(lambda d: d.replace(tzinfo=UTC).isoformat().replace("+00:00", "Z")),
    st.builds(lambda d, tz: d.replace(tzinfo=tz).isoformat(), past, offsets),
    past.map(lambda d: d.isoformat(sep=" ")),  # naive: UTC
    past.map(lambda d: d.strftime("%Y%m%dT%H%M%SZ")),  # ISO-8601 basic format
    st.integers(MS_LO, MS_HI),
    st.integers(MS_LO, MS_HI).map(str),
    st.floats(float(MS_LO), float(MS_HI)),
    st.just("0001-01-01T00:00:00Z"),  # odd but valid: the first instant ISO-8601 can write
)
tickers = st.lists(st.sampled_from(["AAPL", "$msft", "BRK.B", "goog", "T", "ZZ9", "BF-B"]), max_size=5)
json_leaf = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**63), 2**63 - 1), st.floats(allow_nan=False, allow_infinity=False), short
)
json_values = st.recursive(
    json_leaf,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(short, inner, max_size=4)),
    max_leaves=12,
)


def _nest(depth: int, as_list: bool) -> Any:
    v: Any = "deep"
    for _ in range(depth):
        v = [v] if as_list else {"a": v}
    return v


@st.composite
def good_templates(draw: st.DrawFn) -> dict[str, Any]:
    ev: dict[str, Any] = {"id": ID, "text": draw(texts), "published_at": draw(valid_times)}
    for name, strat in (
        ("source", short),
        ("title", short),
        ("author", short),
        ("url", short),
        ("lang", short),
        ("tickers", tickers),
    ):
        if draw(st.booleans()):
            ev[name] = draw(strat)
    extra = draw(st.sampled_from(["none", "json", "nested", "bigint"]))
    if extra == "json":
        ev["meta"] = draw(json_values)
    elif extra == "nested":  # deep, but well within what any JSON parser must handle
        ev["meta"] = _nest(draw(st.integers(1, 100)), draw(st.booleans()))
    elif extra == "bigint":  # JSON has no integer limit, and the worker ignores the field
        ev["meta"] = raw_number(str(draw(st.integers(2**64, 10**40))))
    return ev


@st.composite
def cases(draw: st.DrawFn) -> Case:
    kind = draw(
        st.sampled_from(
            [
                "good",
                "good",
                "good",
                "not_json_text",
                "truncated",
                "nan_literal",
                "not_utf8_spliced",
                "binary",
                "not_object",
                "wrong_type",
                "missing_field",
                "empty_text",
                "oversized_text",
                "oversized_event",
                "deep_nesting",
                "huge_number",
                "bad_timestamp",
                "future_timestamp",
                "tombstone",
                "empty_value",
                "inf_in_ignored",
            ]
        )
    )
    t = draw(good_templates())
    if kind == "good":
        return Case(kind, GOOD, t)
    if kind == "not_json_text":
        raw = draw(st.text(max_size=200).map(lambda s: s.encode("utf-8", "surrogatepass")).filter(_python_json_refuses))
        return Case(kind, _bad("not_json", "not_utf8"), raw, key=draw(st.none() | st.binary(max_size=20)))
    if kind == "truncated":
        return Case(kind, _bad("not_json", "not_utf8"), t, cut=draw(st.floats(0.0, 0.99)))
    if kind == "nan_literal":
        lit = draw(st.sampled_from([b"NaN", b"Infinity", b"-Infinity", b"nan", b"1e400"]))
        return Case(kind, _bad("not_json"), b'{"id": "x", "text": "t", "published_at": ' + lit + b"}")
    if kind == "not_utf8_spliced":
        t = {**t, "text": f"{t['text']} {MARK}"}
        bad = draw(
            st.sampled_from(
                [
                    b"\xff",
                    b"\xfe\xfe",
                    b"\xc3\x28",
                    b"\xa0\xa1",
                    b"\xed\xa0\x80",
                    b"\xf0\x28\x8c\x28",
                    b"\xc0\xaf",
                    b"\xf8\x88\x80\x80\x80",
                ]
            )
        )
        return Case(kind, _bad("not_utf8"), t, splice=bad)
    if kind == "binary":
        raw = draw(st.binary(min_size=1, max_size=300).filter(_not_utf8))
        return Case(kind, _bad("not_utf8", "not_json"), raw, key=draw(st.none() | st.binary(max_size=20)))
    if kind == "not_object":
        v = draw(st.one_of(json_leaf, st.lists(json_values, max_size=5)))
        return Case(kind, _bad("not_object"), orjson.dumps(v))
    if kind == "wrong_type":
        field, value = draw(st.sampled_from(_WRONG))
        return Case(kind, _bad("invalid_schema"), {**t, field: value})
    if kind == "missing_field":
        field = draw(st.sampled_from(["id", "text", "published_at"]))
        return Case(kind, _bad("invalid_schema"), {k: v for k, v in t.items() if k != field})
    if kind == "empty_text":
        ws = draw(st.sampled_from(["", " ", "\t\n", "\u3000", "\u00a0 ", "\r\n\r\n", " " * 500]))
        return Case(kind, _bad("empty_text"), {**t, "text": ws})
    if kind == "oversized_text":
        n = draw(st.integers(MAX_TEXT + 1, MAX_TEXT + 3000))
        ch = draw(st.sampled_from(["x", "é", "€", "😀"]))
        text = ch * (n // len(ch.encode()) + 1)
        return Case(kind, _bad("oversized_text"), {**t, "text": text, "meta": None})
    if kind == "oversized_event":
        n = draw(st.integers(MAX_EVENT + 1, MAX_EVENT + 20_000))
        if draw(st.booleans()):
            return Case(kind, _bad("oversized_event"), {**t, "meta": "p" * n})
        return Case(kind, _bad("oversized_event"), draw(st.sampled_from([b"\xff", b"{", b"a"])) * n)
    if kind == "deep_nesting":
        depth = draw(st.integers(1_100, 5_000))
        raw = (
            orjson.dumps(_nest(100, True)).replace(b'"deep"', b"[" * depth + b"]" * depth)
            if draw(st.booleans())
            else b'{"a":' * depth + b"1" + b"}" * depth
        )
        return Case(kind, _bad("not_json", "not_object", "invalid_schema", "oversized_event"), raw)
    if kind == "huge_number":
        value = draw(
            st.sampled_from(
                [
                    raw_number(str(10**20)),
                    raw_number(str(10**30)),
                    2**63 - 1,
                    raw_number(str(2**64)),
                    1e300,
                    1.7e308,
                    "9" * 25,
                    253_402_300_800_000,
                ]
            )
        )
        return Case(kind, _bad("future_timestamp", "invalid_schema", "not_json"), {**t, "published_at": value})
    if kind == "bad_timestamp":
        value = draw(
            st.one_of(
                st.sampled_from(
                    [
                        True,
                        False,
                        None,
                        [],
                        {},
                        "",
                        "   ",
                        "yesterday",
                        "2014-13-45T00:00:00Z",
                        "2014-05-01T25:00:00Z",
                        "1400000000",
                        "-1",
                        "0x1F",
                        "1.4e12",
                    ]
                ),
                st.integers(-(10**15), 10**11 - 1),  # epoch seconds and negative numbers are not epoch ms
                st.floats(-1e15, 1e11 - 1),
            )
        )
        return Case(kind, _bad("invalid_schema"), {**t, "published_at": value})
    if kind == "future_timestamp":
        value = draw(
            st.sampled_from(["2099-01-01T00:00:00Z", "9999-12-31T23:59:59Z", "2999-06-01 12:00:00", 4_102_444_800_000])
        )
        return Case(kind, _bad("future_timestamp"), {**t, "published_at": value})
    if kind == "tombstone":
        # A Kafka record needs a key or a value: a tombstone always has a key.
        return Case(kind, _bad("not_json"), None, key=draw(st.binary(min_size=1, max_size=20)))
    if kind == "empty_value":
        return Case(kind, _bad("not_json"), b"")
    # inf_in_ignored: a number JSON allows that a double cannot hold, in a field the worker ignores
    return Case(kind, EITHER, {**t, "meta": raw_number(draw(st.sampled_from(["1e999", "-1e999", "1e-999"])))})


_WRONG: list[tuple[str, Any]] = [
    ("id", 123),
    ("id", 1.5),
    ("id", ["a"]),
    ("id", {"a": 1}),
    ("id", None),
    ("id", True),
    ("id", ""),
    ("id", "x" * 257),
    ("text", 42),
    ("text", ["t"]),
    ("text", {"t": 1}),
    ("text", None),
    ("text", False),
    ("tickers", "AAPL"),
    ("tickers", [1]),
    ("tickers", ["bad ticker!"]),
    ("tickers", [None]),
    ("tickers", {"a": 1}),
    ("tickers", ["TOOLONGTICKER"]),
    ("source", 1),
    ("source", ["s"]),
    ("title", {"t": 1}),
    ("author", 7),
    ("url", True),
    ("lang", [1]),
]


def _crash_lines(log: str, limit: int = 12) -> list[str]:
    """The first agent crash in a worker log: its reason and the frames that name our code."""
    lines = log.splitlines()
    for i, line in enumerate(lines):
        if "Crashed reason" in line or "agent_failed" in line:
            frames = [x.strip() for x in lines[i + 1 : i + 40] if "/stream/" in x or "Error" in x]
            return [line.strip()[:300], *frames[: limit - 1]]
    return []


def _python_json_refuses(raw: bytes) -> bool:
    try:
        json.loads(raw)
    except ValueError:
        return True
    return False


def _not_utf8(raw: bytes) -> bool:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return True
    return False


def collect_cases() -> list[Case]:
    """Run the strategies through hypothesis; every example adds its payloads to one stream."""
    set_hypothesis_home_dir(str(fault_base_settings().local_dir / "hypothesis"))  # not .hypothesis/ in the repo
    out: list[Case] = []

    @settings(
        max_examples=EXAMPLES,
        database=None,
        deadline=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(st.lists(cases(), min_size=8, max_size=16))
    def gather(batch: list[Case]) -> None:
        out.extend(batch)

    gather()
    return out


# --- the test -------------------------------------------------------------------------------------


async def _produce(bootstrap: str, topic: str, rows: list[tuple[bytes | None, bytes | None]]) -> list[tuple[int, int]]:
    """Send every row; (partition, offset) of each, in order."""
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, linger_ms=10, acks="all", enable_idempotence=True, max_request_size=8 * 1024 * 1024
    )
    await producer.start()
    try:
        futs = [await producer.send(topic, value=v, key=k) for k, v in rows]
        metas = await asyncio.gather(*futs)
    finally:
        await producer.stop()
    return [(m.partition, m.offset) for m in metas]


async def test_fuzzed_payloads_all_accounted_for(
    fault_settings: StreamSettings,
    fault_infra: Any,
    null_engine: EngineSettings,
    workers: Callable[..., Worker],
    results: ResultLog,
) -> None:
    t0 = time.monotonic()
    cs = collect_cases()
    gen_s = time.monotonic() - t0
    rows = [c.render(f"fz-{i}") for i, c in enumerate(cs)]
    s = with_settings(
        fault_settings,
        partitions=4,
        time_mode="live",
        max_event_bytes=MAX_EVENT,
        max_text_bytes=MAX_TEXT,
        max_batch_size=64,
        max_wait_ms=50,
        broker_session_timeout_s=6.0,
    )
    await ensure_topics(s.kafka_bootstrap, topic_plan(s))
    w = workers(s, null_engine, "worker")
    await w.await_ready()
    where = await _produce(s.kafka_bootstrap, s.input_topic, rows)
    stuck = ""
    try:
        await wait_caught_up(s, 120, [w])
    except (AssertionError, TimeoutError) as exc:  # reported below, with every payload's fate so far
        stuck = str(exc).splitlines()[0]
    out = await read_outputs(s)

    dlq = Counter((d["partition"], d["offset"]) for d in out.dlq)
    dlq_by_pos = {(d["partition"], d["offset"]): d for d in out.dlq}
    scored = Counter(str(e["id"]) for e in out.scored)
    failures: list[str] = []
    kinds: Counter[str] = Counter()
    outcomes: Counter[str] = Counter()
    for i, (c, (_key, value), pos) in enumerate(zip(cs, rows, where, strict=True)):
        kinds[c.kind] += 1
        uid = f"fz-{i}"
        n_dlq, n_scored = dlq.get(pos, 0), scored.get(uid, 0)
        d = dlq_by_pos.get(pos)
        got = f"dlq:{d['reason']}" if d else ("scored" if n_scored else "nowhere")
        outcomes[got] += 1
        why = ""
        if n_dlq + n_scored != 1:
            why = f"{n_dlq} dead letters and {n_scored} scored records"
        elif c.expect == GOOD and not n_scored:
            why = "a good event was dead-lettered"
        elif isinstance(c.expect, frozenset) and not d:
            why = "a bad payload was scored"
        elif isinstance(c.expect, frozenset) and d and c.expect and d["reason"] not in c.expect:
            why = f"reason {d['reason']!r} not among {sorted(c.expect)}"
        elif d and (not d.get("reason") or not d.get("detail")):
            why = "dead letter without reason or detail"
        elif d and (base64.b64decode(d["value_b64"]) != (value or b"") or d["topic"] != s.input_topic):
            why = "dead letter does not carry the original bytes and source"
        if why:
            preview = (value or b"")[:120]
            failures.append(
                f"#{i} {c.kind} -> {got}: {why}; value[:120]={preview!r}"
                + (f"; detail={d['detail'][:120]!r}" if d else "")
            )
    h = w.health() or {}
    m = h.get("metrics") or {}
    if not w.alive:
        failures.append(f"the worker is not running (exit {w.proc.returncode if w.proc else None}):\n{w.log_tail()}")
    if h.get("status") != "ok":
        failures.append(f"/health status {h.get('status')!r}, reasons {h.get('degraded_reasons')}")
    if stuck:
        failures.insert(0, f"the stream was not consumed to its end: {stuck}")
    crashes = _crash_lines(w.log_text())
    if crashes:
        failures.insert(0, "the worker's agent crashed:\n" + "\n".join(crashes))
    if m.get("dead_letters") != len(out.dlq) or m.get("scored") != len(out.scored):
        failures.append(
            f"worker counters dead_letters={m.get('dead_letters')} scored={m.get('scored')}, "
            f"topics hold {len(out.dlq)} and {len(out.scored)}"
        )
    n_good = sum(1 for c in cs if c.expect == GOOD)
    results.write(
        "h_fuzz",
        "fail" if failures else "pass",
        payloads=len(cs),
        good=n_good,
        bad=len(cs) - n_good,
        examples=EXAMPLES,
        kinds=dict(kinds),
        outcomes=dict(outcomes),
        scored=len(out.scored),
        dlq=len(out.dlq),
        generate_s=round(gen_s, 1),
        total_s=round(time.monotonic() - t0, 1),
        health=h.get("status"),
        failures=len(failures),
        first_failures=failures[:10],
    )
    assert not failures, f"{len(failures)} of {len(cs)} payloads went wrong:\n" + "\n".join(failures[:25])


def test_generated_payloads_are_what_they_claim() -> None:
    """The generator itself, without a worker: good templates are JSON objects within the limits,
    and each kind renders to what it says (a cheap guard against a fuzz test that tests nothing)."""
    cs = collect_cases()[:600]
    for i, c in enumerate(cs):
        _, value = c.render(f"fz-{i}")
        if c.expect == GOOD:
            assert value is not None and len(value) <= MAX_EVENT
            doc = json.loads(value)
            assert isinstance(doc, dict) and doc["id"] == f"fz-{i}" and doc["text"].strip()
            assert len(doc["text"].encode()) <= MAX_TEXT
        if c.kind == "not_utf8_spliced":
            assert value is not None and _not_utf8(value)
        if c.kind == "oversized_event":
            assert value is not None and len(value) > MAX_EVENT
        if c.kind in ("wrong_type", "missing_field", "bad_timestamp", "empty_text", "huge_number", "future_timestamp"):
            assert value is not None and isinstance(json.loads(value), dict)
