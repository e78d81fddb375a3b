"""The Voxtral TTS speech prompt, token for token as mistral-common's `encode_speech_request` builds it.

    <s> [BEGIN_AUDIO] [AUDIO] * n_voice [NEXT_AUDIO_TEXT] text... [REPEAT_AUDIO_TEXT] [BEGIN_AUDIO]

The voice embedding's rows replace the [AUDIO] run.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import ClassVar

from .errors import TokenizerError
from .tekken import Tekken


@dataclass(frozen=True)
class SpeechSpecialIds:
    """The special token ids a speech prompt uses, resolved by name from tekken.json."""

    bos: int
    audio: int
    begin_audio: int
    next_audio_text: int
    repeat_audio_text: int

    TOKEN_NAMES: ClassVar[dict[str, str]] = {
        "bos": "<s>", "audio": "[AUDIO]", "begin_audio": "[BEGIN_AUDIO]",
        "next_audio_text": "[NEXT_AUDIO_TEXT]", "repeat_audio_text": "[REPEAT_AUDIO_TEXT]",
    }

    @classmethod
    def from_tekken(cls, tekken: Tekken) -> SpeechSpecialIds:
        """Ids looked up by token name; a missing token is a TokenizerError naming the file."""
        return cls(**{field: tekken.special_id(name) for field, name in cls.TOKEN_NAMES.items()})

    def to_dict(self) -> dict[str, int]:
        """{"bos": 1, "audio": 24, ...}, for a JSON manifest."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> SpeechSpecialIds:
        """Inverse of `to_dict`; a missing or non-int id is a TokenizerError."""
        names = [f.name for f in fields(cls)]
        bad = [n for n in names if not isinstance(data.get(n), int) or isinstance(data.get(n), bool)]
        if bad:
            raise TokenizerError(f"speech special ids: missing or non-int {bad} in {data!r}")
        return cls(**{n: data[n] for n in names})


def speech_prompt(text_ids: list[int], n_voice_tokens: int, ids: SpeechSpecialIds) -> list[int]:
    """The prompt ids for already-encoded text and a voice of `n_voice_tokens` [AUDIO] tokens."""
    if n_voice_tokens < 0:
        raise ValueError(f"n_voice_tokens must be >= 0, got {n_voice_tokens}")
    return [ids.bos, ids.begin_audio, *[ids.audio] * n_voice_tokens, ids.next_audio_text,
            *text_ids, ids.repeat_audio_text, ids.begin_audio]


def tekken_speech_prompt(tekken: Tekken, text: str, voice: str) -> list[int]:
    """The prompt ids for `text` spoken by the preset `voice` (unknown voice: TokenizerError listing the known)."""
    n_voice = tekken.num_audio_tokens(voice)
    return speech_prompt(tekken.encode(text), n_voice, SpeechSpecialIds.from_tekken(tekken))


def voice_positions(prompt: list[int], ids: SpeechSpecialIds) -> slice:
    """The slice of `prompt` holding the [AUDIO] run, where the voice embedding rows go."""
    if prompt[:2] != [ids.bos, ids.begin_audio]:
        raise ValueError(f"a speech prompt starts with [{ids.bos}, {ids.begin_audio}], got {prompt[:2]}")
    end = 2
    while end < len(prompt) and prompt[end] == ids.audio:
        end += 1
    if end == len(prompt) or prompt[end] != ids.next_audio_text:
        raise ValueError(f"the [AUDIO] run ending at {end} is not followed by [NEXT_AUDIO_TEXT] "
                         f"({ids.next_audio_text})")
    return slice(2, end)
