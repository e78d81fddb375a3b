"""Measuring and checking: `bench` (llama-bench-style rows, device estimates), `devices`, `verify`,
`optimize`, `doctor` (this machine, onnxruntime, and whether its quantized kernels give the known answers)."""

from __future__ import annotations

import argparse
import sys

from .common import add_bundle_options, add_command, apply_profile, positive


def devices(args: argparse.Namespace) -> int:
    from ..profiles import list_profiles

    for p in list_profiles():
        print(f"{p.name:20s} {p.plan:8s} {p.threads:2d} threads  {p.memory_bandwidth_gbs:6.1f} GB/s  "
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
    info, rows = measure.run_bench(args.bundle, threads=args.threads, steps=args.steps, cfg_alpha=args.cfg,
                                   frames=args.frames, repeats=args.repeats, chunk_frames=args.chunk_frames,
                                   max_context=args.max_context, verify=not args.no_verify,
                                   saved_graphs=False if args.no_saved_graphs else None,
                                   codec_threads=args.codec_threads, codec_pipeline=args.codec_pipeline,
                                   providers=tuple(args.providers))
    print(measure.to_json_lines(info, rows) if args.json else measure.to_markdown(info, rows))
    if args.plot:
        print(f"wrote {measure.plot(info, rows, args.plot)}", file=sys.stderr)
    if args.estimate:
        from ..estimate import estimate_frame, estimate_profiles
        from ..manifest import Manifest
        from ..profiles import list_profiles, load_profile

        manifest = Manifest.load(args.bundle, verify=False).data
        here = load_profile(args.here)
        by_test = {r.test.split(" (")[0]: r.median for r in rows}
        measured = {"backbone_step": by_test["backbone"], "flow_head": by_test["flow head step"],
                    "codec_decoder": by_test["codec"]}
        targets = [load_profile(args.estimate)] if args.estimate != "all" else list_profiles()
        factors, estimates = estimate_profiles(manifest, here, measured, targets, steps=info["steps"],
                                               chunk_frames=info["chunk_frames"])
        fitted = estimate_frame(manifest, here, steps=info["steps"], calibration=factors,
                                chunk_frames=info["chunk_frames"])
        print(f"\ncalibrated on this machine ({here.name}): factors "
              + ", ".join(f"{k} {v:.2f}" for k, v in factors.items())
              + f"; reproduces the measured frame: {fitted['frame_ms']:.1f} ms")
        print("\n| profile | backbone ms | flow ms/step | flow ms/frame | codec ms | frame ms | rtf |")
        print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
        for name, e in estimates.items():
            print(f"| {name} | {e['backbone_ms']:.1f} | {e['flow_step_ms']:.1f} | {e['flow_ms']:.1f} | "
                  f"{e['codec_ms']:.1f}{' (beside)' if e['codec_pipeline'] else ''} | {e['frame_ms']:.1f} | "
                  f"{e['rtf']:.2f} |")
    return 0


def add_bench(sub) -> None:
    p = add_command(
        sub, "bench", bench, "measure a bundle, llama-bench style (markdown or JSON lines)",
        "Open a bundle and synthesize a fixed sentence several times; print one row per measure with its "
        "median and spread: load time, prefill tok/s, backbone / flow head / codec ms per frame, flow head ms "
        "per Euler step, time to first audio, real-time factor, peak RSS; with the machine, thread count, "
        "onnxruntime version, bundle plan and git commit. With --estimate, calibrate the roofline model "
        "on this run and predict a frame's time on another device profile.",
        "examples:\n  voxtral-edge bench --bundle voxtral-int4\n"
        "  voxtral-edge bench --bundle voxtral-int4 --json --plot frame.png\n"
        "  voxtral-edge bench --bundle voxtral-int4 --estimate raspberry-pi-5   (or --estimate all)")
    p.add_argument("--bundle", required=True, metavar="DIR", help="bundle folder")
    p.add_argument("--frames", type=positive(int), default=25, help="frames per run (default: 25, 2 s)")
    p.add_argument("--repeats", type=positive(int), default=3, help="runs (default: 3)")
    p.add_argument("--json", action="store_true", help="JSON lines instead of a markdown table")
    p.add_argument("--plot", metavar="FILE.png", help="also draw where a frame's time goes (needs matplotlib)")
    p.add_argument("--estimate", metavar="PROFILE|all", help="predict a frame's time on this device profile")
    p.add_argument("--here", default="x86-avx512", metavar="PROFILE",
                   help="the profile of this machine, for the calibration (default: x86-avx512)")
    add_bundle_options(p)


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
    from ..quant.plans import GRAPHS, NAMED_PLANS

    found: dict = {}
    for plan in NAMED_PLANS.values():
        for graph in GRAPHS:
            g = plan.graph(graph)
            for spec in ([g.spec] if g.spec else []) + [spec for _, spec in g.overrides]:
                family = (Family("DynamicQuantizeMatMul") if spec.method == "dynamic-int8" else
                          Family("MatMulNBits", spec.bits, spec.block_size, spec.accuracy_level, not spec.symmetric))
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
    print(f"onnxruntime  {ort.__version__} ({build or 'no build info'}); providers {', '.join(ort.get_available_providers())}")
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
        "(DynamicQuantizeMatMul; MatMulNBits per bits, block size, accuracy level) whether it gives the exact "
        "answers of a few small problems here, solved now. A family that does not is solved again with each "
        "fallback the runtime would use (KleidiAI disabled, weight prepacking disabled). Opening a bundle runs "
        "the same checks (cached per CPU and onnxruntime build) and opens a graph whose kernel is wrong with "
        "the first fallback that passes, or refuses. Without --bundle, the families of the named plans. "
        "Exit status 1 when some family passes with no fallback.",
        "examples:\n  voxtral-edge doctor\n  voxtral-edge doctor --bundle voxtral-int4 --threads 4\n"
        "  voxtral-edge doctor --json")
    p.add_argument("--bundle", metavar="DIR", help="check the kernels of this bundle's graphs")
    p.add_argument("--threads", type=positive(int, 1, 256), metavar="N", help="onnxruntime threads, as the bundle will run "
                   "(default: onnxruntime's choice)")
    p.add_argument("--json", action="store_true", help="one JSON object instead of text")


COMMANDS = [add_bench, add_devices, add_verify, add_optimize, add_doctor]
