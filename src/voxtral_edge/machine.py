"""What this machine is and what this process holds: the CPU, its features, the cores it may use, the
memory free and resident. One home for the checks that bench, rendering, saved graphs and the
benchmarks make (Linux first; elsewhere each answers what the platform tells, or a stated fallback).
"""

from __future__ import annotations

import os
import platform
import resource
import sys
from pathlib import Path


def _cpuinfo() -> list[str]:
    try:
        return Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return []


def cpu_model() -> str:
    """The CPU's name as the kernel reports it ("AMD EPYC 9R14", "Cortex-A76"...)."""
    for line in _cpuinfo():
        if line.startswith(("model name", "Hardware", "Model")):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def cpu_flags() -> list[str]:
    """The CPU's feature flags, sorted (x86 "flags", Arm "Features"); [] where the kernel lists none."""
    for line in _cpuinfo():
        if line.startswith(("flags", "Features")):
            return sorted(line.split(":", 1)[1].split())
    return []


def usable_cores() -> int:
    """Cores this process may run on (affinity and taskset respected, unlike os.cpu_count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def available_memory() -> int | None:
    """Bytes the system can give without swapping (MemAvailable on Linux), or None where unknown."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def rss_bytes(pid: int | str = "self") -> int:
    """A process's resident memory now (VmRSS; Linux), else this process's peak."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return _maxrss()


def resident_memory(pid: int | str = "self") -> dict[str, float]:
    """A process's resident memory now in MB (10^6 bytes), split into {"anonymous": private heap, "file": mapped file
    pages} (Linux's smaps_rollup; {} elsewhere)."""
    try:
        fields = {line.split(":")[0]: int(line.split()[1]) for line in
                  Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines() if line.endswith(" kB")}
    except (OSError, ValueError, IndexError):
        return {}
    return {"anonymous": fields["Anonymous"] * 1024 / 1e6, "file": (fields["Rss"] - fields["Anonymous"]) * 1024 / 1e6}


def _maxrss() -> int:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # bytes on macOS, KiB on Linux


def peak_rss_bytes() -> int:
    """This process's peak resident memory: the kernel's high-water mark, or the resident memory now when
    that is higher (the mark is updated lazily, so it can lag behind the pages just touched)."""
    return max(_maxrss(), rss_bytes())
