"""Is the KV cache copied per step? Time one backbone step at fixed positions with different cache sizes.

A step that copied the cache would cost time proportional to the buffer (max_context), whatever the
position; a step that writes in place costs attention work proportional to the position only. The
cache contents do not matter for the timing, so positions are reached by setting past_length, not by
running a prefill.

    python benchmarks/kv_cache.py --bundle BUNDLE [--contexts 256 1024 4096] [--repeats 20] [--threads N]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from voxtral_edge.runtime import Synthesizer


def step_ms(synth: Synthesizer, position: int, repeats: int) -> tuple[float, float]:
    x = np.random.default_rng(0).standard_normal((1, synth.manifest["model"]["backbone"]["dim"])).astype(np.float32)
    synth.backbone(x, position)  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        synth.backbone(x, position)
        times.append(1e3 * (time.perf_counter() - start))
    return statistics.median(times), min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", required=True)
    parser.add_argument("--contexts", type=int, nargs="+", default=[256, 1024, 4096])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--threads", type=int)
    args = parser.parse_args()
    manifest_max = None
    print(f"{'max_context':>11} {'position':>8} {'ms/step median':>15} {'min':>8} {'KV buffer MB':>12}")
    for context in args.contexts:
        synth = Synthesizer.open(args.bundle, threads=args.threads, max_context=context, verify=False)
        manifest_max = synth.manifest["model"]["backbone"]["max_context"]
        mb = sum(4 * int(np.prod(v.shape())) for v in synth._kv_cache()) / 1e6
        for position in sorted({10, context // 2, context - 10}):
            median, best = step_ms(synth, position, args.repeats)
            print(f"{context:>11} {position:>8} {median:>15.2f} {best:>8.2f} {mb:>12.1f}")
        del synth
    print(f"(bundle max_context {manifest_max})")


if __name__ == "__main__":
    main()
