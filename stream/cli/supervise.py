"""Run and supervise a worker in its own process (used by the demo, the tests and the benchmarks)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import orjson
from pydantic import SecretStr
from redis.asyncio import Redis

from engine.settings import EngineSettings
from stream.settings import StreamSettings


def _env_value(value: Any) -> str:
    """How pydantic-settings reads a value back: SecretStr revealed, lists as JSON."""
    if isinstance(value, SecretStr):
        return value.get_secret_value()
    if isinstance(value, list):
        return json.dumps([v.get_secret_value() if isinstance(v, SecretStr) else v for v in value])
    return str(value)


def settings_env(settings: StreamSettings, engine: EngineSettings) -> dict[str, str]:
    """The environment that makes a child process see exactly these settings."""
    env: dict[str, str] = {}
    for name in type(settings).model_fields:
        value = getattr(settings, name)
        if value is not None:
            # Secrets revealed here on purpose: the child reads them from its environment (never from argv).
            env[f"FINPULSE_{name.upper()}"] = _env_value(value)
    for name, value in engine.model_dump().items():
        if value is not None:
            env[f"FINPULSE_ENGINE_{name.upper()}"] = str(value)
    return env


async def unlink_prefix(r: Redis, prefix: str) -> int:
    """Delete every key under ``prefix:``; returns how many.

    One UNLINK per 1,000 keys: with appendfsync always every write command costs an fsync, so
    deleting key by key took about 30 s per test prefix.
    """
    n = 0
    batch: list[bytes] = []
    async for key in r.scan_iter(match=f"{prefix}:*", count=1000):
        batch.append(key)
        if len(batch) >= 1000:
            n += await r.unlink(*batch)
            batch = []
    if batch:
        n += await r.unlink(*batch)
    return n


async def clear_redis_prefix(settings: StreamSettings) -> int:
    """Delete the settings' Redis prefix (demo, tests and benchmarks start from nothing)."""
    from stream.app import redis_client

    r = redis_client(settings)
    try:
        return await unlink_prefix(r, settings.redis_prefix)
    finally:
        await r.aclose()


def health(port: int) -> dict[str, Any] | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as resp:
            return orjson.loads(resp.read())
    except Exception:  # noqa: BLE001 - not up yet
        return None


def start_worker_process(settings: StreamSettings, engine: EngineSettings, log_path: Path) -> subprocess.Popen[bytes]:
    """A worker in its own process and process group (so Ctrl-C handling stays ours)."""
    env = {**os.environ, **settings_env(settings, engine)}
    log_path.parent.mkdir(parents=True, exist_ok=True)
    out = open(log_path, "ab")
    return subprocess.Popen(
        [sys.executable, "-m", "stream.cli", "worker"],
        env=env,
        stdout=out,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def wait_worker_ready(
    proc: subprocess.Popen[bytes], port: int, log_path: Path, timeout: float = 180.0
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log_path.read_text(errors="replace").splitlines()[-30:]
            raise RuntimeError("worker exited during start-up:\n" + "\n".join(tail))
        h = health(port)
        if h is not None:
            if h.get("pid") not in (None, proc.pid):
                # Another worker (say, one left behind by a killed demo) holds the port: its health
                # says nothing about the one just started, which cannot bind it.
                raise RuntimeError(
                    f"port {port} is served by another process (pid {h.get('pid')}), not the worker just started "
                    f"(pid {proc.pid}): stop the old worker or set FINPULSE_WORKER_WEB_PORT"
                )
            return h
        time.sleep(0.5)
    raise TimeoutError(f"worker not healthy after {timeout:.0f}s (log: {log_path})")


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(5)
