"""What the commands share: argument types, the options of everything that opens a bundle, device
profiles filling in what the command line left unset, reading TEXT, one-line reports."""

from __future__ import annotations

import argparse
import math
import os
import sys
from pathlib import Path

import numpy as np

from .. import defaults
from ..errors import UsageError, VoxtralEdgeError
from ..text.tables import LANGUAGES


def add_command(sub, name: str, run, help: str, description: str, epilog: str = "") -> argparse.ArgumentParser:
    """A subcommand whose parser reads like its man page; `run(args) -> exit status` does the work."""
    p = sub.add_parser(name, help=help, description=description, epilog=epilog,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.set_defaults(func=run)
    return p


def positive(kind, low=None, high=None):
    """An argparse type: a number of `kind` in [low, high] (default: > 0)."""
    def parse(value: str):
        try:
            number = kind(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {'an integer' if kind is int else 'a number'}, "
                                             f"found {value!r}") from None
        if not math.isfinite(number):
            raise argparse.ArgumentTypeError(f"expected a finite number, found {value!r}")
        if (low is None and number <= 0) or (low is not None and number < low) or (high is not None and number > high):
            bounds = f"from {low} to {high}" if high is not None else (f">= {low}" if low is not None else "> 0")
            raise argparse.ArgumentTypeError(f"must be {bounds}, found {value}")
        return number
    return parse


def add_bundle_options(p: argparse.ArgumentParser, *, pipeline: bool = True) -> None:
    """The options of every command that opens a bundle to speak with it (say, bench, serve); `pipeline`:
    it streams through Synthesizer.stream, which can decode on a thread of its own."""
    p.add_argument("--profile", metavar="NAME|FILE",
                   help="device profile (see `voxtral-edge devices`) whose [runtime] settings fill in the options "
                        "not given: threads, steps, cfg, max context, providers, chunk frames, codec thread")
    p.add_argument("--threads", type=positive(int, 1, 256), help="onnxruntime threads (default: onnxruntime's choice)")
    p.add_argument("--codec-threads", type=positive(int, 1, 256), metavar="N",
                   help="the codec's own onnxruntime threads (default: --threads)")
    if pipeline:
        p.add_argument("--codec-pipeline", action="store_true",
                       help="decode audio on a second thread while the next frames are computed (the same audio; "
                            "pays when the codec has cores of its own)")
    p.add_argument("--steps", type=positive(int, 1, defaults.MAX_STEPS),
                   help=f"Euler steps per frame, 1..{defaults.MAX_STEPS} (default: the model's, 7)")
    p.add_argument("--cfg", type=positive(float, 0, defaults.MAX_CFG), metavar="ALPHA",
                   help=f"classifier-free guidance strength, 0..{defaults.MAX_CFG:g} (default: {defaults.CFG_ALPHA}; "
                        f"1 skips the unconditional pass)")
    p.add_argument("--chunk-frames", type=positive(int), metavar="N",
                   help=f"frames (80 ms each) per streamed audio chunk (default: {defaults.CHUNK_FRAMES})")
    p.add_argument("--max-context", type=positive(int), metavar="N",
                   help="KV cache positions to allocate (default: the bundle's); fewer take less memory")
    p.add_argument("--batch", type=positive(int, 1, 64), metavar="B",
                   help="utterances that make their frames together, 1..64 (default: the profile's, else 1): one "
                        "backbone and flow-head pass serves B of them, each as it would sound alone; the KV cache "
                        "has B rows (only the positions used take memory); a bundle exported before batching, or "
                        "in the NPU form, takes 1")
    p.add_argument("--no-verify", action="store_true",
                   help="skip the sha256 check of files changed since they were last verified (sizes are still "
                        "checked; see `voxtral-edge verify`)")
    p.add_argument("--no-saved-graphs", action="store_true",
                   help="build the sessions from the bundle's graphs, neither using nor saving this machine's "
                        "optimized graphs (see `voxtral-edge optimize`)")
    p.add_argument("--parallel-open", action="store_true",
                   help="load the tokenizer and make the codec's session on a second thread while the backbone's "
                        "and flow head's are made: a shorter open on two cores or more, for a higher peak memory")
    p.add_argument("--memory-arena", action=argparse.BooleanOptionalAction, default=None,
                   help="onnxruntime's CPU memory arena: each session keeps the memory its runs needed and reuses "
                        "it, never giving it back (default: on, but off for `serve`, a process that runs for months)")
    add_npu_options(p)


def add_npu_options(p: argparse.ArgumentParser) -> None:
    """--ep, --allow-fallback, --soc: where the graphs run (see voxtral_edge.sessions and docs/deploy-qnn.md)."""
    p.add_argument("--ep", metavar="PROVIDERS",
                   help="execution providers: cpu (default), qnn (all three graphs on Qualcomm's NPU through "
                        "onnxruntime-qnn: pip install 'voxtral-edge[qnn]'), or qnn:GRAPHS for only those of "
                        "backbone,flow,codec (the others on the CPU); default: the profile's")
    p.add_argument("--allow-fallback", action="store_true",
                   help="on the NPU, run the nodes it cannot on the CPU (reported) instead of refusing the graph")
    p.add_argument("--soc", metavar="SOC",
                   help="the SoC this runs on (sa8295p, sa8255p, sa8775p, x-elite, 8-elite): a bundle compiled for another "
                        "is refused (default: the profile's, else the one the kernel names)")


def apply_profile(args: argparse.Namespace) -> argparse.Namespace:
    """A device profile's [runtime] settings fill in the options not given on the command line; then what
    is still unset gets the runtime's default. Returns args."""
    profile = None
    if getattr(args, "profile", None) is not None:
        from ..profiles import load_profile

        profile = load_profile(args.profile)
    if getattr(args, "ep", None) is not None:
        args.providers = (args.ep,)
    if hasattr(args, "soc") and args.soc is None and profile is not None and profile.npu is not None:
        args.soc = profile.npu.soc
    fill = {"threads": None, "steps": None, "cfg": defaults.CFG_ALPHA, "max_context": None, "codec_threads": None,
            "chunk_frames": defaults.CHUNK_FRAMES, "providers": ("cpu",), "batch": 1}
    for option, default in fill.items():
        if getattr(args, option, None) is None:  # 0 is a value given (bench --cfg 0), not a missing one
            setattr(args, option, getattr(profile, option) if profile is not None else default)
    if profile is not None and hasattr(args, "codec_pipeline"):
        args.codec_pipeline = args.codec_pipeline or profile.codec_pipeline
    return args


def bundle_settings(args: argparse.Namespace) -> dict:
    """Synthesizer.open's keyword arguments from the bundle options (after apply_profile); --memory-arena only
    when given (else the default of what opens the bundle: the runtime's, or the service's)."""
    return {"threads": args.threads, "max_context": args.max_context, "verify": not args.no_verify,
            "saved_graphs": False if args.no_saved_graphs else None, "codec_threads": args.codec_threads,
            "codec_pipeline": getattr(args, "codec_pipeline", False), "providers": tuple(args.providers),
            "allow_fallback": getattr(args, "allow_fallback", False), "soc": getattr(args, "soc", None),
            "parallel_open": args.parallel_open, "batch": args.batch,
            **({} if getattr(args, "memory_arena", None) is None else {"memory_arena": args.memory_arena})}


def add_normalize_options(p: argparse.ArgumentParser, default: str) -> None:
    p.add_argument("--normalize", action="store_true",
                   help="normalize TEXT first, as `say` does (see `voxtral-edge normalize`)")
    p.add_argument("--lang", choices=LANGUAGES, metavar="L",
                   help=f"language for --normalize: {', '.join(LANGUAGES)} (default: {default})")


def read_text(text: str) -> str:
    """TEXT argument, or standard input when it is '-' (one trailing newline dropped, as `echo` adds it)."""
    if text != "-":
        return text
    data = sys.stdin.buffer.read()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise UsageError(f"standard input: not valid UTF-8 at byte {e.start} (text must be UTF-8)") from None
    return text[:-2] if text.endswith("\r\n") else text[:-1] if text.endswith("\n") else text


def save_npy(path: str, array: np.ndarray) -> None:
    """np.save, atomically."""
    target = Path(path)
    tmp = target.with_name(f".{target.name}.partial.npy")
    try:
        np.save(tmp, array)
        os.replace(tmp, target)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise VoxtralEdgeError(f"{path}: cannot write ({e.strerror or e})") from None


def report(result, output: str) -> str:
    """One line on what an utterance (or a text spoken sentence by sentence) made and where its time went."""
    t, frames = result.timings, max(len(result.codes), 1)
    where = "stdout" if output == "-" else output
    ended = "ended by the model" if result.finished else "stopped at max frames"
    if t.get("sentences", 1) > 1:  # the stages are summed over the sentences: per frame, what one of them waited
        ended += f", {t['sentences']:.0f} sentences side by side"
    seed = f", seed {result.seed}" if result.seed is not None else ""
    return (f"wrote {where}: {result.duration:.2f} s of audio ({len(result.codes)} frames, {ended}{seed}) in "
            f"{t['total_ms'] / 1e3:.2f} s, real-time factor {t['total_ms'] / 1e3 / max(result.duration, 1e-9):.2f}; "
            f"per frame: backbone {t['backbone_ms'] / frames:.1f} ms, flow head {t['flow_ms'] / frames:.1f} ms, "
            f"codec {t['codec_ms'] / frames:.1f} ms; prefill {t['prefill_ms']:.0f} ms for {result.prompt_tokens} "
            f"tokens")
