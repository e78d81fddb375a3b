"""Long text -> pieces that fit the model's context, in reading order.

`split_sentences(text)` gives one piece per sentence; `split_text(text, max_tokens, count_tokens)` also
splits any sentence longer than `max_tokens` (at clause punctuation, then spaces, then characters).
A piece is a slice of the original text with its surrounding whitespace stripped: numbers,
abbreviations and punctuation are left to the tokenizer, nothing is rewritten.

Sentence rules (English, French, Spanish, Portuguese, Italian, Dutch, German, Hindi, Arabic): a run of
terminators (. ! ? … । ॥ ؟ ۔), optionally followed by closing quotes or brackets, then whitespace or the
end of text; or a paragraph break (two or more newlines). A single "." after a known abbreviation, an
initial ("J. R. R. Tolkien") or a dotted initialism ("U.S.") is not a boundary, and neither is any
terminator followed by a lowercase word ("etc. and", "wait... what"). Scripts without case (Devanagari,
Arabic) have no lowercase words, so only the terminator rule applies to them.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Callable

from .markup import CLOSERS as _CLOSERS  # closing quotes/brackets attached to the terminator (« ‹ “ in German)
from .markup import TERMINATORS as _TERMINATORS

_BOUNDARY = re.compile(
    # French puts a (non-breaking) space before the closing », so allow that one closer after a space.
    rf"[{_TERMINATORS}]+[{re.escape(_CLOSERS)}]*(?:[^\S\n]+»(?=\s|$))?(?=\s|$)"
    r"|\n[^\S\n]*\n"  # paragraph break: two newlines with only other whitespace between
)
_TERMINATOR_RUN = re.compile(rf"[{_TERMINATORS}]+")
_WORD_BEFORE = re.compile(r"(\S*)\Z")  # the word the terminator ends (searched in a short window)
_NEXT_LETTER = re.compile(r"\s*[^\w\s]*(\w)")  # first letter/digit of the next word, after opening marks
_INITIALISM = re.compile(r"(?:\w\.)+\w")  # "U.S", "e.g", "z.B" (the final "." is the terminator)

# Lowercase, without the final ".". Single letters (initials, French "M.") are handled separately.
_ABBREVIATIONS = frozenset("""
    mr mrs ms dr prof st vs etc jr sr inc ltd co mt gen col lt sgt capt gov rev fig approx dept
    mme mlle mm pr ste cf p.ex env
    sra srta dra ud uds dña lic ing pág av aprox
    profa
    sig dott dott.ssa avv arch ecc
    dhr mevr mw bijv enz blz nr
    hr fr usw bzw ca evtl ggf inkl vgl str
""".split())

_CLAUSE_CUT = re.compile(r"[,;:،؛](?=\s)|[—–]")  # after a comma-like mark and a space, or after a dash
_SPACE_CUT = re.compile(r"\s+")


def _is_boundary(text: str, m: re.Match) -> bool:
    """Whether a terminator match really ends a sentence (paragraph breaks always do)."""
    if m.group().isspace():
        return True
    nxt = _NEXT_LETTER.match(text, m.end())
    if nxt and nxt.group(1).islower():
        return False
    if _TERMINATOR_RUN.match(text, m.start()).group() == ".":  # "..." and "?." are not abbreviations
        word = _WORD_BEFORE.search(text, max(0, m.start() - 40), m.start()).group(1)
        word = re.sub(r"^\W+", "", word)  # opening quotes/brackets before the word
        if word.lower() in _ABBREVIATIONS or _INITIALISM.fullmatch(word):
            return False
        if len(word) == 1 and word.isalpha() and word.lower() != word.upper():  # an initial; cased scripts only
            return False
    return True


def split_sentences(text: str) -> list[str]:
    """Sentences of `text` in order, each a stripped slice of it; empty pieces are dropped."""
    pieces, start = [], 0
    for m in _BOUNDARY.finditer(text):
        if _is_boundary(text, m):
            pieces.append(text[start:m.end()].strip())
            start = m.end()
    pieces.append(text[start:].strip())
    return [p for p in pieces if p]


def _char_cuts(s: str) -> list[int]:
    # Never cut before a combining mark or joiner: a Devanagari vowel sign stays on its consonant.
    return [i for i in range(1, len(s))
            if not unicodedata.category(s[i]).startswith("M") and s[i] not in "\u200c\u200d"]


def _pack(s: str, cuts: list[int], fits: Callable[[str], bool], finer: Callable[[str], list[str]]) -> list[str]:
    """Greedy: from each start, the longest run of segments (ending at a cut) that fits; a single
    segment that does not fit is handed to `finer`."""
    ends = sorted({c for c in cuts if 0 < c < len(s)} | {len(s)})
    pieces, start, i = [], 0, 0
    while i < len(ends):
        j = i
        while j < len(ends) and fits(s[start:ends[j]]):
            j += 1
        if j == i:  # even the next segment alone is too long
            pieces += finer(s[start:ends[i]])
            j = i + 1
        else:
            pieces.append(s[start:ends[j - 1]])
        start, i = ends[j - 1], j
    return pieces


def split_text(text: str, max_tokens: int, count_tokens: Callable[[str], int]) -> list[str]:
    """Pieces of `text` in order, each with count_tokens(piece) <= max_tokens: one per sentence, and
    sentences that are too long split at clause punctuation (, ; : — – ، ؛), then at spaces, then
    between characters. Raises ValueError for max_tokens < 1, or when one character alone does not fit."""
    if max_tokens < 1:
        raise ValueError(f"max_tokens must be at least 1, got {max_tokens}")

    def fits(piece: str) -> bool:
        return count_tokens(piece.strip()) <= max_tokens

    def no_fit(c: str) -> list[str]:
        if c.isspace():
            return []
        raise ValueError(f"{c!r} alone has {count_tokens(c)} tokens, more than max_tokens={max_tokens}")

    def by_code_points(s: str) -> list[str]:  # a letter with more combining marks than fit
        return _pack(s, list(range(1, len(s))), fits, no_fit)

    def by_chars(s: str) -> list[str]:
        return _pack(s, _char_cuts(s), fits, by_code_points)

    def by_words(s: str) -> list[str]:
        return _pack(s, [m.end() for m in _SPACE_CUT.finditer(s)], fits, by_chars)

    def by_clauses(s: str) -> list[str]:
        return _pack(s, [m.end() for m in _CLAUSE_CUT.finditer(s)], fits, by_words)

    pieces = []
    for sentence in split_sentences(text):
        pieces += [sentence] if fits(sentence) else by_clauses(sentence)
    return [p for p in (p.strip() for p in pieces) if p]
