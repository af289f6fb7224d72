"""A secured Kafka broker and a secured redis-server of the security tests' own (never the shared 9092/6379).

Kafka: SASL_SSL on ``SECURE_KAFKA_PORT`` (SCRAM-SHA-512 and PLAIN; users created with Kafka's own
``StorageTool --add-scram`` at format time) and a mutual-TLS listener on ``SECURE_KAFKA_MTLS_PORT``.
Redis: TLS only (``port 0``), with the default user disabled and an ACL user that may touch only the
``finpulse``-style test prefix and run only the commands the worker and the API need.

Certificates are generated fresh for every test session (tests/support/certs.py); the broker jars are
the main local classpath, linked, not downloaded again.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from pydantic import SecretStr

from stream.local import LocalKafka
from stream.local.kafka import BrokerSecurity
from stream.local.process import port_open
from stream.settings import StreamSettings, get_settings
from tests.support.certs import Pki, make_pki
from tests.support.kafka_jars import link_main_jars

REPO_ROOT = Path(__file__).resolve().parents[2]
SECURE_DIR = REPO_ROOT / ".local" / "secure"
SECURE_KAFKA_PORT = 29092
SECURE_KAFKA_CONTROLLER_PORT = 29093
SECURE_KAFKA_MTLS_PORT = 29094
SECURE_REDIS_PORT = 26379

KAFKA_ADMIN = ("admin", "admin-scram-pw")
KAFKA_USER = ("finpulse", "finpulse-scram-pw")
KAFKA_PLAIN_USER = ("plainuser", "plain-pw")
REDIS_USER = ("finpulse", "redis-acl-pw-never-logged")
REDIS_PREFIX = "fpsec"

# What the worker and the API run against Redis, and nothing else. EVALSHA/EVAL run the window scripts;
# SCRIPT LOAD installs them; the rest are the few direct reads and writes outside Lua (health, trends,
# the API's entity index, tests' own clean-up of their prefix).
REDIS_ALLOWED_COMMANDS = (
    "+ping +hello +auth +client|setname +select +info "
    "+eval +evalsha +script|load +script|exists "
    "+get +set +mget +hget +hgetall +hmget +hset +hincrby +zrange +zrevrange +zrangebyscore +zrevrangebyscore "
    "+zcard +zscore +zadd +zrem +exists +expire +pexpire +del +unlink +ttl +pttl +type +scan "
    "+hsetnx +hvals +hdel +sadd +srem +smembers"
)


@dataclass
class SecureStack:
    """The running secured services and how to reach them."""

    pki: Pki
    kafka: LocalKafka
    redis_proc: subprocess.Popen[bytes] | None
    settings: StreamSettings  # SASL_SSL SCRAM-SHA-512 as the finpulse user; rediss:// as the ACL user

    def stop(self) -> None:
        self.kafka.stop()
        if self.redis_proc is not None and self.redis_proc.poll() is None:
            self.redis_proc.terminate()
            self.redis_proc.wait(10)


def secure_settings(pki: Pki) -> StreamSettings:
    """Client settings for the secured stack (a copy of the environment's, ports and security replaced)."""
    base = get_settings()
    return base.model_copy(
        update={
            "local_dir": SECURE_DIR,
            "kafka_bootstrap": f"127.0.0.1:{SECURE_KAFKA_PORT}",
            "kafka_controller_port": SECURE_KAFKA_CONTROLLER_PORT,
            "kafka_security_protocol": "SASL_SSL",
            "kafka_sasl_mechanism": "SCRAM-SHA-512",
            "kafka_username": KAFKA_USER[0],
            "kafka_password": SecretStr(KAFKA_USER[1]),
            "kafka_ssl_cafile": pki.ca,
            "kafka_ssl_certfile": None,
            "kafka_ssl_keyfile": None,
            "redis_url": f"rediss://127.0.0.1:{SECURE_REDIS_PORT}/0",
            "redis_username": REDIS_USER[0],
            "redis_password": SecretStr(REDIS_USER[1]),
            "redis_ssl_ca_file": pki.ca,
            "redis_prefix": REDIS_PREFIX,
            "pseudonym_key": SecretStr("test-pseudonym-key"),
        }
    )


def start_secure_kafka(pki: Pki, settings: StreamSettings) -> LocalKafka:
    """A fresh secured broker (data wiped: SCRAM users are created at format time)."""
    sec = BrokerSecurity(
        keystore=pki.server_p12,
        keystore_password=SecretStr(pki.p12_password),
        truststore=pki.ca,
        scram_users={KAFKA_ADMIN[0]: SecretStr(KAFKA_ADMIN[1]), KAFKA_USER[0]: SecretStr(KAFKA_USER[1])},
        plain_users={KAFKA_PLAIN_USER[0]: SecretStr(KAFKA_PLAIN_USER[1])},
        mtls_port=SECURE_KAFKA_MTLS_PORT,
    )
    kafka = LocalKafka(settings.model_copy(update={"kafka_heap": "512m"}), security=sec)
    kafka.stop()  # what an earlier session left behind (only ever our own pid file)
    if port_open("127.0.0.1", SECURE_KAFKA_PORT):
        raise RuntimeError(f"port {SECURE_KAFKA_PORT} is taken by something the security tests did not start")
    shutil.rmtree(kafka.data_dir, ignore_errors=True)
    link_main_jars(kafka)
    kafka.start(wait=True, timeout=120)
    return kafka


def _stop_leftover_redis(pid_file: Path) -> None:
    """Terminate the redis-server an interrupted earlier session of these tests left (its pid file only)."""
    try:
        pid = int(pid_file.read_text().strip())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError):
        return
    if b"redis-server" in cmdline and str(SECURE_REDIS_PORT).encode() in cmdline:
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
            time.sleep(0.05)


def start_secure_redis(pki: Pki, folder: Path) -> subprocess.Popen[bytes]:
    """redis-server with TLS only and an ACL user limited to ``REDIS_PREFIX:*`` and the needed commands."""
    folder.mkdir(parents=True, exist_ok=True)
    acl = folder / "users.acl"
    user, pw = REDIS_USER
    acl.write_text(
        "user default off\n"  # no anonymous access at all
        f"user {user} on >{pw} resetkeys ~{REDIS_PREFIX}:* resetchannels -@all {REDIS_ALLOWED_COMMANDS}\n"
    )
    acl.chmod(0o600)
    conf = folder / "redis.conf"
    fd = os.open(conf, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(
            "\n".join(
                [
                    "port 0",  # no plaintext port
                    f"tls-port {SECURE_REDIS_PORT}",
                    "bind 127.0.0.1",
                    f"tls-cert-file {pki.server_cert}",
                    f"tls-key-file {pki.server_key}",
                    f"tls-ca-cert-file {pki.ca}",
                    "tls-auth-clients no",  # clients prove themselves with the ACL password
                    f"aclfile {acl}",
                    f"dir {folder}",
                    'save ""',
                    "appendonly no",
                    'logfile ""',
                ]
            )
            + "\n"
        )
    _stop_leftover_redis(folder / "redis.pid")
    if port_open("127.0.0.1", SECURE_REDIS_PORT):
        raise RuntimeError(f"port {SECURE_REDIS_PORT} is taken by something the security tests did not start")
    log = open(folder / "redis.log", "wb")  # noqa: SIM115 - handed to the child, closed with it
    proc = subprocess.Popen(["redis-server", str(conf)], stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    (folder / "redis.pid").write_text(f"{proc.pid}\n")
    deadline = time.monotonic() + 20
    while not port_open("127.0.0.1", SECURE_REDIS_PORT):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"secured redis-server did not start: {(folder / 'redis.log').read_text()[-2000:]}")
        time.sleep(0.05)
    return proc


def start_secure_stack() -> SecureStack:
    """PKI, secured Kafka and secured Redis, ready."""
    pki = make_pki(SECURE_DIR / "pki")
    settings = secure_settings(pki)
    redis_proc = start_secure_redis(pki, SECURE_DIR / "redis")
    try:
        kafka = start_secure_kafka(pki, settings)
    except BaseException:
        redis_proc.terminate()
        raise
    return SecureStack(pki, kafka, redis_proc, settings)
