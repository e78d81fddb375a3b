"""The text front-end: what the model is given to speak.

`normalize(text, lang)` turns what a car produces (numbers, units, times, dates, money, road numbers,
abbreviations, markdown, URLs, emoji) into words in one of `LANGUAGES`; `voice_language(voice)` is the
language a preset voice speaks; `split_sentences` / `split_text` cut long text into pieces that fit.
"""

from .normalize import LANGUAGES, normalize, voice_language
from .split import split_sentences, split_text

__all__ = ["LANGUAGES", "normalize", "voice_language", "split_sentences", "split_text"]
