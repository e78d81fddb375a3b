"""A request spoken through the audio chain: what say, render, serve's marks, wyoming and speech-dispatcher
share. The runtime makes the model's audio and notes its events; the chain turns the audio into the output
(speed, rate, loudness, format); the marks are the events mapped onto the output's samples."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np

from .chain import Chain, Output


@dataclass(frozen=True)
class Timing:
    """Where a mark or a sentence start is heard: output sample and seconds."""

    name: str | None
    kind: str  # "mark" or "sentence"
    sample: int
    time_s: float

    def as_dict(self) -> dict:
        return {"name": self.name, "kind": self.kind, "sample": self.sample, "time_s": round(self.time_s, 6)}


def chain_for(synth, utterance, output: Output, *, stream: bool = True) -> Chain:
    """The chain of one utterance: with a time-scale stage when its script changes rate, and, for a stream
    with a loudness target, the gain its voice needs (measured once, see chain.loudness.voice_loudness)."""
    from .chain.loudness import voice_loudness

    rates = any(getattr(p, "kind", None) == "rate" for p in utterance.pieces)
    gain = None
    if output.loudness is not None and stream:
        gain = output.loudness - voice_loudness(synth, utterance.voice)
    return Chain(output, synth.sample_rate, stream=stream, gain_db=gain, rates=rates)


class Timeline:
    """An utterance's events applied to its chain as the audio goes through: rate changes set the chain's
    speed, marks and sentence starts become `timings` at output samples."""

    def __init__(self, utterance, chain: Chain):
        self.utterance, self.chain = utterance, chain
        self.timings: list[Timing] = []
        self.fed = 0  # model samples through the chain
        self._seen = 0

    def before(self, chunk_samples: int) -> None:
        """Call before feeding the next chunk (of this many model samples) to the chain."""
        self._apply(self.fed)
        self.fed += chunk_samples

    def end(self) -> None:
        """Call once the utterance is done, before the chain's finish."""
        self._apply(float("inf"))

    def _apply(self, upto: float) -> None:
        events = self.utterance.events
        while self._seen < len(events) and events[self._seen].sample <= upto:
            e = events[self._seen]
            self._seen += 1
            if e.kind == "rate":
                self.chain.set_rate(e.rate)
            else:
                at = self.chain.position(e.sample)
                self.timings.append(Timing(e.name, e.kind, at, at / self.chain.output.sample_rate))


class Speech:
    """Iterate for the encoded bytes as they are made (`stream` False: whole-file containers, one piece at
    the end); `timings` lists each mark and sentence start reached so far; `result` is the runtime's Result
    once done. `options` are those of `Synthesizer.start`."""

    def __init__(self, synth, text: str, voice: str, output: Output = Output(), *, stream: bool = True, **options):
        self.synth, self.output = synth, output
        self.utterance = synth.start(text, voice, **options)
        self.chain = chain_for(synth, self.utterance, output, stream=stream)
        self.timeline = Timeline(self.utterance, self.chain)
        self.result = None

    @property
    def timings(self) -> list[Timing]:
        return self.timeline.timings

    def __iter__(self) -> Iterator[bytes]:
        for chunk in self.synth.chunks(self.utterance):
            self.timeline.before(len(chunk))
            data = self.chain.feed(chunk)
            if data:
                yield data
        self.timeline.end()
        self.result = self.synth.last_result
        tail = self.chain.finish()
        if tail:
            yield tail

    def audio(self) -> Iterator[np.ndarray]:
        """The float output instead of encoded bytes (for a player)."""
        for chunk in self.synth.chunks(self.utterance):
            self.timeline.before(len(chunk))
            out = self.chain.audio(chunk)
            if len(out):
                yield out
        self.timeline.end()
        self.result = self.synth.last_result
        tail = self.chain.audio_finish()
        if len(tail):
            yield tail


def encode_whole(result, output: Output) -> tuple[bytes, list[Timing]]:
    """A finished utterance (a runtime Result) as one whole file of `output`, and its timings: the audio goes
    through the chain in the pieces its events cut it into, so that rate changes apply where they fall."""
    chain = Chain(output, result.sample_rate, stream=False, rates=any(e.kind == "rate" for e in result.events))
    timeline = Timeline(result, chain)
    cuts = sorted({e.sample for e in result.events if 0 < e.sample < len(result.audio)})
    data = []
    for part in np.split(result.audio, cuts):
        timeline.before(len(part))
        data.append(chain.feed(part))
    timeline.end()
    data.append(chain.finish())
    return b"".join(data), timeline.timings
