"""The full-size benchmark: our bundles against llama.cpp on the same transformer shape, in one run.

    python benchmarks/run.py [--work work/bench] [--plans int8 int4 int4-all ...] [--frames 25]
                             [--repeats 3] [--threads 2] [--no-llama] [--here x86-avx512]

1. writes the full-size random-weight checkpoint once (cached in WORK/checkpoint, 8 GB);
2. exports one bundle per plan straight from it (cached; int4 is about 3.7 GB, fp32 15 GB);
3. measures llama.cpp Q4_0 on the backbone's shape (benchmarks/llama_cpp_baseline.py): LD, its decode
   ms/token, and its prefill tok/s;
4. runs `voxtral-edge bench --json` on every bundle, each in its own process so that peak RSS is that
   bundle's own, plus int4-all with 4 Euler steps (fp32 only when named in --plans: it needs 15 GB);
5. prints every row, then the ratios to llama.cpp beside the targets (time to first audio against
   text tokens / llama.cpp prefill + 1.5 LD), then `bench --estimate all` for int4 @ 7 and int4-all @ 4
   (calibrated on this run, --here names this machine's profile), and writes WORK/results.json.

Hosts of one kind differ up to 5x: only the ratios, measured in the same run, compare across machines.
Run it on an idle machine (anything else running costs both sides, llama.cpp's spinning threads most).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
# (plan, Euler steps) pairs measured; the whole-frame targets use int4 at 7 and int4-all at 4.
DEFAULT_RUNS = [("fp32", 7), ("int8", 7), ("int4", 7), ("int4-fast", 7), ("int4-all", 7), ("int4-all", 4),
                ("int4-all-fast", 4)]
ESTIMATED = [("int4", 7), ("int4-all", 4)]


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def voxtral(*args: str) -> str:
    return subprocess.run([sys.executable, "-m", "voxtral_edge.cli", *args], check=True, capture_output=True,
                          text=True).stdout


def prepare(work: Path, plans: list[str]) -> dict[str, Path]:
    from voxtral_edge.export.bundle import export_bundle
    from voxtral_edge.export.make_checkpoint import make_checkpoint

    checkpoint = work / "checkpoint"
    if not (checkpoint / "consolidated.safetensors").exists():
        log("writing the full-size checkpoint (8 GB, about a minute)")
        make_checkpoint(checkpoint, size="full", seed=0, force=True)
    bundles = {}
    for plan in plans:
        bundle = work / f"bundle-{plan}"
        if not (bundle / "manifest.json").exists():
            log(f"exporting the {plan} bundle")
            export_bundle(checkpoint, bundle, plan=plan, force=True)
        bundles[plan] = bundle
    return bundles


def bench(bundle: Path, steps: int, frames: int, repeats: int, threads: int | None, codec_pipeline: bool) -> dict:
    from voxtral_edge.manifest import Manifest

    context = min(2048, Manifest.load(bundle, verify=False)["model"]["backbone"]["max_context"])  # the 2048
    args = ["bench", "--bundle", str(bundle), "--json", "--steps", str(steps), "--frames", str(frames),
            "--repeats", str(repeats), "--max-context", str(context)]
    if threads:
        args += ["--threads", str(threads)]
    if codec_pipeline:
        args += ["--codec-pipeline"]
    rows = [json.loads(line) for line in voxtral(*args).splitlines() if line.strip()]
    return {r["test"].split(" (")[0].split(" pp")[0]: r for r in rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", default="work/bench", help="cache folder (default: work/bench)")
    parser.add_argument("--plans", nargs="+", help="plans to run (default: all, with int4-all at 7 and 4 steps)")
    parser.add_argument("--frames", type=int, default=25)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, help="threads for both sides (default: all cores)")
    parser.add_argument("--no-llama", action="store_true", help="skip llama.cpp (no ratios)")
    parser.add_argument("--codec-pipeline", action="store_true", help="bench with the codec on its own thread")
    parser.add_argument("--here", default="x86-avx512", help="this machine's device profile, for the estimates")
    args = parser.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    runs = [(p, s) for p, s in DEFAULT_RUNS if (p in args.plans if args.plans else p != "fp32")]
    bundles = prepare(work, sorted({p for p, _ in runs}))

    llama = None
    if not args.no_llama:
        sys.path.insert(0, str(HERE))
        from llama_cpp_baseline import measure

        log("measuring llama.cpp")
        llama = measure(work / "llama-baseline", threads=args.threads)
    results = []
    for plan, steps in runs:
        log(f"bench {plan}, {steps} steps")
        results.append({"plan": plan, "steps": steps, "rows": bench(bundles[plan], steps, args.frames,
                                                                   args.repeats, args.threads, args.codec_pipeline)})
    estimates = estimate(results, bundles, args.here)
    (work / "results.json").write_text(json.dumps({"llama_cpp": llama, "runs": results, "estimates": estimates},
                                                  indent=2) + "\n")
    report(results, llama, estimates)


def estimate(results: list[dict], bundles: dict[str, Path], here: str) -> dict:
    """`bench --estimate all` for the runs in ESTIMATED: calibrated on each run's own measurements."""
    from voxtral_edge.estimate import estimate_profiles
    from voxtral_edge.manifest import Manifest
    from voxtral_edge.profiles import list_profiles, load_profile

    out = {}
    for r in results:
        if (r["plan"], r["steps"]) not in ESTIMATED:
            continue
        x = r["rows"]
        measured = {"backbone_step": x["backbone"]["median"], "flow_head": x["flow head step"]["median"],
                    "codec_decoder": x["codec"]["median"]}
        factors, per_profile = estimate_profiles(Manifest.load(bundles[r["plan"]], verify=False).data,
                                                 load_profile(here), measured, list_profiles(), steps=r["steps"],
                                                 chunk_frames=x["load"].get("chunk_frames", 4))
        out[f"{r['plan']}@{r['steps']}"] = {"factors": factors, "profiles": {
            name: {k: e[k] for k in ("backbone_ms", "flow_step_ms", "flow_ms", "codec_ms", "frame_ms", "rtf",
                                     "codec_pipeline")} for name, e in per_profile.items()}}
    return out


def frame_ms(rows: dict) -> float:
    """One frame's time: the measured wall time per frame past the prefill, or (older rows) the sum of its
    backbone step, all its Euler steps and its codec share."""
    if "frame" in rows:
        return rows["frame"]["median"]
    return rows["backbone"]["median"] + rows["flow head"]["median"] + rows["codec"]["median"]


def report(results: list[dict], llama: dict | None, estimates: dict | None = None) -> None:
    first = results[0]["rows"]["load"]
    print(f"{first['cpu']}, {first['cores']} cores, threads {first['threads']}, onnxruntime {first['onnxruntime']}, "
          f"voxtral-edge {first['voxtral_edge']} ({first['commit']}), {first['date']}\n")
    print("| plan | steps | size GB | load s | prefill tok/s | backbone ms | flow ms/step | flow ms/frame | "
          "codec ms | first audio ms | frame ms | rtf | peak RSS MB |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in results:
        x = r["rows"]
        frame = frame_ms(x)
        print(f"| {r['plan']} | {r['steps']} | {x['load']['size_gb']:.2f} | {x['load']['median']:.1f} | "
              f"{x['prefill']['median']:.1f} | {x['backbone']['median']:.1f} | {x['flow head step']['median']:.1f} | "
              f"{x['flow head']['median']:.1f} | {x['codec']['median']:.1f} | {x['first audio']['median']:.0f} | "
              f"{frame:.1f} | {x['rtf']['median']:.2f} | {x['peak RSS']['median']:.0f} |")
    if not llama:
        return
    ld, pp = llama["decode_ms_per_token"], llama["prefill_tokens_per_s"]
    print(f"\nllama.cpp {llama['llama_cpp_version']} Q4_0, same shape, {llama['threads']} threads: "
          f"LD = {ld:.1f} ms/token decode, {pp:.1f} tok/s prefill\n")
    print("| plan | steps | backbone / LD (<= 1.0 int4) | prefill / llama.cpp (>= 1.0) | flow step / LD "
          "(int8 <= 0.18, int4 <= 0.14) | frame / LD (int4@7 <= 2.5, int4-all@4 <= 1.6) | first audio ms "
          "(target: tokens / pp + 1.5 LD) | load s | peak RSS MB |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in results:
        x = r["rows"]
        frame = frame_ms(x)
        tokens = x["load"].get("first_audio_tokens")
        target = f"{tokens / pp * 1e3 + 1.5 * ld:.0f}" if tokens else "?"
        print(f"| {r['plan']} | {r['steps']} | {x['backbone']['median'] / ld:.2f} | {x['prefill']['median'] / pp:.2f} | "
              f"{x['flow head step']['median'] / ld:.3f} | {frame / ld:.2f} | {x['first audio']['median']:.0f} "
              f"({target}, {tokens} tokens) | {x['load']['median']:.1f} | {x['peak RSS']['median']:.0f} |")
    for run, e in (estimates or {}).items():
        print(f"\n`bench --estimate all`, {run}, calibrated on this run (factors "
              + ", ".join(f"{k} {v:.2f}" for k, v in e["factors"].items()) + "):\n")
        print("| profile | backbone ms | flow ms/step | flow ms/frame | codec ms | frame ms | rtf |")
        print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
        for name, p in e["profiles"].items():
            print(f"| {name} | {p['backbone_ms']:.1f} | {p['flow_step_ms']:.1f} | {p['flow_ms']:.1f} | "
                  f"{p['codec_ms']:.1f}{' (beside)' if p['codec_pipeline'] else ''} | {p['frame_ms']:.1f} | "
                  f"{p['rtf']:.2f} |")


if __name__ == "__main__":
    main()
