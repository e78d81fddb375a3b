"""Open -> ready to speak, and memory at full context: the figures a head unit's boot decides on.

Each measure is a fresh process, which opens the bundle (`Synthesizer.open`: manifest check with the
verified stamp, sessions), speaks a few frames (the first audio), then writes the whole KV cache (as a
context of `--max-context` positions would) and reports resident memory:

    first open    no stamp, no saved graphs: every file hashed, every graph optimized and saved
    cold          page cache dropped first (`sync; echo 3 > /proc/sys/vm/drop_caches`, needs root)
    warm          the bundle's files already in the page cache
  each with the saved optimized graphs ("saved") and without them (`saved_graphs=False`, "plain").

    python benchmarks/startup.py --bundle BUNDLE [--max-context 2048] [--threads N] [--no-cold]
                                 [--graphs saved plain] [--keep]

Resident memory splits into anonymous (private heap: packed weights onnxruntime made, KV cache,
buffers) and file-backed (mapped weights and embeddings: clean pages the kernel can drop and re-read).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

CHILD = r"""
import json, sys, time
start = time.perf_counter()
from voxtral_edge.runtime import Synthesizer
from voxtral_edge.machine import peak_rss_bytes, resident_memory
bundle, max_context, threads, cached = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4] == "1"
imported = time.perf_counter()
synth = Synthesizer.open(bundle, max_context=max_context, threads=int(threads) or None, saved_graphs=cached)
opened = time.perf_counter()
voice = sorted(synth.voices)[0]
first = None
for chunk in synth.stream("Turn left now.", voice, seed=0, max_frames=3, chunk_frames=1):
    first = first or time.perf_counter()
for a in synth.kv_cache:  # as a context of max_context positions leaves it
    a.fill(0.0)
memory = resident_memory()
peak = peak_rss_bytes() / 1e6
print(json.dumps({"import_s": imported - start, "open_s": opened - imported, "first_audio_s": first - opened,
                  "peak_rss_mb": peak, **{f"rss_{k}_mb": v for k, v in memory.items()}}))
"""


def drop_caches() -> None:
    subprocess.run(["sync"], check=True)
    Path("/proc/sys/vm/drop_caches").write_text("3\n")


def measure(bundle: Path, max_context: int, threads: int, cached: bool) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, str(bundle), str(max_context), str(threads or 0),
                          "1" if cached else "0"], check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", required=True)
    parser.add_argument("--max-context", type=int, default=2048)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--no-cold", action="store_true", help="skip the cold runs (they need root)")
    parser.add_argument("--keep", action="store_true", help="keep the saved graphs and stamp: no first-open run")
    parser.add_argument("--graphs", nargs="+", choices=["saved", "plain"], default=["saved", "plain"],
                        help="which sessions to measure (default: both)")
    args = parser.parse_args()
    bundle = Path(args.bundle)
    from voxtral_edge.manifest import verified_stamp_path
    from voxtral_edge.optimized import cache_folders

    runs = []
    if not args.keep:
        for folder in cache_folders(bundle):
            shutil.rmtree(folder, ignore_errors=True)
        verified_stamp_path(bundle).unlink(missing_ok=True)
        runs.append(("first open", "saved" in args.graphs, False))
    for cached in [g == "saved" for g in args.graphs]:
        if not args.no_cold:
            runs.append(("cold", cached, True))
        runs.append(("warm", cached, False))
    print(f"{bundle} (max context {args.max_context}, threads {args.threads or 'default'}), "
          f"{time.strftime('%Y-%m-%d %H:%M')}")
    print("| run | graphs | open s | first audio s | peak RSS MB | anonymous MB | file-backed MB |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: |")
    for label, cached, cold in runs:
        if cold:
            drop_caches()
        r = measure(bundle, args.max_context, args.threads, cached)
        print(f"| {label} | {'saved' if cached else 'plain'} | {r['open_s']:.2f} | {r['first_audio_s']:.2f} | "
              f"{r['peak_rss_mb']:.0f} | {r['rss_anonymous_mb']:.0f} | {r['rss_file_mb']:.0f} |", flush=True)


if __name__ == "__main__":
    main()
