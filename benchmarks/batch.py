"""Batching: `bench --batch B` for B = 1, 2, 4, 8 on each bundle, taken in turns round after round (so that a
machine whose load changes during the run changes every B alike), one process per run (for its peak RSS).

    python benchmarks/batch.py --bundle work/bench/bundle-int4 --steps 7 --bundle work/bench/bundle-int4-all --steps 4
    python benchmarks/batch.py ... --batches 1 2 4 8 --rounds 2 --frames 12 --threads 2 --max-context 512
    python benchmarks/batch.py --bundle work/bench/bundle-int4-all --steps 4 --article benchmarks/data/article.txt \
        --batches 1 4 --article-max-context 340

Prints one markdown row per bundle and B: aggregate frames/s (all B utterances' frames after the first step,
which prefills every row, / the time since: `bench`'s definition) and its ratio to B = 1, the per-frame latency of one row (80 ms is real time), the aggregate
real-time factor, and the peak RSS of the process (its growth over B = 1 is the KV cache's rows and the
batch's buffers). Medians over the rounds; `--json FILE` keeps every run's rows.

With `--article FILE`, instead: `say FILE --batch B` on the first bundle for each B (its sentences B at a time;
B = 1 is `say` as it was, the text in pieces one after the other), and its wall time against the audio's
length. The weights being random, no sentence ends by itself: `--article-max-context` leaves each sentence
the room its prompt leaves (about 155 frames, 12 s, at 340 positions with casual_male: each of
the 10 sentences is then one prompt).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path


def bench(bundle: str, steps: int, batch: int, args) -> dict[str, dict]:
    command = [sys.executable, "-m", "voxtral_edge.cli", "bench", "--bundle", bundle, "--steps", str(steps), "--batch",
               str(batch), "--frames", str(args.frames), "--repeats", "1", "--json", "--no-verify"]
    if args.threads:
        command += ["--threads", str(args.threads)]
    if args.max_context:
        command += ["--max-context", str(args.max_context)]
    out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    return {row["test"]: row for row in map(json.loads, out.splitlines())}


def article(bundle: str, steps: int, batch: int, args) -> dict:
    import re
    import time

    command = [sys.executable, "-m", "voxtral_edge.cli", "say", "-", "--bundle", bundle, "--voice", args.voice,
               "--steps", str(steps), "--batch", str(batch), "--seed", "0", "--no-verify", "-o", "/dev/null",
               "--max-context", str(args.article_max_context)]
    if args.threads:
        command += ["--threads", str(args.threads)]
    start = time.perf_counter()
    run = subprocess.run(command, input=Path(args.article).read_bytes(), capture_output=True, check=True)
    wall = time.perf_counter() - start  # the process: open, normalize, every sentence, the file
    line = [x for x in run.stderr.decode().splitlines() if x.startswith("wrote ")][-1]
    audio = float(re.search(r": ([0-9.]+) s of audio", line).group(1))
    return {"batch": batch, "wall_s": wall, "audio_s": audio, "report": line}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bundle", action="append", required=True, help="a bundle (repeat, each with its --steps)")
    p.add_argument("--steps", action="append", type=int, required=True, help="Euler steps for the bundle before")
    p.add_argument("--batches", type=int, nargs="+", default=[1, 2, 4, 8])
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--frames", type=int, default=16, help="frames per utterance (default: 16)")
    p.add_argument("--threads", type=int)
    p.add_argument("--max-context", type=int, default=512)
    p.add_argument("--json", metavar="FILE", help="also write every run's rows here")
    p.add_argument("--article", metavar="FILE", help="time `say FILE --batch B` instead (see above)")
    p.add_argument("--voice", default="casual_male", help="the article's voice (default: casual_male)")
    p.add_argument("--article-max-context", type=int, default=340)
    args = p.parse_args()
    if len(args.bundle) != len(args.steps):
        p.error("give one --steps per --bundle")
    if args.article:
        print("| bundle | steps | B | wall s | audio s | wall / audio |")
        print("| --- | ---: | ---: | ---: | ---: | ---: |")
        for batch in args.batches:
            r = article(args.bundle[0], args.steps[0], batch, args)
            print(f"| {Path(args.bundle[0]).name} | {args.steps[0]} | {batch} | {r['wall_s']:.1f} | "
                  f"{r['audio_s']:.1f} | {r['wall_s'] / r['audio_s']:.2f} |", flush=True)
            print(r["report"], file=sys.stderr, flush=True)
        return 0
    runs: dict[tuple[str, int], list[dict]] = {}
    for r in range(args.rounds):
        for bundle, steps in zip(args.bundle, args.steps):
            for batch in args.batches:
                rows = bench(bundle, steps, batch, args)
                runs.setdefault((bundle, batch), []).append(rows)
                print(f"round {r + 1}: {Path(bundle).name} @ {steps}, batch {batch}: "
                      f"{rows['frames/s (aggregate)']['median']:.2f} frames/s", file=sys.stderr, flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({f"{Path(b).name} batch {n}": v for (b, n), v in runs.items()}, indent=1))
    info = next(iter(runs.values()))[0]["frames/s (aggregate)"]
    print(f"{info['cpu']}, {info['cores']} cores, threads {info['threads']}, onnxruntime {info['onnxruntime']}, "
          f"voxtral-edge {info['voxtral_edge']} ({info['commit']}), {info['date']}; {args.rounds} rounds, "
          f"{args.frames} frames per utterance, max context {args.max_context}\n")
    print("| bundle | plan | steps | B | frames/s (aggregate) | x B=1 | frame, one row ms | rtf (aggregate) | "
          "peak RSS MB |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for bundle, steps in zip(args.bundle, args.steps):
        base = None
        for batch in args.batches:
            rows = runs[(bundle, batch)]
            fps = statistics.median(r["frames/s (aggregate)"]["median"] for r in rows)
            base = base or fps
            row_ms = statistics.median(r[f"frame, one row of {batch}"]["median"] for r in rows)
            rtf = statistics.median(r["rtf (aggregate)"]["median"] for r in rows)
            rss = max(r["peak RSS"]["median"] for r in rows)
            plan = rows[0]["frames/s (aggregate)"]["plan"]
            print(f"| {Path(bundle).name} | {plan} | {steps} | {batch} | {fps:.2f} | {fps / base:.2f} | {row_ms:.0f} | "
                  f"{rtf:.2f} | {rss:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
