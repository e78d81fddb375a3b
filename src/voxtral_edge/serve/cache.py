"""The phrase cache: finished utterances on disk as 16-bit PCM, so a prompt heard before streams at once.

A key is the sha256 of everything that changes the samples (the bundle's manifest, the runtime version,
text, voice, seed, steps, guidance, frame limit and chunking). Each file is written whole under a
temporary name and renamed into place; it starts with a magic and the sha256 of its samples, checked on
every read: a file that fails the check is deleted and reported as a miss, so it is rendered again.
The least recently used files go first when the folder exceeds its size cap.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import threading
from collections import OrderedDict
from pathlib import Path

from ..errors import VoxtralEdgeError

MAGIC = b"VXEPCM1\n"
SUFFIX = ".pcm"


def cache_key(**settings) -> str:
    """The key of a phrase: a sha256 over its settings, named (JSON, sorted)."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


class PhraseCache:
    """Files `<key>.pcm` in `folder`, at most `max_bytes` together, least recently used evicted first."""

    def __init__(self, folder: str | Path, max_bytes: int):
        self.folder, self.max_bytes = Path(folder), int(max_bytes)
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            for leftover in self.folder.glob(".*.partial"):  # from a write cut short
                leftover.unlink(missing_ok=True)
            files = sorted(self.folder.glob("*" + SUFFIX), key=lambda p: p.stat().st_mtime)
        except OSError as e:
            raise VoxtralEdgeError(f"{self.folder}: cannot use it as the phrase cache ({e.strerror or e})") from None
        self._lock = threading.Lock()
        self._sizes: OrderedDict[str, int] = OrderedDict((p.stem, p.stat().st_size) for p in files)
        self.counters = dict.fromkeys(("hits", "misses", "writes", "evictions", "corrupt"), 0)
        self._evict()

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
            if key not in self._sizes:
                self.counters["misses"] += 1
                return None
            try:
                data = path.read_bytes()
            except OSError:
                data = b""
            head, digest, pcm = data[:len(MAGIC)], data[len(MAGIC):len(MAGIC) + 32], data[len(MAGIC) + 32:]
            if head != MAGIC or hashlib.sha256(pcm).digest() != digest:
                path.unlink(missing_ok=True)
                del self._sizes[key]
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
        path = self.path(key)
        size = len(MAGIC) + 32 + len(pcm)
        if size > self.max_bytes:
            return
        fd, tmp = tempfile.mkstemp(dir=self.folder, prefix=f".{key}.", suffix=".partial")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(MAGIC + hashlib.sha256(pcm).digest() + pcm)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except OSError:
            Path(tmp).unlink(missing_ok=True)
            return  # a full disk costs the cache entry, not the request
        with self._lock:
            self._sizes[key] = size
            self._sizes.move_to_end(key)
            self.counters["writes"] += 1
            self._evict()

    def _evict(self) -> None:
        while self._sizes and sum(self._sizes.values()) > self.max_bytes:
            key, _ = self._sizes.popitem(last=False)
            (self.folder / (key + SUFFIX)).unlink(missing_ok=True)
            self.counters["evictions"] += 1

    def snapshot(self) -> dict:
        with self._lock:
            return {"entries": len(self._sizes), "bytes": self.bytes, "max_bytes": self.max_bytes, **self.counters}
