"""The phrase cache: finished utterances on disk as 16-bit PCM, so a prompt heard before streams at once.

A key is the sha256 of everything that changes the samples (the bundle's manifest, the runtime version,
text, voice, seed, steps, guidance, frame limit and chunking). Each file is written whole under a
temporary name, synced and renamed into place, on a thread of its own (a slow disk never holds up a
frame); it starts with a magic and the sha256 of its samples, checked on every read: a file that fails the
check is deleted and reported as a miss, so it is rendered again. A write cut short (a full disk, a killed
process) leaves only a temporary file, which the next start deletes. The least recently used files go
first when the folder exceeds its size cap.

The cache never fails a request: a folder that cannot be read is no cache, one that cannot be written (read
only, full) still serves what it holds; each change between working and not is logged once.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import queue
import tempfile
import threading
from collections import OrderedDict
from pathlib import Path

log = logging.getLogger("voxtral_edge.serve")

MAGIC = b"VXEPCM1\n"
SUFFIX = ".pcm"
PENDING_BYTES = 64 << 20  # audio waiting to be written; past it a finished phrase is not stored


def cache_key(**settings) -> str:
    """The key of a phrase: a sha256 over its settings, named (JSON, sorted)."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


class PhraseCache:
    """Files `<key>.pcm` in `folder`, at most `max_bytes` together, least recently used evicted first.
    `problem` says why it does not store new phrases now (None while it does)."""

    def __init__(self, folder: str | Path, max_bytes: int):
        self.folder, self.max_bytes = Path(folder), int(max_bytes)
        self._lock = threading.Lock()
        self._sizes: OrderedDict[str, int] = OrderedDict()
        self._pending: dict[str, bytes] = {}  # written soon: served from here meanwhile
        self.counters = dict.fromkeys(("hits", "misses", "writes", "write_errors", "evictions", "corrupt"), 0)
        self.problem: str | None = None
        self.readable = True
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            files = sorted(self.folder.glob("*" + SUFFIX), key=lambda p: p.stat().st_mtime)
            self._sizes.update((p.stem, p.stat().st_size) for p in files)
        except OSError as e:
            self.readable = False
            self._failed(f"cannot use it ({e.strerror or e})")
        if self.readable:
            try:
                for leftover in self.folder.glob(".*.partial"):  # from a write cut short
                    leftover.unlink()
                fd, probe = tempfile.mkstemp(dir=self.folder, prefix=".probe.", suffix=".partial")
                os.close(fd)
                os.unlink(probe)
            except OSError as e:
                self._failed(f"cannot write there ({e.strerror or e})")
            with self._lock:
                self._evict()
        self._queue: queue.Queue = queue.Queue()
        self._writer = threading.Thread(target=self._write_loop, name="voxtral-edge-cache-writer", daemon=True)
        self._writer.start()

    def path(self, key: str) -> Path:
        if len(key) != 64 or any(c not in "0123456789abcdef" for c in key):
            raise ValueError(f"not a cache key: {key!r}")
        return self.folder / (key + SUFFIX)

    @property
    def bytes(self) -> int:
        return sum(self._sizes.values())

    def get(self, key: str) -> bytes | None:
        """The samples stored under key, or None (absent, or corrupt: then the file is removed)."""
        path = self.path(key)
        with self._lock:
            pcm = self._pending.get(key)
            if pcm is not None:
                self.counters["hits"] += 1
                return pcm
            if key not in self._sizes:
                self.counters["misses"] += 1
                return None
            try:
                data = path.read_bytes()
            except FileNotFoundError:  # removed behind our back: a miss, not damage
                del self._sizes[key]
                self.counters["misses"] += 1
                return None
            except OSError:
                data = b""
            head, digest, pcm = data[:len(MAGIC)], data[len(MAGIC):len(MAGIC) + 32], data[len(MAGIC) + 32:]
            if head != MAGIC or hashlib.sha256(pcm).digest() != digest:
                self._remove(key)
                self.counters["corrupt"] += 1
                self.counters["misses"] += 1
                return None
            self._sizes.move_to_end(key)
            try:
                os.utime(path)  # the order survives a restart
            except OSError:
                pass
            self.counters["hits"] += 1
            return pcm

    def put(self, key: str, pcm: bytes) -> None:
        """Store samples under key (atomically); nothing is stored when they alone exceed the cap."""
        self.path(key)
        if len(MAGIC) + 32 + len(pcm) <= self.max_bytes and self.readable:
            self._write(key, pcm)

    def put_later(self, key: str, pcm: bytes) -> None:
        """As `put`, on the writer thread; meanwhile `get` finds the samples in memory. Nothing is stored
        when more than PENDING_BYTES wait to be written."""
        self.path(key)
        if len(MAGIC) + 32 + len(pcm) > self.max_bytes or not self.readable:
            return
        with self._lock:
            if sum(map(len, self._pending.values())) + len(pcm) > PENDING_BYTES:
                return
            self._pending[key] = pcm
        self._queue.put(key)

    def flush(self, timeout: float | None = None) -> None:
        """Wait until every phrase given to `put_later` is written (or failed)."""
        done = threading.Event()
        self._queue.put(done)
        done.wait(timeout)

    def _write_loop(self) -> None:
        while True:
            key = self._queue.get()
            if isinstance(key, threading.Event):
                key.set()
                continue
            with self._lock:
                pcm = self._pending.get(key)
            if pcm is not None:
                self._write(key, pcm)
                with self._lock:
                    self._pending.pop(key, None)

    def _write(self, key: str, pcm: bytes) -> None:
        path, tmp = self.path(key), None
        try:
            fd, tmp = tempfile.mkstemp(dir=self.folder, prefix=f".{key}.", suffix=".partial")
            with os.fdopen(fd, "wb") as f:
                f.write(MAGIC + hashlib.sha256(pcm).digest() + pcm)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except OSError as e:
            if tmp is not None:
                try:
                    os.unlink(tmp)
                except OSError:
                    pass
            with self._lock:
                self.counters["write_errors"] += 1
            self._failed(f"cannot write there ({e.strerror or e})")  # a full disk costs the entry, not the request
            return
        with self._lock:
            self._sizes[key] = len(MAGIC) + 32 + len(pcm)
            self._sizes.move_to_end(key)
            self.counters["writes"] += 1
            self._evict()
        if self.problem is not None:
            log.warning("phrase cache %s: stores new phrases again", self.folder)
            self.problem = None

    def _failed(self, problem: str) -> None:
        if self.problem is None:
            log.warning("phrase cache %s: %s; speaking without storing new phrases", self.folder, problem)
        self.problem = problem

    def _remove(self, key: str) -> None:
        self._sizes.pop(key, None)
        try:
            (self.folder / (key + SUFFIX)).unlink(missing_ok=True)
        except OSError:
            pass  # a read-only folder: the index forgets it, and it is never served

    def _evict(self) -> None:
        while self._sizes and sum(self._sizes.values()) > self.max_bytes:
            key = next(iter(self._sizes))
            self._remove(key)
            self.counters["evictions"] += 1

    def snapshot(self) -> dict:
        with self._lock:
            return {"entries": len(self._sizes), "bytes": self.bytes, "max_bytes": self.max_bytes,
                    "writable": self.problem is None, "problem": self.problem, "pending": len(self._pending),
                    **self.counters}
