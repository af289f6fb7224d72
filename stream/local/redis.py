"""A ``redis-server`` on this machine (the Debian package, installed with apt when missing), and a local
Redis Cluster of a few masters for the cluster tests."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path
from urllib.parse import urlsplit

from stream.local.process import LocalService, ServiceError, run_checked


class LocalRedis(LocalService):
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
        run_checked(self.name, [*prefix, apt, "update"], log_path=install_log, what="apt-get update")
        run_checked(
            self.name,
            [*prefix, *env_argv, apt, "install", "-y", "--no-install-recommends", "redis-server"],
            log_path=install_log,
            what="apt-get install redis-server",
        )
        if not shutil.which("redis-server"):
            raise ServiceError(self.name, "redis-server still not on PATH after apt-get install", install_log)

    def _prepare(self) -> list[str]:
        self.settings.redis_dir.mkdir(parents=True, exist_ok=True)
        lines = [
            "# Written by stream/local/redis.py; edits are overwritten on start.",
            f"port {self.port}",
            "bind 127.0.0.1",
            "protected-mode yes",
            "daemonize no",  # we detach it ourselves and keep the pid
            'logfile ""',  # stdout, which start() sends to <log_dir>/redis.log
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

        client = aioredis.Redis(
            host=self.host,
            port=self.port,
            password=self.password,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
        )
        try:
            if not await client.ping():
                raise ConnectionError("PING returned false")
        finally:
            await client.aclose()


class LocalRedisCluster:
    """A throwaway Redis Cluster of ``len(ports)`` masters on 127.0.0.1, no replicas, no persistence.

    For tests and benchmarks of the cluster path: ``redis-server --cluster-enabled yes`` per port (data
    and ``nodes.conf`` under ``folder``), then ``redis-cli --cluster create`` splits the 16,384 slots
    between them. :meth:`stop` ends exactly the processes :meth:`start` started.
    """

    def __init__(self, folder: Path, ports: list[int]) -> None:
        self.folder = folder
        self.ports = ports
        self.procs: list[subprocess.Popen[bytes]] = []

    @property
    def url(self) -> str:
        """A seed node's URL: a cluster client discovers the others from it."""
        return f"redis://127.0.0.1:{self.ports[0]}/0"

    def start(self, timeout: float = 20.0) -> None:
        """Start every node, create the cluster, and wait until each node reports ``cluster_state:ok``."""
        server = shutil.which("redis-server") or "redis-server"
        cli = shutil.which("redis-cli") or "redis-cli"
        try:
            for port in self.ports:
                node_dir = self.folder / str(port)
                node_dir.mkdir(parents=True, exist_ok=True)
                log = open(node_dir / "redis.log", "ab")  # noqa: SIM115 - owned by the child process
                self.procs.append(
                    subprocess.Popen(
                        [
                            server,
                            "--port",
                            str(port),
                            "--bind",
                            "127.0.0.1",
                            "--cluster-enabled",
                            "yes",
                            "--cluster-config-file",
                            str(node_dir / "nodes.conf"),
                            "--dir",
                            str(node_dir),
                            "--save",
                            "",
                            "--appendonly",
                            "no",
                        ],  # fmt: skip
                        stdout=log,
                        stderr=subprocess.STDOUT,
                    )
                )
            deadline = time.monotonic() + timeout
            for port in self.ports:
                while subprocess.run([cli, "-p", str(port), "ping"], capture_output=True).stdout.strip() != b"PONG":
                    if time.monotonic() > deadline:
                        raise ServiceError("redis-cluster", f"node {port} did not answer PING")
                    time.sleep(0.1)
            nodes = [f"127.0.0.1:{p}" for p in self.ports]
            run_checked(
                "redis-cluster",
                [cli, "--cluster", "create", *nodes, "--cluster-replicas", "0", "--cluster-yes"],
                log_path=self.folder / "create.log",
                what="redis-cli --cluster create",
            )
            for port in self.ports:
                while (
                    b"cluster_state:ok"
                    not in subprocess.run([cli, "-p", str(port), "cluster", "info"], capture_output=True).stdout
                ):
                    if time.monotonic() > deadline:
                        raise ServiceError("redis-cluster", f"node {port} never reached cluster_state:ok")
                    time.sleep(0.1)
        except BaseException:
            self.stop()
            raise

    def stop(self, timeout: float = 10.0) -> None:
        """Terminate the nodes this object started (by their own pids)."""
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        self.procs = []
