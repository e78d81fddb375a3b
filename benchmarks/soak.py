"""Soak: many utterances through one Synthesizer; does memory grow or time drift?

    python benchmarks/soak.py --bundle BUNDLE [--utterances 200] [--frames 12] [--threads N]

Cycles through sentences in several languages and all the bundle's voices, streams each utterance
(as `say` does), and prints RSS at start (after the first utterance) and end, its peak, and the time
per utterance: the mean of the first and last tenth and the least-squares slope over the run. A leak
shows as RSS growing with the count; fragmentation or cache growth as a positive time slope.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from voxtral_edge.machine import peak_rss_bytes, rss_bytes
from voxtral_edge.runtime import Synthesizer

SENTENCES = ["Turn left in two hundred metres.", "Le prochain arrêt est la gare centrale.",
             "Die Batterie ist zu achtzig Prozent geladen.", "La temperatura esterna è di diciotto gradi.",
             "El próximo destino está a diez minutos.", "A porta traseira está aberta.",
             "De volgende afslag is over twee kilometer.", "अगले मोड़ पर दाएं मुड़ें।", "المنعطف التالي على اليمين."]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", required=True)
    parser.add_argument("--utterances", type=int, default=200)
    parser.add_argument("--frames", type=int, default=12)
    parser.add_argument("--threads", type=int)
    args = parser.parse_args()
    synth = Synthesizer.open(args.bundle, threads=args.threads, verify=False)
    voices = sorted(synth.voices)
    times, rss = [], []
    for i in range(args.utterances):
        start = time.perf_counter()
        for _chunk in synth.stream(SENTENCES[i % len(SENTENCES)], voices[i % len(voices)], seed=i,
                                   max_frames=args.frames):
            pass
        times.append(time.perf_counter() - start)
        rss.append(rss_bytes() / 1e6)
    times = np.array(times) * 1e3
    tenth = max(1, len(times) // 10)
    slope = np.polyfit(np.arange(len(times)), times, 1)[0]
    peak = peak_rss_bytes() / 1e6
    print(f"{args.utterances} utterances of {args.frames} frames, {len(voices)} voices, {len(SENTENCES)} languages")
    print(f"RSS: {rss[0]:.1f} MB after the first, {rss[-1]:.1f} MB at the end ({rss[-1] - rss[0]:+.1f} MB), "
          f"peak {peak:.1f} MB")
    print(f"time per utterance: first tenth {times[:tenth].mean():.1f} ms, last tenth {times[-tenth:].mean():.1f} ms, "
          f"slope {slope:+.3f} ms per utterance ({slope * len(times) / times.mean():+.1%} over the run)")


if __name__ == "__main__":
    main()
