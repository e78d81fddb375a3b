"""Text as a car says it -> text as it is spoken: `normalize(text, lang)`.

In order: markup and clutter flattened to plain text (`markup.py`: line breaks, HTML, emoji, invisible
characters, URLs read as "link", markdown, lines joined); then, per language: address and title abbreviations, times, dates, money, ordinals, road and exit
numbers, quantities with their units, ranges, percentages, negatives and every other number, spelled
in words; finally repeated punctuation collapsed and a final full stop added when there is none.

It never raises, keeps every letter it has no rule for, and normalize(normalize(x)) == normalize(x):
after it no ASCII digit is left, and no rule matches its own output. Tables are in `tables.py`.
"""

from __future__ import annotations

import functools
import re

from . import numbers
from .markup import CLOSERS, TERMINATORS, Markup
from .numbers import cardinal, ordinal, year
from .tables import ENGLISH_VOICE_PREFIXES, LANGUAGES, RULES, Language, Noun

_LEADING_LOOKAROUNDS = re.compile(r"^(?:\(\?<?[=!](?:[^()]|\([^()]*\))*\))+")
_DIGIT, _NON_DIGIT = re.compile("[0-9]"), re.compile("[^0-9]")
_AMPM_HINT = re.compile(r"[0-9] ?[aApP]\.?[mM]")
_H_HINT = re.compile(r"[0-9] ?h")
_DE_ORDINAL_HINT = re.compile(r"[0-9]\. ")
_EXIT_HINT = re.compile(r"[0-9][a-d](?!\w)")
_DATE_HINT = re.compile(r"[0-9][-./][0-9]")
_SPACES = re.compile(r"[^\S\n]+")
_SPACE_BEFORE_PUNCT = re.compile(r" +(?=[,.;:!?…،؛؟।])")
_TERMINAL_RUN = re.compile(r"[.!?…؟।॥](?:\s*[.!?…؟।॥])+")
_OPENING_RUN = re.compile(r"([¡¿])[¡¿]+")
_CLAUSE_RUN = re.compile(r"([,;:،؛])(?:\s*[,;:،؛])+")
_CLAUSE_BEFORE_STOP = re.compile(r"[,;:،؛]\s*(?=[.!?…؟।॥])")
_TRAILING_MARKS = " \t\n\r\f\v,;:،؛-–—"  # what a text may not end with: dropped before the final stop
_CLAUSE_HINT = re.compile(r"[,;:،؛] ?[,;:،؛.!?…؟।॥]")

GROUP_SPACES = "\u00a0\u202f\u2009"
MINUS = "-\u2212"


def voice_language(voice: str) -> str:
    """The language a preset voice speaks: its name's prefix (fr_female -> fr); the English presets
    (casual_*, neutral_*, cheerful_*) and any unknown name -> en."""
    prefix = voice.split("_", 1)[0].lower() if isinstance(voice, str) else ""
    if prefix in ENGLISH_VOICE_PREFIXES:
        return "en"
    return prefix if prefix in RULES else "en"


def normalize(text: str, lang: str = "en") -> str:
    """`text` as it should be spoken in `lang` (one of LANGUAGES; anything else is read as English)."""
    return _normalizer(lang if lang in RULES else "en")(text)


@functools.lru_cache(maxsize=None)
def _normalizer(lang: str) -> "Normalizer":
    return Normalizer(RULES[lang])


class Normalizer:
    """One language's rules, compiled once."""

    def __init__(self, rules: Language):
        self.rules = r = rules
        self.lang = r.code
        seps = re.escape("".join(sorted(set(r.group + r.decimal + ".,") - {" "}))) + GROUP_SPACES
        space = " " if " " in r.group else ""
        self.number = number = rf"[0-9]+(?:[{seps}{space}][0-9]+)*"
        # not in a longer number, nor after a letter-digit id ("A7" is the road pass's)
        edge = r"(?<![0-9])(?<![0-9][.,])"
        gap = rf"[ {GROUP_SPACES}]?"
        units = sorted(r.units, key=len, reverse=True)
        unit_alt = "|".join(re.escape(u).replace("°", f"°{gap}") for u in units)
        self.quantity = re.compile(
            rf"(?P<neg>(?<![\w.,{MINUS}])[{MINUS}]{gap})?{edge}(?P<num>{number})"
            rf"(?:{gap}(?P<range>[-–]){gap}(?P<num2>{number})(?![{MINUS}.,]?[0-9]))?"
            rf"(?:{gap}(?P<unit>{unit_alt})(?![^\W\d_]))?")
        symbols = "|".join(re.escape(c) for c in sorted(r.currencies, key=len, reverse=True))
        self.money_before = re.compile(rf"(?P<cur>{symbols}){gap}(?P<num>{number})")
        self.money_after = re.compile(rf"{edge}(?P<num>{number}){gap}(?P<cur>{symbols})")
        self.currency_hint = re.compile(symbols)
        months = "|".join(r.months)
        self.iso_date = re.compile(r"(?<![0-9])(?P<y>[12][0-9]{3})-(?P<m>0?[1-9]|1[0-2])-(?P<d>0?[1-9]|[12][0-9]|3[01])"
                                   r"(?![0-9])")
        self.dmy_date = re.compile(r"(?<![0-9.,/-])(?P<d>[0-9]{1,2})(?P<sep>[./-])(?P<m>[0-9]{1,2})(?P=sep)"
                                   r"(?P<y>[0-9]{4})(?![0-9])")
        of = "(?P<of> de)?" if self.lang in ("es", "pt") else "(?P<of>)"
        self.day_month = re.compile(rf"(?<![0-9.,])(?P<d>[0-9]{{1,2}})(?P<dot>\.)?{of} (?P<m>{months})\b")
        self.month_day = re.compile(rf"\b(?P<m>{months}) (?P<d>[0-9]{{1,2}})(?:st|nd|rd|th)?\b(?![.,][0-9])") \
            if self.lang == "en" else None
        ampm = r"(?:\s?(?P<ampm>[aApP]\.?[mM]\.?)(?![^\W\d_]))?" if r.meridiem else ""
        uhr = r"(?:\s?Uhr\b)?" if self.lang == "de" else r"(?: बजे)?" if self.lang == "hi" else ""
        time_sep = "[:.]" if self.lang == "de" else ":"
        self.time = re.compile(rf"(?<![0-9.,:])(?P<h>[01]?[0-9]|2[0-3]){time_sep}(?P<m>[0-5][0-9])(?![0-9]|[.:][0-9])"
                               rf"{ampm}{uhr}" if self.lang != "de" else
                               rf"(?<![0-9.,:])(?P<h>[01]?[0-9]|2[0-3])(?::(?P<m>[0-5][0-9])(?![0-9])|"
                               rf"\.(?P<m2>[0-5][0-9])(?=\s?Uhr\b)){uhr}")
        self.hour_ampm = re.compile(r"(?<![0-9.,:])(?P<h>1[0-2]|0?[1-9])\s?(?P<ampm>[aApP]\.?[mM]\.?)(?![^\W\d_])") \
            if r.meridiem else None
        self.h_time = re.compile(r"(?<![0-9.,:])(?P<h>[01]?[0-9]|2[0-3]) ?h ?(?P<m>[0-5][0-9])(?![0-9])") \
            if self.lang in ("fr", "pt") else None
        self.ordinals = [(re.compile(rf"(?<![\w.,]){edge}(?P<num>[0-9]{{1,9}})(?:{suffix})(?![^\W\d_])"), form)
                         for suffix, form in r.ordinal_suffixes]
        self.de_ordinal = re.compile(r"(?<![\w.,])(?P<num>[0-9]{1,3})\.(?= +\w)") if self.lang == "de" else None
        prefixes = "|".join(sorted(r.road_prefixes, key=len, reverse=True)) or "(?!)"
        self.road = re.compile(rf"(?<![\w\-])(?:(?P<p>[A-Z]{{1,3}})-?|(?P<q>{prefixes}) )(?P<n>[0-9]{{1,4}})"
                               rf"(?P<s>[a-z])?(?![\w])(?![.,][0-9])(?! ?(?:km|mi|m)\b)")
        self.road_hint = re.compile(r"[A-Z][A-Za-z]{0,2}[- ]?[0-9]")
        self.time_hint = re.compile(r"[0-9][:.][0-5][0-9]" if self.lang == "de" else r"[0-9]:[0-5][0-9]")
        self.ordinal_hint = re.compile("[0-9](?:" + "|".join(suffix for suffix, _ in r.ordinal_suffixes) + ")") \
            if r.ordinal_suffixes else None
        self.exit = re.compile(r"(?<![\w.,])(?P<n>[0-9]{1,3})(?P<s>[a-d])(?![\w])")
        # all abbreviations in one pattern, one alternative (named a0, a1...) per table entry
        self.expansions = [repl for _, repl in r.abbreviations]
        self.abbreviations = re.compile("|".join(f"(?P<a{i}>{_letter_bounded(p)})" for i, (p, _) in
                                                 enumerate(r.abbreviations))) if r.abbreviations else None
        # the same without the lookarounds they start with: a pattern that starts with a literal is searched
        # fast (measured 60x faster), and it matches wherever one of the table's entries may start
        self.abbreviation_hint = re.compile("|".join(_LEADING_LOOKAROUNDS.sub("", _letter_bounded(p))
                                                     for p, _ in r.abbreviations)) if r.abbreviations else None
        self.name_abbreviations = [
            (re.compile(rf"{_LETTER_START}{a}{_LETTER_END}(?P<dot>\.)?"), title, suffix)
            for a, title, suffix in r.name_abbreviations]
        self.plain = Markup(r.and_word, r.link, r.stop)
        self.feminine = re.compile(rf"(?:{r.feminine_nouns})") if r.feminine_nouns else None

    # -- the pipeline ---------------------------------------------------------------------------------
    def __call__(self, text: str) -> str:
        if not isinstance(text, str):
            raise TypeError(f"normalize: text must be a str, found {type(text).__name__}")
        text = self.plain(text)
        text = self._punctuation(_SPACES.sub(" ", text))  # the final stop first: rules see the text's end as it will be
        if self.abbreviations:
            text = self._abbreviate(text)
        for pattern, title, suffix in self.name_abbreviations:
            while True:  # until none is left to read: an expansion is the context of the next ("St. St.")
                expanded = pattern.sub(lambda m, t=title, s=suffix: self._name_abbreviation(m, t, s), text)
                if expanded == text:
                    break
                text = expanded
        text = self._numbers(text)
        return self._punctuation(text)

    def _abbreviate(self, text: str) -> str:
        """self.abbreviations.sub(self._abbreviation, text), tried only where the hint pattern finds a start."""
        parts, last, pos = [], 0, 0
        while (hint := self.abbreviation_hint.search(text, pos)) is not None:
            m = self.abbreviations.match(text, hint.start())
            if m and m.end() > m.start():
                parts += [text[last:m.start()], self._abbreviation(m)]
                last = pos = m.end()
            else:
                pos = hint.start() + 1
        return "".join(parts) + text[last:] if parts else text

    def _abbreviation(self, m: re.Match) -> str:
        """The table's expansion; the abbreviation's full stop is kept when it also ended the text."""
        repl = self.expansions[int(m.lastgroup[1:])]
        keep_stop = m.group().endswith(".") and not m.string[m.end():].strip()
        return repl + ("." if keep_stop else "")

    def _name_abbreviation(self, m: re.Match, title: str, suffix: str) -> str:
        """Before a name (and not after one) the title ("Dr. Smith" -> Doctor, "St. Mary's" -> Saint);
        after a name or a house number the street suffix ("Baker St." -> Street, "10 Main Dr" -> Drive);
        otherwise left as written. A capitalized first word of a sentence is not a name."""
        before, after = m.string[max(0, m.start() - 80):m.start()], m.string[m.end():m.end() + 8]
        words = before.split()
        prev = words[-1] if words and before[-1:] == " " else ""
        sentence_start = len(words) < 2 or words[-2][-1] in TERMINATORS + ":"
        named = bool(prev) and (prev[0].isupper() and not sentence_start or prev[0].isdigit())
        nxt = re.match(r" +(\w)", after)
        if nxt and nxt.group(1).isupper() and not named:
            return title
        if named:
            ends = m.group("dot") and (not m.string[m.end():].strip() or (nxt and nxt.group(1).isupper()))
            return suffix + ("." if ends else "")
        return m.group()

    # -- numbers ----------------------------------------------------------------------------------------
    def _numbers(self, text: str) -> str:
        """Each pass runs only where its hint (a pattern that starts with a character class, which the
        regex engine searches fast) finds something: most sentences have few numbers."""
        if not _DIGIT.search(text):
            return text
        if _DATE_HINT.search(text):
            text = self.iso_date.sub(self._date, text)
            text = self.dmy_date.sub(self._date, text)
        if any(month in text for month in self.rules.months):
            text = self.day_month.sub(self._day_month, text)
            if self.month_day:
                text = self.month_day.sub(lambda m: f"{m.group('m')} {ordinal(int(m.group('d')), 'en')}"
                                          if 1 <= int(m.group("d")) <= 31 else m.group(), text)
        if self.time_hint.search(text):
            text = self.time.sub(self._time, text)
        if self.hour_ampm and _AMPM_HINT.search(text):
            text = self.hour_ampm.sub(lambda m: self._clock(int(m.group("h")), 0, m.group("ampm")), text)
        if self.h_time and _H_HINT.search(text):
            text = self.h_time.sub(lambda m: self._clock(int(m.group("h")), int(m.group("m") or 0)), text)
        if self.currency_hint.search(text):
            text = self.money_before.sub(self._money, text)
            text = self.money_after.sub(self._money, text)
        if self.ordinal_hint and self.ordinal_hint.search(text):
            for pattern, form in self.ordinals:
                text = pattern.sub(lambda m, f=form: self._ordinal(int(m.group("num")), f), text)
        if self.de_ordinal and _DE_ORDINAL_HINT.search(text):
            text = self.de_ordinal.sub(self._german_ordinal, text)
        if self.road_hint.search(text):
            text = self.road.sub(self._road, text)
        if _EXIT_HINT.search(text):
            text = self.exit.sub(lambda m: f"{cardinal(int(m.group('n')), self.lang)} {m.group('s').upper()}", text)
        text = self.quantity.sub(self._quantity, text)
        return _IT_ELISION.sub("un'", text) if self.lang == "it" else text

    def _spaced(self, m: re.Match, words: str) -> str:
        """`words` with a space against a letter the match touched ("abc123" -> "abc one hundred...")."""
        s, a, b = m.string, m.start(), m.end()
        left = " " if a > 0 and s[a - 1].isalnum() else ""
        right = " " if b < len(s) and s[b].isalnum() else ""
        return f"{left}{words}{right}"

    def _value(self, raw: str) -> tuple[int, str | None] | None:
        """(whole, digits after the decimal separator or None) of a written number; None when it is not
        one number (a list of groups, a version)."""
        if len(raw) > 40:  # not a quantity anyone writes: its groups are read one by one
            return None
        groups = _NON_DIGIT.split(raw)
        seps = _NON_DIGIT.findall(raw)
        if not seps:
            return int(raw), None
        group_chars = set(self.rules.group + GROUP_SPACES)

        def grouped(gs, ss) -> bool:
            if not ss:
                return True
            western = (len(set(ss)) == 1 and ss[0] in group_chars and 1 <= len(gs[0]) <= 3
                       and all(len(g) == 3 for g in gs[1:]))
            return western or (self.lang == "hi" and _indian_grouped(gs, ss))

        if grouped(groups, seps):
            return int("".join(groups)), None
        if len(seps) == 1 or (seps[-1] in self.rules.decimal and grouped(groups[:-1], seps[:-1])):
            if seps[-1] in ".,٫" or seps[-1] in self.rules.decimal:
                return int("".join(groups[:-1])), groups[-1]
        return None

    def _say_number(self, raw: str, noun: Noun | None = None) -> tuple[str, float | None]:
        """A written number in words, and its value (None when it is not one number)."""
        value = self._value(raw)
        if value is None:  # groups read one by one, their separators kept
            parts = re.split(r"([^0-9])", raw)
            return "".join(p if not p.isdigit() else self._integer(p) for p in parts), None
        whole, frac = value
        if frac is None:
            digits = raw.translate({ord(c): None for c in raw if not c.isdigit()})
            if len(digits) > 1 and digits[0] == "0":
                return numbers.digits(digits, self.lang), float(whole)
            gender = noun.gender if noun else "m"
            return cardinal(whole, self.lang, gender, before_noun=noun is not None), float(whole)
        return numbers.decimal(whole, frac, self.lang), float(f"{whole}.{frac}")

    def _integer(self, digits: str) -> str:
        if len(digits) > 1 and digits[0] == "0" or len(digits) > 15:
            return numbers.digits(digits, self.lang)
        return cardinal(int(digits), self.lang)

    def _counted(self, raw: str, noun: Noun, negative: bool = False, dative: bool = False) -> str:
        """A number with the noun it counts, in agreement ("un kilomètre", "zwei Stunden", "ساعتان"); German
        `dative` after a preposition ("in zweihundert Metern", "in einer Stunde")."""
        words, value = self._say_number(raw, noun)
        if dative:
            noun = Noun(noun.one, re.sub(r"^\w+", _dative_plural, noun.many, count=1), noun.gender)
            words = re.sub(r"^eine?$", "einer" if noun.gender == "f" else "einem", words)
        minus = f"{self.rules.minus} " if negative else ""
        if self.lang == "ar":
            return minus + _arabic_count(words, value, raw, noun)
        if value is None:
            return f"{minus}{words} {noun.many}"
        one = value < 2 if self.lang == "fr" else value == 1 and "." not in raw.strip(",")
        if self.lang == "it" and words == "una" and noun.one[:1] in "aeiouh":
            return f"{minus}un'{noun.one}"
        return f"{minus}{words} {noun.one if one else noun.many}"

    def _quantity(self, m: re.Match) -> str:
        r = self.rules
        unit = m.group("unit")
        noun = r.units[_unit_key(unit)] if unit else None
        negative = bool(m.group("neg"))
        if m.group("num2") is not None:
            first, _ = self._say_number(m.group("num"))
            second = self._counted(m.group("num2"), noun) if noun else self._say_number(m.group("num2"))[0]
            minus = f"{r.minus} " if negative else ""
            return self._spaced(m, f"{minus}{first} {r.range_word} {second}")
        if noun:
            return self._spaced(m, self._counted(m.group("num"), noun, negative, self._dative(m)))
        noun = self._next_noun(m)
        words, _ = self._say_number(m.group("num"), noun)
        if noun and self._dative(m):
            words = re.sub(r"^eine?$", "einer" if noun.gender == "f" else "einem", words)
        return self._spaced(m, f"{r.minus} {words}" if negative else words)

    def _dative(self, m: re.Match) -> bool:
        """German: the number follows a preposition that takes the dative ("in 200 m", "nach 1 h")."""
        if self.lang != "de":
            return False
        before = m.string[:m.start()].split()
        return bool(before) and before[-1].lower() in _DE_DATIVE_PREPOSITIONS

    def _next_noun(self, m: re.Match) -> Noun | None:
        """The noun a number counts when a word follows it: its gender from the language's table of
        feminine nouns; None when the next word is not a noun (German: not capitalized; elsewhere: a
        short function word)."""
        if self.lang not in _GENDERED:
            return None
        nxt = _NEXT_WORD.match(m.string, m.end())
        if not nxt:
            return None
        word = nxt.group(1)
        if self.lang == "de" and not word[0].isupper() or word.lower() in _NOT_NOUNS:
            return None
        feminine = self.feminine.match(word.lower()) if self.feminine else None
        return Noun(word, word, "f" if feminine else "m")

    def _money(self, m: re.Match) -> str:
        r = self.rules
        unit, hundredth = r.currencies[m.group("cur")]
        value = self._value(m.group("num"))
        if value is None or hundredth is None or (value[1] is not None and len(value[1]) > 2):
            return self._spaced(m, self._counted(m.group("num"), unit))
        whole, frac = value
        cents = int((frac or "0").ljust(2, "0"))
        if not cents:
            return self._spaced(m, self._counted(str(whole), unit))
        said_cents = self._counted(str(cents), hundredth) if r.cents_noun else cardinal(cents, self.lang)
        if whole == 0:
            return self._spaced(m, self._counted(str(cents), hundredth))
        join = {"": " ", "و": " و"}.get(r.cents_join, f" {r.cents_join} ")
        return self._spaced(m, f"{self._counted(str(whole), unit)}{join}{said_cents}")

    def _ordinal(self, n: int, form: str) -> str:
        if self.lang == "fr" and form.startswith("second"):
            return ("seconde" if form.endswith("-f") else "second") if n == 2 else ordinal(n, "fr")
        return ordinal(n, self.lang, form)

    def _german_ordinal(self, m: re.Match) -> str:
        """"3." is an ordinal after an article or preposition ("die 3. Ausfahrt", "am 3. Tag") or before a
        lowercase word; otherwise it is a number that ends a sentence."""
        before = m.string[:m.start()].split()
        prev = before[-1].lower() if before else ""
        nxt = m.string[m.end():].split(None, 1)[0]
        if prev not in _DE_ARTICLES and not nxt[:1].islower():
            return m.group()
        words = ordinal(int(m.group("num")), "de")
        return words + "n" if prev in _DE_DATIVE else words

    def _road(self, m: re.Match) -> str:
        letters = m.group("p") or m.group("q")
        suffix = f" {m.group('s').upper()}" if m.group("s") else ""
        return f"{letters} {self._integer(m.group('n'))}{suffix}"

    # -- dates and times -----------------------------------------------------------------------------------
    def _date(self, m: re.Match) -> str:
        d, mo, y = int(m.group("d")), int(m.group("m")), int(m.group("y"))
        if "sep" in m.re.groupindex and self.lang == "en" and mo > 12 and d <= 12:
            d, mo = mo, d  # 11/29/2026: the American order
        if not (1 <= mo <= 12 and 1 <= d <= 31):
            return m.group()
        return self._spaced(m, self.rules.date.format(d=self._day(d, m), m=self.rules.months[mo - 1],
                                                      y=year(y, self.lang)))

    def _day(self, d: int, m: re.Match) -> str:
        form = self.rules.date_ordinal
        if form == "all":
            if self.lang == "de":
                before = m.string[:m.start()].split()
                prev = before[-1].lower() if before else ""
                return ordinal(d, "de") + ("n" if prev in _DE_DATIVE else "" if prev in _DE_ARTICLES else "r")
            return ordinal(d, self.lang)
        if form == "first" and d == 1:
            return ordinal(1, self.lang)
        return cardinal(d, self.lang)

    def _day_month(self, m: re.Match) -> str:
        d = int(m.group("d"))
        if not 1 <= d <= 31 or (m.group("dot") and self.lang != "de"):
            return m.group()
        month = m.group("m")
        if self.lang == "en":
            return f"the {ordinal(d, 'en')} of {month}"
        return f"{self._day(d, m)}{m.group('of') or ''} {month}"

    def _time(self, m: re.Match) -> str:
        minutes = m.group("m") if m.group("m") is not None else m.groupdict().get("m2")
        return self._spaced(m, self._clock(int(m.group("h")), int(minutes), m.groupdict().get("ampm")))

    def _clock(self, h: int, mins: int, ampm: str | None = None) -> str:
        """A time of day as it is read in the language."""
        lang = self.lang
        c = lambda n, g="m": cardinal(n, lang, g)  # noqa: E731
        mm = c(mins)
        if lang == "en":
            said = c(h) if mins == 0 else f"{c(h)} {'oh ' + mm if mins < 10 else mm}"
            if ampm:
                return f"{said} {self.rules.meridiem[ampm.lower().replace('.', '')]}"
            if mins == 0:
                return f"{c(h)} o'clock" if 1 <= h <= 12 else f"{c(h)} hundred"
            return said
        if lang == "fr":
            hours = f"{c(h, 'f')} {'heure' if h < 2 else 'heures'}"
            return hours if mins == 0 else f"{hours} {mm}"
        if lang == "es":
            return c(h, "f") if mins == 0 else f"{c(h, 'f')} y {mm}"
        if lang == "pt":
            return f"{c(h, 'f')} {'hora' if h == 1 else 'horas'}" if mins == 0 else f"{c(h, 'f')} e {mm}"
        if lang == "it":
            return c(h, "f") if mins == 0 else f"{c(h, 'f')} e {mm}"
        if lang == "nl":
            return f"{c(h)} uur" if mins == 0 else f"{c(h)} uur {mm}"
        if lang == "de":
            hours = f"{cardinal(h, 'de', 'n', before_noun=True)} Uhr"
            return hours if mins == 0 else f"{hours} {mm}"
        if lang == "hi":
            return f"{c(h)} बजे" if mins == 0 else f"{c(h)} बजकर {mm} मिनट"
        # Arabic: the hour as a feminine ordinal, then "and a quarter", "and a half" or "and N minutes"
        minutes = {0: "", 15: " والربع", 30: " والنصف"}.get(mins)
        if minutes is None:
            minutes = " و" + _arabic_count(mm, float(mins), str(mins), self.rules.units["min"])
        return _AR_HOURS[h % 12] + minutes

    # -- punctuation ---------------------------------------------------------------------------------------
    def _punctuation(self, text: str) -> str:
        text = " ".join(text.split())
        if self.lang != "fr":
            text = _SPACE_BEFORE_PUNCT.sub("", text)
        if _CLAUSE_HINT.search(text):
            text = _CLAUSE_RUN.sub(r"\1", text)
            text = _CLAUSE_BEFORE_STOP.sub("", text)
        if "¡" in text or "¿" in text:
            text = _OPENING_RUN.sub(r"\1", text)
        text = _TERMINAL_RUN.sub(_collapse_terminals, text)
        text = text.rstrip(_TRAILING_MARKS)
        body = text.rstrip(CLOSERS).rstrip(_TRAILING_MARKS)
        if not body:
            return text
        closers = text[len(text.rstrip(CLOSERS)):]
        return body + ("" if body[-1] in TERMINATORS else self.rules.stop) + closers

_IT_ELISION = re.compile(r"\buna (?=[aeiouAEIOU])")  # "1 ora" -> "un'ora"
_GENDERED = frozenset("fr es pt it de".split())
_NEXT_WORD = re.compile(r" ([^\W\d_]{2,})")
# words after a number that are not the noun it counts
_NOT_NOUNS = frozenset("""et ou à de du des en par pour sur y o a e en de del por para con ou em do da dos das
    ed o di da per con su und oder bis von zu mit""".split())
_DE_DATIVE_PREPOSITIONS = frozenset("in nach vor mit von aus bei zu seit nach binnen".split())
_DE_DATIVE = frozenset("am im zum vom beim dem den des zur seit ab bis".split())
_DE_ARTICLES = _DE_DATIVE | frozenset("der die das ein eine einer eines jeder jede jedes".split())


# Word edges against letters only: "0Dr." holds the abbreviation "Dr." as much as "cero Dr." does, so a
# number spelled next to it does not make a new match on a second pass.
_LETTER_START, _LETTER_END = r"(?<![^\W\d_])", r"(?![^\W\d_])"


def _letter_bounded(pattern: str) -> str:
    if pattern.startswith(r"\b"):
        pattern = _LETTER_START + pattern[2:]
    return pattern.replace(r"\b", _LETTER_END)


def _dative_plural(m: re.Match) -> str:
    """Meter -> Metern, Kilometer -> Kilometern, Liter -> Litern (nouns in -er/-el take -n)."""
    word = m.group()
    return word + "n" if word.endswith(("er", "el")) else word


def _collapse_terminals(m: re.Match) -> str:
    run = m.group()
    for mark in "?؟!।॥":
        if mark in run:
            return mark
    return "…" if "…" in run or run.count(".") >= 3 else "."


def _unit_key(unit: str) -> str:
    return unit.replace(" ", "").replace("\u00a0", "").replace("\u202f", "").replace("\u2009", "")


def _indian_grouped(groups: list[str], seps: list[str]) -> bool:
    """1,23,45,678: the last group has 3 digits, the ones before it 2, the first 1 or 2."""
    return (len(set(seps)) == 1 and seps[0] == "," and len(groups[-1]) == 3
            and all(len(g) == 2 for g in groups[1:-1]) and 1 <= len(groups[0]) <= 2)


def _arabic_count(words: str, value: float | None, raw: str, noun: Noun) -> str:
    """A number and the noun it counts in Arabic (unvocalized, nominative): 1 -> the noun then "one"
    (كيلومتر واحد), 2 -> the dual alone (كيلومتران), 3-10 -> the number then the plural (ثلاثة
    كيلومترات), 11-99 -> the singular in the accusative (عشرون كيلومترا), a round hundred or thousand ->
    the singular (مئة كيلومتر); a fraction -> the singular."""
    if noun.two is None:
        return f"{words} {noun.one}"
    if value is None or value != int(value):
        return f"{words} {noun.one}"
    n = int(value)
    if n == 1:
        return f"{noun.one} {'واحدة' if noun.gender == 'f' else 'واحد'}"
    if n == 2:
        return noun.two
    rest = n % 100
    if 3 <= rest <= 10:
        if noun.gender == "f":
            words = cardinal(n, "ar", "f")
        return f"{words} {noun.many}"
    if 11 <= rest <= 99:
        first, _, tail = noun.one.partition(" ")
        if noun.gender == "m" and not first.endswith(("ة", "ا", "ى", "ء", "و")):
            first += "ا"  # the accusative's tanween written as alif
        return f"{words} {first}{' ' + tail if tail else ''}"
    return f"{words} {noun.one}"


# The hour in Arabic is a feminine ordinal with the article (الساعة الثالثة); 13-23 are read on the 12-hour dial.
_AR_HOURS = ("الثانية عشرة", "الواحدة", "الثانية", "الثالثة", "الرابعة", "الخامسة", "السادسة", "السابعة",
             "الثامنة", "التاسعة", "العاشرة", "الحادية عشرة")

__all__ = ["normalize", "voice_language", "LANGUAGES", "Normalizer"]
