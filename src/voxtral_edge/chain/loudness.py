"""Loudness: a gain to a target in LUFS (ITU-R BS.1770, measured with pyloudnorm) and a true-peak limiter,
so that the output never exceeds TRUE_PEAK_DBTP.

A whole file is measured and brought to the target; a stream cannot wait for its end, so it takes the gain
its voice needs (measured once on a fixed sentence and stored, see `voice_loudness`) from the first chunk on.
The limiter catches what the gain would push over the ceiling, in both cases.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from ..errors import UsageError

TRUE_PEAK_DBTP = -1.0
_AIM_DBTP = -1.3  # the limiter aims lower: a changing gain makes inter-sample peaks of its own (measured +0.2 dB)
LOOKAHEAD_MS = 5.0
LOUDNESS_RANGE = (-40.0, -5.0)
f32 = np.float32


def check_target(lufs) -> float:
    low, high = LOUDNESS_RANGE
    if isinstance(lufs, bool) or not isinstance(lufs, (int, float)) or not math.isfinite(lufs) or \
            not low <= lufs <= high:
        raise UsageError(f"loudness must be a number of LUFS from {low:g} to {high:g} (speech: -16 to -23), "
                         f"found {lufs!r}")
    return float(lufs)


def integrated_loudness(audio: np.ndarray, rate: int) -> float:
    """BS.1770 integrated loudness in LUFS (-inf for silence); audio under one 400 ms block is measured as
    if repeated to fill it."""
    try:
        import pyloudnorm
    except ImportError as e:
        raise UsageError(f"--loudness needs the [audio] extra ({e.name} is missing): "
                         f"pip install 'voxtral-edge[audio]'") from None
    audio = np.asarray(audio, np.float64)
    block = int(0.4 * rate) + 1
    if 0 < len(audio) < block:
        audio = np.tile(audio, block // len(audio) + 1)
    if not len(audio) or not np.any(audio):
        return -math.inf
    return float(pyloudnorm.Meter(rate).integrated_loudness(audio))


# -- the true-peak limiter ----------------------------------------------------------------------------
def _interpolator(taps: int = 192, factor: int = 4) -> np.ndarray:
    """[factor, taps / factor] polyphase interpolator (Kaiser-windowed sinc): row p gives the signal p/4 of a
    sample later. 192 taps: the 48 of BS.1770 Annex 2 miss broadband peaks by ~0.8 dB (measured)."""
    n = np.arange(taps) - taps / 2
    h = np.sinc(n / factor) * np.kaiser(taps, 9.0)
    return np.stack([h[p::factor][::-1] / h[p::factor].sum() for p in range(factor)])


_PHASES = _interpolator()
_HALF = _PHASES.shape[1] // 2


def _limited(ext: np.ndarray, ceiling: float, look: int) -> np.ndarray:
    """The middle of `ext` (which has `_context(look)` samples of context either side), limited: each
    sample's true peak, the gain it needs, the least of those over the next `look` samples (the gain is
    down before a peak), averaged over the last `look` (smooth, and still no more than each peak needs)."""
    w = _context(look)
    peak = np.abs(np.stack([np.convolve(ext, p, "valid") for p in _PHASES])).max(axis=0)
    peak = np.maximum(np.maximum(peak[:-1], peak[1:]), np.abs(ext[_HALF:_HALF + len(peak) - 1]))
    need = np.minimum(1.0, ceiling / np.maximum(peak, 1e-12))
    gain = sliding_window_view(sliding_window_view(need, look).min(axis=1), look).mean(axis=1)
    start, n = _HALF + look - 1, len(ext) - 2 * w  # gain[i] is the gain of ext[start + i]
    return (ext[w:w + n] * gain[w - start:w - start + n]).astype(f32)


def _context(look: int) -> int:
    return look + _HALF + 1


@dataclass
class Loudness:
    """Gain then limiter. `gain_db` None: a whole file (everything is held until `finish`, measured, brought
    to `target`); else a stream at that gain. Output sample n depends on input n - W .. n + W only, so the
    stream keeps W samples of past and holds W back, and gives exactly the whole-file samples."""

    target: float  # LUFS
    rate: int
    gain_db: float | None = None
    look: int = 0
    past: np.ndarray | None = None
    held: np.ndarray | None = None
    measured: float | None = None  # the whole file's loudness before the gain

    @classmethod
    def create(cls, target: float, rate: int, gain_db: float | None = None) -> "Loudness":
        look = max(2, int(rate * LOOKAHEAD_MS / 1000))
        return cls(check_target(target), int(rate), gain_db, look, np.zeros(_context(look), f32), np.zeros(0, f32))

    def feed(self, x: np.ndarray) -> np.ndarray:
        self.held = np.concatenate([self.held, np.asarray(x, f32)])
        w = _context(self.look)
        if self.gain_db is None or len(self.held) <= w:
            return np.zeros(0, f32)
        ext = np.concatenate([self.past, self.held * self._gain()])
        done = len(self.held) - w
        y = _limited(ext, 10 ** (_AIM_DBTP / 20), self.look)
        self.past = ext[done:done + w]
        self.held = self.held[done:]
        return y

    def finish(self) -> np.ndarray:
        if self.gain_db is None:
            self.measured = integrated_loudness(self.held, self.rate)
            self.gain_db = self.target - self.measured if math.isfinite(self.measured) else 0.0
        w = _context(self.look)
        ext = np.concatenate([self.past, self.held * self._gain(), np.zeros(w, f32)])
        self.held = np.zeros(0, f32)
        return _limited(ext, 10 ** (_AIM_DBTP / 20), self.look)

    def _gain(self) -> float:
        return float(10 ** (self.gain_db / 20))


# -- a voice's loudness, measured once ---------------------------------------------------------------
REFERENCE_TEXT = {"en": "Turn left in two hundred metres, then keep right at the fork.",
                  "fr": "Dans deux cents mètres, tournez à gauche, puis restez à droite.",
                  "es": "En doscientos metros, gire a la izquierda y luego manténgase a la derecha.",
                  "pt": "Em duzentos metros, vire à esquerda e depois mantenha-se à direita.",
                  "it": "Tra duecento metri, svolta a sinistra, poi tieni la destra.",
                  "nl": "Sla over tweehonderd meter linksaf en houd daarna rechts aan.",
                  "de": "In zweihundert Metern links abbiegen, dann rechts halten.",
                  "hi": "दो सौ मीटर बाद बाएँ मुड़ें, फिर दाईं ओर रहें।",
                  "ar": "بعد مئتي متر انعطف يسارًا ثم الزم اليمين."}
REFERENCE_SEED = 0


def voice_loudness(synth, voice: str, store=None) -> float:
    """The loudness (LUFS, at the model's rate) of `voice` saying its language's reference sentence with
    seed 0, measured on first use and kept in the user cache beside the bundle's other per-machine facts
    (keyed by the bundle's manifest hash, so a changed bundle is measured again)."""
    from ..cache import read_json, user_cache_dir
    from ..files import replace_file
    from ..manifest import MANIFEST
    from ..text import voice_language
    import hashlib

    key = hashlib.sha256((synth.manifest.bundle / MANIFEST).read_bytes()).hexdigest()[:24]
    path = store or user_cache_dir() / "loudness" / f"{key}.json"
    known = read_json(path) or {}
    if isinstance(known.get(voice), (int, float)):
        return float(known[voice])
    text = REFERENCE_TEXT[voice_language(voice)]
    result = synth.synthesize(text, voice, seed=REFERENCE_SEED)
    lufs = integrated_loudness(result.audio, result.sample_rate)
    lufs = lufs if math.isfinite(lufs) else -70.0
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        replace_file(path, json.dumps({**known, voice: lufs}, indent=1).encode())
    except OSError:
        pass  # a read-only home: measured again next time
    return lufs
