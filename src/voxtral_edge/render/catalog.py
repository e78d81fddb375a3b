"""A prompt catalog: CSV or JSON Lines, one item to render per row, checked whole before any work starts.

Columns: `id`, `text`, `voice` (required) and `lang`, `seed`, `steps`, `cfg` (optional; in CSV an empty
cell is an absent value). `lang` is the language the text is normalized in (one of voxtral_edge.text's
LANGUAGES; absent: the voice's language). An id names the output file, so it must be safe as a file name everywhere:
letters, digits, `.`, `_` and `-`, starting with a letter or digit, no `..`, at most 100 characters, and
unique even ignoring case (two ids differing only in case would be one file on macOS or Windows).
An item without a seed gets `default_seed(id)`, so the catalog alone fixes every sample.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Collection, Iterator

from ..errors import UsageError
from ..runtime import check_request
from ..text import LANGUAGES

REQUIRED = ("id", "text", "voice")
OPTIONAL = ("lang", "seed", "steps", "cfg")
MAX_ID_LENGTH = 100
_SAFE_ID = re.compile(rf"[A-Za-z0-9][A-Za-z0-9._-]{{0,{MAX_ID_LENGTH - 1}}}")
MAX_ERRORS_SHOWN = 10


@dataclass(frozen=True)
class Item:
    """One row of the catalog; `line` is where it starts in the file (1-based)."""

    id: str
    text: str
    voice: str
    line: int
    lang: str | None = None
    seed: int | None = None  # None: default_seed(id)
    steps: int | None = None  # None: the run's default
    cfg: float | None = None  # None: the run's default

    @property
    def effective_seed(self) -> int:
        return default_seed(self.id) if self.seed is None else self.seed


def default_seed(item_id: str) -> int:
    """The seed of an item that gives none: the first 8 bytes of sha256(id as UTF-8), big-endian, shifted
    right by one bit (a 63-bit integer, the range `synthesize` accepts)."""
    return int.from_bytes(hashlib.sha256(item_id.encode("utf-8")).digest()[:8], "big") >> 1


def load_catalog(path: str | Path, voices: Collection[str] | None = None) -> list[Item]:
    """Read and check a catalog (`.csv`, or `.jsonl` / `.ndjson`). Every bad row is reported at once, each
    with its line, in one UsageError; `voices`, when given, are the names an item may use."""
    path = Path(path)
    kind = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl"}.get(path.suffix.lower())
    if kind is None:
        raise UsageError(f"{path}: a catalog is a .csv or .jsonl (JSON Lines) file, found '{path.suffix}'")
    try:
        data = path.read_bytes()
    except OSError as e:
        raise UsageError(f"{path}: cannot read the catalog ({e.strerror or e})") from None
    data = data.removeprefix(b"\xef\xbb\xbf")  # the byte-order mark spreadsheet programs write
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[:e.start].count(b"\n") + 1
        raise UsageError(f"{path} line {line}: not valid UTF-8 (byte {e.start} of the file); a catalog is "
                         f"UTF-8 text") from None
    errors: list[str] = []
    items: list[Item] = []
    seen: dict[str, tuple[str, int]] = {}  # casefolded id -> (id, line)
    rows = _csv_rows(text, errors) if kind == "csv" else _jsonl_rows(text, errors)
    for line, row in rows:
        try:
            item = _item(row, line, voices)
        except UsageError as e:
            errors.append(f"line {line}: {e}")
            continue
        earlier = seen.get(item.id.casefold())
        if earlier is not None:
            same = "repeats" if earlier[0] == item.id else f"differs only in case from '{earlier[0]}' on"
            errors.append(f"line {line}: id '{item.id}' {same} line {earlier[1]} (ids name files: each must be "
                          f"unique, ignoring case)")
            continue
        seen[item.id.casefold()] = (item.id, line)
        items.append(item)
    if not errors and not items:
        errors.append("line 1: no items (a catalog needs a header and at least one row)" if kind == "csv"
                      else "line 1: no items (one JSON object per line)")
    if errors:
        shown = errors[:MAX_ERRORS_SHOWN]
        more = f"\n  ... and {len(errors) - len(shown)} more" if len(errors) > len(shown) else ""
        raise UsageError(f"{path}: {len(errors)} bad row{'s' if len(errors) > 1 else ''}, nothing rendered:\n  "
                         + "\n  ".join(f"{path.name} {e}" for e in shown) + more)
    return items


def _csv_rows(text: str, errors: list[str]) -> Iterator[tuple[int, dict]]:
    """(line where the row starts, {column: value}) for each non-empty CSV row after the header."""
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    header, start = None, 1
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as e:
            errors.append(f"line {start}: not valid CSV ({e})")
            return
        line, start = start, reader.line_num + 1
        if not any(cell.strip() for cell in row):
            continue
        if header is None:
            header = [cell.strip() for cell in row]
            problem = _columns_problem(header)
            if problem:
                errors.append(f"line {line}: {problem}")
                return
            continue
        if len(row) != len(header):
            errors.append(f"line {line}: {len(row)} fields, the header has {len(header)} ({', '.join(header)}); "
                          f"quote a text that holds a comma")
            continue
        yield line, {k: v for k, v in zip(header, row) if v != "" or k in REQUIRED}


def _jsonl_rows(text: str, errors: list[str]) -> Iterator[tuple[int, dict]]:
    for line, raw in enumerate(text.splitlines(), 1):
        if not raw.strip():
            continue
        try:
            row = json.loads(raw)
        except json.JSONDecodeError as e:
            errors.append(f"line {line}: not valid JSON ({e.msg} at column {e.colno})")
            continue
        if not isinstance(row, dict):
            errors.append(f"line {line}: expected a JSON object with {', '.join(REQUIRED)}, found "
                          f"{type(row).__name__}")
            continue
        problem = _columns_problem(list(row))
        if problem:
            errors.append(f"line {line}: {problem}")
            continue
        yield line, {k: v for k, v in row.items() if v is not None or k in REQUIRED}


def _columns_problem(columns: list[str]) -> str | None:
    missing = [c for c in REQUIRED if c not in columns]
    unknown = [c for c in columns if c not in REQUIRED + OPTIONAL]
    repeated = sorted({c for c in columns if columns.count(c) > 1})
    if missing:
        return f"missing column{'s' if len(missing) > 1 else ''} {', '.join(missing)} (required: {', '.join(REQUIRED)})"
    if unknown:
        return (f"unknown column{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))} (known: "
                f"{', '.join(REQUIRED + OPTIONAL)})")
    if repeated:
        return f"column {', '.join(repeated)} given twice"
    return None


def _item(row: dict, line: int, voices: Collection[str] | None) -> Item:
    """One checked Item from a row's values (strings from CSV, JSON values from JSON Lines)."""
    for name in REQUIRED + ("lang",):
        if name in row and not isinstance(row[name], str):
            raise UsageError(f"{name} must be a string, found {json.dumps(row[name])[:40]}")
    item_id, text, voice = row["id"], row["text"], row["voice"]
    if not _SAFE_ID.fullmatch(item_id) or ".." in item_id:
        raise UsageError(f"id {item_id!r:.60} is not a safe file name: letters, digits, '.', '_' and '-', "
                         f"starting with a letter or digit, no '..', at most {MAX_ID_LENGTH} characters")
    if voices is not None and voice not in voices:
        raise UsageError(f"unknown voice {voice!r:.40}; the bundle has: {', '.join(sorted(voices))}")
    lang = row.get("lang")
    if lang is not None and lang.strip() not in LANGUAGES:
        raise UsageError(f"lang {lang!r:.40}: expected one of {', '.join(LANGUAGES)} (the text front-end's "
                         f"languages), or none for the voice's language")
    seed, steps, cfg = _number(row, "seed", int), _number(row, "steps", int), _number(row, "cfg", float)
    # values the row leaves out are the run's; stand-ins here only let the given ones be checked
    check_request(text, 1 if steps is None else steps, 1.0 if cfg is None else cfg, None, seed)
    return Item(item_id, text, voice, line, lang.strip() if lang else None, seed, steps, cfg)


def _number(row: dict, name: str, kind: type):
    """An optional int (or float) column: JSON numbers as they are, CSV cells parsed."""
    value = row.get(name)
    if value is None:
        return None
    if isinstance(value, str):
        try:
            return kind(value.strip())
        except ValueError:
            raise UsageError(f"{name} must be {'an integer' if kind is int else 'a number'}, "
                             f"found {value!r:.40}") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind is int and not isinstance(value, int)):
        raise UsageError(f"{name} must be {'an integer' if kind is int else 'a number'}, found {json.dumps(value)[:40]}")
    return kind(value)
