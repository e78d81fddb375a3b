"""Writing audio: 16-bit PCM WAV files (atomically) and raw PCM for pipes."""

from __future__ import annotations

import os
import struct
from pathlib import Path

import numpy as np

from .errors import UsageError, VoxtralEdgeError
from .files import replace_file


def to_pcm16(audio: np.ndarray) -> bytes:
    """float audio in [-1, 1] (clipped beyond) -> little-endian signed 16-bit samples."""
    return np.round(np.clip(audio, -1.0, 1.0) * 32767).astype("<i2").tobytes()


STREAMED = None  # the data size of a stream whose length is not known


def wav_header(sample_rate: int, data_bytes: int | None = STREAMED, *, float32: bool = False) -> bytes:
    """The 44-byte header of a mono 16-bit PCM WAV (32-bit float with `float32`) holding `data_bytes` of
    samples. For a stream of unknown length (STREAMED) the RIFF and data sizes are 0xFFFFFFFF, as in
    OpenAI's streamed WAV: players read to the end of the stream."""
    data = 0xFFFFFFFF if data_bytes is STREAMED else int(data_bytes)
    riff = 0xFFFFFFFF if data_bytes is STREAMED else 36 + data
    width, tag = (4, 3) if float32 else (2, 1)
    return struct.pack("<4sI4s4sIHHIIHH4sI", b"RIFF", riff, b"WAVE", b"fmt ", 16, tag, 1, int(sample_rate),
                       int(sample_rate) * width, width, 8 * width, b"data", data)


def encode_wav(audio: np.ndarray, sample_rate: int) -> bytes:
    """A mono 16-bit WAV file's bytes."""
    pcm = to_pcm16(audio)
    return wav_header(sample_rate, len(pcm)) + pcm


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
        self.sample_rate = int(sample_rate)
        try:
            self.file = open(self.tmp, "wb")
            self.file.write(wav_header(self.sample_rate, 0))  # sizes fixed by close()
        except OSError as e:
            raise VoxtralEdgeError(f"{self.path}: cannot write ({e.strerror or e})") from None
        self.samples = 0

    def write(self, audio: np.ndarray) -> None:
        self.file.write(to_pcm16(audio))
        self.samples += len(audio)

    def close(self) -> Path:
        self.file.seek(0)
        self.file.write(wav_header(self.sample_rate, 2 * self.samples))
        self.file.close()
        os.replace(self.tmp, self.path)
        return self.path

    def discard(self) -> None:
        self.file.close()
        self.tmp.unlink(missing_ok=True)
