"""Splitting long text into pieces: sentence boundaries in the nine languages with the splits written
out, overlong sentences split until they fit, and properties (nothing lost, added or reordered)."""

from __future__ import annotations

import string

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from voxtral_edge.text import split_sentences, split_text

NBSP, NNBSP = "\u00a0", "\u202f"

SENTENCES = [
    # English
    ("Dr. Smith arrived. He sat down.", ["Dr. Smith arrived.", "He sat down."]),
    ("Mr. and Mrs. Brown met Prof. Jones at St. Mary's. It rained.",
     ["Mr. and Mrs. Brown met Prof. Jones at St. Mary's.", "It rained."]),
    ("J. R. R. Tolkien wrote it. The U.S. Army read it.", ["J. R. R. Tolkien wrote it.", "The U.S. Army read it."]),
    ("We bought eggs, milk, etc. and bread. Then, e.g. cheese. Done!",
     ["We bought eggs, milk, etc. and bread.", "Then, e.g. cheese.", "Done!"]),
    ("Pi is 3.14, not 3. Really?! Yes...", ["Pi is 3.14, not 3.", "Really?!", "Yes..."]),
    ('He said "Stop!" Then he left. She asked “why?” (Nobody knew.) The end...',
     ['He said "Stop!"', "Then he left.", "She asked “why?”", "(Nobody knew.)", "The end..."]),
    ("Wait… what? I thought… no. Fine.", ["Wait… what?", "I thought… no.", "Fine."]),
    ("Title\n\nOne line\nthen another.\n \nSecond", ["Title", "One line\nthen another.", "Second"]),  # paragraphs
    # German
    ("Wie geht es dir? Gut, danke! Und z.B. morgen?", ["Wie geht es dir?", "Gut, danke!", "Und z.B. morgen?"]),
    ("Hr. Müller wohnt in Nr. 5, bzw. Nr. 7. Das kostet 1.000.000 Euro usw. Ja.",
     ["Hr. Müller wohnt in Nr. 5, bzw. Nr. 7.", "Das kostet 1.000.000 Euro usw. Ja."]),
    ("Er sagte: »Komm!« Dann ging er. „Warum?“ Keiner wusste es.",
     ["Er sagte: »Komm!«", "Dann ging er.", "„Warum?“", "Keiner wusste es."]),
    # French: a non-breaking space before ? ! : and inside guillemets
    (f"M. Dupont est là. Mme. Martin aussi{NBSP}! Comment ça va{NNBSP}?",
     ["M. Dupont est là.", f"Mme. Martin aussi{NBSP}!", f"Comment ça va{NNBSP}?"]),
    (f"Il a dit{NBSP}: «{NBSP}Bonjour{NBSP}!{NBSP}» Puis il est parti, p.ex. vers Paris.",
     [f"Il a dit{NBSP}: «{NBSP}Bonjour{NBSP}!{NBSP}»", "Puis il est parti, p.ex. vers Paris."]),
    # Spanish: opening marks start the next sentence
    ("¿Cómo estás? ¡Muy bien! La Sra. García llegó con el Sr. López.",
     ["¿Cómo estás?", "¡Muy bien!", "La Sra. García llegó con el Sr. López."]),
    ("La Dra. Ruiz vive aquí. ¿Y tú?", ["La Dra. Ruiz vive aquí.", "¿Y tú?"]),
    # Portuguese
    ("Eu moro na Av. Paulista, n.º 5. E você? O Dr. Silva também.",
     ["Eu moro na Av. Paulista, n.º 5.", "E você?", "O Dr. Silva também."]),
    # Italian
    ("Il Sig. Rossi è arrivato. Il Dott. Bianchi no! Perché?",
     ["Il Sig. Rossi è arrivato.", "Il Dott. Bianchi no!", "Perché?"]),
    # Dutch
    ("Dhr. Jansen komt morgen. Het kost ca. 3,50 euro, bijv. voor koffie. Prima!",
     ["Dhr. Jansen komt morgen.", "Het kost ca. 3,50 euro, bijv. voor koffie.", "Prima!"]),
    # Hindi: danda and double danda; ? and ! too
    ("मैं ठीक हूँ। आप कैसे हैं? बहुत अच्छा! धन्यवाद॥ शुभ रात्रि",
     ["मैं ठीक हूँ।", "आप कैसे हैं?", "बहुत अच्छा!", "धन्यवाद॥", "शुभ रात्रि"]),
    # Arabic: the Arabic question mark, the Arabic comma inside a sentence, ! and .
    ("كيف حالك؟ أنا بخير، شكرا. وأنت؟ رائع!", ["كيف حالك؟", "أنا بخير، شكرا.", "وأنت؟", "رائع!"]),
    # Urdu-style full stop
    ("یہ اچھا ہے۔ شکریہ", ["یہ اچھا ہے۔", "شکریہ"]),
    # Nothing to speak
    ("", []),
    ("  \n\n \t ", []),
    ("No terminator at all", ["No terminator at all"]),
]


@pytest.mark.parametrize("text,expected", SENTENCES)
def test_split_sentences(text, expected):
    assert split_sentences(text) == expected


def byte_count(s: str) -> int:
    return len(s.encode())


def test_short_sentences_are_left_alone():
    text = "Dr. Smith arrived. He sat down."
    assert split_text(text, 100, byte_count) == ["Dr. Smith arrived.", "He sat down."]


def test_long_sentence_splits_at_clauses_then_spaces_then_characters():
    text = "One two three, four five; six: seven — eight https://example.com/abcdefghijklmnopqrstuvwxyz end."
    assert split_text(text, 20, byte_count) == [
        "One two three,", "four five; six:", "seven —", "eight", "https://example.com/", "abcdefghijklmnopqrst",
        "uvwxyz", "end."]  # the tail of a character split is not merged with the next word


def test_arabic_comma_is_a_clause_boundary():
    text = "أنا بخير، شكرا جزيلا."
    assert split_text(text, 22, byte_count) == ["أنا بخير،", "شكرا جزيلا."]


def test_character_split_keeps_vowel_signs_on_their_consonant():
    word = "नमस्तेदुनिया"  # one long Hindi "word"
    pieces = split_text(word, 7, byte_count)
    assert "".join(pieces) == word and all(byte_count(p) <= 7 for p in pieces)
    assert not any(p[0] in "्ेुिा" for p in pieces)  # no piece starts with a mark


def test_max_tokens_must_be_positive_and_a_character_must_fit():
    with pytest.raises(ValueError):
        split_text("Hello.", 0, byte_count)
    with pytest.raises(ValueError, match="max_tokens=2"):
        split_text("€", 2, byte_count)  # the euro sign is 3 bytes


TERMINATORS = ".!?…।॥؟۔"
EXTRA = (TERMINATORS + "\"'”’“„»«)]¿¡,;:—–،؛" + NBSP + NNBSP + "\n"
         + "éüßçñ"  # Latin letters of the languages
         + "कखग\u093e\u093f\u094d\u0902"  # Devanagari letters and combining marks (ा ि ् ं)
         + "ابت\u064e\u0650")  # Arabic letters and harakat
ALPHABET = st.sampled_from(string.printable + EXTRA)
TEXT = st.text(ALPHABET, max_size=300)


def non_space(s: str) -> str:
    return "".join(c for c in s if not c.isspace())


def assert_slices_in_order(text: str, pieces: list[str]):
    pos = 0
    for p in pieces:
        assert p and p == p.strip()
        i = text.find(p, pos)
        assert i >= 0, (p, text[pos:])
        pos = i + len(p)
    assert "".join(non_space(p) for p in pieces) == non_space(text)


@settings(max_examples=200, deadline=None)
@given(TEXT)
def test_sentences_lose_nothing(text):
    assert_slices_in_order(text, split_sentences(text))


@settings(max_examples=200, deadline=None)
@given(TEXT, st.integers(4, 40))
def test_pieces_fit_and_lose_nothing(text, max_tokens):
    pieces = split_text(text, max_tokens, byte_count)
    assert_slices_in_order(text, pieces)
    assert all(byte_count(p) <= max_tokens for p in pieces)


WHOLE = [p for _, expected in SENTENCES for p in expected if p[-1] in TERMINATORS + "\"”»«“)"]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(WHOLE), st.sampled_from([" ", "  ", "\n", " \t"])), min_size=1, max_size=8))
def test_sentences_joined_are_split_back(parts):
    assert split_sentences("".join(p + space for p, space in parts)) == [p for p, _ in parts]
