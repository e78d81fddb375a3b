"""Live playback without gaps: audio chunks in, a PortAudio output stream out.

    player = Player(24000, prebuffer_s=choose_prebuffer(frame_ms, chunk_frames, expected_frames))
    for chunk in chunks:        # float32 mono, from a generator faster or slower than real time
        player.write(chunk)     # playback starts once prebuffer_s seconds are buffered
    player.finish()             # returns when everything written has been played

The output callback runs on PortAudio's thread and pulls from a growing, locked RingBuffer, so a fast
producer never loses audio and a slow one is heard as silence, counted in `underruns` / `underrun_s`.
sounddevice is imported only when a Player opens a real stream (pip install 'voxtral-edge[play]').
"""

from __future__ import annotations

import threading
import time
from typing import Callable

import numpy as np

from .errors import VoxtralEdgeError

INSTALL_HINT = "pip install 'voxtral-edge[play]' and, on Debian/Ubuntu, apt-get install libportaudio2"


class RingBuffer:
    """A float32 FIFO of samples; grows instead of dropping audio; safe between one writer and one reader
    thread (every access holds a lock)."""

    def __init__(self, capacity: int = 1 << 16):
        self._buf = np.zeros(max(int(capacity), 1), np.float32)
        self._start = 0  # index of the oldest sample
        self._len = 0
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return self._len

    def write(self, samples: np.ndarray) -> None:
        x = np.asarray(samples, np.float32).reshape(-1)
        with self._lock:
            if self._len + len(x) > len(self._buf):  # grow (doubling), unrolling the old content to the front
                old = self._peek(self._len)
                self._buf = np.zeros(max(2 * len(self._buf), self._len + len(x)), np.float32)
                self._buf[:len(old)], self._start = old, 0
            end = (self._start + self._len) % len(self._buf)
            first = min(len(x), len(self._buf) - end)
            self._buf[end:end + first] = x[:first]
            self._buf[:len(x) - first] = x[first:]
            self._len += len(x)

    def read(self, n: int) -> np.ndarray:
        """Up to n samples, oldest first (fewer when fewer are buffered)."""
        with self._lock:
            out = self._peek(min(int(n), self._len))
            self._start = (self._start + len(out)) % len(self._buf)
            self._len -= len(out)
        return out

    def _peek(self, n: int) -> np.ndarray:
        first = min(n, len(self._buf) - self._start)
        return np.concatenate((self._buf[self._start:self._start + first], self._buf[:n - first]))


def choose_prebuffer(frame_ms: float, chunk_frames: int, expected_frames: int, frame_s: float = 0.08) -> float:
    """Seconds of audio to buffer before playback starts, given the measured generation time per frame.

    Each frame is `frame_s` seconds of audio and takes `frame_ms` ms to generate; chunks of `chunk_frames`
    frames arrive at once. At least two chunks are buffered, so one chunk plays while the next is made.
    When generation is slower than real time (speed r = frame_s / (frame_ms / 1000) < 1), the audio at
    position p of an utterance of T = expected_frames * frame_s seconds is ready at p / r after the start
    of generation but needed at B / r + p when playback starts after B seconds are buffered; no gap
    anywhere means B >= T * (1 - r), the deficit at the end. One chunk is added for the chunk granularity,
    and the result never exceeds T then (very slow generation: the whole utterance is buffered).
    """
    if frame_ms < 0 or chunk_frames < 1 or expected_frames < 0 or frame_s <= 0:
        raise ValueError(f"choose_prebuffer: {frame_ms=}, {chunk_frames=}, {expected_frames=}, {frame_s=}")
    chunk_s = chunk_frames * frame_s
    need = 2 * chunk_s
    if frame_ms / 1000 > frame_s:
        total_s = expected_frames * frame_s
        r = frame_s / (frame_ms / 1000)
        need = max(need, min(total_s * (1 - r) + chunk_s, total_s))
    return need


def _sounddevice_stream(samplerate, channels, dtype, callback):
    try:
        import sounddevice as sd
    except (ImportError, OSError) as e:  # OSError: sounddevice is there but libportaudio is not
        raise VoxtralEdgeError(f"live playback needs sounddevice and PortAudio ({e}): {INSTALL_HINT}") from e
    try:
        return sd.OutputStream(samplerate=samplerate, channels=channels, dtype=dtype, callback=callback)
    except sd.PortAudioError as e:
        raise VoxtralEdgeError(f"cannot open an audio output device: {e}") from e


class Player:
    """Plays float32 mono chunks as they arrive. `stream_factory(samplerate, channels, dtype, callback)`
    returns an object with start()/stop()/close() (default: sounddevice.OutputStream); the stream is opened
    here, so a missing PortAudio fails before any synthesis. Stats (written by the audio thread):
    underruns (gaps: the buffer ran dry while audio was still expected), underrun_s (silence inserted),
    played_s (audio played), started_after_s (when playback started, from construction; None before)."""

    def __init__(self, sample_rate: int, prebuffer_s: float, stream_factory: Callable | None = None):
        self.sample_rate, self.prebuffer_s = int(sample_rate), float(prebuffer_s)
        self.underruns = 0
        self._played = self._silence = 0  # samples, counted as ints so the seconds do not drift
        self.started_after_s: float | None = None
        self._ring = RingBuffer()
        self._t0 = time.monotonic()
        self._started = self._closed = self._done_writing = False
        self._in_gap = False  # the last block ran dry: more silence is the same underrun
        factory = stream_factory or _sounddevice_stream
        self._stream = factory(samplerate=self.sample_rate, channels=1, dtype="float32", callback=self._callback)

    @property
    def played_s(self) -> float:
        return self._played / self.sample_rate

    @property
    def underrun_s(self) -> float:
        return self._silence / self.sample_rate

    @property
    def buffered_s(self) -> float:
        return len(self._ring) / self.sample_rate

    def write(self, chunk: np.ndarray) -> None:
        """Queue a chunk; start playback once prebuffer_s is buffered. Ignored after close()."""
        if self._closed:
            return
        self._ring.write(chunk)
        if not self._started and self.buffered_s >= self.prebuffer_s:
            self._start()

    def done_writing(self) -> None:
        """No more audio will come: running out from now on is the end, not an underrun."""
        self._done_writing = True

    def finish(self, poll_s: float = 0.005) -> None:
        """Play everything written, then stop and close the stream (starting it first if the prebuffer
        was never reached). Gives up after twice the audio left plus a second, e.g. on a stuck device."""
        if self._closed:
            return
        self.done_writing()
        if not self._started:
            self._start()
        deadline = time.monotonic() + 2 * self.buffered_s + 1.0
        while len(self._ring) and time.monotonic() < deadline:
            time.sleep(poll_s)
        self._closed = True
        self._stream.stop()  # stop() (unlike abort) lets the blocks already handed to PortAudio play
        self._stream.close()

    def close(self) -> None:
        """Stop at once, dropping what is buffered (Ctrl-C)."""
        if self._closed:
            return
        self._closed = True
        getattr(self._stream, "abort", self._stream.stop)()
        self._stream.close()

    def _start(self) -> None:
        self._started = True
        self.started_after_s = time.monotonic() - self._t0
        self._stream.start()

    def _callback(self, outdata, frames, time_info, status) -> None:
        if self._closed:
            outdata.fill(0)
            return
        samples = self._ring.read(frames)
        outdata[:len(samples), 0] = samples
        outdata[len(samples):] = 0
        self._played += len(samples)
        if len(samples) < frames and not self._done_writing:
            self.underruns += len(samples) > 0 or not self._in_gap  # one gap, however many blocks it lasts
            self._silence += frames - len(samples)
            self._in_gap = True
        else:
            self._in_gap = False
