"""What this machine is and what this process holds: the CPU, its features, the cores it may use, the
memory free and resident. One home for the checks that bench, rendering, saved graphs and the
benchmarks make (Linux first; elsewhere each answers what the platform tells, or a stated fallback).

And the few ways the runtime keeps its own footprint down (what each saves: benchmarks/README.md,
"Footprint"):

    zeroed_buffer(shape, dtype)   a zeroed array on small pages: only the pages written become resident
    release_file_pages(paths, keep)  give back the resident pages of files this process maps but no
                                  longer reads (clean file pages only; read again, they come back)
    trim_heap()                   hand the C heap's free memory back to the system
"""

from __future__ import annotations

import ctypes
import ctypes.util
import mmap
import os
import platform
import re
import resource
import sys
from collections.abc import Iterable
from pathlib import Path

import numpy as np


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


def zeroed_buffer(shape: tuple[int, ...], dtype=np.float32) -> np.ndarray:
    """A zeroed, writable array in an anonymous mapping of its own: pages become resident as they are
    written. (numpy asks for transparent huge pages on arrays of 4 MB and more, so one value written per
    2 MB makes a whole huge page resident: for the KV cache, writing position 0 of each head made nearly
    all of every layer's buffer resident at once.)"""
    size = int(np.prod(shape)) * np.dtype(dtype).itemsize
    return np.frombuffer(mmap.mmap(-1, max(size, 1)), dtype=dtype, count=int(np.prod(shape))).reshape(shape)


_MAPPING = re.compile(r"^([0-9a-f]+)-([0-9a-f]+) ")  # the first line of each mapping in smaps


def file_mappings(paths: Iterable[str | Path]) -> dict[tuple[int, int], int]:
    """This process's mappings of these files: {(start, end): bytes of its own (anonymous, copied-on-write)
    pages} (Linux's smaps; {} elsewhere)."""
    targets = {os.path.realpath(p) for p in paths}
    found, current = {}, None
    try:
        with open("/proc/self/smaps", encoding="utf-8", errors="surrogateescape") as f:
            for line in f:
                if match := _MAPPING.match(line):
                    fields = line.split(None, 5)  # range, perms, offset, device, inode, path
                    current = None
                    if len(fields) == 6 and fields[5].rstrip("\n") in targets:
                        current = (int(match.group(1), 16), int(match.group(2), 16))
                        found[current] = 0
                elif current is not None and line.startswith("Anonymous:"):
                    found[current] = int(line.split()[1]) * 1024
    except OSError:
        return {}
    return found


def release_file_pages(paths: Iterable[str | Path], keep: Iterable[tuple[int, int]] = ()) -> int:
    """Drop from this process the resident pages of its mappings of `paths` (but those in `keep`, the
    ranges of `file_mappings` taken earlier) that hold clean file pages only: the page cache keeps them and a
    later read maps them back, so nothing is lost; a mapping holding a page of its own (written, copied on
    write) is left alone. Returns the bytes of the mappings released (0 where this is not Linux).

    Callers make sure no other thread maps or unmaps these files meanwhile (a range unmapped and reused
    between reading the mappings and dropping them would lose its new contents)."""
    if not sys.platform.startswith("linux"):
        return 0
    keep = set(keep)
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    released = 0
    for (start, end), own in file_mappings(paths).items():
        if own == 0 and (start, end) not in keep and libc.madvise(start, end - start, mmap.MADV_DONTNEED) == 0:
            released += end - start
    return released


def trim_heap() -> None:
    """Give the C heap's free pages back to the system (glibc's malloc_trim; nothing elsewhere): the
    temporaries of parsing the tokenizer and of packing weights are freed but stay resident otherwise."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"))
        libc.malloc_trim(ctypes.c_size_t(0))
    except (OSError, AttributeError):  # not glibc (musl, macOS, Windows)
        pass
