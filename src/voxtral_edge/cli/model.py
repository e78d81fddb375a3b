"""The model's side of the CLI: random-weight checkpoints, tokens and prompts, what is spoken, export,
quantization and its quality report. The exporter and quantizer are imported when a command runs."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..errors import VoxtralEdgeError
from ..text.tables import LANGUAGES
from .common import add_command, add_normalize_options, add_npu_options, positive, read_text


def make_checkpoint(args: argparse.Namespace) -> int:
    from ..export.make_checkpoint import make_checkpoint as make

    params = None
    if args.config is not None:
        try:
            params = json.loads(Path(args.config).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as e:
            raise VoxtralEdgeError(f"{args.config}: cannot read a params.json ({e})") from None
    out = make(args.out, size=args.size, params=params, seed=args.seed, force=args.force,
               params_source=args.config or "params.json")
    print(f"wrote {out} ({'from ' + args.config if params else args.size}, seed {args.seed}, random weights)")
    return 0


def add_make_checkpoint(sub) -> None:
    p = add_command(
        sub, "make-checkpoint", make_checkpoint, "write a checkpoint with random weights in the released layout",
        "Write a complete checkpoint folder in the released Voxtral TTS layout (params.json, "
        "consolidated.safetensors in BF16, tekken.json, voice_embedding/*.pt) with random weights. "
        "The audio it makes is noise; it exists to test and benchmark without the real weights.",
        "sizes:\n  tiny   a few MB, written in seconds; every dimension differs from the others\n"
        "  small  the released code layout at 1/6 of the width (about 100 MB): quantization studies\n"
        "  full   the released shapes: 386 tensors, 20 voices, about 8 GB on disk\n\n"
        "example:\n  voxtral-edge make-checkpoint --size tiny --seed 0 --out work/tiny")
    p.add_argument("--size", choices=["tiny", "small", "full"], default="tiny", help="which shapes (default: tiny)")
    p.add_argument("--config", metavar="PARAMS_JSON", help="take the shapes from this params.json instead")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    p.add_argument("--out", required=True, metavar="DIR", help="folder to create")
    p.add_argument("--force", action="store_true", help="replace DIR if it exists")


def _text_as_spoken(args: argparse.Namespace, voice: str | None = None) -> str:
    """TEXT (or stdin), normalized when --normalize is given: for --lang, else the voice's language."""
    text = read_text(args.text)
    if not args.normalize:
        return text
    from ..text import normalize, voice_language

    return normalize(text, args.lang or (voice_language(voice) if voice else "en"))


def tokens(args: argparse.Namespace) -> int:
    from ..tekken import Tekken

    print(json.dumps(Tekken.from_file(args.tokenizer).encode(_text_as_spoken(args))))
    return 0


def add_tokens(sub) -> None:
    p = add_command(
        sub, "tokens", tokens, "print the token ids of a text (JSON list)",
        "Tokenize TEXT with a tekken.json exactly as mistral-common does (no BOS/EOS) and print the ids "
        "as a JSON list. TEXT '-' reads standard input.",
        "example:\n  voxtral-edge tokens --tokenizer work/tiny/tekken.json 'Hello world'")
    p.add_argument("--tokenizer", required=True, metavar="TEKKEN_JSON", help="path to tekken.json")
    p.add_argument("text", metavar="TEXT")
    add_normalize_options(p, "English")


def prompt(args: argparse.Namespace) -> int:
    from ..prompt import tekken_speech_prompt
    from ..tekken import Tekken

    tekken = Tekken.from_file(Path(args.checkpoint) / "tekken.json")
    print(json.dumps(tekken_speech_prompt(tekken, _text_as_spoken(args, args.voice), args.voice)))
    return 0


def add_prompt(sub) -> None:
    p = add_command(
        sub, "prompt", prompt, "print the speech prompt ids for a text and voice (JSON list)",
        "Print the ids of the speech request prompt, [BOS] [BEGIN_AUDIO] [AUDIO] x N [NEXT_AUDIO_TEXT] "
        "text [REPEAT_AUDIO_TEXT] [BEGIN_AUDIO], as mistral-common's encode_speech_request builds it. "
        "TEXT '-' reads standard input.",
        "example:\n  voxtral-edge prompt --checkpoint work/tiny --voice casual_male 'Hello world'")
    p.add_argument("--checkpoint", required=True, metavar="DIR", help="checkpoint folder (reads its tekken.json)")
    p.add_argument("--voice", required=True, metavar="NAME", help="preset voice name")
    p.add_argument("text", metavar="TEXT")
    add_normalize_options(p, "the voice's language")


def normalize(args: argparse.Namespace) -> int:
    from ..text import normalize as spoken

    print(spoken(read_text(args.text), args.lang))
    return 0


def add_normalize(sub) -> None:
    p = add_command(
        sub, "normalize", normalize, "print a text as it will be spoken (numbers, units, times... in words)",
        "Print TEXT as `say` speaks it unless given --raw: markdown, HTML, URLs, emoji and invisible characters "
        "flattened or dropped, lines joined; numbers, decimals, ordinals, ranges, percentages, money, units "
        "(m, km, km/h, mph, mi, ft, °C, °F, kWh, kW, L, min, h), times, dates, road and exit numbers and "
        "address abbreviations spelled out in the language's words; a final full stop added. TEXT '-' reads "
        "standard input.",
        "examples:\n  voxtral-edge normalize 'In 200 m, take exit 12a onto the A7.'\n"
        "  voxtral-edge normalize --lang de 'Um 14:30 Uhr: -3 °C auf der B 27.'")
    p.add_argument("text", metavar="TEXT")
    p.add_argument("--lang", default="en", choices=LANGUAGES, metavar="L",
                   help=f"language: {', '.join(LANGUAGES)} (default: en)")


PLANS_HELP = (
    "plans:\n"
    "  fp32           nothing quantized\n"
    "  int8           backbone and codec 8-bit (MatMulNBits), flow head dynamic int8\n"
    "  int4           backbone 4-bit in blocks of 32, flow head and codec int8 (the quality default)\n"
    "  int4-all       backbone and flow head 4-bit, codec int8\n"
    "  int4-fast      int4 with the backbone in blocks of 128 (faster, a little less exact)\n"
    "  int4-all-fast  int4-all with the backbone in blocks of 128\n"
    "  w8a16          for a Qualcomm NPU: every graph in the NPU form, weights int8, activations 16-bit\n"
    "  w4a16          the same with the backbone's weights int4\n"
    "  int4-w8a16     backbone int4 on the CPU, flow head and codec w8a16 on the NPU\n"
    "  FILE.toml      per graph: method (nbits | dynamic-int8 | qdq | fp32), bits, block_size, symmetric,\n"
    "                 accuracy_level, skip (weight-name patterns kept fp32); see src/voxtral_edge/quant/plans.py")


def export(args: argparse.Namespace) -> int:
    from ..export.bundle import export_bundle

    plan, max_context = args.plan, args.max_context
    if args.profile is not None:  # the device's plan and context, where not given
        from ..profiles import load_profile

        profile = load_profile(args.profile)
        plan, max_context = plan or profile.plan, max_context or profile.max_context
    plan = plan or "fp32"
    from ..quant.htp import NpuShapes

    steps = args.steps or (profile.steps if args.profile is not None else None)
    frames = args.chunk_frames or (profile.chunk_frames if args.profile is not None else NpuShapes.frames)
    out = export_bundle(args.checkpoint, args.out, max_context=max_context, plan=plan, force=args.force,
                        npu_shapes=NpuShapes(rows=args.npu_rows, steps=steps, frames=frames, parts=args.npu_parts))
    print(f"wrote bundle {out} ({plan})")
    return 0


def add_export(sub) -> None:
    p = add_command(
        sub, "export", export, "export a checkpoint folder to a bundle (ONNX graphs + manifest)",
        "Build the bundle the runtime reads from a checkpoint folder in the released layout: "
        "backbone_step.onnx (with its KV cache interface), flow_head.onnx, codec_decoder.onnx, the embedding "
        "tables as memory-mappable .npy files, the voices, tokenizer.json and manifest.json (every file with "
        "its sha256). Tensors are streamed, so the full-size model exports within 24 GB of memory; with a "
        "--plan, each weight is quantized as it is written. The NPU plans (w8a16, w4a16, int4-w8a16) export "
        "their graphs in a form with static shapes that Qualcomm's NPU runs whole, calibrate them by speaking "
        "one sentence in each of the nine languages with the float32 graphs, and quantize them statically "
        "(docs/deploy-qnn.md); --npu-rows, --npu-parts, --steps and --chunk-frames fix those shapes.",
        PLANS_HELP + "\n\nexamples:\n  voxtral-edge export --checkpoint path/to/Voxtral-4B-TTS-2603 --out voxtral-bundle\n"
        "  voxtral-edge export --checkpoint path/to/Voxtral-4B-TTS-2603 --out voxtral-int4 --plan int4\n"
        "  voxtral-edge export --checkpoint path/to/Voxtral-4B-TTS-2603 --out voxtral-car --profile qualcomm-sa8295p")
    p.add_argument("--checkpoint", required=True, metavar="DIR", help="checkpoint folder (released layout)")
    p.add_argument("--out", required=True, metavar="BUNDLE", help="bundle folder to create")
    p.add_argument("--max-context", type=positive(int), metavar="N",
                   help="longest prompt + audio in positions, 12.5 per second of audio (default: the profile's, "
                        "else 4096, or the model's max_seq_len if smaller)")
    p.add_argument("--plan", metavar="PLAN", help="quantization plan: a name below or a TOML plan file (default: the "
                                                  "profile's, else fp32)")
    p.add_argument("--profile", metavar="NAME|FILE", help="device profile whose plan and max context to use")
    p.add_argument("--npu-rows", type=positive(int, 1, 256), default=16, metavar="N",
                   help="NPU plans: positions per backbone call (a prompt goes in chunks of N; a decode step uses "
                        "one row of N; default: 16)")
    p.add_argument("--npu-parts", type=positive(int, 1, 64), default=1, metavar="N",
                   help="NPU plans: the backbone in N graphs run one after the other (default: 1; the full-size "
                        "backbone does not compile as one HTP graph, see docs/deploy-qnn.md)")
    p.add_argument("--steps", type=positive(int, 1, 64), metavar="N",
                   help="NPU plans: the Euler steps the flow head is compiled for (default: the profile's, else "
                        "the model's)")
    p.add_argument("--chunk-frames", type=positive(int, 1, 64), metavar="N",
                   help="NPU plans: frames per codec call (default: the profile's, else 4)")
    p.add_argument("--force", action="store_true", help="replace BUNDLE if it exists")


def quantize(args: argparse.Namespace) -> int:
    from ..quant.plans import load_plan
    from ..quant.rewrite import quantize_bundle

    if load_plan(args.plan).npu_graphs:
        raise VoxtralEdgeError(f"--plan {args.plan}: the NPU plans rebuild the graphs in another form from the "
                               f"checkpoint's tensors; use `voxtral-edge export --checkpoint DIR --plan {args.plan}`")
    out = quantize_bundle(args.bundle, args.out, args.plan, force=args.force)
    print(f"wrote bundle {out} ({args.plan})")
    return 0


def add_quantize(sub) -> None:
    p = add_command(
        sub, "quantize", quantize, "write a quantized copy of an fp32 bundle",
        "Rewrite an fp32 bundle with a quantization plan, weight by weight (the fp32 graph is never loaded "
        "whole). The same plans work with `voxtral-edge export --plan PLAN`, which quantizes while "
        "exporting and never writes fp32 graphs.",
        PLANS_HELP + "\n\nexample:\n  voxtral-edge quantize voxtral-bundle --plan int4 --out voxtral-bundle-int4")
    p.add_argument("bundle", metavar="BUNDLE", help="fp32 bundle folder")
    p.add_argument("--plan", required=True, metavar="PLAN", help="a named plan or a TOML plan file")
    p.add_argument("--out", required=True, metavar="BUNDLE2", help="bundle folder to create")
    p.add_argument("--force", action="store_true", help="replace BUNDLE2 if it exists")


def quality(args: argparse.Namespace) -> int:
    from ..quant.quality import quality_report, to_markdown, write_report

    report = quality_report(args.reference, args.candidate, voice=args.voice, frames=args.frames,
                            steps=args.steps, seed=args.seed, threads=args.threads,
                            providers=(args.ep,) if args.ep else ("cpu",), allow_fallback=args.allow_fallback,
                            soc=args.soc)
    md, js = write_report(report, args.out)
    print(to_markdown(report))
    print(f"wrote {md} and {js}", file=sys.stderr)
    return 0


def add_quality(sub) -> None:
    p = add_command(
        sub, "quality", quality, "measure a quantized bundle against the fp32 one (markdown + JSON report)",
        "Run both bundles on the same inputs and the same injected noise: per graph, cosine similarity and "
        "max error; end to end over several sentences, semantic and acoustic code agreement (teacher-forced "
        "and free-running), waveform SNR and log-mel distance; bundle sizes and ms per frame per graph.",
        "example:\n  voxtral-edge quality --reference voxtral-bundle --candidate voxtral-bundle-int4 --out int4-quality")
    p.add_argument("--reference", required=True, metavar="BUNDLE", help="the fp32 bundle")
    p.add_argument("--candidate", required=True, metavar="BUNDLE", help="the quantized bundle")
    p.add_argument("--out", default="quality-report", metavar="PATH",
                   help="report path without extension: writes PATH.md and PATH.json (default: quality-report)")
    p.add_argument("--voice", metavar="NAME", help="voice to use (default: the first)")
    p.add_argument("--frames", type=positive(int), default=40, help="frames per sentence (default: 40)")
    p.add_argument("--steps", type=positive(int), help="Euler steps (default: the model's)")
    p.add_argument("--seed", type=int, default=0, help="seed of the injected noise (default: 0)")
    p.add_argument("--threads", type=positive(int), help="onnxruntime threads")
    add_npu_options(p)


COMMANDS = [add_normalize, add_export, add_quantize, add_quality, add_make_checkpoint, add_tokens, add_prompt]
