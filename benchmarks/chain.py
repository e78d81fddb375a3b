"""Cost of the audio chain's stages per second of audio: `python benchmarks/chain.py [--seconds 10]`.

A voiced test signal at the model's 24 kHz is fed in 80 ms chunks (as a stream gives them) through each
stage alone and through a few whole chains; prints milliseconds of CPU (this process's, every thread) and
of wall time per second of audio (each the best of 3 runs) and the load average: on a shared machine the wall
figures are upper bounds, the CPU figures much less so. The model's own cost is
about 100-650 ms per 80 ms frame on a desktop core (benchmarks/README.md), so a stage is small beside it.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

from voxtral_edge.chain import Chain, Output
from voxtral_edge.chain.loudness import Loudness
from voxtral_edge.chain.resample import Resample
from voxtral_edge.chain.timescale import TimeScale
from voxtral_edge.machine import usable_cores

R = 24000


def voiced(seconds: float) -> np.ndarray:
    t = np.arange(int(R * seconds)) / R
    phase = 2 * np.pi * np.cumsum(130 + 30 * np.sin(2 * np.pi * 0.7 * t)) / R
    x = sum(np.sin(k * phase) / k for k in range(1, 30)) * (np.sin(2 * np.pi * 1.3 * t) > -0.6)
    return (0.4 * x / np.abs(x).max()).astype(np.float32)


def ms_per_second(make, x: np.ndarray) -> tuple[float, float]:
    """(CPU, wall) milliseconds per second of audio, each the best of 3 runs."""
    cpu = wall = float("inf")
    for _ in range(3):
        stage = make()
        c0, t0 = time.process_time(), time.perf_counter()
        for i in range(0, len(x), 1920):
            stage.feed(x[i:i + 1920])
        stage.finish()
        cpu, wall = min(cpu, time.process_time() - c0), min(wall, time.perf_counter() - t0)
    return 1e3 * cpu / (len(x) / R), 1e3 * wall / (len(x) / R)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="audio per run (default: 10)")
    args = parser.parse_args()
    x = voiced(args.seconds)
    rows = [("time scale, speed 0.5", lambda: TimeScale.create(0.5, R)),
            ("time scale, speed 1.25", lambda: TimeScale.create(1.25, R)),
            ("time scale, speed 2.0", lambda: TimeScale.create(2.0, R))]
    rows += [(f"resample to {rate}", lambda rate=rate: Resample(R, rate)) for rate in (8000, 16000, 44100, 48000)]
    rows += [("loudness (gain + true-peak limiter)", lambda: Loudness.create(-16.0, R, gain_db=3.0)),
             ("chain: 48 kHz, speed 1.25, -16 LUFS, wav",
              lambda: Chain(Output(48000, 1.25, -16.0, "wav"), R, gain_db=3.0)),
             ("chain: 16 kHz, flac", lambda: Chain(Output(16000, format="flac"), R)),
             ("chain: 48 kHz, opus", lambda: Chain(Output(48000, format="opus"), R)),
             ("chain: 44.1 kHz, mp3", lambda: Chain(Output(44100, format="mp3"), R))]
    print("| stage | ms of CPU per s of audio | ms of wall time |\n| --- | ---: | ---: |")
    for name, make in rows:
        cpu, wall = ms_per_second(make, x)
        print(f"| {name} | {cpu:.1f} | {wall:.1f} |")
    print(f"\nload average {os.getloadavg()[0]:.2f} on {usable_cores()} cores; {args.seconds:g} s of audio per run")


if __name__ == "__main__":
    main()
