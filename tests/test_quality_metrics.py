"""The quality report's metrics on inputs whose values are known in closed form."""

from __future__ import annotations

import math

import numpy as np
import pytest

from voxtral_edge.quant.quality import compare, log_mel, log_mel_distance, snr_db

SAMPLE_RATE = 24000
rng = np.random.default_rng(17)


def sine(freq: float, seconds: float = 1.0, amplitude: float = 0.5) -> np.ndarray:
    t = np.arange(int(SAMPLE_RATE * seconds)) / SAMPLE_RATE
    return amplitude * np.sin(2 * np.pi * freq * t)


def test_cosine_of_a_vector_with_itself_its_negative_and_an_orthogonal_one():
    a = rng.standard_normal(300)
    b = rng.standard_normal(300)
    orthogonal = b - (a @ b) / (a @ a) * a  # Gram-Schmidt
    assert compare(a, a)["cosine"] == pytest.approx(1, abs=1e-12)
    assert compare(-a, a)["cosine"] == pytest.approx(-1, abs=1e-12)
    assert compare(orthogonal, a)["cosine"] == pytest.approx(0, abs=1e-12)
    assert compare(3 * a, a)["cosine"] == pytest.approx(1, abs=1e-12)  # scale does not matter
    assert compare([1.0, 1.0], [1.0, 0.0])["cosine"] == pytest.approx(1 / math.sqrt(2), abs=1e-12)


def test_max_errors_of_known_differences():
    a = rng.standard_normal(200)
    peak = np.abs(a).max()
    r = compare(-a, a)
    assert r["max_abs_error"] == pytest.approx(2 * peak) and r["max_rel_error"] == pytest.approx(2)
    r = compare(a + 0.25, a)
    assert r["max_abs_error"] == pytest.approx(0.25) and r["max_rel_error"] == pytest.approx(0.25 / peak)
    assert compare(a, a)["max_abs_error"] == 0


def test_cosine_skips_the_masked_entries():
    """Semantic logits carry -inf at the same places in both: those entries are left out, the rest count."""
    a, b = rng.standard_normal(20), rng.standard_normal(20)
    masked_a, masked_b = a.copy(), b.copy()
    masked_a[[0, 7]] = masked_b[[0, 7]] = -np.inf
    keep = np.ones(20, bool)
    keep[[0, 7]] = False
    want = a[keep] @ b[keep] / (np.linalg.norm(a[keep]) * np.linalg.norm(b[keep]))
    assert compare(masked_a, masked_b)["cosine"] == pytest.approx(want, abs=1e-12)


@pytest.mark.parametrize("snr", [20.0, 0.0, 37.5])
def test_snr_of_a_sine_plus_noise_of_known_power(snr):
    signal = sine(440.0)
    noise = rng.standard_normal(len(signal))
    noise *= math.sqrt(np.sum(signal ** 2) / np.sum(noise ** 2) / 10 ** (snr / 10))  # noise power = P / 10^(snr/10)
    assert snr_db(signal + noise, signal) == pytest.approx(snr, abs=1e-9)


def test_snr_of_identical_signals_is_infinite_and_lengths_are_cut_to_the_shorter():
    signal = sine(300.0)
    assert snr_db(signal, signal) == math.inf
    assert snr_db(np.concatenate([signal, np.ones(500)]), signal) == math.inf


def test_log_mel_distance_of_a_signal_with_itself_is_zero():
    x = 0.1 * rng.standard_normal(SAMPLE_RATE)
    assert log_mel_distance(x, x, SAMPLE_RATE) == 0


@pytest.mark.parametrize("gain", [0.5, 2.0, 0.1, 1.25])
def test_log_mel_distance_of_a_gain_change_is_20_log10_gain(gain):
    """A gain g multiplies every band's power by g^2, so each dB entry moves by 20 log10 g (no band of
    white noise is near the floor): the mean absolute difference is |20 log10 g|."""
    x = 0.1 * rng.standard_normal(SAMPLE_RATE)
    assert log_mel_distance(gain * x, x, SAMPLE_RATE) == pytest.approx(abs(20 * math.log10(gain)), abs=1e-9)
    assert log_mel_distance(x, gain * x, SAMPLE_RATE) == pytest.approx(abs(20 * math.log10(gain)), abs=1e-9)


@pytest.mark.parametrize("freq", [300.0, 1000.0, 2500.0, 5000.0, 9000.0])
def test_log_mel_puts_a_tone_in_the_htk_mel_band_of_its_frequency(freq):
    """80 bands evenly spaced on mel = 2595 log10(1 + f / 700) from 0 to the Nyquist frequency: band m
    is centred on the (m + 1)-th of 81 steps."""
    n_mels = 80
    spectrum = log_mel(sine(freq), SAMPLE_RATE, n_mels=n_mels).mean(axis=0)
    mel = lambda f: 2595 * math.log10(1 + f / 700)  # noqa: E731
    expected = mel(freq) / mel(SAMPLE_RATE / 2) * (n_mels + 1) - 1
    assert abs(int(np.argmax(spectrum)) - expected) <= 1
