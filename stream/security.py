"""Connection security for every Kafka and Redis client the project makes, and keyed pseudonyms.

One place turns :class:`stream.settings.StreamSettings` into client arguments, so the worker (Faust),
the topic admin, the replay, ``finpulse alerts``/``status``, the benchmarks and the API's alert tail
all connect the same way (TLS, SASL PLAIN / SCRAM, mutual TLS) and none can forget the credentials.

Secrets stay :class:`pydantic.SecretStr` until the very call that needs them, and every URL that
could reach a log or a page goes through :func:`redact_url` first.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
import ssl
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import unquote, urlsplit, urlunsplit

from pydantic import SecretStr

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from stream.settings import StreamSettings


class SecurityConfigError(ValueError):
    """A security setting is missing, contradicts another one or names an unreadable file."""

    def __init__(self, setting: str, message: str) -> None:
        super().__init__(f"{setting}: {message}")
        self.setting = setting


# --- Kafka -----------------------------------------------------------------------------------------
def kafka_ssl_context(s: StreamSettings) -> ssl.SSLContext | None:
    """The TLS context for SSL / SASL_SSL (None for plaintext protocols).

    Verification is always on: a CA file (``kafka_ssl_cafile``) replaces the system store; without one
    the system store is used. A client certificate and key (``kafka_ssl_certfile``/``keyfile``) make it
    mutual TLS.
    """
    if s.kafka_security_protocol not in ("SSL", "SASL_SSL"):
        return None
    return _client_ssl_context(
        "FINPULSE_KAFKA_SSL",
        s.kafka_ssl_cafile,
        s.kafka_ssl_certfile,
        s.kafka_ssl_keyfile,
        s.kafka_ssl_key_password.get_secret_value() if s.kafka_ssl_key_password else None,
        s.kafka_ssl_check_hostname,
    )


def _client_ssl_context(
    prefix: str,
    cafile: Path | None,
    certfile: Path | None,
    keyfile: Path | None,
    key_password: str | None,
    check_hostname: bool,
) -> ssl.SSLContext:
    for name, path in (("CAFILE", cafile), ("CERTFILE", certfile), ("KEYFILE", keyfile)):
        if path is not None and not Path(path).is_file():
            raise SecurityConfigError(f"{prefix}_{name}", f"no such file: {path}")
    try:
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(cafile) if cafile else None)
        ctx.check_hostname = check_hostname
        if certfile is not None:
            ctx.load_cert_chain(str(certfile), str(keyfile) if keyfile else None, password=key_password)
    except (ssl.SSLError, OSError) as exc:
        # Names the setting but never the key password.
        raise SecurityConfigError(prefix, f"cannot load the CA or client certificate/key: {exc}") from exc
    return ctx


def kafka_security_kwargs(s: StreamSettings) -> dict[str, Any]:
    """aiokafka client keyword arguments for the configured protocol (no ``bootstrap_servers``)."""
    out: dict[str, Any] = {"security_protocol": s.kafka_security_protocol}
    ctx = kafka_ssl_context(s)
    if ctx is not None:
        out["ssl_context"] = ctx
    if s.kafka_security_protocol.startswith("SASL_"):
        assert s.kafka_password is not None  # checked by StreamSettings' validator
        out.update(
            sasl_mechanism=s.kafka_sasl_mechanism,
            sasl_plain_username=s.kafka_username,
            sasl_plain_password=s.kafka_password.get_secret_value(),
        )
    return out


def kafka_client_kwargs(target: str | StreamSettings) -> dict[str, Any]:
    """``bootstrap_servers`` plus security arguments for ``AIOKafkaProducer/Consumer/AdminClient``.

    A bare string is a PLAINTEXT bootstrap (tests and tools pointed at an explicit local broker);
    production callers pass the settings, so a secured deployment secures every client.
    """
    if isinstance(target, str):
        return {"bootstrap_servers": target}
    return {"bootstrap_servers": target.kafka_bootstrap, **kafka_security_kwargs(target)}


def kafka_bootstrap_of(target: str | StreamSettings) -> str:
    """The ``host:port`` list of a target (for messages: it holds no secret)."""
    return target if isinstance(target, str) else target.kafka_bootstrap


def faust_auth_kwargs(s: StreamSettings) -> dict[str, Any]:
    """``faust.App`` keyword arguments (``broker_credentials`` / ``ssl_context``) for the same security."""
    from faust.auth import SASLCredentials, SSLCredentials

    proto = s.kafka_security_protocol
    if proto == "PLAINTEXT":
        return {}
    ctx = kafka_ssl_context(s)
    if proto == "SSL":
        assert ctx is not None
        return {"broker_credentials": SSLCredentials(ctx), "ssl_context": ctx}
    assert s.kafka_password is not None
    creds = SASLCredentials(
        username=s.kafka_username,
        password=s.kafka_password.get_secret_value(),
        ssl_context=ctx,  # None: SASL_PLAINTEXT; a context: SASL_SSL (Faust picks the protocol from it)
        mechanism=s.kafka_sasl_mechanism,
    )
    return {"broker_credentials": creds, **({"ssl_context": ctx} if ctx is not None else {})}


def describe_kafka_security(s: StreamSettings) -> str:
    """One line for logs and /health: protocol, mechanism and user, never the password."""
    proto = s.kafka_security_protocol
    parts: list[str] = [proto]
    if proto.startswith("SASL_"):
        parts.append(f"{s.kafka_sasl_mechanism} as {s.kafka_username!r}")
    if proto in ("SSL", "SASL_SSL") and s.kafka_ssl_certfile is not None:
        parts.append("client certificate")
    return " ".join(parts)


def explain_kafka_error(exc: BaseException, s: StreamSettings | None = None) -> str:
    """A short, secret-free reason for a failed Kafka connection: auth refused, TLS refused, or unreachable.

    aiokafka reports a refused SASL login as ``KafkaConnectionError`` wrapping the broker's message
    and a TLS failure as an ``ssl.SSLError`` somewhere in the cause chain; both are looked for here so
    /health and the logs can say *why* instead of "no broker".
    """
    chain: list[BaseException] = []
    cur: BaseException | None = exc
    while cur is not None and len(chain) < 8:
        chain.append(cur)
        cur = cur.__cause__ or cur.__context__
    text = " | ".join(f"{type(e).__name__}: {e}" for e in chain)
    how = f" ({describe_kafka_security(s)})" if s is not None else ""
    for e in chain:
        if isinstance(e, ssl.SSLCertVerificationError):
            return f"kafka: TLS refused, the broker certificate is not trusted{how}: {e.verify_message}"
        if isinstance(e, ssl.SSLError):
            return f"kafka: TLS handshake failed{how}: {e.reason or e}"
    lowered = text.lower()
    if "authentication failed" in lowered or "sasl" in lowered or "illegal sasl state" in lowered:
        return f"kafka: authentication refused{how}: {_scrub(text)[:300]}"
    if "certificate" in lowered or "ssl" in lowered:
        return f"kafka: TLS failed{how}: {_scrub(text)[:300]}"
    return f"kafka: unreachable{how}: {_scrub(text)[:300]}"


async def diagnose_kafka(s: StreamSettings, timeout: float = 5.0) -> str | None:
    """Why the configured brokers refuse us, or None when the first one accepts a connection and login.

    aiokafka's bootstrap only logs the real cause (a refused SASL login, an untrusted certificate) and
    raises a bare "Unable to bootstrap"; one direct connection through ``aiokafka.conn.create_conn``
    (what the bootstrap does, minus the swallowing) gets the cause back for /health and the logs.
    """
    import asyncio

    from aiokafka.conn import create_conn

    kwargs = kafka_security_kwargs(s)
    last: str | None = None
    for entry in s.kafka_bootstrap.split(","):
        host, _, port = entry.strip().rpartition(":")
        try:
            conn = await asyncio.wait_for(
                create_conn(host or entry, int(port or 9092), request_timeout_ms=int(timeout * 1000), **kwargs),
                timeout,
            )
        except Exception as exc:  # noqa: BLE001 - the point is to describe whatever went wrong
            last = explain_kafka_error(exc, s)
            if s.kafka_security_protocol == "SSL" and s.kafka_ssl_certfile is None and "closed" in last:
                last += " (the broker may require a client certificate: FINPULSE_KAFKA_SSL_CERTFILE/KEYFILE)"
            continue
        conn.close()
        return None
    return last


# --- Redis -----------------------------------------------------------------------------------------
_URL_PASSWORD = re.compile(r"(?P<scheme>[a-z][a-z0-9+.-]*://)(?P<user>[^:@/\s]*):(?P<pw>[^@/\s]*)@", re.IGNORECASE)


def redact_url(url: str) -> str:
    """``url`` with any password replaced by ``***`` (user names are kept: they help and are not secret)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return _URL_PASSWORD.sub(r"\g<scheme>\g<user>:***@", url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{parts.username or ''}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def _scrub(text: str) -> str:
    """Passwords of any URL inside a free-form error message replaced by ``***``."""
    return _URL_PASSWORD.sub(r"\g<scheme>\g<user>:***@", text)


def split_url_credentials(url: str) -> tuple[str, str | None, str | None]:
    """``(url without user:password, user, password)``: settings keep the password out of the URL."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url, None, None
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = host + (f":{parts.port}" if parts.port else "")
    clean = urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))
    # Percent-decoded, as redis-py reads URL credentials (a password may hold '@' or ':' written as %40, %3A).
    return (
        clean,
        unquote(parts.username) if parts.username else None,
        unquote(parts.password) if parts.password else None,
    )


def redis_connection_kwargs(s: StreamSettings) -> dict[str, Any]:
    """``Redis.from_url`` keyword arguments: ACL user, password and, for ``rediss://``, the TLS files."""
    out: dict[str, Any] = {}
    if s.redis_username:
        out["username"] = s.redis_username
    if s.redis_password is not None and s.redis_password.get_secret_value():
        out["password"] = s.redis_password.get_secret_value()
    if urlsplit(s.redis_url).scheme == "rediss":
        for name, path in (("CA_FILE", s.redis_ssl_ca_file), ("CERT_FILE", s.redis_ssl_cert_file)):
            if path is not None and not Path(path).is_file():
                raise SecurityConfigError(f"FINPULSE_REDIS_SSL_{name}", f"no such file: {path}")
        out["ssl_cert_reqs"] = "required"  # never "none": an unverified TLS connection protects nothing
        out["ssl_check_hostname"] = s.redis_ssl_check_hostname
        if s.redis_ssl_ca_file is not None:
            out["ssl_ca_certs"] = str(s.redis_ssl_ca_file)
        if s.redis_ssl_cert_file is not None:
            out["ssl_certfile"] = str(s.redis_ssl_cert_file)
            out["ssl_keyfile"] = str(s.redis_ssl_key_file) if s.redis_ssl_key_file else None
    return out


def redis_from_settings(s: StreamSettings, **client_kwargs: Any) -> Redis:
    """An asyncio Redis client with the configured ACL user, password and TLS (plus ``client_kwargs``).

    With ``redis_cluster`` it is a ``RedisCluster`` that starts from the node in ``redis_url`` and follows
    the slot map; it answers the same commands (typed as ``Redis`` so callers need not care).
    """
    from redis.asyncio import Redis

    if s.redis_cluster:
        from redis.asyncio.cluster import RedisCluster

        # health_check_interval is a per-connection option of the single-node client only.
        kwargs = {k: v for k, v in client_kwargs.items() if k != "health_check_interval"}
        return cast(Redis, RedisCluster.from_url(s.redis_url, **redis_connection_kwargs(s), **kwargs))
    return Redis.from_url(s.redis_url, **redis_connection_kwargs(s), **client_kwargs)


# --- personal data ---------------------------------------------------------------------------------
#: A keyed pseudonym: ``p_`` and 20 hex digits (80 bits of HMAC-SHA256). The old unkeyed form was ``u_`` + 12.
PSEUDONYM_RE = re.compile(r"^p_[0-9a-f]{20}$")
_PSEUDONYM_KEY_FILE = "pseudonym.key"


def pseudonymise(user_id: str, key: bytes) -> str:
    """A stable pseudonym of ``user_id`` under ``key`` (HMAC-SHA256, 80 bits kept).

    Keyed, so that nobody without the key can test candidate user ids against it (an unkeyed hash
    can be reversed by hashing every known user id). 80 bits keep accidental collisions negligible
    (about one in a million at a billion authors).
    """
    if not key:
        raise SecurityConfigError("FINPULSE_PSEUDONYM_KEY", "the pseudonym key is empty")
    return "p_" + hmac.new(key, user_id.encode("utf-8", "surrogatepass"), hashlib.sha256).hexdigest()[:20]


def pseudonym_key(s: StreamSettings) -> bytes:
    """The HMAC key: ``pseudonym_key`` when set, else a random key kept in ``<local_dir>/pseudonym.key``.

    The generated key (32 random bytes, file mode 0600) keeps one machine's pseudonyms stable across
    runs without any configuration; deployments that pseudonymise on several machines must share one
    key through the setting, or the same author gets different pseudonyms.
    """
    if s.pseudonym_key is not None:
        return s.pseudonym_key.get_secret_value().encode()
    path = Path(s.local_dir) / _PSEUDONYM_KEY_FILE
    try:
        return bytes.fromhex(path.read_text().strip())
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    key = secrets.token_bytes(32)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another process made it first: use theirs
        return bytes.fromhex(path.read_text().strip())
    with os.fdopen(fd, "w") as fh:
        fh.write(key.hex() + "\n")
    return key


# --- HTTP bearer tokens ----------------------------------------------------------------------------
def bearer_token_ok(
    authorization: str | None, tokens: list[SecretStr], *, fallbacks: tuple[str | None, ...] = ()
) -> bool:
    """Whether a request may pass: no tokens configured, or ``Authorization: Bearer <t>`` (or one of
    ``fallbacks``, e.g. a cookie) equals one of them. Compared in constant time (no early exit), so timing
    does not leak a token's prefix."""
    if not tokens:
        return True
    offered: list[str] = []
    if authorization:
        scheme, _, value = authorization.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            offered.append(value.strip())
    offered += [f for f in fallbacks if f]
    ok = False
    for candidate in offered:
        for t in tokens:
            # No early exit: every configured token is compared, whatever matches.
            ok |= hmac.compare_digest(candidate.encode(), t.get_secret_value().encode())
    return ok
