"""Shared benchmark plumbing: real texts, machine description, BENCHMARKS.md rows."""

from __future__ import annotations

import platform
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from finpulse.cpu import cpu_model_name, usable_cores


def machine_info() -> dict[str, Any]:
    """CPU model and core count (what every benchmark row must say)."""
    model = cpu_model_name() or platform.processor() or "unknown"
    gpu = None
    try:
        import torch

        if torch.cuda.is_available():
            gpu = torch.cuda.get_device_name(0)
    except Exception:  # noqa: BLE001 - a machine description never fails a benchmark
        gpu = None
    return {
        "cpu": model,
        "cores": usable_cores(),
        "gpu": gpu,
        "python": platform.python_version(),
        "host": platform.node(),
    }


def stream_texts(data_dir: Path, n: int, since: str = "2014-04-20T00:00:00Z") -> list[dict[str, Any]]:
    """``n`` real events from the StockNet stream (one per tweet), in time order."""
    from stream.cli.replay import read_events

    return [
        e for e in read_events(data_dir / "stocknet-tweets" / "stream.csv", since=since, limit=n) if isinstance(e, dict)
    ]


def now_iso() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")


def append_markdown_row(path: Path, section: str, row: str) -> None:
    """Append a table row under a '## section' heading of BENCHMARKS.md (created if missing)."""
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    marker = f"## {section}"
    if marker not in text:
        text = text.rstrip() + f"\n\n{marker}\n\n"
    lines = text.splitlines()
    idx = next(i for i, line in enumerate(lines) if line.strip() == marker)
    end = idx + 1
    while end < len(lines) and not lines[end].startswith("## "):
        end += 1
    while end > idx + 1 and not lines[end - 1].strip():
        end -= 1
    lines.insert(end, row)
    path.write_text("\n".join(lines) + "\n")


class CpuSplit:
    """CPU seconds spent by each process of the pipeline over a timed phase (where the cores went).

    On a machine where the broker, Redis, the worker and the load generator share the same cores,
    end-to-end throughput is bounded by their sum: this says who used what.
    """

    def __init__(self, worker_pid: int) -> None:
        import psutil

        self._procs: dict[str, Any] = {"worker": psutil.Process(worker_pid), "bench_client": psutil.Process()}
        for p in psutil.process_iter(["cmdline", "name"]):
            cmd = " ".join(p.info.get("cmdline") or [])
            if "kafka.Kafka" in cmd and "kafka" not in self._procs:
                self._procs["kafka"] = p
            elif (p.info.get("name") or "").startswith("redis-server") and "redis" not in self._procs:
                self._procs["redis"] = p
        self._t0 = 0.0
        self._start: dict[str, float] = {}
        self._machine0: Any = None

    @staticmethod
    def _cpu(p: Any) -> float:
        try:
            t = p.cpu_times()
            return float(t.user + t.system)
        except Exception:  # noqa: BLE001 - a process that went away just drops out of the split
            return float("nan")

    def start(self) -> None:
        import psutil

        # The other workers of `--processes N` are worker 0's children, started by now (it was ready).
        try:
            kids = psutil.Process(self._procs["worker"].pid).children(recursive=True)
        except psutil.Error:
            kids = []
        for i, kid in enumerate(kids, start=1):
            self._procs[f"worker_{i}"] = kid
        self._t0 = time.perf_counter()
        self._machine0 = psutil.cpu_times()
        self._start = {k: self._cpu(p) for k, p in self._procs.items()}

    def stop(self) -> dict[str, Any]:
        """Cores used on average during the phase, per process and in all."""
        import psutil

        wall = time.perf_counter() - self._t0
        cores = {k: round((self._cpu(p) - self._start[k]) / wall, 2) for k, p in self._procs.items()}
        m0, m1 = self._machine0, psutil.cpu_times()
        # Everything that was not idle (iowait counts as idle), the kernel's work for all of them included;
        # steal (the hypervisor's) apart: that time was not ours to use.
        skip = ("idle", "iowait", "steal", "guest", "guest_nice")
        busy = sum(getattr(m1, f) - getattr(m0, f) for f in m1._fields if f not in skip)
        steal = getattr(m1, "steal", 0.0) - getattr(m0, "steal", 0.0)
        return {
            "wall_s": round(wall, 2),
            "cores_used": cores,
            "total_cores_used": round(sum(v for v in cores.values() if v == v), 2),
            "machine_busy_cores": round(busy / wall, 2),
            "machine_steal_cores": round(steal / wall, 2),
            "machine_cores": usable_cores(),
        }
