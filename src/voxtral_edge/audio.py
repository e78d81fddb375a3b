"""Writing audio: 16-bit PCM WAV files (atomically) and raw PCM for pipes."""

from __future__ import annotations

import io
import os
import wave
from pathlib import Path

import numpy as np

from .errors import UsageError, VoxtralEdgeError
from .files import replace_file


def to_pcm16(audio: np.ndarray) -> bytes:
    """float audio in [-1, 1] (clipped beyond) -> little-endian signed 16-bit samples."""
    return np.round(np.clip(audio, -1.0, 1.0) * 32767).astype("<i2").tobytes()


def encode_wav(audio: np.ndarray, sample_rate: int) -> bytes:
    """A mono 16-bit WAV file's bytes."""
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(int(sample_rate))
        w.writeframes(to_pcm16(audio))
    return buffer.getvalue()


def write_wav(path: str | Path, audio: np.ndarray, sample_rate: int) -> Path:
    """Write a mono 16-bit WAV; the file appears complete or not at all."""
    path = Path(path)
    if path.is_dir():
        raise UsageError(f"{path}: is a directory; give a file name such as {path / 'out.wav'}")
    return replace_file(path, encode_wav(audio, sample_rate))


class WavWriter:
    """A mono 16-bit WAV written as audio arrives. `close()` fixes the header (so what was written so
    far is a valid file, after Ctrl-C too) and moves it into place; `discard()` leaves nothing."""

    def __init__(self, path: str | Path, sample_rate: int):
        self.path = Path(path)
        if self.path.is_dir():
            raise UsageError(f"{self.path}: is a directory; give a file name such as {self.path / 'out.wav'}")
        self.tmp = self.path.with_name(f".{self.path.name}.partial")
        try:
            self.file = open(self.tmp, "wb")  # opened first: wave.open on a bad path leaves a broken object
        except OSError as e:
            raise VoxtralEdgeError(f"{self.path}: cannot write ({e.strerror or e})") from None
        self.wave = wave.open(self.file, "wb")
        self.wave.setnchannels(1)
        self.wave.setsampwidth(2)
        self.wave.setframerate(int(sample_rate))
        self.samples = 0

    def write(self, audio: np.ndarray) -> None:
        self.wave.writeframes(to_pcm16(audio))
        self.samples += len(audio)

    def close(self) -> Path:
        self.wave.close()
        self.file.close()
        os.replace(self.tmp, self.path)
        return self.path

    def discard(self) -> None:
        self.wave.close()
        self.file.close()
        self.tmp.unlink(missing_ok=True)
