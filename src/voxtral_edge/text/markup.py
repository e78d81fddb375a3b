"""Markup and clutter -> plain text: the first stage of normalization, before any language rule.

Line breaks unified; native digits (Devanagari, Arabic-Indic) made ASCII; emoji dropped (one rule: every
pictograph, flag, keycap and skin tone goes, with the joiners and variation selectors between them) and
invisible characters removed (zero-width spaces, direction marks, soft hyphens; ZWJ/ZWNJ inside words
are kept, Devanagari and Arabic need them); HTML tags dropped and entities decoded, "&" read as the
language's "and"; links flattened to their text and URLs read as the language's word for "link";
markdown flattened (headings, list items and table rows become sentences of their own, emphasis and
code marks go) and lines joined. Markup languages the front-end reads (SSML) join here.
"""

from __future__ import annotations

import html
import re
import unicodedata

TERMINATORS = ".!?…।॥؟۔"  # what ends a sentence, in the nine languages' scripts
CLOSERS = "\"'”’“»«›‹)]}」』"

# Digits of the scripts the languages write in -> ASCII (Devanagari, Arabic-Indic, Extended Arabic-Indic).
_NATIVE_DIGITS = {**{0x0966 + i: str(i) for i in range(10)}, **{0x0660 + i: str(i) for i in range(10)},
                  **{0x06F0 + i: str(i) for i in range(10)}}
_NEWLINES = re.compile(r"\r\n?|[\u2028\u2029\x0b\x0c\x85]")
_INVISIBLE = re.compile("[\u00ad\u180e\u200b\u200e\u200f\u202a-\u202e\u2060-\u2064\u2066-\u2069\ufeff"
                        "\ufe00-\ufe0f\u20e3\U000e0000-\U000e007f]")
_EMOJI_CHAR = "\U0001F000-\U0001FAFF\u2600-\u27BF\u2B00-\u2BFF\u2300-\u23FF"
_EMOJI = re.compile(f"[{_EMOJI_CHAR}](?:[\ufe0e\ufe0f\u20e3]|\u200d[{_EMOJI_CHAR}]?)*|\u200d(?=[{_EMOJI_CHAR}])")

_HTML_COMMENT = re.compile(r"<!--.*?(?:-->|$)", re.S)
_HTML_TAG = re.compile(r"<(/?)([A-Za-z][A-Za-z0-9]*)\b[^<>]*>")
_HTML_BLOCK = frozenset("br p div li ul ol tr table h1 h2 h3 h4 h5 h6 blockquote section article header footer "
                        "pre hr dt dd".split())
_ENTITY = re.compile(r"&(?:#[0-9]{1,7}|#[xX][0-9a-fA-F]{1,6}|[A-Za-z][A-Za-z0-9]{1,31});")
_URL = re.compile(r"(?<![^\W\d_])(?:(?:https?|ftp)://|www\.)[^\s<>\"'`]+", re.I)
_URL_TAIL = re.compile(r"[.,;:!?)\]}>]+$")

_MD_FENCE = re.compile(r"^\s*(?:```|~~~)")
_MD_RULE = re.compile(r"(?:[-*_=][ \t]*){3,}|\|?(?:[ \t]*:?-{3,}:?[ \t]*\|)+[ \t]*:?-*:?")  # on a stripped line
_MD_PREFIX = re.compile(r"^\s*(?:#{1,6}\s+|[-*+•]\s+|>\s?|[0-9]{1,3}[.)]\s+)")
_MD_NUMBERED = re.compile(r"^\s*[0-9]{1,3}[.)]\s+\S", re.M)
_MD_HEADING_TAIL = re.compile(r"\s+#+\s*$")
_MD_LINK = re.compile(r"!?\[([^\[\]]*)\]\([^()\s]*(?:\s+\"[^\"]*\")?\)")
_MD_STAR = re.compile(r"(?<=\w)\*+(?=\w)|(\*+)")  # emphasis marks go; one between two words leaves a space
_MD_UNDERSCORE = re.compile(r"(?<!\w)_+|_+(?!\w)")
_MD_MARKS = re.compile(r"`+|~~")
_MD_INLINE = re.compile(r"[*_`]|~~|\]\(")
_AMPERSAND = re.compile(r" ?& ?")


class Markup:
    """`Markup(and_word, link, stop)(text)`: the text with its markup flattened, in one language's words
    for "&", for a URL, and its full stop."""

    def __init__(self, and_word: str, link: str, stop: str):
        self.and_word, self.link, self.stop = and_word, link, stop

    def __call__(self, text: str) -> str:
        if not text.isascii():  # emoji, invisible characters and native digits are not ASCII
            text = unicodedata.normalize("NFC", text).translate(_NATIVE_DIGITS)
            text = _INVISIBLE.sub("", _EMOJI.sub("", text))
        text = _NEWLINES.sub("\n", text)
        text = self._html(text)
        text = _flatten_links(text)  # "[text](url)" -> "text" before the URL inside would become "link"
        if "://" in text or "www." in text.lower():
            text = _URL.sub(self._url, text)
        return self._markdown(text)

    def _html(self, text: str) -> str:
        """Tags dropped (block tags end a line), entities decoded, "&" read as "and", "<" ">" dropped."""
        if "<" in text:
            text = _HTML_COMMENT.sub("", text)
            text = _HTML_TAG.sub(lambda m: "\n" if m.group(2).lower() in _HTML_BLOCK else "", text)
        if "&" in text:
            text = _ENTITY.sub(_entity, text)
            text = _AMPERSAND.sub(f" {self.and_word} ", text)
        return text.replace("<", "").replace(">", "")

    def _url(self, m: re.Match) -> str:
        tail = _URL_TAIL.search(m.group())
        return f" {self.link}{tail.group() if tail else ''} "

    def _markdown(self, text: str) -> str:
        """Markdown (and plain line breaks) -> one line: a heading, list item, table row or paragraph ends
        with a full stop; the lines of one paragraph are joined with a space."""
        while _MD_INLINE.search(text):  # until nothing changes: removing a mark can make another ("~`~")
            flat = _flatten_links(text)
            flat = _MD_STAR.sub(lambda m: "" if m.group(1) else " ", flat)
            flat = _MD_MARKS.sub("", _MD_UNDERSCORE.sub("", flat))
            if flat == text:
                break
            text = flat
        if "\n" not in text:
            return text
        numbered = len(_MD_NUMBERED.findall(text)) >= 2
        blocks, paragraph = [], []
        for line in text.split("\n"):
            if _MD_FENCE.match(line) or _MD_RULE.fullmatch(line.strip()) or not line.strip():
                blocks.append(" ".join(paragraph))
                paragraph = []
                continue
            item = False
            while True:
                m = _MD_PREFIX.match(line)
                if not m or (m.group().strip()[:1].isdigit() and not numbered):
                    break
                line, item = line[m.end():], True
            if line.rstrip().endswith("#"):  # "## Title ##"
                line = _MD_HEADING_TAIL.sub("", line)
            if "|" in line.strip()[:1] + line.strip()[-1:]:
                line, item = ", ".join(c.strip() for c in line.strip().strip("|").split("|") if c.strip()), True
            if item:
                blocks += [" ".join(paragraph), line]
                paragraph = []
            else:
                paragraph.append(line)
        blocks.append(" ".join(paragraph))
        return " ".join(self._ended(b) for b in (b.strip() for b in blocks) if b)

    def _ended(self, block: str) -> str:
        """A block with a full stop unless it ends with punctuation already."""
        body = block.rstrip(CLOSERS + " ")
        if body and (body[-1].isalnum() or unicodedata.category(body[-1])[0] in "LMN"):
            i = len(body)
            return block[:i] + self.stop + block[i:]
        return block


def _flatten_links(text: str) -> str:
    """Markdown links and images -> their text, nested ones too."""
    while "](" in text:
        flat = _MD_LINK.sub(r"\1", text)
        if flat == text:
            break
        text = flat
    return text


def _entity(m: re.Match) -> str:
    char = html.unescape(m.group())
    # a decoded control character or unassigned code point is dropped, never introduced
    return "".join(c for c in char if unicodedata.category(c) not in ("Cc", "Cs", "Cn", "Co"))
