"""Run a real single-node Apache Kafka (KRaft) and a Redis on this machine, without Docker.

Kafka comes from Maven Central: ``infra/kafka/pom.xml`` resolves ``org.apache.kafka:kafka_2.13``
with its runtime dependencies and a log4j2 binding into one classpath folder, and the broker is
started as ``java -cp 'libs/*' kafka.Kafka server.properties`` in combined broker+controller mode.
Redis is the Debian ``redis-server`` binary (installed with apt when missing).

Both services are started detached (own process session, output to ``<log_dir>/<name>.log``) and
tracked with a pid file in ``<run_dir>``, so a later process can stop what an earlier one started.
``start()`` is a no-op when something already answers on the configured port, and returns whether
it started the service, so callers stop only what they started::

    services = LocalServices()
    started = services.start()            # {"kafka": True, "redis": False}
    ...
    services.stop([n for n, s in started.items() if s])

All paths and ports come from :func:`stream.settings.get_settings`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import structlog

from stream.settings import PROJECT_ROOT, StreamSettings, get_settings

log = structlog.get_logger(__name__)

T = TypeVar("T")

KAFKA_INFRA_DIR = PROJECT_ROOT / "infra" / "kafka"
KAFKA_POM = KAFKA_INFRA_DIR / "pom.xml"
KAFKA_LOG4J2 = KAFKA_INFRA_DIR / "log4j2.properties"

# Rotate a service's stdout log at start once it is this big, so repeated dev runs stay bounded.
_LOG_ROTATE_BYTES = 20 * 1024 * 1024
_LOG_TAIL_LINES = 20
# Written to a service log before each start, so a failure excerpt covers the last run only.
_START_MARKER = "===== "


class ServiceError(RuntimeError):
    """A local service could not be installed, started, reached or stopped.

    The message names the service and its log file and, where there is one, ends with the last
    lines of that log, because the log is where the JVM/redis says why it failed.
    """

    def __init__(self, service: str, message: str, log_path: Path | None = None) -> None:
        self.service = service
        self.log_path = log_path
        text = f"{service}: {message}"
        if log_path is not None:
            text += f" (log: {log_path})"
            first = first_error(log_path)
            tail = tail_file(log_path, _LOG_TAIL_LINES)
            if first and first not in tail:
                # A JVM failure usually ends in a long stack trace; the first ERROR says why.
                text += f"\n--- first error of the last run ---\n{first}"
            if tail:
                text += f"\n--- last {_LOG_TAIL_LINES} lines of {log_path.name} ---\n{tail}"
        super().__init__(text)


# --------------------------------------------------------------------------------------------
# small helpers
# --------------------------------------------------------------------------------------------


def tail_file(path: Path, lines: int = _LOG_TAIL_LINES) -> str:
    """The last ``lines`` lines of a text file, or ``""`` when it does not exist."""
    try:
        with path.open("r", encoding="utf-8", errors="replace") as fh:
            return "".join(deque(fh, maxlen=lines)).rstrip("\n")
    except OSError:
        return ""


def first_error(path: Path, context: int = 1) -> str:
    """The first ERROR/FATAL line (plus ``context`` lines) after the last start marker."""
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return ""
    starts = [i for i, line in enumerate(lines) if line.startswith(_START_MARKER)]
    run = lines[starts[-1] + 1:] if starts else lines
    for i, line in enumerate(run):
        if " ERROR " in line or " FATAL " in line or line.startswith("Error"):
            return "\n".join(run[i:i + 1 + context])
    return ""


def parse_host_port(address: str, default_port: int) -> tuple[str, int]:
    """``"host:port"`` (first entry of a comma-separated bootstrap list) as a tuple."""
    first = address.split(",")[0].strip()
    if first.startswith("["):  # [ipv6]:port
        host, _, rest = first[1:].partition("]")
        return host, int(rest.lstrip(":") or default_port)
    host, sep, port = first.rpartition(":")
    if not sep:
        return first, default_port
    return host or "127.0.0.1", int(port)


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    """Whether something accepts TCP connections on ``host:port``."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _pid_alive(pid: int) -> bool:
    """Whether ``pid`` is a live (not zombie) process."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    # A dead child not yet reaped still answers kill(0); /proc tells zombies apart.
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def _pid_cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _run_blocking(factory: Callable[[], Awaitable[T]]) -> T:
    """Run a coroutine from sync code, also when the caller is already inside an event loop.

    ``asyncio.run`` refuses to nest, so inside a running loop (pytest-asyncio, a Faust app) the
    coroutine runs on a fresh loop in a worker thread instead.
    """

    async def _main() -> T:
        return await factory()

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(_main())
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, _main()).result()


def _run_checked(service: str, argv: list[str], *, log_path: Path, cwd: Path | None = None,
                 timeout: float = 600.0, what: str) -> str:
    """Run a short command to completion, appending its output to ``log_path``; stdout returned."""
    log.info("run", service=service, what=what, argv=" ".join(argv))
    log_path.parent.mkdir(parents=True, exist_ok=True)
    try:
        proc = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL, check=False)
    except FileNotFoundError as exc:
        raise ServiceError(service, f"{what}: {argv[0]} not found") from exc
    except subprocess.TimeoutExpired as exc:
        raise ServiceError(service, f"{what} took longer than {timeout:.0f}s", log_path) from exc
    with log_path.open("a", encoding="utf-8") as fh:
        fh.write(f"$ {' '.join(argv)}\n{proc.stdout}{proc.stderr}")
    if proc.returncode != 0:
        raise ServiceError(service, f"{what} failed with exit code {proc.returncode}", log_path)
    return proc.stdout


def _rotate(path: Path) -> None:
    if path.exists() and path.stat().st_size > _LOG_ROTATE_BYTES:
        path.replace(path.with_name(path.name + ".1"))


# --------------------------------------------------------------------------------------------
# shared process handling
# --------------------------------------------------------------------------------------------


class _LocalService:
    """Pid-file based lifecycle shared by Kafka and Redis: detached start, is_running, stop."""

    name: str = "service"
    #: a substring of the process command line, to tell our process from a recycled pid
    cmdline_marker: str = ""

    def __init__(self, settings: StreamSettings | None = None) -> None:
        self.settings = settings or get_settings()
        # Kept when this object started the process, so it can be reaped (no zombie) on stop.
        self._proc: subprocess.Popen[bytes] | None = None

    # --- to be provided by subclasses ----------------------------------------------------
    @property
    def host(self) -> str:
        """Host the service listens on."""
        raise NotImplementedError

    @property
    def port(self) -> int:
        """Port the service listens on."""
        raise NotImplementedError

    def ensure_installed(self) -> None:
        """Make the service's binaries available (idempotent)."""
        raise NotImplementedError

    def _prepare(self) -> list[str]:
        """Write config files, return the argv that runs the service in the foreground."""
        raise NotImplementedError

    async def ping(self, timeout: float = 5.0) -> None:
        """One real request to the service; raises when it does not answer properly."""
        raise NotImplementedError

    # --- paths ---------------------------------------------------------------------------
    @property
    def pid_file(self) -> Path:
        """``<run_dir>/<name>.pid``: the pid of the process this module started."""
        return self.settings.run_dir / f"{self.name}.pid"

    @property
    def log_path(self) -> Path:
        """``<log_dir>/<name>.log``: the service's stdout and stderr."""
        return self.settings.log_dir / f"{self.name}.log"

    # --- state ---------------------------------------------------------------------------
    def managed_pid(self) -> int | None:
        """Pid from our pid file when that process is still alive and is this service."""
        try:
            pid = int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return None
        if not _pid_alive(pid):
            return None
        cmdline = _pid_cmdline(pid)
        if cmdline and self.cmdline_marker and self.cmdline_marker not in cmdline:
            return None  # the pid was recycled by an unrelated process
        return pid

    def answering(self) -> bool:
        """Whether something accepts TCP connections on the service port."""
        return port_open(self.host, self.port)

    def is_running(self) -> bool:
        """True when our process is alive or anything answers on the service port."""
        return self.managed_pid() is not None or self.answering()

    def status(self) -> dict[str, Any]:
        """A small JSON-able summary: pid (ours), port state, log file."""
        pid = self.managed_pid()
        return {
            "service": self.name,
            "address": f"{self.host}:{self.port}",
            "answering": self.answering(),
            "managed": pid is not None,
            "pid": pid,
            "log": str(self.log_path),
        }

    # --- lifecycle -----------------------------------------------------------------------
    def start(self, *, wait: bool = True, timeout: float = 60.0) -> bool:
        """Start the service detached unless it is already up.

        Returns ``True`` only when this call launched the process; ``False`` when the port
        already answers (whoever started it) or our earlier process is still alive. With ``wait``
        it also blocks until :meth:`wait_ready` succeeds (raising :class:`ServiceError` if not).
        """
        pid = self.managed_pid()
        if pid is not None or self.answering():
            log.info("already running", service=self.name, pid=pid, port=self.port)
            if wait:
                self.wait_ready(timeout)
            return False
        self.pid_file.unlink(missing_ok=True)  # stale: its process is gone
        self.ensure_installed()
        argv = self._prepare()
        for folder in (self.settings.run_dir, self.settings.log_dir):
            folder.mkdir(parents=True, exist_ok=True)
        _rotate(self.log_path)
        with self.log_path.open("ab") as out:
            stamp = time.strftime("%Y-%m-%d %H:%M:%S")
            out.write(f"{_START_MARKER}{stamp} starting {self.name} =====\n".encode())
            out.flush()
            # Own session: the service survives the launching process and its Ctrl-C, and
            # stop() can signal the whole process group.
            self._proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True, cwd=self._workdir(), close_fds=True,
            )
        self.pid_file.write_text(f"{self._proc.pid}\n")
        log.info("started", service=self.name, pid=self._proc.pid, port=self.port, log=str(self.log_path))
        if wait:
            self.wait_ready(timeout)
        return True

    def _workdir(self) -> Path:
        return self.settings.local_dir

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Block until the service answers a real request; :class:`ServiceError` otherwise.

        Fails early (with the log tail) if the process we started has exited.
        """
        _run_blocking(lambda: self.wait_ready_async(timeout))

    async def wait_ready_async(self, timeout: float = 60.0) -> None:
        """Async form of :meth:`wait_ready`, for callers already inside an event loop."""
        t0 = time.monotonic()
        deadline = t0 + timeout
        last_error: BaseException | None = None
        while True:
            if self.pid_file.exists() and self.managed_pid() is None and not self.answering():
                self.pid_file.unlink(missing_ok=True)
                raise ServiceError(self.name, "process exited during startup", self.log_path)
            if self.answering():
                try:
                    await self.ping(timeout=max(1.0, min(10.0, deadline - time.monotonic())))
                    log.info("ready", service=self.name, port=self.port,
                             waited_s=round(time.monotonic() - t0, 2))
                    return
                except Exception as exc:  # any failure means "not ready yet"
                    last_error = exc
            if time.monotonic() >= deadline:
                ours = self.managed_pid() is not None
                raise ServiceError(
                    self.name,
                    f"not ready on {self.host}:{self.port} after {timeout:.0f}s"
                    + (f" (last error: {last_error!r})" if last_error else "")
                    + ("" if ours else "; the process on that port was not started by us"),
                    # Our log says nothing about a process someone else started.
                    self.log_path if ours else None,
                )
            await asyncio.sleep(0.25)

    def stop(self, timeout: float = 30.0) -> bool:
        """Stop the process this module started (per the pid file): SIGTERM, then SIGKILL.

        Returns ``True`` when a process was stopped. A service that answers on the port but was
        not started by us (no live pid file) is left alone.
        """
        pid = self.managed_pid()
        if pid is None:
            self.pid_file.unlink(missing_ok=True)
            if self.answering():
                log.info("not ours, leaving it running", service=self.name, port=self.port)
            return False
        log.info("stopping", service=self.name, pid=pid)
        self._signal(pid, signal.SIGTERM)
        if not self._wait_exit(pid, timeout):
            log.warning("did not stop in time, killing", service=self.name, pid=pid, timeout_s=timeout)
            self._signal(pid, signal.SIGKILL)
            if not self._wait_exit(pid, 10.0):
                raise ServiceError(self.name, f"pid {pid} survived SIGKILL", self.log_path)
        self.pid_file.unlink(missing_ok=True)
        exit_code = self._proc.returncode if self._proc is not None and self._proc.pid == pid else None
        self._proc = None
        log.info("stopped", service=self.name, pid=pid, exit_code=exit_code)
        return True

    @staticmethod
    def _signal(pid: int, sig: signal.Signals) -> None:
        # The service leads its own session (start_new_session), so signal its whole group.
        try:
            os.killpg(pid, sig)
        except (ProcessLookupError, PermissionError):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)

    def _wait_exit(self, pid: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc is not None and self._proc.pid == pid:
                if self._proc.poll() is not None:  # reaps our own child
                    return True
            elif not _pid_alive(pid):
                return True
            time.sleep(0.1)
        return False


# --------------------------------------------------------------------------------------------
# Kafka
# --------------------------------------------------------------------------------------------


class LocalKafka(_LocalService):
    """A single combined broker+controller KRaft node from Maven Central jars.

    Layout under ``settings.kafka_dir``: ``libs/`` (classpath, with a ``.finpulse-stamp`` naming
    the version), ``server.properties`` and ``data/`` (log.dirs, formatted once).
    """

    name = "kafka"
    cmdline_marker = "kafka.Kafka"
    _STAMP = ".finpulse-stamp"

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
            _run_checked(
                self.name,
                [mvn, "-q", "-B", "-Dstyle.color=never", "-f", str(KAFKA_POM), "dependency:copy-dependencies",
                 f"-Dkafka.version={self.version}", f"-Dkafka.libs={staging}"],
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
        log.info("kafka jars installed", version=self.version, libs=str(self.libs_dir),
                 jars=len(list(self.libs_dir.glob("*.jar"))), took_s=round(time.monotonic() - t0, 1))

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

    def _write_config(self) -> None:
        lines = ["# Written by stream/local/services.py; edits are overwritten on start."]
        lines += [f"{k}={v}" for k, v in self.server_properties().items()]
        self.config_path.parent.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text("\n".join(lines) + "\n")

    def _java(self, main_class: str, *args: str, heap: str | None = None) -> list[str]:
        java = shutil.which("java") or "java"
        argv = [java]
        if heap:
            # Without -Xmx the JVM takes a quarter of RAM.
            argv += [f"-Xmx{heap}", "-XX:+UseG1GC", "-XX:MaxGCPauseMillis=20",
                     "-XX:+ExplicitGCInvokesConcurrent"]
        else:
            # One-shot tools: small heap, no JIT warm-up cost worth paying.
            argv += ["-Xmx256m", "-XX:TieredStopAtLevel=1"]
        argv += [
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={KAFKA_LOG4J2}",
            f"-Dkafka.logs.dir={self.settings.log_dir}",
            "-cp", f"{self.libs_dir}/*",
            main_class, *args,
        ]
        return argv

    def format_storage(self) -> bool:
        """Format ``data/`` for KRaft once (new cluster id); returns whether it formatted."""
        if (self.data_dir / "meta.properties").exists():
            return False
        install_log = self.settings.log_dir / "kafka-install.log"
        cluster_id = _run_checked(
            self.name, self._java("kafka.tools.StorageTool", "random-uuid"),
            log_path=install_log, what="StorageTool random-uuid", timeout=120,
        ).strip().splitlines()[-1].strip()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        _run_checked(
            self.name,
            self._java("kafka.tools.StorageTool", "format", "--standalone", "-t", cluster_id,
                       "-c", str(self.config_path)),
            log_path=install_log, what="StorageTool format", timeout=120,
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

        admin = AIOKafkaAdminClient(bootstrap_servers=self.settings.kafka_bootstrap,
                                    request_timeout_ms=int(timeout * 1000))
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
        return {**super().status(), "version": self.version, "controller_port": self.controller_port,
                "installed": self.installed(), "data": str(self.data_dir)}


# --------------------------------------------------------------------------------------------
# Redis
# --------------------------------------------------------------------------------------------


class LocalRedis(_LocalService):
    """A ``redis-server`` on 127.0.0.1 (port from ``redis_url``) with an append-only file in ``redis_dir``."""

    name = "redis"
    cmdline_marker = "redis-server"

    @property
    def host(self) -> str:
        return "127.0.0.1"

    @property
    def port(self) -> int:
        return urlsplit(self.settings.redis_url).port or 6379

    @property
    def password(self) -> str | None:
        """``redis_password`` if set, else a password embedded in ``redis_url``."""
        if self.settings.redis_password is not None:
            return self.settings.redis_password.get_secret_value() or None
        return urlsplit(self.settings.redis_url).password

    @property
    def config_path(self) -> Path:
        """The generated ``redis.conf`` (mode 0600: it may hold the password)."""
        return self.settings.redis_dir / "redis.conf"

    def _workdir(self) -> Path:
        return self.settings.redis_dir

    def ensure_installed(self) -> None:
        """Install the Debian ``redis-server`` package with apt when it is not on PATH."""
        if shutil.which("redis-server"):
            return
        apt = shutil.which("apt-get")
        if apt is None:
            raise ServiceError(self.name, "redis-server not on PATH and no apt-get to install it")
        install_log = self.settings.log_dir / "redis-install.log"
        prefix = [] if os.geteuid() == 0 else (["sudo", "-n"] if shutil.which("sudo") else [])
        env_argv = ["env", "DEBIAN_FRONTEND=noninteractive"]
        _run_checked(self.name, [*prefix, apt, "update"], log_path=install_log, what="apt-get update")
        _run_checked(self.name, [*prefix, *env_argv, apt, "install", "-y", "--no-install-recommends",
                                 "redis-server"], log_path=install_log, what="apt-get install redis-server")
        if not shutil.which("redis-server"):
            raise ServiceError(self.name, "redis-server still not on PATH after apt-get install", install_log)

    def _prepare(self) -> list[str]:
        self.settings.redis_dir.mkdir(parents=True, exist_ok=True)
        lines = [
            "# Written by stream/local/services.py; edits are overwritten on start.",
            f"port {self.port}",
            "bind 127.0.0.1",
            "protected-mode yes",
            "daemonize no",  # we detach it ourselves and keep the pid
            'logfile ""',    # stdout, which start() sends to <log_dir>/redis.log
            f"dir {self.settings.redis_dir}",
            # Redis holds the windows, the seen-ids (dedupe) and the alert cooldowns and pending
            # buckets: losing them double-counts a replay and loses alerts. AOF makes every
            # acknowledged write survive a crash: with ``always`` Redis fsyncs before it replies, and
            # one batch is one Lua call, so one fsync per batch. ``everysec`` may lose the last
            # second of writes on a crash (the inputs were committed, so that second is not re-counted).
            'save ""',
            "appendonly yes",
            f"appendfsync {self.settings.redis_appendfsync}",
            'appendfilename "finpulse.aof"',
            'appenddirname "appendonly"',
            "aof-use-rdb-preamble yes",
        ]
        password = self.password
        if password:
            lines.append(f"requirepass {password}")
        # The password lives in a 0600 config file, not on the command line where ps shows it.
        fd = os.open(self.config_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write("\n".join(lines) + "\n")
        os.chmod(self.config_path, 0o600)
        return [shutil.which("redis-server") or "redis-server", str(self.config_path)]

    async def ping(self, timeout: float = 5.0) -> None:
        """PING through redis-py (with the configured password)."""
        import redis.asyncio as aioredis

        client = aioredis.Redis(host=self.host, port=self.port, password=self.password,
                                socket_timeout=timeout, socket_connect_timeout=timeout)
        try:
            if not await client.ping():
                raise ConnectionError("PING returned false")
        finally:
            await client.aclose()


# --------------------------------------------------------------------------------------------
# both
# --------------------------------------------------------------------------------------------


class LocalServices:
    """Kafka and Redis together, for the CLI and test fixtures."""

    def __init__(self, settings: StreamSettings | None = None) -> None:
        self.settings = settings or get_settings()
        self.kafka = LocalKafka(self.settings)
        self.redis = LocalRedis(self.settings)

    @property
    def services(self) -> dict[str, _LocalService]:
        """The services by name (``"kafka"``, ``"redis"``)."""
        return {"kafka": self.kafka, "redis": self.redis}

    def _pick(self, names: Iterable[str] | None) -> list[_LocalService]:
        if names is None:
            return list(self.services.values())
        unknown = set(names) - set(self.services)
        if unknown:
            raise ValueError(f"unknown services: {sorted(unknown)}")
        return [self.services[n] for n in names]

    def ensure_installed(self) -> None:
        """Install what each service needs (idempotent)."""
        for svc in self.services.values():
            svc.ensure_installed()

    def start(self, names: Iterable[str] | None = None, *, wait: bool = True,
              timeout: float = 90.0) -> dict[str, bool]:
        """Start the named services (default both); returns ``{name: started_by_this_call}``.

        If one fails, those this call started are stopped again before the error propagates.
        """
        started: dict[str, bool] = {}
        try:
            for svc in self._pick(names):
                started[svc.name] = svc.start(wait=wait, timeout=timeout)
        except BaseException:
            # Do not leave half the stack running behind a failed start.
            self.stop([n for n, s in started.items() if s])
            raise
        return started

    def wait_ready(self, timeout: float = 90.0) -> None:
        """Block until both answer (raises :class:`ServiceError` otherwise)."""
        for svc in self.services.values():
            svc.wait_ready(timeout)

    def is_running(self) -> dict[str, bool]:
        """``{name: running}`` for both."""
        return {name: svc.is_running() for name, svc in self.services.items()}

    def stop(self, names: Iterable[str] | None = None, timeout: float = 30.0) -> dict[str, bool]:
        """Stop the named services we started (default both); ``{name: stopped}``."""
        return {svc.name: svc.stop(timeout) for svc in self._pick(names)}

    def status(self) -> dict[str, dict[str, Any]]:
        """``{name: status dict}`` for both."""
        return {name: svc.status() for name, svc in self.services.items()}
