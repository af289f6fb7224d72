"""Issue 14 against real secured services: SASL_SSL SCRAM-SHA-512 Kafka (plus PLAIN and mutual TLS) and a TLS
redis-server whose ACL user may touch only its prefix and the worker's commands.

One secured broker and one secured Redis per test session (tests/support/secure_services.py, own ports,
fresh certificates); the shared 9092/6379 are never touched.
"""

from __future__ import annotations

import asyncio
import socket
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from aiokafka import AIOKafkaConsumer
from pydantic import SecretStr
from redis.exceptions import AuthenticationError, NoPermissionError, ResponseError

from engine.settings import EngineSettings
from stream.cli.replay import produce
from stream.cli.status import group_status
from stream.cli.supervise import start_worker_process, stop_process, wait_worker_ready
from stream.security import diagnose_kafka, kafka_client_kwargs, redis_from_settings
from stream.settings import StreamSettings
from stream.topics import delete_topics, ensure_topics
from stream.worker import topic_plan, wait_for_kafka
from tests.support.secure_services import (
    KAFKA_PLAIN_USER,
    KAFKA_USER,
    REDIS_PREFIX,
    REDIS_USER,
    SECURE_KAFKA_MTLS_PORT,
    SecureStack,
    start_secure_stack,
)

pytestmark = [pytest.mark.secure, pytest.mark.kafka, pytest.mark.redis, pytest.mark.timeout(300)]

SECRETS = (KAFKA_USER[1], REDIS_USER[1], "test-pseudonym-key", "metrics-token-1")


@pytest.fixture(scope="module")
def stack() -> Iterator[SecureStack]:
    st = start_secure_stack()
    try:
        yield st
    finally:
        st.stop()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _isolated(stack: SecureStack) -> StreamSettings:
    tag = uuid.uuid4().hex[:8]
    return stack.settings.model_copy(
        update={
            "input_topic": f"sec.{tag}.events",
            "scored_topic": f"sec.{tag}.scored",
            "alerts_topic": f"sec.{tag}.alerts",
            "dlq_topic": f"sec.{tag}.dlq",
            "consumer_group": f"sec-{tag}",
            "redis_prefix": f"{REDIS_PREFIX}:{tag}",  # inside the ACL user's key pattern
            "worker_web_port": _free_port(),
            "partitions": 2,
            "worker_metrics_tokens": [SecretStr("metrics-token-1")],
        }
    )


async def _read(s: StreamSettings, topics: list[str], want: int, timeout: float) -> list[Any]:
    consumer = AIOKafkaConsumer(*topics, **kafka_client_kwargs(s), group_id=None, auto_offset_reset="earliest")
    await consumer.start()
    out: list[Any] = []
    try:
        async with asyncio.timeout(timeout):
            while len(out) < want:
                for msgs in (await consumer.getmany(timeout_ms=500)).values():
                    out += msgs
    finally:
        await consumer.stop()
    return out


def _get(url: str, token: str | None = None) -> tuple[int, bytes]:
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


@pytest.mark.slow
async def test_pipeline_end_to_end_on_secured_kafka_and_redis(
    stack: SecureStack, keyword_model_dir: Path, tmp_path: Path
) -> None:
    s = _isolated(stack)
    engine = EngineSettings(backend="torch", model_dir=keyword_model_dir, max_batch_size=32)
    events = [
        {"id": f"e{i}", "text": f"shares of $ACME rose {i}", "published_at": f"2024-03-01T10:{i:02d}:00Z"}
        for i in range(20)
    ]
    bad = b'{"not": "an event", "text_is_missing": "' + b"x" * 300 + b'"}'
    await ensure_topics(s, topic_plan(s))
    log_path = tmp_path / "worker.log"
    proc = start_worker_process(s, engine, log_path)
    r = redis_from_settings(s)
    try:
        health = await asyncio.to_thread(wait_worker_ready, proc, s.worker_web_port, log_path, 180)
        assert health["status"] in ("ok", "warming_up") or health["kafka"] is True
        await produce(s, s.input_topic, [*events, bad])  # the replay's producer, SASL_SSL SCRAM-SHA-512
        got = await _read(s, [s.scored_topic, s.dlq_topic], len(events) + 1, timeout=120)
        scored = [orjson.loads(m.value) for m in got if m.topic == s.scored_topic]
        dlq = [orjson.loads(m.value) for m in got if m.topic == s.dlq_topic]
        assert {e["id"] for e in scored} == {e["id"] for e in events}
        assert len(dlq) == 1 and len(dlq[0]["value_preview"]) == 64 and dlq[0]["value_b64"]
        # Windows written through TLS by the ACL user, under its prefix only.
        keys = [k async for k in r.scan_iter(match=f"{s.redis_prefix}:*", count=1000)]
        assert any(b":b:ticker:ACME:" in k for k in keys)

        # /metrics wants the token; /health stays open and shows no secret.
        url = f"http://127.0.0.1:{s.worker_web_port}"
        assert _get(f"{url}/metrics")[0] == 401
        code, body = _get(f"{url}/metrics", "metrics-token-1")
        assert code == 200 and b"finpulse_events_scored_total 20.0" in body
        code, body = _get(f"{url}/health")
        assert code == 200 and orjson.loads(body)["kafka"] is True
        # `finpulse status` reads the group's offsets through the secured admin client and consumer.
        st = await group_status(s, s.consumer_group, s.input_topic, interval_s=0)
        assert st is not None
    finally:
        stop_process(proc)
        await r.aclose()
        await delete_topics(s, list(topic_plan(s)))
    text = log_path.read_text(errors="replace") + body.decode(errors="replace")
    for secret in SECRETS:
        assert secret not in text, "a secret reached the worker's log or /health"


@pytest.mark.parametrize(
    ("change", "expect"),
    [
        ({"kafka_password": SecretStr("wrong-password")}, "authentication refused"),
        ({"kafka_ssl_cafile": "other_ca"}, "not trusted"),
    ],
    ids=["wrong-password", "untrusted-certificate"],
)
async def test_refused_kafka_keeps_the_worker_up_and_health_says_why(
    stack: SecureStack, change: dict[str, Any], expect: str
) -> None:
    if change.get("kafka_ssl_cafile") == "other_ca":
        change = {"kafka_ssl_cafile": stack.pki.other_ca}
    s = _isolated(stack).model_copy(update=change)
    waiting = asyncio.create_task(wait_for_kafka(s, topic_plan(s), first_delay_s=0.5, max_delay_s=1.0))
    try:
        async with httpx.AsyncClient() as http:
            body: dict[str, Any] = {}
            for _ in range(60):
                await asyncio.sleep(0.25)
                try:
                    resp = await http.get(f"http://127.0.0.1:{s.worker_web_port}/health")
                except httpx.ConnectError:
                    continue
                body = resp.json()
                if body.get("attempts", 0) >= 3:
                    break
            assert resp.status_code == 503 and body["status"] == "waiting_for_kafka"
            assert expect in body["degraded_reasons"][0] and body["attempts"] >= 3  # retried, never crashed
            assert not waiting.done()
            assert all(secret not in resp.text for secret in ("wrong-password", KAFKA_USER[1]))
    finally:
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting


async def test_plain_and_mutual_tls_logins(stack: SecureStack) -> None:
    s = stack.settings
    plain = s.model_copy(
        update={
            "kafka_sasl_mechanism": "PLAIN",
            "kafka_username": KAFKA_PLAIN_USER[0],
            "kafka_password": SecretStr(KAFKA_PLAIN_USER[1]),
        }
    )
    mtls = s.model_copy(
        update={
            "kafka_security_protocol": "SSL",
            "kafka_bootstrap": f"127.0.0.1:{SECURE_KAFKA_MTLS_PORT}",
            "kafka_ssl_certfile": stack.pki.client_cert,
            "kafka_ssl_keyfile": stack.pki.client_key,
        }
    )
    for ok in (plain, mtls):
        assert await diagnose_kafka(ok) is None
        assert await ensure_topics(ok, {f"sec.{uuid.uuid4().hex[:6]}": 1}) != []
    no_cert = mtls.model_copy(update={"kafka_ssl_certfile": None, "kafka_ssl_keyfile": None})
    reason = await diagnose_kafka(no_cert)
    assert reason is not None and "TLS" in reason


async def test_redis_acl_user_is_held_to_its_prefix_and_commands(stack: SecureStack) -> None:
    """Redis 7.0 checks every redis.call inside a script against the user's key patterns and commands, even
    though the worker's scripts declare no keys (they build them from ARGV): EVAL itself passes, the
    call inside is refused."""
    s = stack.settings
    r = redis_from_settings(s)
    try:
        assert await r.eval("return redis.call('set', ARGV[1], 'x')", 0, f"{REDIS_PREFIX}:probe") == b"OK"
        with pytest.raises(ResponseError, match="can't access at least one of the keys"):
            await r.eval("return redis.call('set', ARGV[1], 'x')", 0, "someone-else:probe")
        with pytest.raises(ResponseError, match="can't run this command"):
            await r.eval("return redis.call('flushall')", 0)
        for cmd in (("FLUSHALL",), ("CONFIG", "GET", "requirepass"), ("KEYS", "*")):
            with pytest.raises(NoPermissionError):
                await r.execute_command(*cmd)
        with pytest.raises(NoPermissionError):
            await r.get("someone-else:key")
    finally:
        await r.aclose()
    wrong = redis_from_settings(s.model_copy(update={"redis_password": SecretStr("not-the-password")}))
    try:
        with pytest.raises(AuthenticationError) as err:
            await wrong.ping()
        assert "not-the-password" not in str(err.value)
    finally:
        await wrong.aclose()
