"""Footprint levers (issue 23): peak and resident memory, open time and frame time, each configuration in a
fresh process running `voxtral-edge bench`'s own measurement (`voxtral_edge.bench.run_bench`).

    python benchmarks/footprint.py --bundle BUNDLE [--bundle BUNDLE2 ...] [--variants default no-release ...]
                                   [--rounds 2] [--frames 25] [--threads 2] [--max-context 2048]
                                   [--before CHECKOUT]

Variants (default: default no-release parallel-open):

    default            the runtime as it is: every footprint option on
    no-release         release_mapped=False: the pages onnxruntime keeps mapped after packing stay resident
    parallel-open      parallel_open=True: tokenizer and codec session on a second thread
    parallel-prepack   + session.prepack.enable_parallel=1 (onnxruntime packs several weights at once)
    fp32-compute       + mlas.qnbit.force_fp32=1 (MatMulNBits' CompFp32 kernel, as accuracy level 0: other codes)
    no-arena           + enable_cpu_mem_arena=False
    no-mem-pattern     + enable_mem_pattern=False
    no-prepack         + session.disable_prepacking=1 (weights dequantized on every call: about 80 s per
                       backbone step at full size; use --frames 2 --repeats 1)
    saved-graphs       saved_graphs=True: this machine's saved optimized graphs (made on the first run, in
                       BUNDLE/optimized/: about 2.2x the bundle's data, see `voxtral-edge optimize`)
    before             the code of --before CHECKOUT (a checkout of an earlier commit), for a before/after
                       in one run

"open CPU s" is the CPU time of making the Synthesizer (every thread), "run CPU s" that of everything bench
does after it (warm-up, prefills, the streamed runs): the same work in every variant, so a ratio of CPU
seconds compares speed even on a busy machine. Every open is a second open: the bundle is hashed (verified
stamp) and its quantized kernels checked (the verdicts cached, `voxtral_edge.kernelcheck`) before the first
run. Rounds interleave the variants (round 1: every variant, then round 2: ...), so a busy machine's load
falls on all of them alike. Memory does not depend on the load; times do: compare them within one run only.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

CONFIG = {
    "parallel-prepack": {"entries": {"session.prepack.enable_parallel": "1"}},
    "fp32-compute": {"entries": {"mlas.qnbit.force_fp32": "1"}},
    "no-arena": {"attributes": {"enable_cpu_mem_arena": False}},
    "no-mem-pattern": {"attributes": {"enable_mem_pattern": False}},
    "no-prepack": {"entries": {"session.disable_prepacking": "1"}},
}
OPEN = {"no-release": {"release_mapped": False}, "parallel-open": {"parallel_open": True},
        "saved-graphs": {"saved_graphs": True}}
VARIANTS = ["default", "before", *OPEN, *CONFIG]

CHILD = r"""
import hashlib, inspect, json, sys, time
import numpy as np
from voxtral_edge import bench, runtime, sessions
opened, cpu = [], {}  # the Synthesizer bench opens (the codes of its last run) and the CPU time of its opening
init = runtime.Synthesizer.__init__
def recording_init(self, *args, **kwargs):
    opened.append(self)
    start = time.process_time()
    init(self, *args, **kwargs)
    cpu["open"], cpu["opened_at"] = time.process_time() - start, time.process_time()
runtime.Synthesizer.__init__ = recording_init
bundle, options, config = sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3])
if config:  # every session starts from session_options: add the variant's onnxruntime settings there
    plain = sessions.session_options
    def session_options(threads=None):
        o = plain(threads)
        for key, value in config.get("entries", {}).items():
            o.add_session_config_entry(key, value)
        for name, value in config.get("attributes", {}).items():
            setattr(o, name, value)
        return o
    sessions.session_options = session_options
accepted = inspect.signature(bench.run_bench).parameters  # an earlier checkout has fewer options
info, rows = bench.run_bench(bundle, **{k: v for k, v in options.items() if k in accepted})
codes = np.ascontiguousarray(opened[-1].last_result.codes, dtype=np.int64)
info["codes_sha256"] = hashlib.sha256(codes).hexdigest()[:16]
info["open_cpu_s"], info["run_cpu_s"] = cpu["open"], time.process_time() - cpu["opened_at"]
print(json.dumps({"info": info, "rows": {r.test.split(" (")[0].split(" pp")[0]: r.median for r in rows}}))
"""


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def measure(bundle: Path, variant: str, args: argparse.Namespace) -> dict:
    options = {"threads": args.threads, "frames": args.frames, "repeats": args.repeats,
               "max_context": args.max_context, "saved_graphs": False, **OPEN.get(variant, {})}
    env = dict(os.environ)
    if variant == "before":
        env["PYTHONPATH"] = str(Path(args.before, "src"))
    load = os.getloadavg()[0]
    out = subprocess.run([sys.executable, "-c", CHILD, str(bundle), json.dumps(options),
                          json.dumps(CONFIG.get(variant, {}))], capture_output=True, text=True, env=env)
    if out.returncode:
        raise SystemExit(f"{variant} on {bundle}: the measuring process failed:\n{out.stderr[-2000:]}")
    result = json.loads(out.stdout.strip().splitlines()[-1])
    result["loadavg"] = load
    return result


def disk_gb(bundle: Path, variant: str) -> float:
    files = [p for p in bundle.rglob("*") if p.is_file() and (variant == "saved-graphs" or "optimized" not in p.parts)]
    return sum(p.stat().st_size for p in files) / 1e9


def spread(values: list[float], digits: int) -> str:
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.median(values):.{digits}f} ({min(values):.{digits}f}-{max(values):.{digits}f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", action="append", required=True, help="a bundle (repeat for several)")
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=["default", "no-release", "parallel-open"])
    parser.add_argument("--rounds", type=int, default=2, help="runs of every variant, interleaved (default: 2)")
    parser.add_argument("--frames", type=int, default=25)
    parser.add_argument("--repeats", type=int, default=3, help="bench repeats inside each run (default: 3)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--max-context", type=int, default=2048)
    parser.add_argument("--before", metavar="CHECKOUT",
                        help="a checkout of an earlier commit, for the 'before' variant")
    args = parser.parse_args()
    if "before" in args.variants and not args.before:
        parser.error("the 'before' variant needs --before CHECKOUT")
    from voxtral_edge.manifest import Manifest
    from voxtral_edge.sessions import SessionSettings, kernel_config

    for bundle in args.bundle:  # hashed and its kernels checked here, so that no run's open pays for it
        manifest = Manifest.load(bundle)
        for graph in manifest["graphs"]:
            kernel_config(manifest, graph, SessionSettings(threads=args.threads))
    results: dict[tuple[str, str], list[dict]] = {}
    for r in range(args.rounds):
        for bundle in map(Path, args.bundle):
            for variant in args.variants:
                log(f"round {r + 1}: {bundle.name}, {variant}")
                results.setdefault((str(bundle), variant), []).append(measure(bundle, variant, args))
    first = next(iter(results.values()))[0]["info"]
    print(f"{first['cpu']}, {first['cores']} cores, threads {args.threads}, onnxruntime {first['onnxruntime']}, "
          f"voxtral-edge {first['commit']}, {time.strftime('%Y-%m-%d %H:%M')}, load average "
          f"{min(x['loadavg'] for v in results.values() for x in v):.1f}-"
          f"{max(x['loadavg'] for v in results.values() for x in v):.1f}; max context {args.max_context}, "
          f"{args.frames} frames x {args.repeats}, {args.rounds} rounds (median (min-max))\n")
    print("| bundle | plan | variant | peak RSS MB | anonymous MB | file MB | open s | open CPU s | frame ms | "
          "run CPU s | disk GB | codes |")
    print("| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
    for (bundle, variant), runs in results.items():
        rows = [x["rows"] for x in runs]
        codes = {x["info"].get("codes_sha256", "?") for x in runs}
        reference = {x["info"].get("codes_sha256") for x in results.get((bundle, "default"), [])}
        same = "same as default" if variant != "default" and codes == reference else ", ".join(sorted(codes))
        infos = [x["info"] for x in runs]
        print(f"| {Path(bundle).name} | {infos[0]['plan']} | {variant} | {spread([r['peak RSS'] for r in rows], 0)} | "
              f"{spread([r['RSS anonymous'] for r in rows], 0)} | {spread([r['RSS file'] for r in rows], 0)} | "
              f"{spread([r['load'] for r in rows], 2)} | {spread([i['open_cpu_s'] for i in infos], 2)} | "
              f"{spread([r['frame'] for r in rows], 1)} | {spread([i['run_cpu_s'] for i in infos], 1)} | "
              f"{disk_gb(Path(bundle), variant):.2f} | {same} |")


if __name__ == "__main__":
    main()
