"""Security settings and helpers (issue 14): Kafka/Redis client arguments, redaction, tokens, pseudonyms, DLQ."""

from __future__ import annotations

import base64
import ssl
from pathlib import Path
from typing import Any

import orjson
import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr, ValidationError

from api.app import TOKEN_COOKIE, create_app
from api.settings import ApiSettings
from stream.metrics import WorkerMetrics
from stream.processor import _preview
from stream.security import (
    PSEUDONYM_RE,
    bearer_token_ok,
    describe_kafka_security,
    explain_kafka_error,
    faust_auth_kwargs,
    kafka_client_kwargs,
    pseudonym_key,
    pseudonymise,
    redact_url,
    redis_connection_kwargs,
)
from stream.settings import StreamSettings
from tests.support.certs import Pki, make_pki


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


# --- settings --------------------------------------------------------------------------------------
def test_redis_url_credentials_move_into_secret_fields() -> None:
    s = StreamSettings(redis_url="rediss://bob:s3cr%40t@redis.example:6380/2")
    assert s.redis_url == "rediss://redis.example:6380/2"
    assert s.redis_username == "bob" and s.redis_password is not None
    assert s.redis_password.get_secret_value() == "s3cr@t"
    for shown in (repr(s), str(s), s.model_dump_json()):
        assert "s3cr" not in shown


def test_contradicting_or_incomplete_settings_are_refused_with_the_setting_named(pki: Pki) -> None:
    with pytest.raises(ValidationError, match="FINPULSE_REDIS_URL"):
        StreamSettings(redis_url="redis://:a@h/0", redis_password=SecretStr("b"))
    with pytest.raises(ValidationError, match="FINPULSE_KAFKA_USERNAME"):
        StreamSettings(kafka_security_protocol="SASL_SSL")
    with pytest.raises(ValidationError, match="FINPULSE_KAFKA_SSL_KEYFILE"):
        StreamSettings(kafka_security_protocol="SSL", kafka_ssl_certfile=pki.client_cert)
    with pytest.raises(ValidationError, match="rediss"):
        StreamSettings(redis_ssl_ca_file=pki.ca)


def test_settings_from_environment(monkeypatch: pytest.MonkeyPatch, pki: Pki) -> None:
    monkeypatch.setenv("FINPULSE_KAFKA_SECURITY_PROTOCOL", "SASL_SSL")
    monkeypatch.setenv("FINPULSE_KAFKA_USERNAME", "svc")
    monkeypatch.setenv("FINPULSE_KAFKA_PASSWORD", "pw-from-env")
    monkeypatch.setenv("FINPULSE_KAFKA_SSL_CAFILE", str(pki.ca))
    monkeypatch.setenv("FINPULSE_WORKER_METRICS_TOKENS", '["m1", "m2"]')
    s = StreamSettings()
    assert s.kafka_password is not None and s.kafka_password.get_secret_value() == "pw-from-env"
    assert [t.get_secret_value() for t in s.worker_metrics_tokens] == ["m1", "m2"]
    assert "pw-from-env" not in repr(s)


# --- Kafka -----------------------------------------------------------------------------------------
def test_plaintext_and_bare_bootstrap() -> None:
    assert kafka_client_kwargs("h:1") == {"bootstrap_servers": "h:1"}
    assert kafka_client_kwargs(StreamSettings(kafka_bootstrap="h:2")) == {
        "bootstrap_servers": "h:2",
        "security_protocol": "PLAINTEXT",
    }
    assert faust_auth_kwargs(StreamSettings()) == {}


def test_sasl_ssl_scram_kwargs(pki: Pki) -> None:
    s = StreamSettings(
        kafka_security_protocol="SASL_SSL",
        kafka_username="svc",
        kafka_password=SecretStr("pw"),
        kafka_ssl_cafile=pki.ca,
    )
    kw = kafka_client_kwargs(s)
    assert kw["security_protocol"] == "SASL_SSL" and kw["sasl_mechanism"] == "SCRAM-SHA-512"
    assert kw["sasl_plain_username"] == "svc" and kw["sasl_plain_password"] == "pw"
    ctx = kw["ssl_context"]
    assert isinstance(ctx, ssl.SSLContext) and ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname

    from faust.auth import SASLCredentials
    from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth

    fa = faust_auth_kwargs(s)
    creds = fa["broker_credentials"]
    assert isinstance(creds, SASLCredentials) and "pw" not in repr(creds)
    # What Faust hands aiokafka for its producer and consumers: the same protocol, mechanism and login.
    auth = credentials_to_aiokafka_auth(creds, fa.get("ssl_context"))
    assert auth["security_protocol"] == "SASL_SSL" and auth["sasl_mechanism"] == "SCRAM-SHA-512"
    assert auth["sasl_plain_password"] == "pw" and auth["ssl_context"] is not None
    assert describe_kafka_security(s) == "SASL_SSL SCRAM-SHA-512 as 'svc'"


def test_mutual_tls_and_plain_kwargs(pki: Pki) -> None:
    s = StreamSettings(
        kafka_security_protocol="SSL",
        kafka_ssl_cafile=pki.ca,
        kafka_ssl_certfile=pki.client_cert,
        kafka_ssl_keyfile=pki.client_key,
    )
    kw = kafka_client_kwargs(s)
    assert kw["security_protocol"] == "SSL" and "sasl_mechanism" not in kw
    assert "client certificate" in describe_kafka_security(s)
    plain = StreamSettings(
        kafka_security_protocol="SASL_SSL", kafka_sasl_mechanism="PLAIN", kafka_username="u", kafka_password="p"
    )
    assert kafka_client_kwargs(plain)["sasl_mechanism"] == "PLAIN"


def test_missing_certificate_file_names_the_setting(tmp_path: Path) -> None:
    from stream.security import SecurityConfigError

    s = StreamSettings(kafka_security_protocol="SSL", kafka_ssl_cafile=tmp_path / "nope.pem")
    with pytest.raises(SecurityConfigError, match="FINPULSE_KAFKA_SSL_CAFILE"):
        kafka_client_kwargs(s)


def test_explain_kafka_error_finds_the_cause_and_never_a_password() -> None:
    err = ssl.SSLCertVerificationError(1, "certificate verify failed")
    err.verify_message = "self-signed certificate in certificate chain"
    wrapped = ConnectionError("Unable to bootstrap")
    wrapped.__cause__ = err
    assert "not trusted" in explain_kafka_error(wrapped)
    auth = RuntimeError("SaslAuthenticationFailed: Authentication failed ... url redis://u:hunter2@h/0")
    msg = explain_kafka_error(auth)
    assert msg.startswith("kafka: authentication refused") and "hunter2" not in msg


# --- Redis -----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://u:pw@h:1/0", "redis://u:***@h:1/0"),
        ("rediss://:pw@h/0", "rediss://:***@h/0"),
        ("redis://h:6379/0", "redis://h:6379/0"),
        ("redis://u:p%40ss@[::1]:7/0", "redis://u:***@[::1]:7/0"),
    ],
)
def test_redact_url(url: str, shown: str) -> None:
    assert redact_url(url) == shown


def test_redis_kwargs_acl_user_and_tls(pki: Pki) -> None:
    s = StreamSettings(
        redis_url="rediss://127.0.0.1:6380/0",
        redis_username="finpulse",
        redis_password=SecretStr("pw"),
        redis_ssl_ca_file=pki.ca,
    )
    kw = redis_connection_kwargs(s)
    assert kw["username"] == "finpulse" and kw["password"] == "pw"
    assert kw["ssl_cert_reqs"] == "required" and kw["ssl_ca_certs"] == str(pki.ca)
    assert redis_connection_kwargs(StreamSettings()) == {}  # plain redis:// gets no TLS arguments


# --- tokens ----------------------------------------------------------------------------------------
def test_bearer_token_ok() -> None:
    toks = [SecretStr("alpha"), SecretStr("beta")]
    assert bearer_token_ok(None, [])  # nothing configured: open
    assert bearer_token_ok("Bearer beta", toks) and bearer_token_ok("bearer alpha", toks)
    assert not bearer_token_ok(None, toks) and not bearer_token_ok("Bearer gamma", toks)
    assert not bearer_token_ok("Basic alpha", toks)
    assert bearer_token_ok(None, toks, fallbacks=(None, "alpha"))


@pytest.fixture()
def token_client(tmp_path: Path) -> Any:
    import api.app as api_app
    from tests.unit.test_api import FakeRedis

    static = tmp_path / "static"
    static.mkdir()
    (static / "index.html").write_text("<html>dash</html>")
    old = api_app.STATIC_DIR
    api_app.STATIC_DIR = static
    try:
        app = create_app(
            StreamSettings(kafka_bootstrap="127.0.0.1:9"),
            ApiSettings(tokens=[SecretStr("tok-1"), SecretStr("tok-2")]),
            redis=FakeRedis(),
        )
    finally:
        api_app.STATIC_DIR = old
    with TestClient(app) as c:
        yield c


def test_api_tokens_guard_v1_dashboard_and_static_not_healthz(token_client: TestClient) -> None:
    c = token_client
    for url in ["/", "/static/index.html", "/v1/alerts", "/v1/entities"]:
        r = c.get(url)
        assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Bearer"), url
    assert c.get("/v1/alerts", headers={"Authorization": "Bearer tok-2"}).status_code == 200
    assert c.get("/v1/alerts", headers={"Authorization": "Bearer nope"}).status_code == 401
    assert c.get("/v1/alerts?token=tok-1").status_code == 401  # a query token counts on the page only
    health = c.get("/healthz")
    assert health.status_code in (200, 503) and "tok-" not in health.text


def test_dashboard_token_link_sets_a_cookie_and_drops_the_token(token_client: TestClient) -> None:
    c = token_client
    assert c.get("/?token=wrong", follow_redirects=False).status_code == 401
    r = c.get("/?token=tok-1&min_count=5", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "./?min_count=5"
    cookie = r.headers["set-cookie"]
    assert cookie.startswith(f"{TOKEN_COOKIE}=tok-1") and "HttpOnly" in cookie and "SameSite=strict" in cookie
    # The browser now carries the cookie: the page and its API calls pass.
    assert c.get("/").status_code == 200 and c.get("/v1/alerts").status_code == 200


# --- pseudonyms -------------------------------------------------------------------------------------
def test_pseudonyms_are_keyed() -> None:
    a = pseudonymise("12345", b"key-one")
    assert PSEUDONYM_RE.match(a) and a == pseudonymise("12345", b"key-one")
    assert a != pseudonymise("12345", b"key-two")  # without the key, candidates cannot be tested
    assert a != pseudonymise("12346", b"key-one")


def test_generated_pseudonym_key_is_private_and_stable(tmp_path: Path) -> None:
    s = StreamSettings(local_dir=tmp_path)
    k = pseudonym_key(s)
    assert len(k) == 32 and pseudonym_key(s) == k
    assert (tmp_path / "pseudonym.key").stat().st_mode & 0o777 == 0o600
    assert pseudonym_key(StreamSettings(local_dir=tmp_path, pseudonym_key=SecretStr("set"))) == b"set"


def test_replay_pseudonymises_with_the_key_and_ids_do_not_hash_the_raw_author() -> None:
    import hashlib

    from stream.cli.replay.source import derive_id
    from stream.cli.replay.source import pseudonymise as replay_pseudonymise

    p = replay_pseudonymise("alice")
    assert PSEUDONYM_RE.match(p)
    raw_based = "h_" + hashlib.sha256("\x1f".join(("", "t", "alice", "1")).encode()).hexdigest()[:24]
    assert derive_id("t", None, p, 1) != raw_based


# --- dead letters ----------------------------------------------------------------------------------
def test_preview_is_a_short_text_prefix() -> None:
    assert _preview(("é" * 100).encode(), 64) == "é" * 64
    assert _preview(b"\xff\xfe binary", 64) is None
    assert _preview(b"short", 0) is None


async def test_dead_letter_keeps_raw_bytes_only_when_configured() -> None:
    from stream.processor import BatchProcessor, RawMessage

    sent: list[bytes] = []

    class Sink:
        async def send_dead_letters(self, records: Any) -> None:
            sent.extend(v for _, v in records)

    for keep in (True, False):
        sent.clear()
        proc = BatchProcessor.__new__(BatchProcessor)
        proc.settings = StreamSettings(dlq_keep_raw=keep, dlq_preview_chars=64)
        proc.sink = Sink()  # type: ignore[assignment]
        proc.prom = WorkerMetrics()
        proc._retry = lambda op, fn: fn()  # type: ignore[method-assign,assignment,return-value]
        value = b'{"text": "' + b"x" * 600 + b'"}'
        await proc._dead_letter([(RawMessage(value, b"k", "in", 0, 7, None), "bad", "why")])
        dl = orjson.loads(sent[0])
        assert len(dl["value_preview"]) == 64
        assert (
            (dl["value_b64"] is not None and base64.b64decode(dl["value_b64"]) == value)
            if keep
            else (dl["value_b64"] is None)
        )


def test_every_redis_command_of_the_scripts_is_in_the_tested_acl() -> None:
    """A command a script starts to use must reach the ACL that the secured tests (and the README) give the
    worker's Redis user; otherwise a deployment with a restricted user fails halfway through a script."""
    import re

    from tests.support.secure_services import REDIS_ALLOWED_COMMANDS

    allowed = {c.lstrip("+").split("|")[0].upper() for c in REDIS_ALLOWED_COMMANDS.split()}
    lua = Path(__file__).resolve().parents[2] / "stream" / "lua"
    used = {m.upper() for f in lua.glob("*.lua") for m in re.findall(r"redis\.call\('(\w+)'", f.read_text())}
    assert used, "no redis.call found: the pattern no longer matches the scripts"
    assert used - allowed == set()
