"""The driver of benchmarks/arm/run.sh: the same speech on x86 and inside an arm64 root, compared.

    compare.py prepare --data D     (host) export the tiny and small bundles per plan (cached), write the
                                    noise, speak every bundle on x86
    compare.py speak --data D --variant V
                                    (either side) speak every bundle with the runtime alone; results under
                                    D/results/V, with the CPU's features and the onnxruntime kernels run
    compare.py report --data D      (host) one line per bundle x CPU variant against x86
    compare.py fixtures --out D     (host) the test fixtures of tests/conftest.py, for the tests in the root
    compare.py runtime-tests        the test files that need no exporter (only the runtime and its oracle)

Only the runtime is imported at module level: `speak` runs where nothing else is installed.
"""

from __future__ import annotations

import argparse
import ast
import glob
import hashlib
import json
import os
import platform
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
PLANS = ("fp32", "int8", "int4", "int4-all")
SIZES = {"tiny": 256, "small": 512}  # bundle size -> max context (positions)
VARIANTS = ("cortex-a53", "max")  # QEMU_CPU models: without and with the dot-product (and i8mm) extensions
TEXT = "Turn left in two hundred metres, then keep right."
NOISE_SEED = 16
THREADS = 1
# An Arm result passes when its codes equal x86's and its audio is within this of x86's (absolute, on
# float audio in [-1, 1]; 16-bit PCM's step is 3.1e-5).
AUDIO_TOLERANCE = 1e-4
# A quantized plan runs other integer kernels per CPU, so it is "close" instead: each graph's output within
# this of x86's (max rel. error; legitimate differences measured 0.2-3 %) and at least this share of the
# teacher-forced codes equal (measured 93-100 % on cortex-a53).
PROBE_TOLERANCE = 0.1
FORCED_AGREEMENT = 0.9


# -- comparing two runs (unit-tested in tests/test_arm_compare.py) -------------------------------------
@dataclass(frozen=True)
class Comparison:
    """How a candidate run's codes and audio agree with the reference run's."""

    frames: int  # frames compared: those both runs made
    frames_reference: int
    frames_candidate: int
    codes_equal: int  # code entries (frames x codebooks) that agree over the compared frames
    codes_total: int
    first_differing_frame: int | None  # None when every compared frame agrees
    max_audio_error: float  # max |a - b| over the samples both runs made
    audio_peak: float  # max |reference audio|, to read the error against
    forced_equal: int | None = None  # teacher-forced (every earlier frame = the reference's): codes that agree
    forced_total: int | None = None

    @property
    def identical_codes(self) -> bool:
        return self.frames_reference == self.frames_candidate and self.codes_equal == self.codes_total

    def passes(self, tolerance: float = AUDIO_TOLERANCE) -> bool:
        return self.identical_codes and self.max_audio_error <= tolerance


def compare_runs(ref_codes: np.ndarray, ref_audio: np.ndarray, codes: np.ndarray, audio: np.ndarray,
                 ref_forced: np.ndarray | None = None, forced: np.ndarray | None = None) -> Comparison:
    """Compare a candidate's codes [frames, codebooks] and audio with the reference's, and, when given, the
    two sides' teacher-forced codes (both computed after the reference's frames)."""
    ref_codes, codes = np.asarray(ref_codes), np.asarray(codes)
    if ref_codes.ndim != 2 or codes.ndim != 2 or ref_codes.shape[1] != codes.shape[1]:
        raise ValueError(f"codes must be [frames, codebooks] with the same codebooks, found {ref_codes.shape} "
                         f"and {codes.shape}")
    frames = min(len(ref_codes), len(codes))
    same = ref_codes[:frames] == codes[:frames]
    rows = np.flatnonzero(~same.all(axis=1))
    n = min(len(ref_audio), len(audio))
    diff = np.abs(np.asarray(ref_audio[:n], np.float64) - np.asarray(audio[:n], np.float64))
    forced_equal = forced_total = None
    if ref_forced is not None and forced is not None:
        if ref_forced.shape != forced.shape:
            raise ValueError(f"teacher-forced codes differ in shape: {ref_forced.shape} and {forced.shape}")
        forced_equal, forced_total = int((ref_forced == forced).sum()), int(forced.size)
    return Comparison(frames=frames, frames_reference=len(ref_codes), frames_candidate=len(codes),
                      forced_equal=forced_equal, forced_total=forced_total,
                      codes_equal=int(same.sum()), codes_total=int(same.size),
                      first_differing_frame=int(rows[0]) if len(rows) else None,
                      max_audio_error=float(diff.max()) if n else 0.0,
                      audio_peak=float(np.abs(ref_audio).max()) if len(ref_audio) else 0.0)


def close(c: Comparison, probe_errors: dict[str, float]) -> bool:
    """Whether a quantized plan's run is within what its kernels may differ by: every graph probe within
    PROBE_TOLERANCE of x86's, at least FORCED_AGREEMENT of the teacher-forced codes equal."""
    forced = c.forced_equal / c.forced_total if c.forced_total else 0.0
    return forced >= FORCED_AGREEMENT and all(e <= PROBE_TOLERANCE for e in probe_errors.values())


def format_line(bundle: str, plan: str, variant: str, c: Comparison, tolerance: float = AUDIO_TOLERANCE,
                probe_errors: dict[str, float] | None = None) -> str:
    """One report line: bundle, plan, CPU variant, frames compared, code agreement, max audio error, verdict
    (ok: identical; close: not, but `close` with `probe_errors`; DIFFERS)."""
    frames = f"{c.frames}" if c.frames_reference == c.frames_candidate else \
        f"{c.frames} (x86 {c.frames_reference}, arm {c.frames_candidate})"
    share = 100.0 * c.codes_equal / c.codes_total if c.codes_total else 100.0
    codes = "identical" if c.identical_codes else f"first differ at frame {c.first_differing_frame}"
    verdict = ("ok" if c.passes(tolerance) else
               "close" if probe_errors is not None and close(c, probe_errors) else "DIFFERS")
    forced = f"  teacher-forced {c.forced_equal}/{c.forced_total}" if c.forced_total is not None else ""
    return (f"{bundle:5s} {plan:8s} {variant:10s}  frames {frames:>3s}  codes {c.codes_equal}/{c.codes_total} "
            f"({share:.1f}%, {codes}){forced}  max audio error {c.max_audio_error:.2e} (peak {c.audio_peak:.2f})  "
            f"{verdict}")


# -- which tests run in the root --------------------------------------------------------------------------
# The runtime's own dependencies, the test tools, and the numpy reference that is the tests' oracle
# (voxtral_edge.export.{reference,checkpoint,config}: numpy, ml_dtypes and safetensors, no onnx). The rest of the
# exporter and the quantizer (onnx, graph building) is what the root does not have.
ROOT_MODULES = ("numpy", "onnxruntime", "tokenizers", "pytest", "hypothesis", "ml_dtypes", "safetensors")
ORACLE_MODULES = ("voxtral_edge.export.reference", "voxtral_edge.export.checkpoint", "voxtral_edge.export.config")


def imported_modules(path: Path) -> set[str]:
    """Every module a Python file imports, at any depth (`from a import b` counts as a and a.b)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def runs_in_root(module: str) -> bool:
    """Whether `module` exists in the root: the standard library, the runtime, its oracle, its test tools."""
    top = module.split(".")[0]
    if top == "voxtral_edge":
        if module.startswith(("voxtral_edge.export", "voxtral_edge.quant")):
            return module in ("voxtral_edge.export", "voxtral_edge.quant") or module.startswith(ORACLE_MODULES)
        return True
    return top in sys.stdlib_module_names or top in ROOT_MODULES or top == "__future__"


def runtime_test_files(tests: Path) -> list[Path]:
    """The test files all of whose imports exist in the root (the conftest's fixtures come prepared)."""
    return [p for p in sorted(tests.glob("test_*.py")) if all(map(runs_in_root, imported_modules(p)))]


# -- speaking --------------------------------------------------------------------------------------------
def cpu_features() -> dict:
    """This CPU's kernel-choosing features (`voxtral_edge.machine.cpu_features`), as JSON."""
    from voxtral_edge.machine import cpu_features as features

    f = features()
    return {"machine": f.machine, "features": list(f.features), "absent": list(f.absent), "raw": f.raw}


def kernels_run(profile: Path) -> set[str]:
    """'op_type (provider)' of every node an onnxruntime profile shows as run."""
    events = json.loads(profile.read_text())
    return {f"{e['args']['op_name']} ({e['args'].get('provider', '?')})" for e in events
            if e.get("cat") == "Node" and "op_name" in e.get("args", {})}


def graph_probes(synth, job: dict, noise: np.ndarray) -> dict[str, np.ndarray]:
    """Each graph's output on the same inputs everywhere: the prefill's last hidden state and semantic
    logits, frame 0's flow-head latent (before rounding; from this side's prefill h) and the codec on
    fixed codes."""
    hidden, logits = synth.prefill(synth.prompt(job["text"], job["voice"]), job["voice"])
    h = hidden[-1].astype(np.float32)
    latent = synth.flow_latent(h, noise[0], job["steps"], job["cfg"])  # frame 0's flow head, before FSQ rounding
    layout = synth.audio_layout
    sizes = [layout["semantic_codebook_size"]] + [layout["acoustic_codebook_size"]] * layout["n_acoustic_codebook"]
    codes = np.stack([np.arange(4) * 7919 % size for size in sizes], axis=1)  # fixed, spread over each codebook
    return {"probe_hidden": h, "probe_logits": logits[np.isfinite(logits)], "probe_latent": latent,
            "probe_codec": synth.decode(codes)}


def relative_error(reference: np.ndarray, candidate: np.ndarray) -> float:
    """max |a - b| / max |a|."""
    return float(np.abs(candidate - reference).max() / max(np.abs(reference).max(), 1e-30))


# The op types that do the arithmetic (the rest move, slice or compare tensors).
COMPUTE_OPS = ("MatMul", "FusedMatMul", "Gemm", "MatMulNBits", "DynamicQuantizeMatMul", "MatMulInteger",
               "MatMulIntegerToFloat", "GroupQueryAttention", "Softmax", "RMSNormalization", "QuickGelu", "Conv",
               "ConvTranspose")


def compute_ops(kernels: list[str]) -> list[str]:
    """The compute op types among kernels_run's 'op (provider)' entries, in COMPUTE_OPS order."""
    ops = {k.split(" (")[0] for k in kernels}
    return [op for op in COMPUTE_OPS if op in ops]


def speak(data: Path, variant: str) -> None:
    """Speak every job of D/jobs.json with the runtime alone; write D/results/VARIANT/<bundle>.npz and
    D/results/VARIANT/info.json (CPU features, versions, kernels per bundle)."""
    import onnxruntime as ort

    from voxtral_edge.runtime import Synthesizer

    out = data / "results" / variant
    out.mkdir(parents=True, exist_ok=True)
    profiles = out / "profiles"

    info = {"cpu": cpu_features(), "onnxruntime": ort.__version__, "numpy": np.__version__,
            "python": platform.python_version(), "kernels": {}, "fallbacks": {}}
    jobs = json.loads((data / "jobs.json").read_text())
    for job in jobs:
        name = job["name"]
        profiles.mkdir(exist_ok=True)
        for old in profiles.glob("*.json"):
            old.unlink()
        # profiling on (it changes no result): the kernels each graph ran
        synth = Synthesizer.open(data / job["bundle"], threads=THREADS, profiling=str(profiles / f"{name}-"))
        noise = np.load(data / job["noise"])
        result = synth.synthesize(job["text"], job["voice"], noise=noise, steps=job["steps"], cfg_alpha=job["cfg"])
        reference = result.codes if variant == "x86" else np.load(data / "results" / "x86" / f"{name}.npz")["codes"]
        forced = synth.teacher_forced(result.spoken_text, job["voice"], reference, noise, steps=job["steps"],
                                      cfg_alpha=job["cfg"])
        probes = graph_probes(synth, job, noise)
        kernels = {}
        for graph, session in synth.sessions.items():
            kernels[graph] = sorted(kernels_run(Path(session.end_profiling())))
        info["kernels"][name] = kernels
        info["fallbacks"][name] = synth.kernel_fallbacks
        tmp = out / f".{name}.partial.npz"
        np.savez(tmp, codes=result.codes, audio=result.audio, forced=forced, **probes)
        os.replace(tmp, out / f"{name}.npz")
        print(f"{variant}: {name}: {len(result.codes)} frames", file=sys.stderr)
    (out / "info.json").write_text(json.dumps(info, indent=1) + "\n")


# -- the host's side: bundles, noise, report --------------------------------------------------------------
def exporter_stamp() -> str:
    """A digest of the code that writes bundles: bundles made by other code are made again."""
    digest = hashlib.sha256()
    package = REPO / "src" / "voxtral_edge"
    for path in sorted(glob.glob(str(package / "export" / "*.py")) + glob.glob(str(package / "quant" / "*.py"))
                       + [str(package / "manifest.py")]):
        digest.update(Path(path).read_bytes())
    return digest.hexdigest()


def prepare(data: Path, frames: dict[str, int]) -> None:
    """Checkpoints and bundles (cached while the exporter's code is unchanged), noise, jobs.json, and the
    x86 run."""
    from voxtral_edge import defaults
    from voxtral_edge.export.bundle import export_bundle
    from voxtral_edge.export.make_checkpoint import make_checkpoint
    from voxtral_edge.manifest import Manifest

    stamp, stamp_file = exporter_stamp(), data / "bundles" / ".exporter"
    if not stamp_file.exists() or stamp_file.read_text() != stamp:
        for old in (data / "bundles").glob("*"):
            if old.is_dir():
                import shutil

                shutil.rmtree(old)
    (data / "bundles").mkdir(parents=True, exist_ok=True)
    (data / "noise").mkdir(exist_ok=True)
    jobs = []
    for size, max_context in SIZES.items():
        checkpoint = data / "checkpoints" / size
        if not (checkpoint / "params.json").exists():
            make_checkpoint(checkpoint, size=size, seed=0, force=True, progress=False)
        for plan in PLANS:
            name = f"{size}-{plan}"
            bundle = data / "bundles" / name
            if not (bundle / "manifest.json").exists():
                print(f"exporting {name}", file=sys.stderr)
                export_bundle(checkpoint, bundle, max_context=max_context, plan=plan, force=True, progress=False)
            manifest = Manifest.load(bundle, verify=False)
            n_acoustic = manifest["audio"]["n_acoustic_codebook"]
            noise = f"noise/{size}.npy"
            np.save(data / noise, np.random.default_rng(NOISE_SEED).standard_normal((frames[size], n_acoustic),
                                                                                    dtype=np.float32))
            jobs.append({"name": name, "size": size, "plan": plan, "bundle": f"bundles/{name}", "noise": noise,
                         "text": TEXT, "voice": sorted(manifest["voices"])[0],
                         "steps": manifest["model"]["flow_head"]["n_decoding_steps"], "cfg": defaults.CFG_ALPHA})
    stamp_file.write_text(stamp)
    (data / "jobs.json").write_text(json.dumps(jobs, indent=1) + "\n")
    speak(data, "x86")


def kleidiai_entry_points(wheels: Path) -> list[str]:
    """The MLAS entry points with a KleidiAI implementation in the aarch64 onnxruntime wheel (from the
    C++ names `ArmKleidiAI::<function>` left in its library)."""
    import re
    import zipfile

    found = set()
    for wheel in wheels.glob("onnxruntime-*aarch64*.whl"):
        with zipfile.ZipFile(wheel) as z:
            for name in z.namelist():
                if name.endswith(".so") and "onnxruntime_pybind11_state" in name:
                    blob = z.read(name)
                    for m in re.finditer(rb"11ArmKleidiAI(\d+)", blob):  # Itanium mangling: <length><name>
                        found.add(blob[m.end():m.end() + int(m.group(1))].decode("ascii", "replace"))
    return sorted(found)


def report(data: Path, wheels: Path | None = None) -> bool:
    """Print the CPU variants' features, one line per bundle x variant, and the kernels run; True if all pass."""
    jobs = json.loads((data / "jobs.json").read_text())
    infos = {v: json.loads((data / "results" / v / "info.json").read_text()) for v in ("x86",) + VARIANTS}
    for variant, info in infos.items():
        cpu = info["cpu"]
        print(f"# {variant}: {cpu['machine']}, onnxruntime {info['onnxruntime']}, numpy {info['numpy']}, "
              f"python {info['python']}; has {', '.join(cpu['features']) or 'none'}; lacks {', '.join(cpu['absent']) or 'none'}")
    if wheels is not None:
        kai = kleidiai_entry_points(wheels)
        print(f"# the aarch64 onnxruntime wheel has KleidiAI versions of: {', '.join(kai) or 'nothing'}")
    print(f"# audio tolerance {AUDIO_TOLERANCE:g} (absolute); {THREADS} thread; text {TEXT!r}; injected noise")
    ok = True
    for job in jobs:  # the x86 side's teacher forcing must reproduce its own run, or the counts mean nothing
        own = np.load(data / "results" / "x86" / f"{job['name']}.npz")
        if "forced" in own and not np.array_equal(own["forced"], own["codes"]):
            print(f"# x86 {job['name']}: teacher-forced codes differ from its own run: the comparison is broken")
            ok = False
    for job in jobs:
        ref = np.load(data / "results" / "x86" / f"{job['name']}.npz")
        for variant in VARIANTS:
            got = np.load(data / "results" / variant / f"{job['name']}.npz")
            c = compare_runs(ref["codes"], ref["audio"], got["codes"], got["audio"], ref.get("forced"), got.get("forced"))
            errors = {name.removeprefix("probe_"): relative_error(ref[name], got[name])
                      for name in ("probe_hidden", "probe_logits", "probe_velocity", "probe_latent", "probe_codec")
                      if name in got and name in ref}
            # fp32 runs the same float kernels' arithmetic everywhere and must agree; the quantized plans run
            # different integer kernels per CPU (see benchmarks/arm/README.md) and must be close
            ok &= c.passes() or (job["plan"] != "fp32" and close(c, errors))
            probes = "  graphs vs x86 (max rel. error): " + ", ".join(f"{k} {e:.1e}" for k, e in errors.items())
            fallbacks = infos[variant].get("fallbacks", {}).get(job["name"]) or {}
            opened = "; ".join(f"{graph} with {', '.join(f'{k}={v}' for k, v in config.items())}"
                               for graph, config in fallbacks.items())
            print(format_line(job["size"], job["plan"], variant, c, probe_errors=None if job["plan"] == "fp32" else errors)
                  + probes + (f"  kernel fallback: {opened}" if opened else ""))
    print("# onnxruntime's compute kernels run (from its profiles; the same op types on x86 and both Arm CPUs "
          "unless listed):")
    for job in jobs:
        seen = {v: info["kernels"][job["name"]] for v, info in infos.items()}
        for graph, ops in seen["x86"].items():
            line = f"#   {job['name']:14s} {graph:13s} {', '.join(compute_ops(ops))}"
            for variant in VARIANTS:
                if compute_ops(seen[variant][graph]) != compute_ops(ops):
                    line += f"; on {variant}: {', '.join(compute_ops(seen[variant][graph]))}"
            print(line)
    return ok


def fixtures(out: Path) -> None:
    """tests/conftest.py's checkpoints and bundles, written to OUT for VOXTRAL_TEST_FIXTURES (kept while the
    exporter's code is unchanged)."""
    import shutil

    stamp = exporter_stamp()
    if (out / ".exporter").exists() and (out / ".exporter").read_text() == stamp:
        return
    shutil.rmtree(out, ignore_errors=True)
    sys.path.insert(0, str(REPO / "tests"))
    import conftest

    conftest.write_fixtures(out)
    (out / ".exporter").write_text(stamp)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("prepare", help="(host) bundles, noise, the x86 run")
    p.add_argument("--data", required=True, type=Path)
    p.add_argument("--tiny-frames", type=int, default=24)
    p.add_argument("--small-frames", type=int, default=4)
    p = sub.add_parser("speak", help="speak every bundle with the runtime alone")
    p.add_argument("--data", required=True, type=Path)
    p.add_argument("--variant", required=True)
    p = sub.add_parser("report", help="(host) one line per bundle x CPU variant")
    p.add_argument("--data", required=True, type=Path)
    p.add_argument("--wheels", type=Path, help="the aarch64 wheels: report the KleidiAI kernels onnxruntime has")
    p = sub.add_parser("fixtures", help="(host) the tests' fixtures, prepared")
    p.add_argument("--out", required=True, type=Path)
    p = sub.add_parser("runtime-tests", help="print the test files that run in the root")
    p.add_argument("--prefix", default=str(REPO), help="the repository's path where the tests will run")
    args = parser.parse_args(argv)
    if args.command == "prepare":
        prepare(args.data, {"tiny": args.tiny_frames, "small": args.small_frames})
    elif args.command == "speak":
        speak(args.data, args.variant)
    elif args.command == "report":
        return 0 if report(args.data, args.wheels) else 1
    elif args.command == "fixtures":
        fixtures(args.out)
    else:
        print(" ".join(str(Path(args.prefix) / "tests" / p.name) for p in runtime_test_files(REPO / "tests")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
