"""Measuring and checking: `bench` (llama-bench-style rows, device estimates), `devices`, `verify`,
`optimize`, `doctor` (this machine, onnxruntime, and whether its quantized kernels give the known answers)."""

from __future__ import annotations

import argparse
import sys

from .common import add_bundle_options, add_command, apply_profile, bundle_settings, positive


def devices(args: argparse.Namespace) -> int:
    from ..profiles import list_profiles

    for p in list_profiles():
        print(f"{p.name:24s} {p.plan:8s} {p.threads:2d} threads  {p.memory_bandwidth_gbs:6.1f} GB/s  "
              f"{', '.join(p.providers):10s} {p.description}")
    return 0


def add_devices(sub) -> None:
    add_command(sub, "devices", devices, "list the shipped device profiles",
                "List the device profiles shipped with voxtral-edge (src/voxtral_edge/devices/*.toml): their "
                "quantization plan, threads, memory bandwidth and execution providers. `--profile NAME|FILE` "
                "applies one to say, bench, serve and export.")


def bench(args: argparse.Namespace) -> int:
    from .. import bench as measure

    apply_profile(args)
    info, rows = measure.run_bench(args.bundle, steps=args.steps, cfg_alpha=args.cfg, frames=args.frames,
                                   repeats=args.repeats, chunk_frames=args.chunk_frames,
                                   **bundle_settings(args))  # every bundle option, --allow-fallback and --soc too
    print(measure.to_json_lines(info, rows) if args.json else measure.to_markdown(info, rows))
    if args.plot:
        print(f"wrote {measure.plot(info, rows, args.plot)}", file=sys.stderr)
    if args.estimate:
        from ..bench import BenchRun

        from ..manifest import Manifest
        from ..profiles import list_profiles, load_profile

        out = sys.stderr if args.json else sys.stdout
        manifest = Manifest.load(args.bundle, verify=False).data
        if not any("htp" in g for g in manifest["graphs"].values()):  # the CPU's and the NPU plans' estimates
            run = BenchRun(info=info, rows={r.test: {"median": r.median} for r in rows}, source="this run")
            print_estimates([run], args.estimate, out=out)
        else:  # a bundle in the NPU form: its own graphs priced on the NPU (the CPU estimate knows no such graph)
            targets = list_profiles() if args.estimate == "all" else [load_profile(args.estimate)]
            print_npu_estimates(manifest, targets, steps=info["steps"], out=out)
    return 0


def add_bench(sub) -> None:
    p = add_command(
        sub, "bench", bench, "measure a bundle, llama-bench style (markdown or JSON lines)",
        "Open a bundle and synthesize a fixed sentence several times; print one row per measure with its "
        "median and spread: load time, prefill tok/s, backbone / flow head / codec ms per frame, flow head ms "
        "per Euler step, time to first audio, real-time factor, peak RSS; with the machine, thread count, "
        "onnxruntime version, bundle plan and git commit; then --batch B utterances made together (B = 1 by "
        "default): their aggregate frames/s, each one's per-frame latency and their real-time factor. With "
        "--estimate, estimate a frame's time on device profiles for this bundle, plan and steps, as "
        "`voxtral-edge estimate` does from a saved run.",
        "examples:\n  voxtral-edge bench --bundle voxtral-int4\n"
        "  voxtral-edge bench --bundle voxtral-int4 --json --plot frame.png\n"
        "  voxtral-edge bench --bundle voxtral-int4 --batch 4 --json   (frames/s (aggregate) for 4 together)\n"
        "  voxtral-edge bench --bundle voxtral-int4 --estimate raspberry-pi-5   (or --estimate all)")
    p.add_argument("--bundle", required=True, metavar="DIR", help="bundle folder")
    p.add_argument("--frames", type=positive(int), default=25, help="frames per run (default: 25, 2 s)")
    p.add_argument("--repeats", type=positive(int), default=3, help="runs (default: 3)")
    p.add_argument("--json", action="store_true", help="JSON lines instead of a markdown table")
    p.add_argument("--plot", metavar="FILE.png", help="also draw where a frame's time goes (needs matplotlib)")
    p.add_argument("--estimate", metavar="PROFILE|all",
                   help="also estimate a frame's time on this device profile (or all), see `voxtral-edge estimate`")
    add_bundle_options(p)


def print_estimates(runs, device: str, *, plans=None, llama=None, isa=None, json_lines=False, sources=False,
                    plot_path=None, out=None) -> list:
    """Estimate every run on `device` (a profile name or file, or "all") and print them to `out`; returns them."""
    import json

    from ..errors import UsageError
    from ..estimate import estimate_all, kernel_ratios, plot, to_markdown
    from ..estimate_npu import NPU_PLANS, npu_estimates
    from ..profiles import list_profiles, load_profile

    profiles = list_profiles() if device == "all" else [load_profile(device)]
    out = out or sys.stdout
    estimates = []
    for run in runs:
        fresh = fresh_isa = None
        if llama is not None:
            fresh_isa = isa or run.isa
            if not fresh_isa:
                raise UsageError(f"{run.source}: the run does not say its instruction set (saved before issue 24): "
                                 f"give --isa with --llama")
            fresh = kernel_ratios(run, llama)
            print(f"{run.plan}@{run.steps}: kernel ratios on this host ({fresh_isa}), ours / llama.cpp's: "
                  + ", ".join(f"{g} {k:.2f}" for g, k in fresh.items()), file=sys.stderr)
        cpu = estimate_all(run, profiles, fresh_kappa=fresh, fresh_isa=fresh_isa)
        estimates += cpu + [e for p, c in zip(profiles, cpu) if p.npu is not None for e in npu_estimates(run, p, c)]
    chosen = [e for e in estimates if not plans or e.plan in plans or f"{e.plan}@{e.steps}" in plans]
    if not chosen:
        raise UsageError(f"--plan {' '.join(plans)}: the runs are of {', '.join(f'{r.plan}@{r.steps}' for r in runs)}"
                         f" (and the NPU plans {', '.join(NPU_PLANS)} on the profiles with an [npu] section)")
    estimates = sorted(chosen, key=lambda e: e.plan in NPU_PLANS)  # the CPU's rows first
    if json_lines:
        for e in estimates:
            print(json.dumps(e.as_dict()), file=out)
    else:
        print(to_markdown(estimates, sources=sources), file=out)
    if plot_path:
        print(f"wrote {plot(estimates, plot_path)}", file=sys.stderr)
    return estimates


def print_npu_estimates(manifest: dict, targets: list, steps: int, out=None) -> None:
    """For the profiles with an [npu] section, a frame's estimated time on the NPU (voxtral_edge.estimate_npu):
    every graph there, and the flow head and codec there (the backbone on the CPU comes on top)."""
    from ..estimate_npu import npu_frame_estimate

    with_npu = [t for t in targets if t.npu is not None]
    if not with_npu:
        return
    out = out or sys.stdout
    print("\nNPU, an estimate from a published decoder measurement on the same HTP class (not measured here):",
          file=out)
    print("\n| profile | placement | backbone ms | flow ms/frame | codec ms | frame ms | rtf | rests on |", file=out)
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | --- |", file=out)
    for t in with_npu:
        for e in npu_frame_estimate(manifest, t, steps=steps, chunk_frames=t.chunk_frames).values():
            backbone = "(CPU)" if e["backbone_ms"] is None else f"{e['backbone_ms']:.1f}"
            print(f"| {t.name} | {e['where']} | {backbone} | {e['flow_ms']:.1f} | {e['codec_ms']:.1f} | "
                  f"{e['frame_ms']:.1f} | {e['rtf']:.2f} | {e['reference']}, {e['ms_per_gb']:.0f} ms/GB |", file=out)


def estimate(args: argparse.Namespace) -> int:
    import json

    from ..bench import read_runs
    from ..estimate import read_llama, validate

    if args.validate:
        from ..profiles import list_profiles, reference_devices

        rows = validate([p.hardware for p in list_profiles()] + reference_devices())
        if args.json:
            for r in rows:
                print(json.dumps(r))
            return 0
        print("| device | model | threads | published tok/s | predicted (range) | error | bound | status, source |")
        print("| --- | --- | ---: | ---: | ---: | ---: | --- | --- |")
        for r in rows:
            flag = "" if abs(r["error"]) <= 0.2 else " **fail**"
            print(f"| {r['device']} | {r['model']} | {r['threads']} | {r['published']:.2f} | {r['predicted']:.2f} "
                  f"({r['low']:.2f}..{r['high']:.2f}) | {r['error']:+.0%}{flag} | {r['bound']} | {r['status']}, "
                  f"{r['source']} |")
        inside = sum(abs(r["error"]) <= 0.2 for r in rows)
        print(f"\n{inside} of {len(rows)} within 20 %; "
              f"{sum(r['low'] <= r['published'] <= r['high'] for r in rows)} of {len(rows)} inside their range")
        return 0
    if not args.runs:
        from ..errors import UsageError

        raise UsageError("estimate: give --from BENCH.json (a saved `voxtral-edge bench --json` run), or --validate")
    runs = [run for path in args.runs for run in read_runs(path)]
    llama = read_llama(args.llama) if args.llama else None
    print_estimates(runs, args.device, plans=args.plan, llama=llama, isa=args.isa, json_lines=args.json,
                    sources=args.sources, plot_path=args.plot)
    return 0


def add_estimate(sub) -> None:
    from ..profiles import ISAS

    p = add_command(
        sub, "estimate", estimate, "a frame's time on device profiles, from a saved bench run, as a range",
        "Estimate the time of one 80 ms frame, and the real-time factor, on device profiles for the bundle, plan, "
        "Euler steps and chunk size of a saved `voxtral-edge bench --json` run; no bundle is needed. Each estimate "
        "is a range (low..high) with its middle, the stage that dominates and whether it is memory- or "
        "compute-bound, and where every figure comes from (--sources). The device's speed comes from its "
        "datasheet and the llama.cpp runs published for it, or for devices of its class: the machine that ran "
        "bench does not enter, so runs from different machines give the same estimates. With --llama (the "
        "llama.cpp yardstick measured on the same machine as the run) the run also measures how our kernels "
        "compare with llama.cpp's on its instruction set, which the devices of that set then use. "
        "Profiles with an [npu] section (a Qualcomm Hexagon NPU) also get the NPU plans w8a16, w4a16 and "
        "int4-w8a16 (the backbone on the CPU), priced from published decoder runs on the same NPU class "
        "(voxtral_edge.estimate_npu; docs/deploy-qnn.md). "
        "--validate prints the held-out check instead: each device with a published llama.cpp run predicted "
        "from the other devices alone. The model and its limits: voxtral_edge.estimate and benchmarks/README.md.",
        "examples:\n  voxtral-edge bench --bundle voxtral-int4 --json > int4.jsonl\n"
        "  voxtral-edge estimate --from int4.jsonl                    (every shipped profile)\n"
        "  voxtral-edge estimate --from int4.jsonl --device qualcomm-sa8295p --sources\n"
        "  voxtral-edge estimate --from runs.jsonl --plan int4-all@4 --json\n"
        "  voxtral-edge estimate --from int4.jsonl --llama llama.json --plot frames.png\n"
        "  voxtral-edge estimate --validate")
    p.add_argument("--from", dest="runs", action="append", metavar="BENCH.json",
                   help="a file of `voxtral-edge bench --json` lines (one run or several; runs saved before this "
                        "version read too); may be repeated")
    p.add_argument("--device", default="all", metavar="PROFILE|all",
                   help="a shipped profile's name or a profile file (default: all shipped profiles)")
    p.add_argument("--plan", nargs="+", metavar="PLAN[@STEPS]",
                   help="only the estimates of these plans (e.g. int4 int4-all@4 w8a16@7)")
    p.add_argument("--llama", metavar="FILE", help="llama.cpp on the same machine as the run: the output of "
                   "benchmarks/llama_cpp_baseline.py --json, or WORK/llama.json or results.json of benchmarks/run.py")
    p.add_argument("--isa", choices=ISAS, help="the run's instruction set, for a run saved before it was recorded")
    p.add_argument("--json", action="store_true", help="one JSON line per device and plan instead of a table")
    p.add_argument("--sources", action="store_true", help="list where each estimate's figures come from")
    p.add_argument("--plot", metavar="FILE.png", help="also draw frame time by device and plan with the 80 ms line "
                   "(needs matplotlib)")
    p.add_argument("--validate", action="store_true", help="print the held-out check of the device model instead")


def verify(args: argparse.Namespace) -> int:
    from ..manifest import verify_bundle

    report = verify_bundle(args.bundle, progress=True)
    print(f"{args.bundle}: all {report['files']} files match the manifest ({report['bytes'] / 1e9:.2f} GB hashed in "
          f"{report['seconds']:.1f} s); stamp renewed")
    return 0


def add_verify(sub) -> None:
    p = add_command(
        sub, "verify", verify, "hash every file of a bundle against its manifest (the full check)",
        "Hash every file of BUNDLE and compare it with the sha256 its manifest lists, whatever the verified "
        "stamp says; exit 1 naming the first file that differs. Opening a bundle (say, bench, Python) hashes "
        "only the files whose size, mtime, ctime or inode changed since they last matched; this command also "
        "finds what that cannot see (a change that kept all four, such as bit rot on the disk). It renews "
        "the stamp.",
        "example:\n  voxtral-edge verify voxtral-int4")
    p.add_argument("bundle", metavar="BUNDLE", help="bundle folder")


def optimize(args: argparse.Namespace) -> int:
    from ..sessions import optimize_bundle

    for name, r in optimize_bundle(args.bundle, threads=args.threads).items():
        print(f"{name}: {'made' if r['made'] else 'already saved'}, {r['mb']:.0f} MB in {r['path']} "
              f"({r['seconds']:.1f} s)")
    return 0


def add_optimize(sub) -> None:
    p = add_command(
        sub, "optimize", optimize, "save this machine's optimized graphs of a bundle, with packed weights to map",
        "Have onnxruntime optimize each graph of BUNDLE for this machine and save it with its packed weights, "
        "so that later opens neither optimize the graphs nor keep the packed weights on the heap (they are "
        "memory-mapped: clean pages the kernel can reclaim; 3.2 GB for int4). It does not shorten the start "
        "with onnxruntime 1.32, which packs each weight again at load to check the saved ones, and costs disk "
        "(6 GB for int4), hence opt-in. The saved graphs go to BUNDLE/optimized/<machine key>/ (or the user cache, "
        "$VOXTRAL_EDGE_CACHE or ~/.cache/voxtral-edge, when BUNDLE cannot be written); they suit this CPU and "
        "this onnxruntime only, and are made again when either, or the bundle, changes. Delete that folder to "
        "reclaim the space; `say --no-saved-graphs` ignores them.",
        "example:\n  voxtral-edge optimize voxtral-int4")
    p.add_argument("bundle", metavar="BUNDLE", help="bundle folder")
    p.add_argument("--threads", type=positive(int), help="onnxruntime threads")


def plan_kernels() -> dict:
    """The quantized kernel families of the named plans -> "plan graph" names using each."""
    from ..kernelcheck import Family
    from ..manifest import BATCHED_GRAPHS
    from ..quant.plans import GRAPHS, NAMED_PLANS

    found: dict = {}
    for plan in NAMED_PLANS.values():
        for graph in GRAPHS:
            g = plan.graph(graph)
            for spec in ([g.spec] if g.spec else []) + [spec for _, spec in g.overrides]:
                if spec.method == "qdq":  # the NPU form: no CPU kernel of these families
                    continue
                if spec.method == "dynamic-int8":  # quantized per utterance in the graphs with a batch dimension
                    family = Family("MatMulInteger" if graph in BATCHED_GRAPHS else "DynamicQuantizeMatMul")
                else:
                    family = Family("MatMulNBits", spec.bits, spec.block_size, spec.accuracy_level,
                                    not spec.symmetric)
                users = found.setdefault(family, [])
                if f"{plan.name} {graph}" not in users:
                    users.append(f"{plan.name} {graph}")
    return dict(sorted(found.items(), key=lambda item: (item[0].op_type, item[0].bits, item[0].block_size,
                                                        item[0].accuracy_level, item[0].zero_points)))


def doctor(args: argparse.Namespace) -> int:
    import json
    import platform

    import onnxruntime as ort

    from .. import __version__
    from ..kernelcheck import TOLERANCE
    from ..machine import cpu_features, cpu_model, usable_cores
    from ..manifest import Manifest
    from ..sessions import KERNELS, bundle_kernels, kernel_report

    if args.bundle:
        families, source = bundle_kernels(Manifest.load(args.bundle, verify=False)), f"the bundle {args.bundle}"
    else:
        families, source = plan_kernels(), "the named plans"
    cpu = cpu_features()
    spent = KERNELS.seconds
    rows = kernel_report(families, threads=args.threads)
    spent = KERNELS.seconds - spent
    build = ort.get_build_info() if hasattr(ort, "get_build_info") else ""
    usable = all(any(t["passed"] for t in row["tried"]) for row in rows)
    if args.json:
        print(json.dumps({"voxtral_edge": __version__, "python": platform.python_version(), "system": platform.system(),
                          "cpu": cpu_model(), "cores": usable_cores(), "machine": cpu.machine,
                          "features": list(cpu.features), "absent": list(cpu.absent), "cpu_raw": cpu.raw,
                          "onnxruntime": ort.__version__, "onnxruntime_build": build,
                          "providers": ort.get_available_providers(), "threads": args.threads, "tolerance": TOLERANCE,
                          "families_of": source, "kernels": rows, "seconds": spent}, indent=1))
        return 0 if usable else 1
    print(f"voxtral-edge {__version__}, Python {platform.python_version()}, {platform.system()} {cpu.machine}")
    print(f"cpu          {cpu_model()} ({usable_cores()} usable cores)")
    print(f"features     {' '.join(cpu.features) or 'none'}; lacks {' '.join(cpu.absent) or 'none'}")
    print(f"onnxruntime  {ort.__version__} ({build or 'no build info'}); "
          f"providers {', '.join(ort.get_available_providers())}")
    print(f"kernels      of {source}: known answers, max error / peak, tolerance {TOLERANCE:g}, "
          f"{f'{args.threads} thread' + ('s' if args.threads > 1 else '') if args.threads else 'the default threads'}")
    if not rows:
        print("  (no quantized kernel)")
    for row in rows:
        first = row["tried"][0]
        verdict = "ok" if first["passed"] else "WRONG"
        error = "failed" if first["error"] is None else f"{first['error']:.1e}"
        line = f"  {verdict:5s} {row['family']:72s} error {error:8s} {', '.join(row['graphs'])}"
        if not first["passed"]:
            line += f"\n        on {first['detail']}"
            for t in row["tried"][1:]:
                result = "failed" if t["error"] is None else f"error {t['error']:.1e}"
                line += f"\n        with {t['options']} ({', '.join(f'{k}={v}' for k, v in t['config'].items())}): " \
                        f"{'ok' if t['passed'] else 'WRONG'}, {result}"
            if not any(t["passed"] for t in row["tried"]):
                line += "\n        nothing passes: a bundle using it refuses to open on this machine"
        print(line)
    if rows:
        print(f"             {sum(len(r['tried']) for r in rows)} known-answer checks in {spent * 1000:.0f} ms")
    return 0 if usable else 1


def add_doctor(sub) -> None:
    p = add_command(
        sub, "doctor", doctor, "check this machine: CPU features, onnxruntime, and its quantized kernels",
        "Print this machine's CPU and the features that choose onnxruntime's kernels (AVX2, AVX-512 VNNI; NEON, "
        "dot product, i8mm, SVE, SME), onnxruntime's version and build, and for each quantized kernel family "
        "(DynamicQuantizeMatMul; MatMulInteger, the batched graphs' dynamic int8; MatMulNBits per bits, block "
        "size, accuracy level) whether it gives the exact "
        "answers of a few small problems here, solved now. A family that does not is solved again with each "
        "fallback the runtime would use (KleidiAI disabled, weight prepacking disabled). Opening a bundle runs "
        "the same checks (cached per CPU and onnxruntime build) and opens a graph whose kernel is wrong with "
        "the first fallback that passes, or refuses. Without --bundle, the families of the named plans. "
        "Exit status 1 when some family passes with no fallback.",
        "examples:\n  voxtral-edge doctor\n  voxtral-edge doctor --bundle voxtral-int4 --threads 4\n"
        "  voxtral-edge doctor --json")
    p.add_argument("--bundle", metavar="DIR", help="check the kernels of this bundle's graphs")
    p.add_argument("--threads", type=positive(int, 1, 256), metavar="N",
                   help="onnxruntime threads, as the bundle will run (default: onnxruntime's choice)")
    p.add_argument("--json", action="store_true", help="one JSON object instead of text")


def compile_command(args: argparse.Namespace) -> int:
    from ..qnn import compile_bundle

    report = compile_bundle(args.bundle, args.soc, args.out, force=args.force)
    for name, r in report.items():
        print(f"{name}: {r['context_bytes'] / 1e6:.1f} MB context binary, compiled in {r['seconds']:.1f} s")
    print(f"wrote {args.out} for {args.soc}")
    return 0


def add_compile(sub) -> None:
    from ..qnn import SOCS

    p = add_command(
        sub, "compile", compile_command, "compile a bundle's NPU graphs ahead for a Qualcomm SoC",
        "Copy BUNDLE (exported with an NPU plan: w8a16, w4a16 or int4-w8a16) to OUT with each graph in the NPU "
        "form compiled by onnxruntime's QNN execution provider for the SoC's Hexagon NPU: an EP context model "
        "<graph>.onnx and its binary <graph>_qnn.bin, which the head unit opens without compiling. The manifest "
        "records the SoC, its HTP architecture and the QNN version; opening OUT for another SoC or with another "
        "QNN version is refused. Needs onnxruntime-qnn (pip install 'voxtral-edge[qnn]'); runs on an x86 host.",
        "SoCs (HTP architecture):\n" + "".join(f"  {s.name:9s} v{s.htp_arch}\n" for s in SOCS.values())
        + "\nexample:\n  voxtral-edge compile --bundle voxtral-w8a16 --soc sa8255p --out voxtral-w8a16-sa8255p")
    p.add_argument("--bundle", required=True, metavar="DIR", help="bundle exported with an NPU plan")
    p.add_argument("--soc", required=True, choices=sorted(SOCS), metavar="SOC", help="the SoC to compile for")
    p.add_argument("--out", required=True, metavar="DIR", help="bundle folder to create")
    p.add_argument("--force", action="store_true", help="replace DIR if it exists")


COMMANDS = [add_bench, add_estimate, add_devices, add_verify, add_optimize, add_doctor, add_compile]
