"""The output folder of a render: `<id>.<ext>` clips, `index.jsonl`, `errors.jsonl`.

Only the driver writes here, each clip through a temporary file and a rename. Each record is also appended
to a journal as soon as its clip is in place, so that a run killed without warning (SIGKILL, power) loses
no finished clip; `index.jsonl` is rewritten atomically, in catalog order, when the run ends or is
interrupted, and the journal is then removed. A lock file keeps two renders out of the same folder.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from ..errors import UsageError, VoxtralEdgeError
from ..files import replace_file

INDEX, ERRORS, JOURNAL, LOCK = "index.jsonl", "errors.jsonl", ".render-journal.jsonl", ".render.lock"
# what a record must share with the job for its file to be up to date (besides the file's sha256)
JOB_KEYS = ("file", "voice", "lang", "seed", "text", "settings", "bundle", "runtime")


class OutputDir:
    """An output folder opened for one run: its previous records, and the writing of clips and index."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if self.path.exists() and not self.path.is_dir():
            raise UsageError(f"{self.path}: exists and is not a folder (--out takes a folder)")
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            self._lock = open(self.path / LOCK, "a+b")
        except OSError as e:
            raise VoxtralEdgeError(f"{self.path}: cannot create the output folder ({e.strerror or e})") from None
        try:
            import fcntl

            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except ImportError:  # Windows: no advisory lock; one render per folder is then up to the user
            pass
        except OSError:
            self._lock.close()
            raise UsageError(f"{self.path}: another render is writing to this folder ({self.path / LOCK} is "
                             f"locked)") from None
        for stale in self.path.glob(".*.partial"):  # left by a run that was killed while writing
            stale.unlink(missing_ok=True)
        self.previous = self._read_records()
        self._journal = open(self.path / JOURNAL, "a", encoding="utf-8")

    def _read_records(self) -> dict[str, dict]:
        """Records of earlier runs by id: index.jsonl, then the journal of a run that did not finish."""
        records: dict[str, dict] = {}
        for name in (INDEX, JOURNAL):
            try:
                lines = (self.path / name).read_text(encoding="utf-8").splitlines()
            except FileNotFoundError:
                continue
            except (OSError, UnicodeDecodeError):
                continue  # unreadable: its items are rendered again
            for line in lines:
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    continue  # the journal's last line, cut by a kill
                if isinstance(record, dict) and isinstance(record.get("id"), str):
                    records[record["id"]] = record
        return records

    def up_to_date(self, job: dict) -> dict | None:
        """The previous record of this job's item if its file is there, unchanged, and was made from the
        same text, voice, seed, settings, bundle and runtime; else None."""
        record = self.previous.get(job["id"])
        if record is None or any(record.get(k) != job[k] for k in JOB_KEYS):
            return None
        try:
            data = (self.path / job["file"]).read_bytes()
        except OSError:
            return None
        return record if hashlib.sha256(data).hexdigest() == record.get("sha256") else None

    def write_clip(self, job: dict, outcome: dict) -> dict:
        """Put a rendered clip in place and journal its index record; returns the record."""
        data = outcome["data"]
        replace_file(self.path / job["file"], data)
        record = {"id": job["id"], "file": job["file"], "sha256": hashlib.sha256(data).hexdigest(),
                  "duration": outcome["duration"], "frames": outcome["frames"], "finished": outcome["finished"],
                  "voice": job["voice"], "lang": job["lang"], "seed": job["seed"], "text": job["text"],
                  "spoken_text": outcome["spoken_text"], "settings": job["settings"], "bundle": job["bundle"],
                  "runtime": job["runtime"]}
        self._journal.write(json.dumps(record, ensure_ascii=False) + "\n")
        self._journal.flush()
        return record

    def finish(self, records: list[dict], errors: list[dict]) -> None:
        """Write index.jsonl (these records, in this order) and errors.jsonl (removed when there are none)
        atomically; then drop the journal and the lock."""
        replace_file(self.path / INDEX, _lines(records))
        if errors:
            replace_file(self.path / ERRORS, _lines(errors))
        else:
            (self.path / ERRORS).unlink(missing_ok=True)
        self._journal.close()
        (self.path / JOURNAL).unlink(missing_ok=True)
        self.close()

    def close(self) -> None:
        """Release the folder (the journal stays, for the next run, unless finish() removed it)."""
        if not self._journal.closed:
            self._journal.close()
        if not self._lock.closed:
            self._lock.close()  # the file stays: removing it would let two runs lock two different files


def _lines(records: list[dict]) -> bytes:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode("utf-8")
