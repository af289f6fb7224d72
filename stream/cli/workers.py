"""``finpulse worker --processes N``: N workers of one consumer group on this machine.

Kafka partitions are the unit of parallelism: every worker joins the same consumer group and Kafka
gives each a share of the input partitions (so N is useful up to the partition count). This process
runs worker 0 itself, on the configured web port, and starts N-1 children on the next ports, each a
plain ``finpulse worker`` with the same settings. Children share this process group (a Ctrl-C or a
``killpg`` reaches all of them) and are asked by the kernel to die with their parent, so none is left
consuming behind a killed parent. A child that exits is started again after a short pause: its
partitions move to the others meanwhile (at-least-once input, exact counts in Redis, so nothing is
lost or counted twice).
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import threading
import time

import structlog

from engine.settings import EngineSettings
from stream.cli.supervise import settings_env
from stream.settings import StreamSettings

log = structlog.get_logger(__name__)

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """Linux: SIGTERM this child when the parent exits, however it exits (even SIGKILL)."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except OSError:
        pass  # not Linux: the shared process group still stops the children on Ctrl-C or killpg


class SiblingWorkers:
    """Workers 1..N-1 of a group whose worker 0 is this process; restarted when they exit."""

    def __init__(self, settings: StreamSettings, engine: EngineSettings, count: int) -> None:
        self.settings = settings
        self.engine = engine
        self.count = count
        self.procs: dict[int, subprocess.Popen[bytes]] = {}
        self._stopping = threading.Event()
        self._watcher = threading.Thread(target=self._watch, daemon=True, name="sibling-workers")

    def _spawn(self, i: int) -> subprocess.Popen[bytes]:
        child = self.settings.model_copy(
            update={"worker_web_port": self.settings.worker_web_port + i, "worker_processes": 1}
        )
        env = {**os.environ, **settings_env(child, self.engine)}
        proc = subprocess.Popen([sys.executable, "-m", "stream.cli", "worker"], env=env, preexec_fn=_die_with_parent)
        log.info("worker_child_started", index=i, pid=proc.pid, web_port=child.worker_web_port)
        return proc

    def start(self) -> None:
        for i in range(1, self.count + 1):
            self.procs[i] = self._spawn(i)
        self._watcher.start()

    def _watch(self) -> None:
        while not self._stopping.wait(1.0):
            for i, proc in list(self.procs.items()):
                rc = proc.poll()
                if rc is not None and not self._stopping.is_set():
                    log.error("worker_child_exited", index=i, pid=proc.pid, returncode=rc, restart_in_s=2)
                    time.sleep(2)
                    if not self._stopping.is_set():
                        self.procs[i] = self._spawn(i)

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM every child (by its own pid) and wait; SIGKILL what is left after ``timeout``."""
        self._stopping.set()
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for proc in self.procs.values():
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
