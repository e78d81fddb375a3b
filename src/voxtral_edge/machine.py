"""What this machine is and what this process holds: the CPU, its features, the cores it may use, the
memory free and resident, and how much more it may take before a limit (RLIMIT_AS, its cgroup) stops it.
One home for the checks that bench, rendering, saved graphs and the benchmarks make (Linux first;
elsewhere each answers what the platform tells, or a stated fallback).

And the few ways the runtime keeps its own footprint down (what each saves: benchmarks/README.md,
"Footprint"):

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
from dataclasses import dataclass
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


# The features that choose onnxruntime's (MLAS, KleidiAI) kernels. Arm: Linux's AT_HWCAP (16) and AT_HWCAP2
# (26) bits, which is what onnxruntime's cpuinfo reads there (and what qemu-user sets per QEMU_CPU);
# x86: /proc/cpuinfo's flags (from cpuid, as onnxruntime reads them).
ARM_HWCAPS = {"asimd": (16, 1), "asimdhp": (16, 10), "asimddp": (16, 20), "sve": (16, 22), "sve2": (26, 1),
              "i8mm": (26, 13), "bf16": (26, 14), "sme": (26, 23), "sme2": (26, 37)}
# macOS names them in sysctl's hw.optional.*
DARWIN_FEATURES = {"asimd": "hw.optional.AdvSIMD", "asimddp": "hw.optional.arm.FEAT_DotProd",
                   "i8mm": "hw.optional.arm.FEAT_I8MM", "bf16": "hw.optional.arm.FEAT_BF16",
                   "sme": "hw.optional.arm.FEAT_SME", "sme2": "hw.optional.arm.FEAT_SME2"}
X86_FEATURES = ("avx2", "fma", "avx_vnni", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx512_bf16", "amx_int8")


@dataclass(frozen=True)
class CpuFeatures:
    """The CPU features that choose onnxruntime's kernels, as the kernel (or qemu-user) reports them."""

    machine: str  # platform.machine(): x86_64, aarch64, arm64
    features: tuple[str, ...]  # those present, in the order of ARM_HWCAPS / X86_FEATURES
    absent: tuple[str, ...]
    raw: str  # everything the kernel reports (the HWCAP words, or the whole flags line): a fingerprint

    def describe(self) -> str:
        return f"{self.machine} with {' '.join(self.features) or 'none of ' + ' '.join(self.absent)}"


def cpu_features() -> CpuFeatures:
    """This CPU's kernel-choosing features (on an OS that reports none, all count as absent)."""
    machine = platform.machine()
    if machine in ("aarch64", "arm64") and sys.platform.startswith("linux"):
        getauxval = ctypes.CDLL(None).getauxval
        getauxval.restype, getauxval.argtypes = ctypes.c_ulong, [ctypes.c_ulong]
        words = {16: getauxval(16), 26: getauxval(26)}
        have = {name: bool(words[word] >> bit & 1) for name, (word, bit) in ARM_HWCAPS.items()}
        raw = f"hwcap {words[16]:#x} hwcap2 {words[26]:#x}"
    elif machine == "arm64" and sys.platform == "darwin":
        have = {name: _sysctl_int(key) == 1 for name, key in DARWIN_FEATURES.items()}
        raw = " ".join(f"{key}={_sysctl_int(key)}" for key in DARWIN_FEATURES.values())
    else:
        flags = cpu_flags()
        have = {name: name in flags for name in X86_FEATURES}
        raw = " ".join(flags) or platform.processor()
    return CpuFeatures(machine, tuple(n for n, on in have.items() if on), tuple(n for n, on in have.items() if not on),
                       raw)


def _sysctl_int(name: str) -> int | None:
    value, size = ctypes.c_int64(0), ctypes.c_size_t(8)
    try:
        failed = ctypes.CDLL(None).sysctlbyname(name.encode(), ctypes.byref(value), ctypes.byref(size), None, 0)
    except (OSError, AttributeError):
        return None
    return None if failed else value.value


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


def peak_rss_bytes(pid: int | str = "self") -> int:
    """A process's peak resident memory: the kernel's high-water mark (VmHWM; this process's getrusage where
    /proc has none), or the resident memory now when that is higher (the mark is updated lazily, so it can
    lag behind the pages just touched). Never below an rss_bytes() read before it."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return max(int(line.split()[1]) * 1024, rss_bytes(pid))
    except OSError:
        pass
    return max(_maxrss(), rss_bytes())


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def memory_cgroup(proc: Path = Path("/proc/self"), root: Path = Path("/sys/fs/cgroup")) -> tuple[str, Path] | None:
    """("v2" | "v1", the folder of a process's memory cgroup), or None (no cgroup with a memory controller)."""
    for line in (_read(proc / "cgroup") or "").splitlines():
        _, controllers, path = line.split(":", 2)
        rel = path.lstrip("/")
        if controllers == "":  # v2, the unified hierarchy
            for base in (root, root / "unified"):
                for folder in (base / rel, base):  # (in a cgroup namespace its own cgroup is the root)
                    if (folder / "memory.max").exists():
                        return "v2", folder
        elif "memory" in controllers.split(","):
            for folder in (root / "memory" / rel, root / "memory"):
                if (folder / "memory.limit_in_bytes").exists():
                    return "v1", folder
    return None


def memory_headroom(proc: Path = Path("/proc/self"), cgroup: tuple[str, Path] | None = None) -> tuple[int, str] | None:
    """(bytes, which limit): how much more memory a process may take before the kernel refuses it (RLIMIT_AS
    minus its address space; this process's limit) or its cgroup's OOM killer ends it (memory.max, v1
    memory.limit_in_bytes, minus what the cgroup uses; inactive file pages can be dropped, so they do not
    count); the tightest of those, or None when there is no limit."""
    room = []
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft != resource.RLIM_INFINITY:
        pages = int((_read(proc / "statm") or "0").split()[0])
        room.append((soft - pages * resource.getpagesize(), "RLIMIT_AS"))
    if cgroup is not None:
        version, folder = cgroup
        names = ("memory.max", "memory.current", "inactive_file") if version == "v2" else \
            ("memory.limit_in_bytes", "memory.usage_in_bytes", "total_inactive_file")
        limit, used = _read(folder / names[0]), _read(folder / names[1])
        stat = dict(line.split(" ", 1) for line in (_read(folder / "memory.stat") or "").splitlines() if " " in line)
        if limit and limit != "max" and used and int(limit) < 1 << 60:  # v1 writes "no limit" as nearly 2^63
            room.append((int(limit) - int(used) + int(stat.get(names[2], 0)), f"cgroup {folder} ({version})"))
    return min(room) if room else None


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
