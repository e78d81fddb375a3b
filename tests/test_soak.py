"""benchmarks/soak.py's arithmetic and its Synthesizer mode: the robust slope against scipy's Theil-Sen, the
peak never below a sampled RSS, and a short soak of a tiny bundle. (The service mode is a benchmark of hours:
benchmarks/README.md.)"""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

_PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "soak.py"
_spec = importlib.util.spec_from_file_location("soak", _PATH)
soak = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = soak
_spec.loader.exec_module(soak)


@pytest.mark.parametrize("seed", range(5))
def test_the_slope_is_theil_sen_as_scipy_computes_it(seed):
    rng = np.random.default_rng(seed)
    x = np.sort(rng.uniform(0, 2, 60))
    x[10] = x[11]  # a tie: that pair has no slope
    y = 0.5 * x + rng.normal(0, 0.05, 60)
    y[rng.choice(60, 6, replace=False)] += 40  # outliers move a least-squares line, not this one
    slope, low, high = soak.theil_sen(x, y, np.random.default_rng(0))
    assert slope == pytest.approx(stats.theilslopes(y, x).slope, rel=1e-12)
    assert low <= slope <= high and low < 0.5 < high


def test_the_peak_is_never_below_a_sampled_rss():
    peak = soak.Peak()
    assert peak({"rss": 100.0, "peak": 99.6}) == 100.0  # the kernel's mark read a fraction low
    assert peak({"rss": 90.0, "peak": 101.0}) == 101.0
    assert peak({"rss": 95.0, "peak": 100.5}) == 101.0


def test_a_short_synthesizer_soak_reports_memory_and_time(tiny_bundle_dirs, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["soak.py", "--bundle", str(tiny_bundle_dirs[0]), "--utterances", "12",
                                      "--frames", "3", "--threads", "1"])
    assert soak.main() == 0
    out = capsys.readouterr().out
    assert out.startswith("12 utterances of 3 frames")
    rss = re.search(r"RSS: ([\d.]+) MiB after the warm-up, ([\d.]+) MiB at the end .* peak ([\d.]+) MiB", out)
    assert rss and float(rss[3]) >= max(float(rss[1]), float(rss[2])) > 0
    for name in ("wall", "CPU"):
        m = re.search(rf"{name} time per utterance: .* slope ([-+][\d.]+) ms per utterance \(95 % interval "
                      rf"([-+][\d.]+)\.\.([-+][\d.]+)\)", out)
        assert m and float(m[2]) <= float(m[3])  # (measured times: the estimate itself may fall outside)
