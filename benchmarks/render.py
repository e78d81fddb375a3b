"""Catalog rendering throughput: the same small catalog with 1 and 2 local workers and on a local Ray
cluster, then what a fleet-size catalog would take on N such nodes.

    python benchmarks/render.py --bundle BUNDLE --work DIR [--items 6] [--frames 25] [--ray-workers 2]
                                [--no-ray] [--clip-s 2.5] [--voices 20] [--languages 9] [--phrases 500]

Each configuration renders into its own empty folder (nothing is skipped) and is timed from the start of
its first worker (opening the bundle included) to the last clip. With random weights the model never
ends an utterance, so every clip is --frames long; the extrapolation scales the measured cost per frame
of audio to clips of --clip-s seconds. Run alone: the figures are as noisy as the machine is shared.
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
from pathlib import Path

from voxtral_edge.manifest import Manifest
from voxtral_edge.render import Settings, render
from voxtral_edge.machine import usable_cores

PHRASES = ["Turn left in two hundred metres.", "Keep right at the fork.", "Speed camera ahead.",
           "Recalculating the route.", "Take the second exit.", "Your destination is on the right."]


def write_catalog(path: Path, voices: list[str], items: int) -> Path:
    """`items` short phrases, the voices taken in turn (so workers meet more than one voice)."""
    with open(path, "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "text", "voice"])
        for i in range(items):
            writer.writerow([f"p{i:03d}", PHRASES[i % len(PHRASES)], voices[i % len(voices)]])
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", required=True)
    parser.add_argument("--work", required=True, help="folder for the catalog and the outputs (replaced)")
    parser.add_argument("--items", type=int, default=6)
    parser.add_argument("--frames", type=int, default=25, help="frames per clip (80 ms each)")
    parser.add_argument("--voices-used", type=int, default=2, help="voices in the small catalog")
    parser.add_argument("--ray-workers", type=int, default=2)
    parser.add_argument("--no-ray", action="store_true")
    parser.add_argument("--clip-s", type=float, default=2.5, help="mean clip length assumed for the fleet catalog")
    parser.add_argument("--voices", type=int, default=20)
    parser.add_argument("--languages", type=int, default=9)
    parser.add_argument("--phrases", type=int, default=500)
    args = parser.parse_args()

    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    manifest = Manifest.load(args.bundle, verify=False)
    voices = sorted(manifest["voices"])[:args.voices_used]
    catalog = write_catalog(work / "catalog.csv", voices, args.items)
    settings = Settings(max_frames=args.frames)
    runs = [("local", 1), ("local", 2)] + ([] if args.no_ray else [("ray", args.ray_workers)])
    print(f"bundle {args.bundle} ({manifest['quantization'].get('plan', '?')}), {usable_cores()} cores, "
          f"{args.items} items of {args.frames} frames ({args.frames * 0.08:.1f} s), voices {', '.join(voices)}\n")
    print("| backend | workers | threads each | wall s | of which start s | audio s | items/s | audio s per wall s "
          "| audio s per render s | peak worker RSS GB |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    results = []
    for backend, workers in runs:
        s = render(catalog, args.bundle, work / f"{backend}-{workers}", settings=settings, workers=workers,
                   ray=backend == "ray", verify=False, progress=False)
        threads = 1 if backend == "ray" else max(1, usable_cores() // workers)
        render_s = s.wall_s - s.startup_s
        print(f"| {backend} | {s.workers} | {threads} | {s.wall_s:.1f} | {s.startup_s:.1f} | {s.audio_s:.1f} | "
              f"{s.items_per_s:.3f} | {s.audio_s / s.wall_s:.3f} | {s.audio_s / render_s:.3f} | "
              f"{s.peak_rss / 1e9:.2f} |", flush=True)
        results.append((backend, s))
    indexes = {(work / f"{b}-{s.workers}" / "index.jsonl").read_bytes() for b, s in results}
    print(f"\nindex.jsonl identical across the {len(results)} runs: {len(indexes) == 1}")

    # the fleet catalog: audio seconds to make, at the best measured pace of one node
    clips = args.voices * args.languages * args.phrases
    audio_s = clips * args.clip_s
    best = max(results, key=lambda r: r[1].audio_s / (r[1].wall_s - r[1].startup_s))[1]
    node_pace = best.audio_s / (best.wall_s - best.startup_s)  # audio s per wall s, start-up excluded
    print(f"\n{args.voices} voices x {args.languages} languages x {args.phrases} phrases = {clips} clips of "
          f"{args.clip_s} s = {audio_s / 3600:.1f} h of audio; one node like this one makes "
          f"{node_pace:.3f} audio s per s ({best.workers} {best.backend} workers)")
    print("\n| nodes | hours | clips per hour |")
    print("| ---: | ---: | ---: |")
    for nodes in (1, 10, 50, 100, 500):
        hours = audio_s / (nodes * node_pace) / 3600 + best.startup_s / 3600
        print(f"| {nodes} | {hours:.1f} | {clips / hours:.0f} |")
    (work / "results.json").write_text(json.dumps(
        [{"backend": b, "workers": s.workers, "wall_s": s.wall_s, "startup_s": s.startup_s, "audio_s": s.audio_s,
          "items": s.rendered, "peak_rss": s.peak_rss} for b, s in results], indent=1))


if __name__ == "__main__":
    main()
