"""Writing a folder so that it appears complete or not at all."""

from __future__ import annotations

import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from .errors import VoxtralEdgeError


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
