"""tekken.json, Mistral's tokenizer file: validated reading and an exact Hugging Face `tokenizers` conversion.

Ids are the ids mistral-common's Tekkenizer gives: special tokens take 0..n_special-1 and a regular
token's id is its rank + n_special. The conversion follows transformers' TikTokenConverter.
"""

from __future__ import annotations

import base64
import binascii
import json
from pathlib import Path
from typing import NoReturn

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers

from .errors import TokenizerError, UsageError


class UnknownVoiceError(TokenizerError, UsageError):
    """A voice the tokenizer has no audio-token count for."""

# What mistral-common assumes for files (<= v7) that carry no special_tokens list.
LEGACY_SPECIAL_TOKENS = (
    "<unk>", "<s>", "</s>", "[INST]", "[/INST]", "[AVAILABLE_TOOLS]", "[/AVAILABLE_TOOLS]",
    "[TOOL_RESULTS]", "[/TOOL_RESULTS]", "[TOOL_CALLS]", "[IMG]", "<pad>", "[IMG_BREAK]", "[IMG_END]",
    "[PREFIX]", "[MIDDLE]", "[SUFFIX]", "[SYSTEM_PROMPT]", "[/SYSTEM_PROMPT]", "[TOOL_CONTENT]",
)
FILLER_TEMPLATE = "<SPECIAL_{id}>"


def _byte_to_char() -> dict[int, str]:
    """GPT-2's byte -> printable character table, the one the ByteLevel pre-tokenizer uses."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table, extra = {b: chr(b) for b in printable}, 0
    for b in range(256):
        if b not in table:
            table[b], extra = chr(256 + extra), extra + 1
    return table


# Keyed by latin-1 code point (== byte value) so that str.translate maps a whole token at once.
_BYTE_TABLE = _byte_to_char()


def byte_level(token: bytes) -> str:
    """The token as a string in the byte-level alphabet of a Hugging Face BPE vocabulary."""
    return token.decode("latin-1").translate(_BYTE_TABLE)


class Tekken:
    """A validated tekken.json: regular vocabulary, special token ids and the audio (voice) section."""

    def __init__(self, path: Path, pattern: str, version: str, ranks: dict[bytes, int],
                 n_special: int, special_ids: dict[str, int], audio: dict | None):
        self.path, self.pattern, self.version = path, pattern, version
        self.ranks, self.n_special, self.special_ids, self.audio = ranks, n_special, special_ids, audio
        self._hf: Tokenizer | None = None

    @classmethod
    def from_file(cls, path: str | Path) -> Tekken:
        """Reads and checks tekken.json; every problem is a TokenizerError that starts with the path."""
        path = Path(path)

        def fail(msg: str) -> NoReturn:
            raise TokenizerError(f"{path}: {msg}")

        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            fail(f"cannot read a JSON tokenizer: {e}")
        if not isinstance(data, dict):
            fail("the top level is not a JSON object")

        config = data.get("config")
        if not isinstance(config, dict):
            fail("missing 'config' object")
        for key, kind in [("pattern", str), ("default_vocab_size", int),
                          ("default_num_special_tokens", int), ("version", str)]:
            if not isinstance(config.get(key), kind):
                fail(f"'config.{key}' is missing or not a {kind.__name__}: {config.get(key)!r}")
        pattern, version = config["pattern"], config["version"]
        vocab_size, n_special = config["default_vocab_size"], config["default_num_special_tokens"]
        try:
            Regex(pattern)
        except Exception as e:  # tokenizers raises a bare Exception for a bad regex
            fail(f"'config.pattern' is not a valid regex: {e}")

        vocab = data.get("vocab")
        if not isinstance(vocab, list):
            fail("missing 'vocab' list")
        if "num_vocab_tokens" in config and config["num_vocab_tokens"] != len(vocab):
            fail(f"'config.num_vocab_tokens' is {config['num_vocab_tokens']} but 'vocab' has {len(vocab)} entries")
        n_regular = vocab_size - n_special
        if n_special < 1 or n_regular < 256:
            fail(f"default_vocab_size {vocab_size} and default_num_special_tokens {n_special} leave "
                 f"{n_regular} regular tokens; the 256 single bytes alone need 256")
        if vocab_size > len(vocab) + n_special:
            fail(f"default_vocab_size {vocab_size} > {len(vocab)} vocab entries + {n_special} special tokens")

        ranks: dict[bytes, int] = {}
        for i, entry in enumerate(vocab):
            if not isinstance(entry, dict) or entry.get("rank") != i:
                fail(f"vocab entry {i} has rank {entry.get('rank') if isinstance(entry, dict) else entry!r}; "
                     f"ranks must be 0..{len(vocab) - 1} in order")
            if i >= n_regular:
                continue  # entries past default_vocab_size are cut, as mistral-common does
            try:
                token = base64.b64decode(entry["token_bytes"], validate=True)
            except (KeyError, TypeError, binascii.Error) as e:
                fail(f"vocab entry {i} has no valid base64 'token_bytes': {e!r}")
            if i < 256 and token != bytes([i]):
                fail(f"vocab entry {i} is {token!r}; the first 256 tokens must be the single bytes 0..255")
            if token in ranks:
                fail(f"vocab entry {i} repeats the token bytes {token!r} of entry {ranks[token]}")
            ranks[token] = i

        specials = data.get("special_tokens")
        if specials is None:
            if not version.startswith("v") or not version[1:].isdigit() or int(version[1:]) > 7:
                fail(f"missing 'special_tokens' (only files up to v7 may omit it; this one is {version!r})")
            specials = [{"rank": i, "token_str": s} for i, s in enumerate(LEGACY_SPECIAL_TOKENS)]
        if not isinstance(specials, list):
            fail("'special_tokens' is not a list")
        special_ids: dict[str, int] = {}
        used: set[int] = set()
        for entry in specials:
            rank, name = (entry.get("rank"), entry.get("token_str")) if isinstance(entry, dict) else (None, None)
            if not isinstance(rank, int) or not isinstance(name, str) or not 0 <= rank < n_special:
                fail(f"special token {entry!r} needs a str 'token_str' and an int 'rank' in 0..{n_special - 1}")
            if name in special_ids or rank in used:
                fail(f"special token {name!r} (rank {rank}) repeats a name or a rank")
            special_ids[name] = rank
            used.add(rank)
        for i in range(n_special):
            if i not in used:
                special_ids.setdefault(FILLER_TEMPLATE.format(id=i), i)

        audio = data.get("audio")
        if audio is not None:
            if not isinstance(audio, dict):
                fail("'audio' is not an object")
            for key in ("sampling_rate", "frame_rate"):
                value = audio.get(key)
                if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
                    fail(f"'audio.{key}' is missing or not a positive number: {value!r}")
            voices = audio.get("voice_num_audio_tokens", {})
            if not isinstance(voices, dict) or not all(
                    isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in voices.values()):
                fail(f"'audio.voice_num_audio_tokens' must map voice names to positive ints: {voices!r}")
        return cls(path, pattern, version, ranks, n_special, special_ids, audio)

    @property
    def vocab_size(self) -> int:
        """default_vocab_size: special plus regular tokens, the model's embedding rows."""
        return self.n_special + len(self.ranks)

    @property
    def voice_num_audio_tokens(self) -> dict[str, int]:
        """Voice name -> number of [AUDIO] tokens (voice embedding rows); empty without an audio section."""
        return dict((self.audio or {}).get("voice_num_audio_tokens") or {})

    @property
    def sampling_rate(self) -> int | None:
        """Output audio sampling rate in Hz, or None without an audio section."""
        return self.audio["sampling_rate"] if self.audio else None

    @property
    def frame_rate(self) -> float | None:
        """Audio frames (tokens) per second, or None without an audio section."""
        return self.audio["frame_rate"] if self.audio else None

    def special_id(self, name: str) -> int:
        """The id of the special token `name` (e.g. "[AUDIO]")."""
        if name not in self.special_ids:
            raise TokenizerError(f"{self.path}: special token {name!r} is not defined in 'special_tokens'")
        return self.special_ids[name]

    def num_audio_tokens(self, voice: str) -> int:
        """How many [AUDIO] tokens the preset voice `voice` takes in a speech prompt."""
        if self.audio is None:
            raise TokenizerError(f"{self.path}: no 'audio' section, so no voice is defined (asked for {voice!r})")
        voices = self.voice_num_audio_tokens
        if voice not in voices:
            raise UnknownVoiceError(f"{self.path}: unknown voice {voice!r}; known voices: {', '.join(voices) or 'none'}")
        return voices[voice]

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`, no BOS/EOS; special-token strings in `text` are encoded as plain text."""
        if self._hf is None:
            self._hf = self.to_hf_tokenizer()
        try:
            return self._hf.encode(text, add_special_tokens=False).ids
        except TypeError:  # tokenizers refuses lone surrogates; tiktoken replaces them with U+FFFD
            if not isinstance(text, str):
                raise
            text = text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
            return self._hf.encode(text, add_special_tokens=False).ids

    def to_hf_tokenizer(self) -> Tokenizer:
        """A new `tokenizers.Tokenizer` whose ids equal mistral-common's; it has no added (special) tokens."""
        names = [byte_level(token) for token in self.ranks]
        vocab = {name: rank + self.n_special for rank, name in enumerate(names)}
        merges = []
        for token in self.ranks:  # rank order, so merges are ordered by the merged token's rank
            splits = sorted((self.ranks[token[:i]], self.ranks[token[i:]]) for i in range(1, len(token))
                            if token[:i] in self.ranks and token[i:] in self.ranks)
            merges += [(names[a], names[b]) for a, b in splits]
        # ignore_merges: tiktoken first looks the whole pre-tokenized piece up in the vocabulary.
        tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, ignore_merges=True))
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(self.pattern), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ])
        tok.decoder = decoders.ByteLevel()
        return tok

    def save_hf_tokenizer(self, path: str | Path) -> Path:
        """Writes the converted tokenizer as tokenizer.json; `Tokenizer.from_file(path)` gives the same ids."""
        path = Path(path)
        (self._hf or self.to_hf_tokenizer()).save(str(path))
        return path
