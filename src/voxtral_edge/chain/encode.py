"""Audio -> bytes, as it arrives: raw PCM (s16 or f32), WAV, and through libsndfile (soundfile, [audio]
extra) FLAC, Ogg Opus and MP3.

A stream cannot seek back, so each container is written as its format allows: WAV with the sizes of a
stream of unknown length (0xFFFFFFFF, as OpenAI's streamed WAV); FLAC with STREAMINFO saying "length
unknown" (libFLAC's rewrite of it at the end is dropped: valid FLAC, which `flac -d` reads whole); Ogg Opus
with a page per 80 ms (libsndfile's default holds a second); MP3 frame by frame (no Xing header, which
needs a seek: decoders that trust a length estimate may stop early, players do not).
"""

from __future__ import annotations

import io

import numpy as np

from ..audio import to_pcm16, wav_header
from ..errors import UsageError

FORMATS = {"wav": "audio/wav", "pcm": "audio/pcm", "flac": "audio/flac", "opus": "audio/ogg", "mp3": "audio/mpeg"}
SAMPLE_FORMATS = ("s16", "f32")
OPUS_RATES = (8000, 12000, 16000, 24000, 48000)  # what libopus takes
_LIBSNDFILE = {"flac": ("FLAC", "PCM_16"), "opus": ("OGG", "OPUS"), "mp3": ("MP3", "MPEG_LAYER_III")}
_SFC_SET_OGG_PAGE_LATENCY_MS = 0x1302  # libsndfile >= 1.1; soundfile does not wrap it
_OGG_PAGE_MS = 80.0


def check_format(fmt: str, sample_rate: int, sample_format: str = "s16") -> None:
    """UsageError for what cannot be encoded: an unknown format, Opus at a rate libopus lacks."""
    if fmt not in FORMATS:
        raise UsageError(f"format {fmt!r}: expected one of {', '.join(FORMATS)}")
    if sample_format not in SAMPLE_FORMATS:
        raise UsageError(f"sample format {sample_format!r}: expected one of {', '.join(SAMPLE_FORMATS)}")
    if sample_format == "f32" and fmt not in ("pcm", "wav"):
        raise UsageError(f"sample format f32 is for pcm and wav; {fmt} is encoded from 16-bit samples")
    if fmt == "opus" and sample_rate not in OPUS_RATES:
        raise UsageError(f"opus takes {', '.join(map(str, OPUS_RATES))} Hz, not {sample_rate}: choose one of those "
                         f"sample rates, or another format")


class _Forward(io.RawIOBase):
    """What libsndfile writes, for a stream: bytes past those already passed on are kept for the next
    `take`; a rewrite of bytes already sent (a header filled in at the end) is dropped."""

    def __init__(self):
        self.sent, self.buffer, self.position = 0, bytearray(), 0

    def writable(self):
        return True

    def readable(self):
        return True

    def seekable(self):
        return True

    def tell(self):
        return self.position

    def seek(self, offset, whence=io.SEEK_SET):
        end = self.sent + len(self.buffer)
        self.position = offset if whence == io.SEEK_SET else self.position + offset if whence == io.SEEK_CUR \
            else end + offset
        return self.position

    def readinto(self, b):
        return 0

    def write(self, b):
        b, n = bytes(b), len(b)
        skip = max(0, self.sent - self.position)  # bytes already passed on: a header filled in at the end
        if skip < n:
            at = self.position + skip - self.sent
            self.buffer[at:at + n - skip] = b[skip:]
        self.position += n
        return n

    def take(self) -> bytes:
        data = bytes(self.buffer)
        self.sent += len(data)
        self.buffer.clear()
        return data


class Encoder:
    """`feed(audio)` -> the bytes it completes, `finish()` -> the rest. `stream` False (a whole file) lets
    libsndfile fill its headers in at the end (exact lengths, an MP3 Xing header)."""

    def __init__(self, fmt: str, sample_rate: int, sample_format: str = "s16", stream: bool = True):
        check_format(fmt, sample_rate, sample_format)
        self.fmt, self.rate, self.sample_format, self.stream = fmt, int(sample_rate), sample_format, stream
        self.samples = 0
        self._file = self._sink = None
        self._pcm: list[bytes] = []
        if fmt in _LIBSNDFILE:
            try:
                import soundfile
            except ImportError as e:
                raise UsageError(f"format {fmt} needs the [audio] extra ({e.name} is missing): "
                                 f"pip install 'voxtral-edge[audio]'") from None
            container, subtype = _LIBSNDFILE[fmt]
            self._sink = _Forward() if stream else io.BytesIO()
            self._file = soundfile.SoundFile(self._sink, "w", self.rate, 1, format=container, subtype=subtype)
            if fmt == "opus":
                latency = soundfile._ffi.new("double*", _OGG_PAGE_MS)
                soundfile._snd.sf_command(self._file._file, _SFC_SET_OGG_PAGE_LATENCY_MS, latency,
                                          soundfile._ffi.sizeof("double"))
        self._header = fmt == "wav"

    def _samples(self, audio: np.ndarray) -> bytes:
        if self.sample_format == "f32":
            return np.clip(audio, -1.0, 1.0).astype("<f4").tobytes()
        return to_pcm16(audio)

    def feed(self, audio: np.ndarray) -> bytes:
        self.samples += len(audio)
        if self._file is not None:
            if len(audio):
                self._file.write(np.frombuffer(to_pcm16(audio), "<i2"))
            return self._sink.take() if self.stream else b""
        data = self._samples(audio)
        if not self.stream:
            self._pcm.append(data)
            return b""
        if self._header:
            self._header = False
            data = wav_header(self.rate, float32=self.sample_format == "f32") + data
        return data

    def finish(self) -> bytes:
        if self._file is not None:
            self._file.close()
            return self._sink.take() if self.stream else self._sink.getvalue()
        if self.stream:
            return wav_header(self.rate, float32=self.sample_format == "f32") if self._header else b""
        data = b"".join(self._pcm)
        header = wav_header(self.rate, len(data), float32=self.sample_format == "f32") if self.fmt == "wav" else b""
        return header + data
