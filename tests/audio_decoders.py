"""Decoders the tests check encoded audio with: libsndfile read past a 'length unknown' header, and a walk
over MPEG audio frame headers (the MP3 format itself, independent of any encoder)."""

from __future__ import annotations

import io
import struct

import numpy as np


def read_unknown_length(data: bytes) -> np.ndarray:
    """Every sample libsndfile decodes from a stream whose header says 'length unknown' (soundfile's read()
    asks for the length first; sf_readf_short does not)."""
    import soundfile

    f = soundfile.SoundFile(io.BytesIO(data))
    out, block = [], np.zeros(4096, np.int16)
    while (n := soundfile._snd.sf_readf_short(f._file, soundfile._ffi.cast("short*", block.ctypes.data), 4096)) > 0:
        out.append(block[:n].copy())
    f.close()
    return np.concatenate(out)


def mp3_frames(data: bytes) -> tuple[int, int]:
    """(frames, samples) by walking MPEG audio frame headers (ISO 11172-3 / 13818-3); each header's length
    must lead to the next."""
    bitrates = {1: [0, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320],
                2: [0, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160]}
    rates = {3: (44100, 48000, 32000), 2: (22050, 24000, 16000), 0: (11025, 12000, 8000)}
    i, frames, samples = 0, 0, 0
    if data[:3] == b"ID3":
        i = 10 + ((data[6] & 0x7F) << 21 | (data[7] & 0x7F) << 14 | (data[8] & 0x7F) << 7 | data[9] & 0x7F)
    while i + 4 <= len(data):
        h = struct.unpack(">I", data[i:i + 4])[0]
        assert h >> 21 == 0x7FF, f"no frame sync at byte {i}"
        version = (h >> 19) & 3
        bitrate = bitrates[1 if version == 3 else 2][(h >> 12) & 15] * 1000
        rate = rates[version][(h >> 10) & 3]
        padding = (h >> 9) & 1
        per = 1152 if version == 3 else 576
        i += per // 8 * bitrate // rate + padding
        frames, samples = frames + 1, samples + per
    assert i == len(data)
    return frames, samples
