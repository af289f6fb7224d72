"""Pid-file lifecycle of a local service: detached start, readiness, stop, and the logs that explain failures.

A service is started detached (own process session, output to ``<log_dir>/<name>.log``) and tracked
with a pid file in ``<run_dir>``, so a later process can stop what an earlier one started.
``start()`` is a no-op when something already answers on the configured port, and returns whether
it started the service, so callers stop only what they started. ``LocalKafka`` and ``LocalRedis``
subclass :class:`LocalService`; all paths and ports come from :class:`stream.settings.StreamSettings`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
import re
import signal
import socket
import subprocess
import time
from collections import deque
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import structlog

from stream.settings import StreamSettings, get_settings

log = structlog.get_logger(__name__)

T = TypeVar("T")

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
    run = lines[starts[-1] + 1 :] if starts else lines
    for i, line in enumerate(run):
        if " ERROR " in line or " FATAL " in line or line.startswith("Error"):
            return "\n".join(run[i : i + 1 + context])
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


def pid_alive(pid: int) -> bool:
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


def pid_cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def run_blocking(factory: Callable[[], Awaitable[T]]) -> T:
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


_PASSWORD_ARG = re.compile(r"(password=)[^,\]\s]*", re.IGNORECASE)


def _mask_passwords(arg: str) -> str:
    return _PASSWORD_ARG.sub(r"\1***", arg)


def run_checked(
    service: str, argv: list[str], *, log_path: Path, cwd: Path | None = None, timeout: float = 600.0, what: str
) -> str:
    """Run a short command to completion, appending its output to ``log_path``; stdout returned.

    The command line is logged with passwords masked (``password=...`` arguments, as Kafka's
    ``StorageTool --add-scram`` takes them)."""
    shown = " ".join(_mask_passwords(a) for a in argv)
    log.info("run", service=service, what=what, argv=shown)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    try:
        proc = subprocess.run(
            argv, cwd=cwd, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL, check=False
        )
    except FileNotFoundError as exc:
        raise ServiceError(service, f"{what}: {argv[0]} not found") from exc
    except subprocess.TimeoutExpired as exc:
        raise ServiceError(service, f"{what} took longer than {timeout:.0f}s", log_path) from exc
    with log_path.open("a", encoding="utf-8") as fh:
        fh.write(f"$ {shown}\n{proc.stdout}{proc.stderr}")
    if proc.returncode != 0:
        raise ServiceError(service, f"{what} failed with exit code {proc.returncode}", log_path)
    return proc.stdout


def rotate_log(path: Path) -> None:
    if path.exists() and path.stat().st_size > _LOG_ROTATE_BYTES:
        path.replace(path.with_name(path.name + ".1"))


# --------------------------------------------------------------------------------------------
# shared process handling
# --------------------------------------------------------------------------------------------


class LocalService:
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
        if not pid_alive(pid):
            return None
        cmdline = pid_cmdline(pid)
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
        rotate_log(self.log_path)
        with self.log_path.open("ab") as out:
            stamp = time.strftime("%Y-%m-%d %H:%M:%S")
            out.write(f"{_START_MARKER}{stamp} starting {self.name} =====\n".encode())
            out.flush()
            # Own session: the service survives the launching process and its Ctrl-C, and
            # stop() can signal the whole process group.
            self._proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                cwd=self._workdir(),
                close_fds=True,
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
        run_blocking(lambda: self.wait_ready_async(timeout))

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
                    log.info("ready", service=self.name, port=self.port, waited_s=round(time.monotonic() - t0, 2))
                    return
                except Exception as exc:  # noqa: BLE001 - any failure of the probe means "not ready yet"
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
            elif not pid_alive(pid):
                return True
            time.sleep(0.1)
        return False
