"""Markup -> spans: a subset of W3C SSML 1.1, and plain text, as the same list of `Text`, `Break` and `Mark`.

    <speak xml:lang>  <p>  <s>  <break time="300ms"|strength="weak">  <mark name>  <sub alias>
    <say-as interpret-as="characters|spell-out|digits|cardinal|ordinal|date|time|telephone" format>
    <lang xml:lang>  <prosody rate="slow|fast|80%|1.2">

A `Text` span is spoken as a piece of its own, normalized in its language: so a mark or a sentence start
between two spans falls on a frame boundary, where the runtime counts audio exactly. `<p>` and `<s>` start
sentences; breaks are silence of exactly their length; prosody rate is a speed factor for its span (applied
by the audio chain's time-scale stage). Elements outside the subset are spoken as their text, with one
warning per element name. Parsing is defusedxml's: no DTD, so no entity is expanded and nothing external
is fetched; malformed markup is an SsmlError naming its line and column.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass
from xml.etree.ElementTree import Element, ParseError, TreeBuilder

from ..errors import UsageError
from .numbers import cardinal, digits, ordinal
from .normalize import CLOSERS as _CLOSERS
from .normalize import TERMINATORS as _TERMINATORS
from .tables import LANGUAGES

BREAK_STRENGTH_MS = {"none": 0, "x-weak": 100, "weak": 250, "medium": 400, "strong": 750, "x-strong": 1200}
MAX_BREAK_MS = 10_000
PROSODY_RATES = {"x-slow": 0.6, "slow": 0.8, "medium": 1.0, "default": 1.0, "fast": 1.25, "x-fast": 1.6}
RATE_RANGE = (0.5, 2.0)
_NS = re.compile(r"^\{[^}]*\}")
_XML_LANG = "{http://www.w3.org/XML/1998/namespace}lang"


@dataclass(frozen=True)
class Text:
    """Words to speak in `lang` (None: the voice's), at `rate` times the request's speed; `sentence` when a
    sentence (or paragraph) starts with it."""

    text: str
    lang: str | None = None
    rate: float = 1.0
    sentence: bool = False


@dataclass(frozen=True)
class Break:
    """Silence of exactly `ms` milliseconds."""

    ms: float


@dataclass(frozen=True)
class Mark:
    """A named point: where the audio stands when it is reached is reported."""

    name: str


Span = Text | Break | Mark


class SsmlError(UsageError):
    """Markup that cannot be read: what is wrong, at which line and column (1-based)."""

    def __init__(self, message: str, line: int | None = None, column: int | None = None):
        where = f"line {line}, column {column}: " if line is not None else ""
        super().__init__(f"SSML {where}{message}")
        self.message, self.line, self.column = message, line, column


class SsmlWarning(UserWarning):
    """An element outside the supported subset: spoken as its text."""


def is_ssml(text: str) -> bool:
    """Whether a text is SSML: it starts (after whitespace and an XML declaration) with <speak."""
    return re.match(r"\s*(?:<\?xml[^>]*\?>\s*)?<speak[\s>/]", text) is not None


def parse(markup: str, lang: str | None = None) -> list[Span]:
    """The spans of an SSML document (see the module's docstring); `lang` is the language of text outside
    any xml:lang. Adjacent text is joined; empty text is dropped."""
    root, positions = _parse_xml(markup)
    if _local(root.tag) != "speak":
        raise SsmlError(f"the root element must be <speak>, found <{_local(root.tag)}>", *positions[root])
    walker = _Walker(positions)
    walker.element(root, _language(root, lang), 1.0)
    return _sentences(walker.spans)


def _sentences(spans: list[Span]) -> list[Span]:
    """Each sentence of a text span as a span of its own, so that its start is timed."""
    from .split import split_sentences

    out: list[Span] = []
    ended = True  # the text before ended a sentence
    for span in spans:
        if not isinstance(span, Text):
            out.append(span)
            continue
        parts = [" ".join(p.split()) for p in split_sentences(span.text)] or [" ".join(span.text.split())]
        out.extend(Text(p, span.lang, span.rate, span.sentence or ended or i > 0) for i, p in enumerate(parts))
        ended = parts[-1].rstrip(_CLOSERS).endswith(tuple(_TERMINATORS))
    return out


def plain(text: str, lang: str | None = None, sentences: bool = False) -> list[Span]:
    """Plain text as spans: one `Text`, or one per sentence when `sentences` (to time each of them)."""
    if not sentences:
        return [Text(text, lang, sentence=True)]
    from .split import split_sentences

    return [Text(s, lang, sentence=True) for s in split_sentences(text)] or [Text(text, lang, sentence=True)]


class _Positions(TreeBuilder):
    """A tree builder that notes where each element starts (line, 1-based column)."""

    def __init__(self):
        super().__init__()
        self.parser = None
        self.at: dict[Element, tuple[int, int]] = {}

    def start(self, tag, attrs):
        element = super().start(tag, attrs)
        self.at[element] = (self.parser.parser.CurrentLineNumber, self.parser.parser.CurrentColumnNumber + 1)
        return element


def _parse_xml(markup: str) -> tuple[Element, dict]:
    try:
        from defusedxml import DTDForbidden, EntitiesForbidden, ExternalReferenceForbidden
        from defusedxml.ElementTree import DefusedXMLParser
    except ImportError as e:
        raise UsageError(f"SSML needs defusedxml ({e.name} is missing): pip install defusedxml") from None
    builder = _Positions()
    parser = builder.parser = DefusedXMLParser(target=builder, forbid_dtd=True, forbid_entities=True,
                                               forbid_external=True)
    try:
        parser.feed(markup)
        return parser.close(), builder.at
    except ParseError as e:
        line, column = e.position
        message = re.sub(r": line \d+, column \d+$", "", str(e))
        raise SsmlError(message, line, column + 1) from None
    except (DTDForbidden, EntitiesForbidden, ExternalReferenceForbidden) as e:
        expat = parser.parser
        what = "a DTD (<!DOCTYPE ...>)" if isinstance(e, DTDForbidden) else "an entity declaration"
        raise SsmlError(f"{what} is not accepted: entities are never expanded and nothing external is read",
                        expat.CurrentLineNumber, expat.CurrentColumnNumber + 1) from None


def _local(tag) -> str:
    return _NS.sub("", tag) if isinstance(tag, str) else ""


def _language(element: Element, inherited: str | None) -> str | None:
    value = element.get(_XML_LANG)
    if value is None:
        return inherited
    code = value.split("-")[0].split("_")[0].lower()
    if code not in LANGUAGES:
        warnings.warn(SsmlWarning(f"xml:lang {value!r} is not one of {', '.join(LANGUAGES)}: that text is read "
                                  f"as {inherited or 'the voice language'}"), stacklevel=4)
        return inherited
    return code


def _rate(value: str) -> float:
    value = value.strip()
    if value in PROSODY_RATES:
        return PROSODY_RATES[value]
    try:
        rate = float(value[:-1]) / 100 if value.endswith("%") else float(value)
    except ValueError:
        raise SsmlError(f'<prosody rate="{value}">: expected {", ".join(PROSODY_RATES)}, a percentage or a '
                        f"number") from None
    low, high = RATE_RANGE
    if not low <= rate <= high:
        raise SsmlError(f'<prosody rate="{value}">: the rate must be from {low:g} to {high:g} ({low:.0%} to '
                        f"{high:.0%})")
    return rate


def _break_ms(element: Element) -> float:
    time, strength = element.get("time"), element.get("strength")
    if time is not None:
        m = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*(ms|s)\s*", time)
        if not m:
            raise SsmlError(f'<break time="{time}">: expected a duration such as 300ms or 1.5s')
        ms = float(m.group(1)) * (1000 if m.group(2) == "s" else 1)
        if ms > MAX_BREAK_MS:
            raise SsmlError(f'<break time="{time}">: at most {MAX_BREAK_MS / 1000:g} s')
        return ms
    if strength is not None:
        if strength not in BREAK_STRENGTH_MS:
            raise SsmlError(f'<break strength="{strength}">: expected one of {", ".join(BREAK_STRENGTH_MS)}')
        return BREAK_STRENGTH_MS[strength]
    return BREAK_STRENGTH_MS["medium"]


_DATE = re.compile(r"([0-9]{1,4})[-./ ]([0-9]{1,2})[-./ ]([0-9]{1,4})")


def say_as(text: str, interpret: str, fmt: str | None, lang: str) -> str:
    """The words of a <say-as> (numbers in `lang`); what the normalizer reads well is left for it (dates
    as ISO, times as H:MM)."""
    text = text.strip()
    if interpret in ("characters", "spell-out"):
        return " ".join(digits(c, lang) if c.isdigit() else c for c in text if not c.isspace())
    if interpret in ("digits", "telephone"):
        groups = re.findall(r"[0-9]+", text)
        if not groups:
            raise SsmlError(f'<say-as interpret-as="{interpret}">{text}: expected digits')
        return ", ".join(digits(g, lang) for g in groups)  # a telephone number's groups with a short pause
    if interpret in ("cardinal", "number", "ordinal"):
        number = text.replace(",", "").replace(" ", "").replace(".", "") if interpret == "ordinal" else text
        if not re.fullmatch(r"[0-9]+", number.rstrip(".")):
            raise SsmlError(f'<say-as interpret-as="{interpret}">{text}: expected a whole number')
        n = int(number.rstrip("."))
        return ordinal(n, lang) if interpret == "ordinal" else cardinal(n, lang)
    if interpret == "date":
        m = _DATE.fullmatch(text)
        order = (fmt or ("ymd" if m and len(m.group(1)) == 4 else "mdy" if lang == "en" else "dmy")).lower()
        if not m or sorted(order) != ["d", "m", "y"]:
            raise SsmlError(f'<say-as interpret-as="date" format="{fmt}">{text}: expected a date such as '
                            f"2026-12-04 with format ymd, dmy or mdy")
        parts = dict(zip(order, (int(g) for g in m.groups())))
        return f"{parts['y']:04d}-{parts['m']:02d}-{parts['d']:02d}"
    if interpret == "time":
        m = re.fullmatch(r"([0-9]{1,2})[:h.]([0-9]{2})(?::[0-9]{2})?\s*([aApP]\.?[mM]\.?)?", text)
        if not m:
            raise SsmlError(f'<say-as interpret-as="time">{text}: expected a time such as 14:30 or 2:30pm')
        return f"{int(m.group(1))}:{m.group(2)}" + (f" {m.group(3)}" if m.group(3) else "")
    raise SsmlError(f'<say-as interpret-as="{interpret}">: expected characters, spell-out, digits, cardinal, '
                    f"ordinal, date, time or telephone")


class _Walker:
    """Collects spans in document order."""

    def __init__(self, positions: dict):
        self.positions = positions
        self.spans: list[Span] = []
        self.warned: set[str] = set()
        self.sentence = True  # the next text starts a sentence

    def text(self, text: str | None, lang: str | None, rate: float) -> None:
        if not text:
            return
        last = self.spans[-1] if self.spans else None
        if isinstance(last, Text) and last.lang == lang and last.rate == rate and not self.sentence:
            self.spans[-1] = Text(last.text + text, lang, rate, last.sentence)
        elif not text.strip():
            return  # space between elements: it only matters inside a text
        else:
            self.spans.append(Text(text, lang, rate, self.sentence))
        self.sentence = False

    def element(self, e: Element, lang: str | None, rate: float) -> None:
        """e's content (its tail belongs to its parent); an error in e names e's position."""
        try:
            self._element(e, lang, rate)
        except SsmlError as error:
            if error.line is None:
                raise SsmlError(error.message, *self.positions.get(e, (None, None))) from None
            raise

    def _element(self, e: Element, lang: str | None, rate: float) -> None:
        name = _local(e.tag)
        if name == "break":
            self.spans.append(Break(_break_ms(e)))
            return
        if name == "mark":
            if not e.get("name"):
                raise SsmlError("<mark> needs a name attribute")
            self.spans.append(Mark(e.get("name")))
            return
        if name == "sub":
            if e.get("alias") is None:
                raise SsmlError("<sub> needs an alias attribute")
            self.text(f" {e.get('alias')} ", lang, rate)
            return
        if name == "say-as":
            if not e.get("interpret-as"):
                raise SsmlError("<say-as> needs an interpret-as attribute")
            words = say_as("".join(e.itertext()), e.get("interpret-as"), e.get("format"), lang or "en")
            self.text(f" {words} ", lang, rate)
            return
        if name == "lang":
            if e.get(_XML_LANG) is None:
                raise SsmlError("<lang> needs an xml:lang attribute")
            lang = _language(e, lang)
        elif name == "prosody":
            rate = rate * _rate(e.get("rate")) if e.get("rate") is not None else rate
        elif name in ("p", "s"):
            self.sentence = True
            lang = _language(e, lang)
        elif name != "speak" and name not in self.warned:
            self.warned.add(name)
            warnings.warn(SsmlWarning(f"<{name}> is not in the supported SSML subset: its text is spoken as is"),
                          stacklevel=4)
        self.text(e.text, lang, rate)
        for child in e:
            self.element(child, lang, rate)
            self.text(child.tail, lang, rate)
        if name in ("p", "s"):
            self.sentence = True
