"""Speed without a pitch change: a streaming WSOLA (waveform-similarity overlap-add, Verhelst & Roelands 1993).

Output frame k (a periodic Hann window of N samples; hop N/2, where the windows sum to one) covers output
samples [(k - 1) hop, (k + 1) hop). Its input frame starts within +-`tol` of (k - 1) hop * speed, where it best
continues the input frame taken before (cross-correlation): output sample m holds input from near m * speed,
the output starts aligned with the input, and `finish` makes the total exactly round(input / speed). The
speed may change between two chunks (`set_speed`, for an SSML prosody rate): input from then on is played at
the new speed; `output_position` maps any input sample to the output.
No library on PyPI does this streaming, for ARM, and without the GPL (see the issue 25 note), hence this one.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

FRAME_MS, SEARCH_MS = 40.0, 10.0  # a frame holds a few pitch periods; the search covers the longest (70 Hz)
f32 = np.float32


@dataclass
class TimeScale:
    """The stage's state: the input it may still read, the output frames being overlapped, where it stands."""

    speed: float
    frame: int  # N samples
    tol: int  # samples searched either side of the ideal input position
    window: np.ndarray
    kept: np.ndarray = field(default_factory=lambda: np.zeros(0, f32))  # input from sample `base` on
    base: int = 0
    fed: int = 0  # input samples received
    k: int = 0  # the next output frame
    taken: int = 0  # input start of the frame placed last
    overlap: np.ndarray | None = None  # output from (k - 1) hop on, frames placed so far added up
    emitted: int = 0
    segments: list[tuple[int, float, float]] = field(default_factory=list)  # (input, output, speed) from there on

    @classmethod
    def create(cls, speed: float, rate: int) -> "TimeScale":
        n = int(rate * FRAME_MS / 1000) // 2 * 2
        window = (0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n) / n)).astype(f32)
        return cls(float(speed), n, int(rate * SEARCH_MS / 1000), window, overlap=np.zeros(n, f32),
                   segments=[(0, 0.0, float(speed))])

    def set_speed(self, speed: float) -> None:
        """Play the input fed from now on at `speed`."""
        if speed != self.segments[-1][2]:
            self.segments.append((self.fed, self.output_position(self.fed), float(speed)))

    def output_position(self, sample: int) -> float:
        """Where input `sample` is heard in the output (the segments' piecewise-linear map)."""
        start, out, speed = next(s for s in reversed(self.segments) if s[0] <= sample)
        return out + (sample - start) / speed

    def _input_position(self, output: float) -> int:
        start, out, speed = next((s for s in reversed(self.segments) if s[1] <= output), self.segments[0])
        return int(round(start + (output - out) * speed))

    @property
    def hop(self) -> int:
        return self.frame // 2

    def feed(self, x: np.ndarray) -> np.ndarray:
        """The output that the input so far fixes."""
        self.kept = np.concatenate([self.kept, np.asarray(x, f32)])
        self.fed += len(x)
        out = []
        while max(self._ideal() + self.tol, self.taken + self.hop) + self.frame <= self.fed:
            out.append(self._place())
        return self._emit(out, None)

    def finish(self) -> np.ndarray:
        """The rest: exactly round(input / speed) samples in all (the input ends in silence)."""
        total = int(round(self.output_position(self.fed)))
        out, have = [], self.emitted
        while have < total:
            out.append(self._place())
            have += len(out[-1])
        return self._emit(out, total)

    def _ideal(self) -> int:
        return self._input_position((self.k - 1) * self.hop)

    def _input(self, start: int, length: int) -> np.ndarray:
        """Input [start, start + length): zeros before the start and past the end."""
        out = np.zeros(length, f32)
        a, b = max(start, self.base), min(start + length, self.base + len(self.kept))
        if b > a:
            out[a - start:b - start] = self.kept[a - self.base:b - self.base]
        return out

    def _place(self) -> np.ndarray:
        """Place frame k; returns the hop of output it completes (frame 0's lies before the output)."""
        n, hop, tol, position = self.frame, self.hop, self.tol, self._ideal()
        if self.k > 0:
            score = np.correlate(self._input(position - tol, n + 2 * tol), self._input(self.taken + hop, n), "valid")
            best = int(np.argmax(score))
            if score[best] > score[tol]:  # a tie (silence) keeps the ideal position
                position += best - tol
        self.overlap += self._input(position, n) * self.window
        done = self.overlap[:hop].copy()
        self.overlap[:hop] = self.overlap[hop:]
        self.overlap[hop:] = 0
        self.taken, self.k = position, self.k + 1
        lowest = min(self._ideal() - tol, self.taken + hop)  # no later frame reads before this
        if lowest > self.base:
            self.kept, self.base = self.kept[lowest - self.base:], lowest
        return done if self.k > 1 else np.zeros(0, f32)

    def _emit(self, parts: list[np.ndarray], total: int | None) -> np.ndarray:
        y = np.concatenate(parts) if parts else np.zeros(0, f32)
        if total is not None:
            y = y[:max(0, total - self.emitted)]
        self.emitted += len(y)
        return y
