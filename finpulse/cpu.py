"""How many CPU cores this process may use."""

from __future__ import annotations

import os


def usable_cores() -> int:
    """Cores in this process's affinity mask (inside a container ``os.cpu_count()`` counts the host's)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)  # not on Linux: no affinity mask to read


#: CPU flags (Linux ``/proc/cpuinfo``) that mean bfloat16 matrix arithmetic runs in hardware:
#: x86 AVX512-BF16 and AMX-BF16, and Arm's BF16 extension.
BF16_CPU_FLAGS: frozenset[str] = frozenset({"avx512_bf16", "amx_bf16", "bf16"})


def _cpuinfo_field(keys: tuple[str, ...], cpuinfo: str | None) -> str | None:
    # Every core repeats its block in /proc/cpuinfo; the first core's line is enough.
    if cpuinfo is None:
        try:
            with open("/proc/cpuinfo", encoding="ascii", errors="replace") as fh:
                cpuinfo = fh.read()
        except OSError:
            return None  # not Linux
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in keys:
            return value.strip()
    return None


def cpu_model_name(cpuinfo: str | None = None) -> str | None:
    """The CPU's model name from ``/proc/cpuinfo`` (None where there is none: not Linux, or Arm)."""
    return _cpuinfo_field(("model name",), cpuinfo)


def cpu_flags(cpuinfo: str | None = None) -> frozenset[str]:
    """The feature flags of this machine's CPU (empty where ``/proc/cpuinfo`` is unreadable: not Linux)."""
    # x86 names the line "flags", Arm "Features".
    return frozenset((_cpuinfo_field(("flags", "Features"), cpuinfo) or "").split())


def cpu_has_bf16(cpuinfo: str | None = None) -> bool:
    """Whether bfloat16 matmuls run natively here; without it torch emulates them, slower than fp32."""
    return bool(cpu_flags(cpuinfo) & BF16_CPU_FLAGS)
