"""The one WAV header of the project (files, streams, the service) against Python's own `wave` reader."""

from __future__ import annotations

import io
import struct
import wave

import numpy as np

from voxtral_edge.audio import WavWriter, encode_wav, to_pcm16, wav_header


def _read(data: bytes) -> tuple[int, int, int, bytes]:
    with wave.open(io.BytesIO(data)) as w:
        return w.getframerate(), w.getnchannels(), w.getsampwidth(), w.readframes(w.getnframes())


def test_a_whole_file_reads_back_with_wave_sample_for_sample():
    audio = np.sin(np.linspace(0, 40, 1234)).astype(np.float32) * 0.7
    data = encode_wav(audio, 16000)
    assert _read(data) == (16000, 1, 2, to_pcm16(audio))
    assert len(data) == 44 + 2 * len(audio) and struct.unpack("<I", data[4:8])[0] == len(data) - 8


def test_a_streamed_header_says_unknown_length_and_wave_reads_its_samples():
    header = wav_header(24000)
    assert len(header) == 44 and header[4:8] == header[40:44] == b"\xff\xff\xff\xff"
    pcm = to_pcm16(np.linspace(-1, 1, 480, dtype=np.float32))
    rate, channels, width, frames = _read(header + pcm)
    assert (rate, channels, width) == (24000, 1, 2) and frames == pcm  # read to the end of the stream


def test_the_writer_makes_the_same_file_as_a_whole_encode(tmp_path):
    audio = np.random.default_rng(0).uniform(-1, 1, 5000).astype(np.float32)
    writer = WavWriter(tmp_path / "out.wav", 22050)
    for part in np.array_split(audio, 7):
        writer.write(part)
    assert not (tmp_path / "out.wav").exists()  # not in place before it is closed
    writer.close()
    assert (tmp_path / "out.wav").read_bytes() == encode_wav(audio, 22050)
    discarded = WavWriter(tmp_path / "gone.wav", 24000)
    discarded.write(audio)
    discarded.discard()
    assert list(tmp_path.iterdir()) == [tmp_path / "out.wav"]
