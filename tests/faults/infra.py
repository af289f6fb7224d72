"""A Kafka broker and a redis-server of the fault suite's own, which its tests may kill and restart.

They must never be the shared instances on 9092/6379 (integration tests and people use those), so
they get their own ports and their own ``local_dir`` (``.local/faults``: data, pid files, logs).
The broker's jars are not downloaded again: ``libs/`` is a symlink to the already-resolved
classpath of the main local Kafka (``.local/kafka/libs``), which ``LocalKafka`` accepts as is.

Kills are ``SIGKILL`` to the service's process group (the services lead their own session); the
data folders stay, so a restart recovers Kafka's log and Redis's append-only file.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import time
from pathlib import Path

from stream.local import LocalKafka, LocalServices
from stream.settings import StreamSettings, get_settings
from tests.support.kafka_jars import link_main_jars

REPO_ROOT = Path(__file__).resolve().parents[2]

FAULT_KAFKA_PORT = 19092
FAULT_KAFKA_CONTROLLER_PORT = 19093
FAULT_REDIS_PORT = 16379


def fault_base_settings() -> StreamSettings:
    """The suite's own ports and local folder; everything else as the environment says."""
    base = get_settings()
    return base.model_copy(
        update={
            "kafka_bootstrap": f"127.0.0.1:{FAULT_KAFKA_PORT}",
            "kafka_controller_port": FAULT_KAFKA_CONTROLLER_PORT,
            "redis_url": f"redis://127.0.0.1:{FAULT_REDIS_PORT}/0",
            "redis_password": None,
            "local_dir": REPO_ROOT / ".local" / "faults",
        }
    )


def _pid_gone(pid: int) -> bool:
    # Reap it if it is our child (a zombie still answers kill(0)).
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state == "Z"


class FaultInfra:
    """The suite's Kafka and Redis, with kill -9 and restart (data kept)."""

    def __init__(self, settings: StreamSettings | None = None) -> None:
        self.settings = settings or fault_base_settings()
        self.services = LocalServices(self.settings)
        self.started: dict[str, bool] = {}

    @property
    def kafka(self) -> LocalKafka:
        return self.services.kafka

    # --- set-up ---------------------------------------------------------------------------
    def link_kafka_jars(self) -> None:
        """Point ``<local_dir>/kafka/libs`` at the main local classpath (resolved once by Maven)."""
        link_main_jars(self.kafka)

    def start_fresh(self) -> None:
        """Stop what an earlier fault session left running, wipe its data, start both services."""
        for name, svc in self.services.services.items():
            svc.stop()
            if svc.answering():
                raise RuntimeError(
                    f"{name}: port {svc.port} answers but is not the fault suite's own service; "
                    "the fault tests refuse to kill something they did not start"
                )
        shutil.rmtree(self.kafka.data_dir, ignore_errors=True)
        shutil.rmtree(self.settings.redis_dir, ignore_errors=True)
        self.link_kafka_jars()
        self.started = self.services.start(timeout=120)
        self.services.wait_ready(120)

    def stop(self) -> None:
        self.services.stop()

    # --- faults ---------------------------------------------------------------------------
    def _kill9(self, name: str) -> float:
        svc = self.services.services[name]
        pid = svc.managed_pid()
        if pid is None:
            raise RuntimeError(f"{name} is not running under the fault suite's pid file")
        t0 = time.monotonic()
        os.killpg(pid, signal.SIGKILL)
        deadline = t0 + 15
        while not _pid_gone(pid) or svc.answering():
            if time.monotonic() > deadline:
                raise RuntimeError(f"{name} pid {pid} still there 15 s after SIGKILL")
            time.sleep(0.05)
        return time.monotonic() - t0

    def _restart(self, name: str) -> float:
        """Start the service again on the same data folder; seconds until it answers a real request."""
        svc = self.services.services[name]
        t0 = time.monotonic()
        if not svc.start(wait=True, timeout=120):
            raise RuntimeError(f"{name} was already running: nothing was restarted")
        return time.monotonic() - t0

    def kill_kafka(self) -> float:
        return self._kill9("kafka")

    def restart_kafka(self) -> float:
        return self._restart("kafka")

    def kill_redis(self) -> float:
        return self._kill9("redis")

    def restart_redis(self) -> float:
        return self._restart("redis")
