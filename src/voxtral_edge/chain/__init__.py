"""The audio chain: what happens to the model's 24 kHz audio on its way out, as small streaming stages with
their state in view (like the codec's), composed once per request and shared by say, render, serve and
wyoming:

    model audio -> TimeScale (speed, pitch kept) -> Resample (output rate) -> Loudness (gain, true-peak
                   limiter) -> Encoder (pcm s16/f32, wav, flac, opus, mp3) -> bytes

Each stage has `feed(x)` (what the input so far completes) and `finish()` (the rest); fed in any chunks, a
stage gives the samples it gives the whole input at once. A position in the model's audio (a mark, a
sentence start) maps to the output by `Chain.position`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..errors import UsageError
from .encode import FORMATS, SAMPLE_FORMATS, Encoder, check_format
from .loudness import Loudness, check_target
from .resample import SAMPLE_RATES, Resample, check_rate
from .timescale import TimeScale

SPEED_RANGE = (0.5, 2.0)

__all__ = ["Chain", "Output", "FORMATS", "SAMPLE_FORMATS", "SAMPLE_RATES", "SPEED_RANGE"]


def check_speed(speed) -> float:
    low, high = SPEED_RANGE
    if isinstance(speed, bool) or not isinstance(speed, (int, float)) or not math.isfinite(speed) or \
            not low <= speed <= high:
        raise UsageError(f"speed must be a number from {low:g} to {high:g}, found {speed!r}")
    return float(speed)


@dataclass(frozen=True)
class Output:
    """How a request's audio leaves: its rate (Hz), speed (1: the model's pace), loudness target (LUFS;
    None: as made), container format and raw sample format."""

    sample_rate: int = 24000
    speed: float = 1.0
    loudness: float | None = None
    format: str = "wav"
    sample_format: str = "s16"

    def __post_init__(self):
        check_rate(self.sample_rate)
        check_speed(self.speed)
        if self.loudness is not None:
            check_target(self.loudness)
        check_format(self.format, self.sample_rate, self.sample_format)

    @property
    def media_type(self) -> str:
        return FORMATS[self.format]


class Chain:
    """One request's stages. `stream` False writes containers as whole files (exact headers); `gain_db` is a
    stream's loudness gain (None: a whole file, measured at the end); `rates` keeps a time-scale stage even
    at speed 1, for rate changes on the way (`set_rate`)."""

    def __init__(self, output: Output, source_rate: int, *, stream: bool = True, gain_db: float | None = None,
                 rates: bool = False):
        self.output, self.source_rate = output, int(source_rate)
        self.stages: list = []
        self.timescale = TimeScale.create(output.speed, self.source_rate) if output.speed != 1 or rates else None
        if self.timescale:
            self.stages.append(self.timescale)
        self.fed = 0  # model samples in
        if output.sample_rate != self.source_rate:
            self.stages.append(Resample(self.source_rate, output.sample_rate))
        if output.loudness is not None:
            self.stages.append(Loudness.create(output.loudness, output.sample_rate, gain_db))
        self.encoder = Encoder(output.format, output.sample_rate, output.sample_format, stream=stream)

    def set_rate(self, rate: float) -> None:
        """Play what comes next at `rate` times the output's speed (an SSML prosody rate); needs a chain made
        with `rates=True`."""
        if self.timescale is None:
            raise ValueError("this chain was made without rates=True: it cannot change its speed")
        self.timescale.set_speed(check_speed(self.output.speed * rate))

    def position(self, source_sample: int) -> int:
        """The output sample at which the model's sample `source_sample` is heard."""
        at = self.timescale.output_position(source_sample) if self.timescale else source_sample
        return int(round(at * self.output.sample_rate / self.source_rate))

    def audio(self, x: np.ndarray) -> np.ndarray:
        """Float audio through the stages (no encoding)."""
        self.fed += len(x)
        for stage in self.stages:
            x = stage.feed(x)
        return x

    def audio_finish(self) -> np.ndarray:
        """The rest of the float audio: each stage's remainder through the stages after it."""
        out = np.zeros(0, np.float32)
        for stage in self.stages:
            out = np.concatenate([stage.feed(out) if len(out) else out, stage.finish()])
        return out

    def feed(self, x: np.ndarray) -> bytes:
        return self.encoder.feed(self.audio(x))

    def finish(self) -> bytes:
        return self.encoder.feed(self.audio_finish()) + self.encoder.finish()
