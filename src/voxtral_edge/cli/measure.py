"""Measuring and checking: `bench` (llama-bench-style rows, device estimates), `devices`, `verify`,
`optimize`."""

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
                                   providers=tuple(args.providers), allow_fallback=args.allow_fallback, soc=args.soc)
    print(measure.to_json_lines(info, rows) if args.json else measure.to_markdown(info, rows))
    if args.plot:
        print(f"wrote {measure.plot(info, rows, args.plot)}", file=sys.stderr)
    if args.estimate:
        from ..estimate import estimate_frame, estimate_profiles
        from ..manifest import Manifest
        from ..profiles import list_profiles, load_profile

        manifest = Manifest.load(args.bundle, verify=False).data
        targets = [load_profile(args.estimate)] if args.estimate != "all" else list_profiles()
        if any("htp" in g for g in manifest["graphs"].values()):  # the CPU roofline knows no NPU-form graph
            print_npu_estimates(manifest, targets, None, steps=info["steps"])
            return 0
        here = load_profile(args.here)
        by_test = {r.test.split(" (")[0]: r.median for r in rows}
        measured = {"backbone_step": by_test["backbone"], "flow_head": by_test["flow head step"],
                    "codec_decoder": by_test["codec"]}
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
        print_npu_estimates(manifest, targets, estimates, steps=info["steps"])
    return 0


def print_npu_estimates(manifest: dict, targets: list, cpu: dict | None, steps: int) -> None:
    """The NPU frame time beside the CPU one (`cpu`: each target's CPU estimate, None for a bundle in the NPU
    form), for the profiles with an [npu] section (voxtral_edge.estimate_npu)."""
    from ..estimate_npu import npu_frame_estimate

    with_npu = [t for t in targets if t.npu is not None]
    if not with_npu:
        return
    print("\nNPU, an estimate from a published decoder measurement on the same HTP class (not measured here):")
    print("\n| profile | placement | backbone ms | flow ms/frame | codec ms | frame ms | rtf | rests on |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | --- |")
    for t in with_npu:
        for placement, e in npu_frame_estimate(manifest, t, steps=steps, chunk_frames=t.chunk_frames,
                                               cpu=cpu[t.name] if cpu else None).items():
            print(f"| {t.name} | {e['where']} | {e['backbone_ms']:.1f} | {e['flow_ms']:.1f} | {e['codec_ms']:.1f} | "
                  f"{e['frame_ms']:.1f} | {e['rtf']:.2f} | {e['reference']}, {e['ms_per_gb']:.0f} ms/GB |")


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


COMMANDS = [add_bench, add_devices, add_verify, add_optimize, add_compile]
