"""Where the runtime keeps what it learns about a bundle on this machine: verified stamps, optimized graphs.

Nothing here is part of a bundle: it can be deleted at any time and is rebuilt when needed.

    user_cache_dir()   $VOXTRAL_EDGE_CACHE, else $XDG_CACHE_HOME/voxtral-edge, else ~/.cache/voxtral-edge
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path


def user_cache_dir() -> Path:
    """This user's cache folder (not created here)."""
    if os.environ.get("VOXTRAL_EDGE_CACHE"):
        return Path(os.environ["VOXTRAL_EDGE_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "voxtral-edge"


def bundle_key(bundle: Path) -> str:
    """A file-name-safe key for a bundle folder: its resolved path, hashed."""
    resolved = str(Path(bundle).resolve())
    return hashlib.sha256(resolved.encode("utf-8", "surrogateescape")).hexdigest()[:24]


def file_stat(path: Path) -> list[int]:
    """What changes when a file is written, replaced or touched: size, mtime and ctime (ns), inode, device.
    ctime cannot be set back by a user (restoring the mtime with utime sets the ctime to now)."""
    st = os.stat(path)
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev]


def read_json(path: Path) -> dict | None:
    """A JSON object, or None when the file is absent, unreadable or not a JSON object."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def write_json_atomic(path: Path, data: dict) -> None:
    """Write a JSON file so that a reader finds it complete or absent (raises OSError)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=1)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
