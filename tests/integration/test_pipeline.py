"""End to end on the real Kafka and Redis: a worker process, a replayed sample of the real stream.

Checks: every valid input is scored, every bad one is dead-lettered with its reason and bytes,
Redis windows equal a count made here from the scored events, an injected burst of distinct negative
stories raises an alert while one story reposted as often does not (novelty), and replaying the same
events leaves Redis exactly as it was.
"""

from __future__ import annotations

import asyncio
import base64
import time
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaConsumer
from redis.asyncio import Redis

from engine.runtime import load_classifier
from engine.settings import EngineSettings
from stream.cli.replay import produce, read_events
from stream.cli.supervise import clear_redis_prefix, start_worker_process, stop_process, wait_worker_ready
from stream.events import parse_event_time, parse_scored
from stream.settings import StreamSettings
from stream.topics import delete_topics, ensure_topics
from stream.windows import SENTIMENT_FIELDS, bucket_start
from stream.worker import topic_plan
from tests.support.surge import REPLAY_SURGE, distinct_stories, negative_stories
from tests.support.tiny_bert import NEGATIVE_PHRASES

pytestmark = [pytest.mark.kafka, pytest.mark.redis, pytest.mark.slow, pytest.mark.timeout(420)]

SAMPLE = 300
BURST_TICKER = "ZZQX"
REPOST_TICKER = "ZZQR"
BAD_INPUTS: list[tuple[bytes, str]] = [
    (b"{this is not json", "not_json"),
    (b"[1, 2, 3]", "not_object"),
    (orjson.dumps({"id": "bad-missing-text", "published_at": "2014-05-01T00:00:00Z"}), "invalid_schema"),
    (orjson.dumps({"id": 12345, "text": "id is a number", "published_at": "2014-05-01T00:00:00Z"}), "invalid_schema"),
    (orjson.dumps({"id": "bad-empty", "text": "  ", "published_at": "2014-05-01T00:00:00Z"}), "empty_text"),
    (
        orjson.dumps({"id": "bad-big", "text": "x" * (40 * 1024), "published_at": "2014-05-01T00:00:00Z"}),
        "oversized_text",
    ),
    (orjson.dumps({"id": "bad-time", "text": "when?", "published_at": "last tuesday"}), "invalid_schema"),
]


def _stream_file(settings: StreamSettings) -> Path:
    return settings.require_data_dir() / "stocknet-tweets" / "stream.csv"


async def _drain(settings: StreamSettings, want: int, timeout: float) -> dict[str, list[Any]]:
    """Read scored, DLQ and alert topics from the start until ``want`` scored+DLQ records arrived.

    Scored records come back as ``ScoredEvent`` (parsed with the worker's own model), the others as dicts.
    """
    consumer = AIOKafkaConsumer(
        settings.scored_topic,
        settings.dlq_topic,
        settings.alerts_topic,
        bootstrap_servers=settings.kafka_bootstrap,
        group_id=None,
        auto_offset_reset="earliest",
    )
    await consumer.start()
    out: dict[str, list[Any]] = {"scored": [], "dlq": [], "alerts": []}
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=500)
            for tp, msgs in batch.items():
                key = {settings.scored_topic: "scored", settings.dlq_topic: "dlq", settings.alerts_topic: "alerts"}[
                    tp.topic
                ]
                parse = parse_scored if key == "scored" else orjson.loads
                out[key].extend(parse(m.value) for m in msgs)
            if len(out["scored"]) + len(out["dlq"]) >= want and not batch:
                break
    finally:
        await consumer.stop()
    return out


def _scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """GET /metrics and parse it with prometheus_client's own text parser."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    out: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for fam in text_string_to_metric_families(text):
        for sample in fam.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


async def _snapshot(r: Redis, prefix: str) -> dict[str, Any]:
    snap: dict[str, Any] = {}
    async for key in r.scan_iter(match=f"{prefix}:*", count=1000):
        t = (await r.type(key)).decode()
        if t == "hash":
            snap[key.decode()] = await r.hgetall(key)
        elif t == "string":
            snap[key.decode()] = await r.get(key)
        elif t == "zset":
            snap[key.decode()] = await r.zrange(key, 0, -1, withscores=True)
    return snap


async def _settled_snapshot(r: Redis, prefix: str, tick_s: float, timeout: float = 30.0) -> dict[str, Any]:
    """The store once two snapshots, a few ticks apart, agree."""
    deadline = time.monotonic() + timeout
    snap = await _snapshot(r, prefix)
    while True:
        await asyncio.sleep(max(1.0, 3 * tick_s))
        again = await _snapshot(r, prefix)
        if again == snap or time.monotonic() > deadline:
            return again
        snap = again


async def test_replay_end_to_end(isolated_settings: StreamSettings, keyword_model_dir: Path, tmp_path: Path) -> None:
    s = isolated_settings.model_copy(update=REPLAY_SURGE)
    engine = EngineSettings(backend="torch", model_dir=keyword_model_dir, max_batch_size=32)
    events = read_events(_stream_file(s), since="2014-05-01T00:00:00Z", limit=SAMPLE)
    assert len(events) == SAMPLE
    times = sorted(parse_event_time(e["published_at"]) for e in events)
    # The burst sits inside the replayed span, two thirds of the way in: the real events after it
    # move event time on, on every partition, and so close its buckets (replay mode: event time only).
    burst_ms = times[2 * SAMPLE // 3]
    clf = load_classifier(engine, keyword_model_dir)
    burst = [
        {"id": f"burst-{i}", "text": text, "published_at": burst_ms + i * 5_000, "source": "news"}
        for i, text in enumerate(negative_stories(clf, BURST_TICKER, 12, NEGATIVE_PHRASES))
    ]
    # The same story reposted 12 times on another ticker (retweets, other links): buzz, not a surge. It is
    # itself no near-duplicate of any burst story (checked with the worker's sketch).
    story = f"${REPOST_TICKER} {NEGATIVE_PHRASES[1]} while its auditor quits and two banks pull their credit lines"
    assert distinct_stories([story, *(b["text"] for b in burst)], 13)
    reposts = [
        {
            "id": f"repost-{i}",
            "text": story if i == 0 else f"RT @desk{i}: {story} http://t.co/{i:04d}",
            "published_at": burst_ms + 2_500 + i * 5_000,
            "source": "tweet",
        }
        for i in range(12)
    ]
    assert sum(1 for t in times if t > burst_ms + 2 * 3600_000) >= 20
    # Precondition, checked rather than assumed: the test model reads both bursts as negative.
    assert (clf.classify([b["text"] for b in burst + reposts])["sentiment"].argmax(axis=1) == 0).all()

    valid = sorted(events + burst + reposts, key=lambda e: parse_event_time(e["published_at"]))
    inputs: list[Any] = list(valid)
    for i, (raw, _) in enumerate(BAD_INPUTS):
        inputs.insert(50 + i * 37, raw)

    await ensure_topics(s.kafka_bootstrap, topic_plan(s))
    log_path = tmp_path / "worker.log"
    proc = start_worker_process(s, engine, log_path)
    r = Redis.from_url(s.redis_url)
    try:
        health = await asyncio.to_thread(wait_worker_ready, proc, s.worker_web_port, log_path, 180)
        assert health["engine"]["backend"] == "torch"
        assert health["alert_events"] == "novel" and health["novelty"]["horizon_s"] == s.novelty_horizon_seconds
        await produce(s.kafka_bootstrap, s.input_topic, inputs)
        out = await _drain(s, len(inputs), timeout=240)

        # 1. every valid input scored exactly once, every bad one dead-lettered with reason and bytes
        scored_ids = Counter(e.id for e in out["scored"])
        assert set(scored_ids) == {str(e["id"]) for e in valid}
        assert all(c == 1 for c in scored_ids.values())
        for e in out["scored"]:
            assert abs(sum(e.sentiment.probs.values()) - 1) < 1e-4
            assert e.score == pytest.approx(e.sentiment.probs["positive"] - e.sentiment.probs["negative"], abs=1e-6)
        assert sorted(d["reason"] for d in out["dlq"]) == sorted(reason for _, reason in BAD_INPUTS)
        assert sorted(base64.b64decode(d["value_b64"]) for d in out["dlq"]) == sorted(raw for raw, _ in BAD_INPUTS)
        assert all(d["topic"] == s.input_topic and d["offset"] >= 0 for d in out["dlq"])

        # 1b. the worker's Prometheus metrics say the same, read the way a scraper reads them
        metrics = _scrape(s.worker_web_port)
        assert metrics[("finpulse_events_scored_total", ())] == len(out["scored"])
        assert metrics[("finpulse_events_in_total", ())] == len(inputs)
        for reason, n in Counter(d["reason"] for d in out["dlq"]).items():
            assert metrics[("finpulse_dead_letters_total", (("reason", reason),))] == n
        info = [k for k in metrics if k[0] == "finpulse_engine_info"]
        assert len(info) == 1 and ("backend", "torch") in info[0][1]
        lags = {k: v for k, v in metrics.items() if k[0] == "finpulse_consumer_lag"}
        assert len(lags) == s.partitions and all(v >= 0 for v in lags.values())

        # 2. Redis windows equal an independent count over the scored events
        expected: Counter[tuple[str, int, str]] = Counter()
        for e in out["scored"]:
            if e.window_status != "counted":
                continue
            assert e.topic is not None
            b = bucket_start(e.published_at, s.bucket_seconds)
            field = SENTIMENT_FIELDS[["negative", "neutral", "positive"].index(e.sentiment.label)]
            for t in e.tickers:
                expected[(f"ticker:{t}", b, field)] += 1
                expected[(f"ticker:{t}", b, "n")] += 1
                if field == "neg":  # a ticker's negatives are also counted per topic (alerts name them)
                    expected[(f"ticker:{t}", b, f"nt:{e.topic.label}")] += 1
            expected[(f"topic:{e.topic.label}", b, field)] += 1
            expected[(f"topic:{e.topic.label}", b, "n")] += 1
        assert sum(1 for e in out["scored"] if e.window_status == "counted") >= len(valid) * 0.9
        # Novel counts ('nn', 'nneg') are checked below: a record says what was decided when it was scored.
        novelty_fields = {"nn", "nneg"}

        async def redis_counts() -> Counter[tuple[str, int, str]]:
            got: Counter[tuple[str, int, str]] = Counter()
            async for key in r.scan_iter(match=f"{s.redis_prefix}:b:*", count=1000):
                kind, rest = key.decode()[len(f"{s.redis_prefix}:b:") :].split(":", 1)
                name, b = rest.rsplit(":", 1)
                for f, v in (await r.hgetall(key)).items():
                    if f.decode() != "ssum":
                        got[(f"{kind}:{name}", int(b), f.decode())] += int(v)
            return got

        counts = await redis_counts()
        assert Counter({k: v for k, v in counts.items() if k[2] not in novelty_fields}) == expected

        # 2b. novelty: every repost is scored as a near-duplicate of an earlier one, or (when it reached Redis
        # before an earlier copy on another partition) its novel count is taken back once that copy arrives; in
        # the end the ticker counts twelve events and one novel one. The distinct stories are all novel.
        metrics0 = {k.decode(): int(v) for k, v in (await r.hgetall(f"{s.redis_prefix}:metrics")).items()}
        by_id = {e.id: e for e in out["scored"]}
        rep = {i: by_id[f"repost-{i}"] for i in range(12)}
        for i, e in rep.items():
            assert e.duplicate_of is None or int(e.duplicate_of.split("-")[1]) < i, (i, e.duplicate_of)
            assert e.novelty == (1.0 if e.duplicate_of is None else 0.0), (i, e.novelty)
        scored_novel = [i for i, e in rep.items() if e.duplicate_of is None]
        assert 1 <= len(scored_novel) <= 1 + metrics0.get("novelty_retracted", 0), scored_novel
        assert all(by_id[b["id"]].duplicate_of is None for b in burst)
        rep_n = sum(v for (ent, _, f), v in counts.items() if ent == f"ticker:{REPOST_TICKER}" and f == "n")
        rep_nn = sum(v for (ent, _, f), v in counts.items() if ent == f"ticker:{REPOST_TICKER}" and f == "nn")
        assert (rep_n, rep_nn) == (12, 1)
        # ... and the topics' novel counts add up to the events scored novel (less any an earlier copy took back).
        novel = sum(1 for e in out["scored"] if e.window_status == "counted" and e.duplicate_of is None)
        topic_nn = sum(v for (ent, _, f), v in counts.items() if ent.startswith("topic:") and f == "nn")
        assert topic_nn == novel - metrics0.get("novelty_retracted", 0)

        # 3. the burst raised an alert on its ticker
        burst_alerts = [a for a in out["alerts"] if a["entity"] == BURST_TICKER]
        assert burst_alerts, f"no alert for {BURST_TICKER}; alerts: {[a['entity'] for a in out['alerts']]}"
        a = burst_alerts[0]
        assert a["entity_kind"] == "ticker" and a["count"] >= 5 and a["observed_share"] >= s.alert_floor
        assert set(a["example_event_ids"]) <= {b["id"] for b in burst}
        # ... and quotes the burst's own words (cut short, no author), and the topics behind it.
        texts = {b["id"]: b["text"] for b in burst}
        assert a["examples"] and all(x["text"] == texts[x["id"]] for x in a["examples"])
        assert 0 < sum(t["negative"] for t in a["top_topics"]) <= a["negative"]
        assert a["counts"] == "novel"
        # 3b. one story reposted twelve times is not a surge: no alert on its ticker
        assert not [x for x in out["alerts"] if x["entity"] == REPOST_TICKER]

        # 4. replaying the same events changes nothing in Redis
        # The store settles a moment after the last scored record: the last commit's event times reach it
        # with the next tick, and the dedupe floor then moves (the floor never passes an uncommitted event).
        before = await _settled_snapshot(r, s.redis_prefix, s.close_tick_s)
        await produce(s.kafka_bootstrap, s.input_topic, inputs)
        again = await _drain(s, 2 * len(inputs), timeout=240)
        assert len(again["scored"]) == 2 * len(valid)
        second_pass = Counter(e.window_status for e in again["scored"]) - Counter(
            e.window_status for e in out["scored"]
        )
        # An event older than the dedupe floor (its bucket's seen ids were dropped FINPULSE_DEDUPE_HORIZON_SECONDS
        # of event time behind the lateness cut) is refused as late rather than found duplicate: counted nowhere.
        assert set(second_pass) <= {"duplicate", "late"} and second_pass.total() == len(valid)
        after = await _snapshot(r, s.redis_prefix)
        m0, m1 = before.pop(f"{s.redis_prefix}:metrics"), after.pop(f"{s.redis_prefix}:metrics")
        assert (
            int(m1.get(b"late_past_dedupe_horizon", 0)) - int(m0.get(b"late_past_dedupe_horizon", 0))
            == (second_pass["late"])
        )
        assert m1[b"counted"] == m0[b"counted"]
        assert after == before
        assert len([x for x in again["alerts"] if x["entity"] == BURST_TICKER]) == len(burst_alerts)
    finally:
        stop_process(proc)
        await r.aclose()
        await delete_topics(s.kafka_bootstrap, list(topic_plan(s)))
        await clear_redis_prefix(s)


async def test_two_workers_share_one_truth(
    isolated_settings: StreamSettings, keyword_model_dir: Path, tmp_path: Path
) -> None:
    """Two workers in one consumer group: every event scored, Redis equals the count over both outputs."""
    import socket

    s = isolated_settings.model_copy(
        update={"partitions": 4, "max_batch_size": 16, "max_wait_ms": 50, "bucket_seconds": 3600}
    )
    engine = EngineSettings(backend="torch", model_dir=keyword_model_dir, max_batch_size=16)
    events = read_events(_stream_file(s), since="2015-03-01T00:00:00Z", limit=240)
    await ensure_topics(s.kafka_bootstrap, topic_plan(s))
    procs = []
    try:
        for i in range(2):
            with socket.socket() as sock:
                sock.bind(("127.0.0.1", 0))
                port = sock.getsockname()[1]
            ws = s.model_copy(update={"worker_web_port": port})
            log_path = tmp_path / f"worker{i}.log"
            p = start_worker_process(ws, engine, log_path)
            procs.append(p)
            await asyncio.to_thread(wait_worker_ready, p, port, log_path, 180)
        await produce(s.kafka_bootstrap, s.input_topic, events)
        out = await _drain(s, len(events), timeout=240)
        assert {e.id for e in out["scored"]} == {str(e["id"]) for e in events}
        counted = [e for e in out["scored"] if e.window_status == "counted"]
        # At least once: a rebalance may re-deliver, but an id is counted once, never twice.
        assert sorted(e.id for e in counted) == sorted({e.id for e in counted})
        r = Redis.from_url(s.redis_url)
        try:
            for t in {t for e in counted for t in e.tickers}:
                total = await r.hgetall(f"{s.redis_prefix}:tot:ticker:{t}")
                want = Counter(
                    SENTIMENT_FIELDS[["negative", "neutral", "positive"].index(e.sentiment.label)]
                    for e in counted
                    if t in e.tickers
                )
                got = {k.decode(): int(v) for k, v in total.items() if k != b"ssum"}
                assert {k: v for k, v in got.items() if k not in ("nn", "nneg")} == {**want, "n": sum(want.values())}
                assert 0 < got["nn"] <= got["n"] and got.get("nneg", 0) <= min(got["nn"], got.get("neg", 0))
        finally:
            await r.aclose()
    finally:
        for p in procs:
            stop_process(p)
        await delete_topics(s.kafka_bootstrap, list(topic_plan(s)))
        await clear_redis_prefix(s)
