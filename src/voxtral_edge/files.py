"""Writing files and folders so that they appear complete or not at all."""

from __future__ import annotations

import os
import shutil
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from .errors import ConfigError, VoxtralEdgeError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib


def parse_toml(text: str, source: str, what: str = "TOML") -> dict:
    """A TOML document's tables; ConfigError naming `source` when it is not valid TOML."""
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{source}: not a valid {what} ({e})") from None


@contextmanager
def replacing_folder(out: str | Path, force: bool = False) -> Iterator[Path]:
    """Yield an empty sibling folder `OUT.partial` to fill; when the block ends it becomes `out` (replacing it
    only with `force`), and if the block fails it is removed, leaving `out` as it was."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not force:
        raise VoxtralEdgeError(f"{out}: exists and is not empty (pass --force to replace it)")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if out.is_dir():
        shutil.rmtree(out)
    elif out.exists():
        out.unlink()
    tmp.rename(out)


def replace_file(path: str | Path, data: bytes) -> Path:
    """Write `data` to `path` through the sibling `.NAME.partial` and a rename: a reader (or a run that was
    interrupted) finds the old file or the new one, never part of one."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.partial")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        if isinstance(e, OSError):
            raise VoxtralEdgeError(f"{path}: cannot write ({e.strerror or e})") from None
        raise
    return path
