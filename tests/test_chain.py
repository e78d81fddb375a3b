"""The audio chain: each stage streamed gives the whole-input samples; rates, speed, loudness and the
containers checked against closed-form values and the libraries' own decoders."""

from __future__ import annotations

import io

import numpy as np
import pytest

from voxtral_edge.chain import SAMPLE_RATES, Chain, Output
from voxtral_edge.audio import wav_header
from voxtral_edge.chain.encode import Encoder
from voxtral_edge.chain.loudness import TRUE_PEAK_DBTP, Loudness, integrated_loudness
from voxtral_edge.chain.timescale import TimeScale
from voxtral_edge.errors import UsageError

from audio_decoders import mp3_frames, read_unknown_length

R = 24000


def speechlike(seconds=2.0, seed=0):
    """Harmonics of a moving f0 under three formants, with pauses: a voiced test signal."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(R * seconds)) / R
    f0 = 130 + 30 * np.sin(2 * np.pi * 0.7 * t)
    phase = 2 * np.pi * np.cumsum(f0) / R
    x = sum(np.sin(k * phase) * sum(np.exp(-((k * 130 - F) / 250) ** 2) for F in (700, 1200, 2600)) / k ** 0.5
            for k in range(1, 30))
    x *= (np.sin(2 * np.pi * 1.3 * t) > -0.6)  # pauses
    return (0.4 * x / np.abs(x).max() + 0.002 * rng.standard_normal(len(t))).astype(np.float32)


def run(stage_or_chain, x, sizes):
    """Feed x in chunks of the given sizes (cycled), then finish."""
    out, i, k = [], 0, 0
    while i < len(x):
        n = sizes[k % len(sizes)]
        out.append(stage_or_chain.feed(x[i:i + n]))
        i, k = i + n, k + 1
    out.append(stage_or_chain.finish())
    return b"".join(out) if isinstance(out[0], bytes) else np.concatenate(out)


def pcm16(data: bytes) -> np.ndarray:
    return np.frombuffer(data, "<i2").astype(np.int32)


@pytest.mark.parametrize("rate", SAMPLE_RATES)
def test_streamed_output_equals_the_whole_file_at_every_rate(rate):
    x = speechlike()
    whole = pcm16(run(Chain(Output(rate, format="pcm"), R), x, [len(x)]))
    for sizes in ([1920], [1, 4000, 333], [80]):
        streamed = pcm16(run(Chain(Output(rate, format="pcm"), R), x, sizes))
        assert len(streamed) == len(whole) == round(len(x) * rate / R)
        assert np.abs(streamed - whole).max() <= 1  # within 1 LSB (soxr carries its filter state: 0 measured)


@pytest.mark.parametrize("rate", SAMPLE_RATES)
def test_resampling_keeps_a_tone_its_frequency_and_level(rate):
    t = np.arange(R) / R
    x = (0.5 * np.sin(2 * np.pi * 997 * t) * np.hanning(R) ** 0.1).astype(np.float32)
    y = run(Chain(Output(rate, format="pcm", sample_format="f32"), R), x, [1920])
    y = np.frombuffer(y, "<f4")
    spectrum = np.abs(np.fft.rfft(y * np.hanning(len(y))))
    assert np.fft.rfftfreq(len(y), 1 / rate)[np.argmax(spectrum)] == pytest.approx(997, abs=1.5)
    mid = slice(len(y) // 4, 3 * len(y) // 4)
    assert np.sqrt(np.mean(y[mid] ** 2)) == pytest.approx(np.sqrt(np.mean(x[len(x) // 4:3 * len(x) // 4] ** 2)),
                                                          rel=0.01)


def f0(x, rate=R, lo=70, hi=400):
    """Autocorrelation pitch with parabolic interpolation."""
    x = x - x.mean()
    c = np.correlate(x, x, "full")[len(x) - 1:]
    a, b = int(rate / hi), int(rate / lo)
    k = a + int(np.argmax(c[a:b]))
    k = k + 0.5 * (c[k - 1] - c[k + 1]) / (c[k - 1] - 2 * c[k] + c[k + 1])
    return rate / k


@pytest.mark.parametrize("speed", [0.5, 0.8, 1.25, 2.0])
def test_speed_scales_the_duration_and_keeps_the_pitch(speed):
    t = np.arange(int(R * 1.5)) / R
    x = sum(np.sin(2 * np.pi * 150 * k * t + k) / k for k in range(1, 20)).astype(np.float32) * 0.2
    whole = run(TimeScale.create(speed, R), x, [len(x)])
    streamed = run(TimeScale.create(speed, R), x, [1920, 77, 3000])
    assert np.array_equal(streamed, whole)
    assert len(whole) / (len(x) / speed) == pytest.approx(1, abs=0.03)
    middle = whole[len(whole) // 4:3 * len(whole) // 4]
    assert f0(middle) == pytest.approx(150, rel=0.02)


def test_speed_through_the_chain_maps_positions():
    chain = Chain(Output(16000, speed=2.0, format="pcm"), R)
    assert chain.position(R) == 8000  # one model second at double speed, at 16 kHz
    x = speechlike(1.0)
    assert len(pcm16(run(chain, x, [1920]))) == round(len(x) / 2 * 16000 / R)


def true_peak_db(y, rate):
    from scipy.signal import resample_poly  # an independent 4x meter (BS.1770 Annex 2 is 4x oversampling)

    return 20 * np.log10(np.abs(resample_poly(np.asarray(y, np.float64), 4, 1)).max())


@pytest.mark.parametrize("target", [-23.0, -16.0])
def test_loudness_of_a_whole_file_is_the_target(target):
    x = speechlike(3.0) * 0.3
    y = run(Loudness.create(target, R), x, [1920])
    assert integrated_loudness(y, R) == pytest.approx(target, abs=0.5)
    assert true_peak_db(y, R) <= TRUE_PEAK_DBTP


def test_loud_audio_is_limited_never_clipped():
    rng = np.random.default_rng(1)
    x = (rng.standard_normal(R * 3) * 0.8).astype(np.float32)  # +10 dBTP noise, the worst case for peaks
    y = run(Loudness.create(-5.0, R), x, [1920])
    assert true_peak_db(y, R) <= TRUE_PEAK_DBTP
    assert len(y) == len(x)


def test_a_stream_takes_its_gain_from_the_first_chunk():
    x = speechlike(3.0) * 0.3
    stream = Loudness.create(-20.0, R, gain_db=6.0)
    first = stream.feed(x[:4000])
    assert len(first) and np.allclose(first, x[:len(first)] * 10 ** (6 / 20), atol=1e-6)  # gained, unlimited
    whole = run(Loudness.create(-20.0, R, gain_db=6.0), x, [len(x)])
    assert np.array_equal(np.concatenate([first, run(stream, x[4000:], [1920])]), whole)


# -- containers ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("rate", [16000, 24000, 48000])
def test_flac_whole_and_streamed_hold_the_wav_samples(rate):
    import soundfile

    x = speechlike(1.0)[: rate]  # the samples as if already at `rate`
    reference = pcm16(run(Encoder("pcm", rate), x, [len(x)]))
    whole = run(Encoder("flac", rate, stream=False), x, [1920])
    back, back_rate = soundfile.read(io.BytesIO(whole), dtype="int16")
    assert back_rate == rate and np.array_equal(back.astype(np.int32), reference)
    streamed = run(Encoder("flac", rate), x, [1920])
    assert np.array_equal(read_unknown_length(streamed).astype(np.int32), reference)


@pytest.mark.parametrize("rate", [8000, 16000, 24000, 48000])
def test_opus_streams_a_page_per_chunk_and_decodes(rate):
    import soundfile

    x = speechlike(2.0)
    encoder = Encoder("opus", rate)
    parts = [encoder.feed(x[i:i + rate // 12]) for i in range(0, len(x), rate // 12)] + [encoder.finish()]
    assert all(len(p) > 0 for p in parts[1:6])  # audio leaves every 80 ms, not after a second
    back, back_rate = soundfile.read(io.BytesIO(b"".join(parts)), dtype="float32")
    assert back_rate == rate and abs(len(back) - len(x)) <= rate // 50  # within one 20 ms Opus frame


def test_opus_refuses_rates_libopus_lacks():
    with pytest.raises(UsageError, match="opus takes 8000, 12000, 16000, 24000, 48000 Hz"):
        Output(22050, format="opus")


@pytest.mark.parametrize("rate", [8000, 22050, 44100, 48000])
def test_mp3_streams_whole_frames_that_hold_all_the_audio(rate):
    import soundfile

    x = speechlike(1.5)
    encoder = Encoder("mp3", rate)
    parts = [encoder.feed(x[i:i + 1920]) for i in range(0, len(x), 1920)]
    parts.append(encoder.finish())
    assert sum(map(len, parts[:3])) > 0  # frames leave as they are made
    frames, samples = mp3_frames(b"".join(parts))
    assert samples >= len(x)
    whole = run(Encoder("mp3", rate, stream=False), x, [len(x)])
    back, back_rate = soundfile.read(io.BytesIO(whole), dtype="float32")
    assert back_rate == rate and abs(len(back) - len(x)) <= 1152  # the Xing header gives the length


def test_wav_stream_header_and_whole_file():
    import soundfile

    x = speechlike(0.5)
    streamed = run(Encoder("wav", 16000), x, [1920])
    assert streamed[:44] == wav_header(16000) and len(streamed) == 44 + 2 * len(x)
    whole = run(Encoder("wav", 16000, stream=False), x, [1920])
    back, rate = soundfile.read(io.BytesIO(whole), dtype="int16")
    assert rate == 16000 and np.array_equal(back.astype(np.int32), pcm16(streamed[44:]))
    f32 = run(Encoder("wav", 16000, "f32", stream=False), x, [1920])
    back, _ = soundfile.read(io.BytesIO(f32), dtype="float32")
    assert np.array_equal(back, x)
