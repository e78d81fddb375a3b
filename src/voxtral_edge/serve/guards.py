"""What the service watches so that a fault outside it is answered with a 503, never a dead process: the
bundle's files changing under it, and memory running out.

The runtime maps the bundle's weights and embedding tables (onnxruntime's external data, numpy's memmap):
a file cut short under a mapping ends the process with SIGBUS at the next page it reads. A file replaced
by a rename or removed is harmless to the mapping (the old file lives on until unmapped) but is no longer
the bundle the service was started with.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import signal
import threading
import weakref
from pathlib import Path
from typing import Callable

from ..machine import memory_cgroup, memory_headroom
from ..manifest import MANIFEST

log = logging.getLogger("voxtral_edge.serve")

_watches: "weakref.WeakSet[BundleWatch]" = weakref.WeakSet()


def _lease_broken(signum, frame) -> None:
    for watch in list(_watches):
        watch.heard.set()


def install_lease_handler() -> bool:
    """Route SIGIO (a lease break) to the bundle watches; only the main thread may, so the server calls
    this where it is made. Without it no lease is taken (SIGIO's default action ends the process)."""
    if threading.current_thread() is not threading.main_thread():
        return False
    if signal.getsignal(signal.SIGIO) is not _lease_broken:
        signal.signal(signal.SIGIO, _lease_broken)
    return True


def _identity(path: Path) -> tuple | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns


class BundleWatch:
    """The bundle's files as the service opened them. `changed()` says which file no longer is (its
    device, inode, size or modification time differ, or it is gone). Where the kernel grants it (the
    file's owner, or CAP_LEASE; local file systems), a read lease on every file makes a process that opens
    one for writing or truncates it wait until `on_write(reason)` has returned (at most
    /proc/sys/fs/lease-break-time seconds), so that the service stops reading the mapped files first."""

    def __init__(self, manifest, on_write: Callable[[str], None]):
        self.bundle = manifest.bundle
        self.files = {name: manifest.path(name) for name in [MANIFEST, *manifest["files"]]}
        self.identity = {name: _identity(path) for name, path in self.files.items()}
        self.on_write = on_write
        self.heard = threading.Event()
        self.leases: dict[str, int] = {}
        self.lease_error: str | None = None
        self._closed = False
        self._lock = threading.Lock()
        if signal.getsignal(signal.SIGIO) is _lease_broken:
            self._take_leases()
        else:
            self.lease_error = "no SIGIO handler (the server was not made in the main thread)"
        if self.leases:
            _watches.add(self)
            threading.Thread(target=self._wait, name="voxtral-edge-bundle-watch", daemon=True).start()

    def _take_leases(self) -> None:
        for name, path in self.files.items():
            try:
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            except OSError as e:
                self.lease_error = f"{path}: {e.strerror}"
                break
            try:
                fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_RDLCK)
                fcntl.fcntl(fd, fcntl.F_SETOWN, os.getpid())  # the process hears the break, not this thread
            except OSError as e:
                os.close(fd)
                self.lease_error = f"{path}: {errno.errorcode.get(e.errno, e.errno)} ({e.strerror})" + (
                    ": not this file's owner; give the service CAP_LEASE" if e.errno in (errno.EACCES, errno.EPERM)
                    else "")
                break
            self.leases[name] = fd
        if self.lease_error:
            self.release()
            self._closed = False
            log.warning("bundle files are not leased (%s): one cut short in place while serving would end the "
                        "process; replace bundle files by renaming new ones over them", self.lease_error)

    def changed(self) -> str | None:
        """None while every file is the one opened, else which one changed and how."""
        for name, path in self.files.items():
            now = _identity(path)
            was = self.identity[name]
            if now != was:
                if now is None:
                    return f"{path} was removed"
                if now[:2] != was[:2]:
                    return f"{path} was replaced"
                return f"{path} was modified ({was[2]} -> {now[2]} bytes)"
        return None

    def _breaking(self) -> list[str]:
        """The files whose lease a writer is breaking (under the lock)."""
        broken = []
        for name, fd in self.leases.items():
            try:
                if fcntl.fcntl(fd, fcntl.F_GETLEASE) != fcntl.F_RDLCK:
                    broken.append(str(self.files[name]))
            except OSError:
                broken.append(str(self.files[name]))
        return broken

    def _wait(self) -> None:
        while True:
            self.heard.wait()
            self.heard.clear()
            with self._lock:
                if self._closed:
                    return
                broken = self._breaking()
            if broken:
                try:
                    self.on_write(f"{broken[0]} is being written or truncated by another process")
                finally:
                    self.release()  # the writer goes on once the service reads no mapped page any more
                return

    def release(self) -> None:
        """Give the leases back (a writer waiting on one goes on)."""
        with self._lock:
            self._closed = True
            for fd in self.leases.values():
                try:
                    fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_UNLCK)
                except OSError:
                    pass
                os.close(fd)
            self.leases.clear()
        self.heard.set()


class MemoryGuard:
    """New syntheses wait (the handlers answer 503) while less than `reserve` bytes remain under the
    tightest memory limit of the process (RLIMIT_AS, its cgroup's: see machine.memory_headroom): the kernel
    then refuses an allocation or, for a cgroup, kills the process, which nothing could catch."""

    def __init__(self, reserve: int):
        self.reserve = int(reserve)
        self.cgroup = memory_cgroup()

    def headroom(self) -> tuple[int, str] | None:
        return memory_headroom(cgroup=self.cgroup)

    def check(self) -> str | None:
        """Why new work should wait (too little memory left), or None."""
        room = self.headroom()
        if room is not None and room[0] < self.reserve:
            return (f"memory is low: {max(0, room[0]) >> 20} MiB left under the {room[1]} limit, a new synthesis "
                    f"needs {self.reserve >> 20} MiB in reserve")
        return None
