"""Another output rate: python-soxr's streaming resampler (libsoxr, HQ), its filter state carried across
chunks, so that a stream gives the samples of the whole-file conversion (measured: identical, at every rate)."""

from __future__ import annotations

import numpy as np

from ..errors import UsageError

SAMPLE_RATES = (8000, 16000, 22050, 24000, 44100, 48000)  # each x 80 ms is a whole number of samples


def check_rate(rate) -> int:
    if isinstance(rate, bool) or not isinstance(rate, (int, np.integer)) or int(rate) not in SAMPLE_RATES:
        raise UsageError(f"sample rate must be one of {', '.join(map(str, SAMPLE_RATES))} Hz, found {rate!r}")
    return int(rate)


class Resample:
    """From the model's rate to `rate`: `feed` returns what the filter can give so far (it holds ~10-20 ms
    back), `finish` the rest; in total round(input * rate / source) samples."""

    def __init__(self, source: int, rate: int):
        import soxr

        self.source, self.rate = int(source), check_rate(rate)
        self.state = soxr.ResampleStream(self.source, self.rate, 1, dtype="float32", quality="HQ")

    def feed(self, x: np.ndarray) -> np.ndarray:
        return self.state.resample_chunk(np.asarray(x, np.float32), last=False)

    def finish(self) -> np.ndarray:
        return self.state.resample_chunk(np.zeros(0, np.float32), last=True)
