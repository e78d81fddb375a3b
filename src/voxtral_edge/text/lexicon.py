"""Pronunciation overrides: a user's TOML file of respellings, applied first in normalization.

    # ~/.config/voxtral-edge/lexicon.toml
    [de]
    "Kaiserstuhlstraße" = "Kaiser-stuhl-strasse"   # a word: matched whole, in any case
    [en]
    "Gloucester" = "Gloster"
    [en.regex]
    '\\bSt\\.\\s+(?=[A-Z])' = "Saint "              # a regular expression (Python's), replaced as re.sub does
    [all]
    "voxtral" = "vox-trall"                         # every language

Tables are named by language (one of LANGUAGES) or `all`; `all` entries apply after the language's own.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import UsageError
from ..files import parse_toml
from .tables import LANGUAGES

ALL = "all"


def default_path() -> Path:
    """$VOXTRAL_EDGE_LEXICON, else $XDG_CONFIG_HOME/voxtral-edge/lexicon.toml (~/.config/... by default)."""
    if os.environ.get("VOXTRAL_EDGE_LEXICON"):
        return Path(os.environ["VOXTRAL_EDGE_LEXICON"])
    base = os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config"
    return Path(base) / "voxtral-edge" / "lexicon.toml"


@dataclass(frozen=True)
class Lexicon:
    """Per language, the (pattern, respelling) pairs, in file order."""

    rules: dict[str, tuple[tuple[re.Pattern, str], ...]] = field(default_factory=dict)
    source: str = ""

    def apply(self, text: str, lang: str) -> str:
        for pattern, respelling in self.rules.get(lang, ()) + self.rules.get(ALL, ()):
            text = pattern.sub(respelling, text)
        return text

    def __bool__(self) -> bool:
        return any(self.rules.values())

    def to_data(self) -> list[list]:
        """The rules as plain data (JSON, pickle): [language, pattern, flags, respelling] in order."""
        return [[lang, pattern.pattern, int(pattern.flags), respelling]
                for lang, rules in self.rules.items() for pattern, respelling in rules]

    @classmethod
    def from_data(cls, data: list[list], source: str = "lexicon") -> "Lexicon":
        """The lexicon `to_data` describes."""
        rules: dict[str, list] = {}
        for lang, pattern, flags, respelling in data:
            rules.setdefault(lang, []).append((re.compile(pattern, flags), respelling))
        return cls({lang: tuple(r) for lang, r in rules.items()}, source)

    @classmethod
    def from_dict(cls, data: dict, source: str = "lexicon") -> "Lexicon":
        rules: dict[str, list] = {}
        for lang, table in data.items():
            if lang not in LANGUAGES and lang != ALL:
                raise UsageError(f"{source}: table [{lang}]: expected a language ({', '.join(LANGUAGES)}) or {ALL}")
            if not isinstance(table, dict):
                raise UsageError(f"{source}: {lang} must be a table of word = respelling")
            for key, value in table.items():
                if key == "regex" and isinstance(value, dict):
                    for pattern, respelling in value.items():
                        respelling = _text(respelling, source, f"{lang}.regex", pattern)
                        rules.setdefault(lang, []).append((_regex(pattern, source, lang), respelling))
                    continue
                word = _text(key, source, lang, key)
                if not word.strip():
                    raise UsageError(f"{source}: [{lang}]: an empty word")
                pattern = re.compile(rf"(?<!\w){re.escape(word)}(?!\w)", re.IGNORECASE)
                rules.setdefault(lang, []).append((pattern, _text(value, source, lang, key).replace("\\", "\\\\")))
        return cls({lang: tuple(r) for lang, r in rules.items()}, source)

    @classmethod
    def load(cls, path: str | Path) -> "Lexicon":
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise UsageError(f"{path}: cannot read the lexicon ({getattr(e, 'strerror', None) or e})") from None
        return cls.from_dict(parse_toml(text, str(path), "TOML lexicon"), str(path))


def load_lexicon(path: str | Path | None = None) -> Lexicon | None:
    """The lexicon at `path`, or at `default_path()` when None and a file is there; None when there is none."""
    if path is None:
        path = default_path()
        if not path.is_file():
            return None
    return Lexicon.load(path)


def _text(value, source: str, table: str, key: str) -> str:
    if not isinstance(value, str):
        raise UsageError(f"{source}: [{table}] {key!r}: the respelling must be a string, found {type(value).__name__}")
    return value


def _regex(pattern: str, source: str, lang: str) -> re.Pattern:
    try:
        return re.compile(pattern)
    except re.error as e:
        raise UsageError(f"{source}: [{lang}.regex] {pattern!r}: not a regular expression ({e})") from None
