"""The full-size benchmark: our bundles against llama.cpp on the same transformer shape, in one run.

    python benchmarks/run.py [--work work/bench] [--plans int8 int4 int4-all ...] [--frames 25]
                             [--repeats 3] [--threads 2] [--no-llama]

1. writes the full-size random-weight checkpoint once (cached in WORK/checkpoint, 8 GB);
2. exports one bundle per plan straight from it (cached; int4 is about 3.7 GB, fp32 15 GB);
3. measures llama.cpp Q4_0 on the backbone's shape (benchmarks/llama_cpp_baseline.py): LD, its decode
   ms/token, and its prefill tok/s;
4. runs `voxtral-edge bench --json` on every bundle, each in its own process so that peak RSS is that
   bundle's own, plus int4-all with 4 Euler steps (fp32 only when named in --plans: it needs 15 GB);
5. prints every row, then the ratios to llama.cpp beside the targets (time to first audio against
   text tokens / llama.cpp prefill + 1.5 LD), then our kernels against llama.cpp's on this machine (the
   kernel ratios of voxtral_edge.estimate) and `voxtral-edge estimate` on every profile for int4 @ 7 and
   int4-all @ 4, and writes WORK/results.json; each bench run's JSON lines are kept as
   WORK/bench-PLAN-STEPS.jsonl and llama.cpp's figures as WORK/llama.json, for `voxtral-edge estimate --from
   WORK/bench-int4-7.jsonl --llama WORK/llama.json`.

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


def bench(bundle: Path, steps: int, frames: int, repeats: int, threads: int | None, codec_pipeline: bool,
          keep: Path) -> dict:
    """`voxtral-edge bench --json` in its own process; its lines are kept in `keep`; returns {short test: row}."""
    from voxtral_edge.manifest import Manifest

    context = min(2048, Manifest.load(bundle, verify=False)["model"]["backbone"]["max_context"])  # the 2048
    args = ["bench", "--bundle", str(bundle), "--json", "--steps", str(steps), "--frames", str(frames),
            "--repeats", str(repeats), "--max-context", str(context)]
    if threads:
        args += ["--threads", str(threads)]
    if codec_pipeline:
        args += ["--codec-pipeline"]
    out = voxtral(*args)
    keep.write_text(out)
    rows = [json.loads(line) for line in out.splitlines() if line.strip()]
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
        (work / "llama.json").write_text(json.dumps(llama, indent=1) + "\n")
    results = []
    for plan, steps in runs:
        log(f"bench {plan}, {steps} steps")
        results.append({"plan": plan, "steps": steps, "rows": bench(bundles[plan], steps, args.frames, args.repeats,
                                                                   args.threads, args.codec_pipeline,
                                                                   work / f"bench-{plan}-{steps}.jsonl")})
    estimates = estimate(results, llama)
    (work / "results.json").write_text(json.dumps({"llama_cpp": llama, "runs": results, "estimates": estimates},
                                                  indent=2) + "\n")
    report(results, llama, estimates)


def estimate(results: list[dict], llama: dict | None) -> dict:
    """`voxtral-edge estimate` on every profile for the runs in ESTIMATED; with llama.cpp measured, our kernels
    against its own on this machine (voxtral_edge.estimate.kernel_ratios) first."""
    from voxtral_edge.bench import BenchRun
    from voxtral_edge.estimate import estimate_all, kernel_ratios
    from voxtral_edge.profiles import list_profiles

    out = {}
    for r in results:
        if (r["plan"], r["steps"]) not in ESTIMATED:
            continue
        info = {k: v for k, v in r["rows"]["load"].items() if k not in ("test", "unit", "median", "low", "high")}
        run = BenchRun(info=info, rows=r["rows"], source=f"bench-{r['plan']}-{r['steps']}.jsonl")
        kappa = kernel_ratios(run, llama) if llama else None
        found = estimate_all(run, list_profiles(), fresh_kappa=kappa, fresh_isa=run.isa if kappa else None)
        out[f"{r['plan']}@{r['steps']}"] = {"kernel_ratios": kappa, "estimates": [e.as_dict() for e in found]}
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
        ratios = e["kernel_ratios"]
        said = ", ".join(f"{k} {v:.2f}" for k, v in (ratios or {}).items())
        print(f"\n`voxtral-edge estimate`, {run}"
              + (f": kernel ratios on this machine (ours / llama.cpp's) {said}" if ratios else "") + "\n")
        print("| profile | frame ms (low..high) | RTF (low..high) | dominant stage, bound |")
        print("| --- | ---: | ---: | --- |")
        for p in e["estimates"]:
            print(f"| {p['device']} | {p['mid_ms']:.0f} ({p['low_ms']:.0f}..{p['high_ms']:.0f}) | {p['rtf']:.2f} "
                  f"({p['rtf_low']:.2f}..{p['rtf_high']:.2f}) | {p['dominant']}, {p['bound']} |")

if __name__ == "__main__":
    main()
