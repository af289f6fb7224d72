"""A real single-node Apache Kafka (KRaft) from Maven Central jars, without Docker.

``infra/kafka/pom.xml`` resolves ``org.apache.kafka:kafka_2.13`` with its runtime dependencies and a
log4j2 binding into one classpath folder, and the broker is started as
``java -cp 'libs/*' kafka.Kafka server.properties`` in combined broker+controller mode.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog
from pydantic import SecretStr

from finpulse.paths import PROJECT_ROOT
from stream.local.process import LocalService, ServiceError, parse_host_port, run_checked
from stream.security import kafka_client_kwargs
from stream.settings import StreamSettings

log = structlog.get_logger(__name__)

KAFKA_INFRA_DIR = PROJECT_ROOT / "infra" / "kafka"
KAFKA_POM = KAFKA_INFRA_DIR / "pom.xml"
KAFKA_LOG4J2 = KAFKA_INFRA_DIR / "log4j2.properties"


@dataclass(frozen=True)
class BrokerSecurity:
    """A secured local broker: a SASL_SSL listener on the bootstrap port (SCRAM-SHA-512 and PLAIN) and,
    optionally, a mutual-TLS listener (``SSL``, client certificate required) on ``mtls_port``.

    SCRAM users are created by Kafka's own ``StorageTool format --add-scram`` (KRaft keeps them in its
    metadata log); PLAIN users live in the listener's JAAS line. The first SCRAM user is also the
    broker's own inter-broker login. The controller listener stays PLAINTEXT on loopback.
    """

    keystore: Path  # PKCS12: the broker's key and certificate chain
    keystore_password: SecretStr
    truststore: Path  # PEM: the CA whose client certificates the mTLS listener accepts
    scram_users: Mapping[str, SecretStr]
    plain_users: Mapping[str, SecretStr] = field(default_factory=dict)
    mtls_port: int | None = None


class LocalKafka(LocalService):
    """A single combined broker+controller KRaft node from Maven Central jars.

    Layout under ``settings.kafka_dir``: ``libs/`` (classpath, with a ``.finpulse-stamp`` naming
    the version), ``server.properties`` and ``data/`` (log.dirs, formatted once).
    """

    name = "kafka"
    cmdline_marker = "kafka.Kafka"
    _STAMP = ".finpulse-stamp"

    def __init__(self, settings: StreamSettings | None = None, security: BrokerSecurity | None = None) -> None:
        super().__init__(settings)
        self.security = security

    @property
    def host(self) -> str:
        return parse_host_port(self.settings.kafka_bootstrap, 9092)[0]

    @property
    def port(self) -> int:
        return parse_host_port(self.settings.kafka_bootstrap, 9092)[1]

    @property
    def controller_port(self) -> int:
        """KRaft controller listener port (``kafka_controller_port``)."""
        return self.settings.kafka_controller_port

    @property
    def version(self) -> str:
        """Kafka version resolved from Maven Central (``kafka_version``)."""
        return self.settings.kafka_version

    @property
    def libs_dir(self) -> Path:
        """Classpath folder filled by Maven."""
        return self.settings.kafka_dir / "libs"

    @property
    def data_dir(self) -> Path:
        """``log.dirs`` (also the KRaft metadata log)."""
        return self.settings.kafka_dir / "data"

    @property
    def config_path(self) -> Path:
        """The generated ``server.properties``."""
        return self.settings.kafka_dir / "server.properties"

    def _workdir(self) -> Path:
        return self.settings.kafka_dir

    # --- install -------------------------------------------------------------------------
    def installed(self) -> bool:
        """Whether ``libs/`` holds a complete classpath for the configured version."""
        stamp = self.libs_dir / self._STAMP
        try:
            if stamp.read_text().strip() != self.version:
                return False
        except OSError:
            return False
        # The stamp is written last, but also check the jars that must be there.
        return all(
            (self.libs_dir / jar).is_file()
            for jar in (f"kafka_2.13-{self.version}.jar", f"kafka-clients-{self.version}.jar")
        ) and any(self.libs_dir.glob("log4j-slf4j-impl-*.jar"))

    def ensure_installed(self) -> None:
        """Resolve the broker jars with Maven once per version (a second call downloads nothing).

        Maven copies into a temporary folder that replaces ``libs/`` only when complete, so an
        interrupted download never leaves a half classpath (or jars of two versions) behind.
        """
        if shutil.which("java") is None:
            raise ServiceError(self.name, "java not found on PATH (Kafka 4.x needs Java 17+)")
        if self.installed():
            return
        mvn = shutil.which("mvn")
        if mvn is None:
            raise ServiceError(self.name, "mvn not found on PATH: apt-get install -y maven")
        self.settings.kafka_dir.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix="libs-", dir=self.settings.kafka_dir))
        t0 = time.monotonic()
        try:
            run_checked(
                self.name,
                [
                    mvn,
                    "-q",
                    "-B",
                    "-Dstyle.color=never",
                    "-f",
                    str(KAFKA_POM),
                    "dependency:copy-dependencies",
                    f"-Dkafka.version={self.version}",
                    f"-Dkafka.libs={staging}",
                ],
                log_path=self.settings.log_dir / "kafka-install.log",
                what=f"maven resolution of kafka_2.13:{self.version}",
            )
            (staging / self._STAMP).write_text(f"{self.version}\n")
            if self.libs_dir.exists():
                shutil.rmtree(self.libs_dir)
            staging.chmod(0o755)  # mkdtemp makes it 0700
            staging.replace(self.libs_dir)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        log.info(
            "kafka jars installed",
            version=self.version,
            libs=str(self.libs_dir),
            jars=len(list(self.libs_dir.glob("*.jar"))),
            took_s=round(time.monotonic() - t0, 1),
        )

    # --- configure -----------------------------------------------------------------------
    def server_properties(self) -> dict[str, str]:
        """The broker configuration for a single local KRaft node."""
        host, port, ctrl = self.host, self.port, self.controller_port
        return {
            # Combined mode: one JVM is both the KRaft controller quorum and the broker.
            "process.roles": "broker,controller",
            "node.id": "1",
            "controller.quorum.bootstrap.servers": f"{host}:{ctrl}",
            "listeners": f"PLAINTEXT://{host}:{port},CONTROLLER://{host}:{ctrl}",
            "advertised.listeners": f"PLAINTEXT://{host}:{port}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
            "log.dirs": str(self.data_dir),
            # One broker: every internal topic must have replication factor 1 or it is never
            # created (and consumer groups / transactions hang).
            "default.replication.factor": "1",
            "min.insync.replicas": "1",
            "offsets.topic.replication.factor": "1",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "share.coordinator.state.topic.replication.factor": "1",
            "share.coordinator.state.topic.min.isr": "1",
            # Fewer internal partitions than the 50 default: the first group join creates
            # __consumer_offsets, which is much faster with 8 partitions on a small box.
            "offsets.topic.num.partitions": "8",
            "transaction.state.log.num.partitions": "8",
            # Tests and the worker join groups constantly; the 3 s default delay only slows them.
            "group.initial.rebalance.delay.ms": "0",
            # Topics are created explicitly (ensure_topics) with the partition counts we want;
            # auto-creation would silently make 1-partition topics on a typo.
            "auto.create.topics.enable": "false",
            "num.partitions": "1",
            "delete.topic.enable": "true",
            # Small machine: keep thread pools low.
            "num.network.threads": "2",
            "num.io.threads": "4",
            "background.threads": "4",
            "num.recovery.threads.per.data.dir": "1",
            "num.replica.fetchers": "1",
            "log.cleaner.threads": "1",
            # Local dev data: a day of retention and 64 MiB segments, so old data can actually
            # be deleted (retention drops whole closed segments only).
            "log.retention.hours": "24",
            "log.segment.bytes": str(64 * 1024 * 1024),
            "log.retention.check.interval.ms": "300000",
        }

    def _secured_properties(self, sec: BrokerSecurity) -> dict[str, str]:
        """Listener, TLS and SASL properties of a secured broker (see :class:`BrokerSecurity`)."""
        if not sec.scram_users:
            raise ServiceError(self.name, "a secured broker needs at least one SCRAM user (its inter-broker login)")
        host, port, ctrl = self.host, self.port, self.controller_port
        admin, admin_pw = next(iter(sec.scram_users.items()))
        listeners = [f"SASL_SSL://{host}:{port}", f"CONTROLLER://{host}:{ctrl}"]
        advertised = [f"SASL_SSL://{host}:{port}"]
        protocol_map = ["CONTROLLER:PLAINTEXT", "SASL_SSL:SASL_SSL"]
        if sec.mtls_port is not None:
            listeners.insert(1, f"SSL://{host}:{sec.mtls_port}")
            advertised.append(f"SSL://{host}:{sec.mtls_port}")
            protocol_map.append("SSL:SSL")

        def jaas(value: str) -> str:
            return value.replace("\\", "\\\\").replace('"', '\\"')

        plain = {admin: admin_pw, **sec.plain_users}
        plain_users = " ".join(f'user_{u}="{jaas(p.get_secret_value())}"' for u, p in plain.items())
        return {
            "listeners": ",".join(listeners),
            "advertised.listeners": ",".join(advertised),
            "listener.security.protocol.map": ",".join(protocol_map),
            "inter.broker.listener.name": "SASL_SSL",
            "sasl.enabled.mechanisms": "SCRAM-SHA-512,PLAIN",
            "sasl.mechanism.inter.broker.protocol": "SCRAM-SHA-512",
            "listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config": (
                "org.apache.kafka.common.security.scram.ScramLoginModule required "
                f'username="{jaas(admin)}" password="{jaas(admin_pw.get_secret_value())}";'
            ),
            "listener.name.sasl_ssl.plain.sasl.jaas.config": (
                "org.apache.kafka.common.security.plain.PlainLoginModule required "
                f'username="{jaas(admin)}" password="{jaas(admin_pw.get_secret_value())}" {plain_users};'
            ),
            "ssl.keystore.type": "PKCS12",
            "ssl.keystore.location": str(sec.keystore),
            "ssl.keystore.password": sec.keystore_password.get_secret_value(),
            "ssl.key.password": sec.keystore_password.get_secret_value(),
            "ssl.truststore.type": "PEM",
            "ssl.truststore.location": str(sec.truststore),
            # Only the SSL listener demands a client certificate (mutual TLS); SASL_SSL authenticates by password.
            "listener.name.ssl.ssl.client.auth": "required",
            "ssl.enabled.protocols": "TLSv1.3,TLSv1.2",
        }

    def _write_config(self) -> None:
        lines = ["# Written by stream/local/kafka.py; edits are overwritten on start."]
        props = self.server_properties()
        if self.security is not None:
            props.update(self._secured_properties(self.security))
        lines += [f"{k}={v}" for k, v in props.items()]
        self.config_path.parent.mkdir(parents=True, exist_ok=True)
        # 0600 from the start: a secured broker's file holds its keystore and JAAS passwords.
        fd = os.open(self.config_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write("\n".join(lines) + "\n")
        os.chmod(self.config_path, 0o600)

    def _java(self, main_class: str, *args: str, heap: str | None = None) -> list[str]:
        java = shutil.which("java") or "java"
        argv = [java]
        if heap:
            # Without -Xmx the JVM takes a quarter of RAM.
            argv += [f"-Xmx{heap}", "-XX:+UseG1GC", "-XX:MaxGCPauseMillis=20", "-XX:+ExplicitGCInvokesConcurrent"]
        else:
            # One-shot tools: small heap, no JIT warm-up cost worth paying.
            argv += ["-Xmx256m", "-XX:TieredStopAtLevel=1"]
        argv += [
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={KAFKA_LOG4J2}",
            f"-Dkafka.logs.dir={self.settings.log_dir}",
            "-cp",
            f"{self.libs_dir}/*",
            main_class,
            *args,
        ]
        return argv

    def format_storage(self) -> bool:
        """Format ``data/`` for KRaft once (new cluster id); returns whether it formatted."""
        if (self.data_dir / "meta.properties").exists():
            return False
        install_log = self.settings.log_dir / "kafka-install.log"
        cluster_id = (
            run_checked(
                self.name,
                self._java("kafka.tools.StorageTool", "random-uuid"),
                log_path=install_log,
                what="StorageTool random-uuid",
                timeout=120,
            )
            .strip()
            .splitlines()[-1]
            .strip()
        )
        self.data_dir.mkdir(parents=True, exist_ok=True)
        # SCRAM credentials go into the KRaft metadata at format time (there is no ZooKeeper to hold them, and
        # the broker could not start its SASL inter-broker login without them). Only the salted hash is stored.
        scram: list[str] = []
        for user, pw in self.security.scram_users.items() if self.security else ():
            scram += ["--add-scram", f"SCRAM-SHA-512=[name={user},password={pw.get_secret_value()}]"]
        run_checked(
            self.name,
            self._java(
                "kafka.tools.StorageTool",
                "format",
                "--standalone",
                "-t",
                cluster_id,
                "-c",
                str(self.config_path),
                *scram,
            ),
            log_path=install_log,
            what="StorageTool format",
            timeout=120,
        )
        log.info("kafka storage formatted", cluster_id=cluster_id, data=str(self.data_dir))
        return True

    def _prepare(self) -> list[str]:
        self._write_config()
        self.format_storage()
        return self._java("kafka.Kafka", str(self.config_path), heap=self.settings.kafka_heap)

    async def ping(self, timeout: float = 5.0) -> None:
        """A metadata request through aiokafka's admin client (proves the broker serves)."""
        from aiokafka.admin import AIOKafkaAdminClient

        admin = AIOKafkaAdminClient(**kafka_client_kwargs(self.settings), request_timeout_ms=int(timeout * 1000))
        try:
            async with asyncio.timeout(timeout):
                await admin.start()
                await admin.list_topics()
        finally:
            await admin.close()

    def reset_data(self) -> None:
        """Delete ``data/`` (all topics and the cluster id); only while stopped."""
        if self.is_running():
            raise ServiceError(self.name, "refusing to wipe data while the broker runs")
        shutil.rmtree(self.data_dir, ignore_errors=True)

    def status(self) -> dict[str, Any]:
        """Like the base status, plus version, controller port and install state."""
        return {
            **super().status(),
            "version": self.version,
            "controller_port": self.controller_port,
            "installed": self.installed(),
            "data": str(self.data_dir),
        }
