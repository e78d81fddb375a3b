"""Numbers as words in the nine languages: num2words spells them, except Hindi (its 0.5.14 raises
NotImplementedError there), which is built from `tables.HINDI_CARDINALS`. What num2words does not do
is done here: grammatical gender ("une", "una", "eine", "duas", "doscientas", Arabic 3-10), the form a
number takes before a noun ("un kilómetro", "ein Kilometer", "un million de"), and small spelling fixes.
"""

from __future__ import annotations

import functools
import re

from .tables import HINDI_CARDINALS, HINDI_POWERS, RULES

DIGIT_WORDS_LIMIT = 10**15  # longer integers (ids, card numbers) are read digit by digit


@functools.lru_cache(maxsize=None)
def _num2words():
    from num2words import num2words  # imported on first use: it loads every language it has

    return num2words


def hindi_cardinal(n: int) -> str:
    """n >= 0 in Hindi words: 0-99 from the table, then करोड़, लाख, हज़ार and सौ with their multiples."""
    if n < 100:
        return HINDI_CARDINALS[n]
    words = []
    for value, name in HINDI_POWERS:
        count, n = divmod(n, value)
        if count:
            words.append(f"{hindi_cardinal(count)} {name}")
    if n:
        words.append(HINDI_CARDINALS[n])
    return " ".join(words)


_AR_FEMININE = {"ثلاثة": "ثلاث", "أربعة": "أربع", "خمسة": "خمس", "ستة": "ست", "سبعة": "سبع", "ثمانية": "ثماني",
                "تسعة": "تسع", "عشرة": "عشر"}
_MILLION = re.compile(r"(?:million|millions|millón|millones|milhão|milhões|milione|milioni)$")


def digits(s: str, lang: str) -> str:
    """Each digit as its own word ("0800" -> "zero eight zero zero")."""
    return " ".join(cardinal(int(c), lang) for c in s)


@functools.lru_cache(maxsize=4096)  # a car says the same few numbers again and again
def cardinal(n: int, lang: str, gender: str = "m", before_noun: bool = False) -> str:
    """n >= 0 in words. `gender` and `before_noun` give the form that counts a noun of that gender."""
    if n >= DIGIT_WORDS_LIMIT:
        return digits(str(n), lang)
    if lang == "hi":
        return hindi_cardinal(n)
    words = _num2words()(n, lang=lang)
    if lang == "en":
        words = words.replace(",", "")
    elif lang == "nl":
        words = re.sub(r"(?<=\w)één", "een", words)  # "honderdeen", not "honderdéén"
        words = re.sub(r"duizend(?=\w)", "duizend ", words)  # a space after duizend: "tweeduizend zesentwintig"
    elif lang == "it":
        words = re.sub(r"(?<=milion[ei]) e ", " ", words)  # "un milione duecentomila" (num2words adds "e")
    elif lang == "de":
        words = re.sub(r"^ein(?=hundert|tausend)", "", words)  # "hundertdreißig", "tausend", as they are said
    elif lang == "ar":
        words = words.replace(" و ", " و")  # the conjunction is written joined to the next word
        if gender == "f":
            last = words.rsplit(" ", 1)
            if last[-1] in _AR_FEMININE and n % 100 <= 10:
                words = " ".join(last[:-1] + [_AR_FEMININE[last[-1]]])
    if before_noun or gender == "f":
        words = _agree(words, lang, gender)
    if before_noun and _MILLION.search(words):
        words += " di" if lang == "it" else " de"
    return words


def _agree(words: str, lang: str, gender: str) -> str:
    """The form of a spelled number that counts a noun of `gender`."""
    f = gender == "f"
    if lang == "fr" and f:
        return re.sub(r"\bun$", "une", words)
    if lang == "es":
        if f:
            words = re.sub(r"(?<=ient)os\b(?!.*\bmill[oó])", "as", words)
            return re.sub(r"uno$", "una", words)
        return re.sub(r"veintiuno$", "veintiún", re.sub(r"\buno$", "un", words))
    if lang == "pt" and f:
        words = re.sub(r"(?<=ent)os\b(?!.*\bmilh)", "as", words)
        return re.sub(r"\bdois$", "duas", re.sub(r"\bum$", "uma", words))
    if lang == "it":
        return re.sub(r"^uno$", "una" if f else "un", words)
    if lang == "de":
        return re.sub(r"eins$", "eine" if f else "ein", words)
    return words


@functools.lru_cache(maxsize=1024)
def ordinal(n: int, lang: str, gender: str = "m") -> str:
    """n >= 1 as an ordinal; `gender` "f" for the feminine where the language has one."""
    if lang in ("hi", "ar") or n >= DIGIT_WORDS_LIMIT:
        return cardinal(n, lang)  # written ordinals with digits are not used in these (see the README)
    words = _num2words()(n, lang=lang, to="ordinal")
    if lang == "en":
        words = words.replace(",", "")
    elif lang == "es" and n == 11:
        words = "undécimo"  # num2words 0.5.14 writes "décimoprimero"
    if gender == "f":
        if lang == "fr":
            words = re.sub(r"premier$", "première", words)
        elif lang in ("es", "pt", "it"):
            words = re.sub(r"o\b", "a", words)
    elif gender == "apocope" and lang == "es":
        words = re.sub(r"(primer|tercer)o$", r"\1", words)
    return words


def year(n: int, lang: str) -> str:
    """A year as it is read: English in pairs ("twenty twenty-six"), the others as a cardinal."""
    if lang == "en" and 1000 <= n <= 9999:
        return _num2words()(n, lang="en", to="year").replace(",", "")
    return cardinal(n, lang)


def fraction(digits_after: str, lang: str) -> str:
    """The digits after the decimal separator: one by one in English, German, Dutch and Hindi; elsewhere
    leading zeros one by one and the rest as a number ("virgule zéro cinq", "coma veinticinco")."""
    if lang in ("en", "de", "nl", "hi") or len(digits_after) > 3:
        return digits(digits_after, lang)
    rest = digits_after.lstrip("0")
    zeros = [cardinal(0, lang)] * (len(digits_after) - len(rest))
    return " ".join(zeros + ([cardinal(int(rest), lang)] if rest else []))


def decimal(whole: int, digits_after: str, lang: str) -> str:
    return f"{cardinal(whole, lang)} {RULES[lang].point} {fraction(digits_after, lang)}"
