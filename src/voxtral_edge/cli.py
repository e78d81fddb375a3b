"""`voxtral-edge`: each command is a thin layer over one library call with the same arguments.

Errors a user can act on print one line and exit 1 (2 for bad usage); `--debug` shows the traceback.
Commands that need the exporter import it when they run, so the runtime never loads it.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path

import numpy as np

from . import __version__
from .errors import UsageError, VoxtralEdgeError
from .text.tables import LANGUAGES


def _read_text(text: str) -> str:
    """TEXT argument, or standard input when it is '-' (one trailing newline dropped, as `echo` adds it)."""
    if text != "-":
        return text
    data = sys.stdin.buffer.read()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise UsageError(f"standard input: not valid UTF-8 at byte {e.start} (text must be UTF-8)") from None
    return text[:-2] if text.endswith("\r\n") else text[:-1] if text.endswith("\n") else text


def cmd_make_checkpoint(args: argparse.Namespace) -> int:
    from .export.make_checkpoint import make_checkpoint

    params = None
    if args.config is not None:
        try:
            params = json.loads(Path(args.config).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as e:
            raise VoxtralEdgeError(f"{args.config}: cannot read a params.json ({e})") from None
    out = make_checkpoint(args.out, size=args.size, params=params, seed=args.seed, force=args.force,
                          params_source=args.config or "params.json")
    print(f"wrote {out} ({'from ' + args.config if params else args.size}, seed {args.seed}, random weights)")
    return 0


def _text_as_spoken(args: argparse.Namespace, voice: str | None = None) -> str:
    """TEXT (or stdin), normalized when --normalize is given: for --lang, else the voice's language."""
    text = _read_text(args.text)
    if not args.normalize:
        return text
    from .text import normalize, voice_language

    return normalize(text, args.lang or (voice_language(voice) if voice else "en"))


def cmd_tokens(args: argparse.Namespace) -> int:
    from .tekken import Tekken

    print(json.dumps(Tekken.from_file(args.tokenizer).encode(_text_as_spoken(args))))
    return 0


def cmd_prompt(args: argparse.Namespace) -> int:
    from .prompt import tekken_speech_prompt
    from .tekken import Tekken

    tekken = Tekken.from_file(Path(args.checkpoint) / "tekken.json")
    print(json.dumps(tekken_speech_prompt(tekken, _text_as_spoken(args, args.voice), args.voice)))
    return 0


def cmd_normalize(args: argparse.Namespace) -> int:
    from .text import normalize

    print(normalize(_read_text(args.text), args.lang))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from .export.bundle import export_bundle

    out = export_bundle(args.checkpoint, args.out, max_context=args.max_context, precision=args.precision,
                        force=args.force)
    print(f"wrote bundle {out} ({args.precision})")
    return 0


def cmd_quantize(args: argparse.Namespace) -> int:
    from .quant.rewrite import quantize_bundle

    out = quantize_bundle(args.bundle, args.out, args.plan, force=args.force)
    print(f"wrote bundle {out} ({args.plan})")
    return 0


def _positive(kind, low=None, high=None):
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


def _save_npy(path: str, array: np.ndarray) -> None:
    """np.save, atomically."""
    import os

    target = Path(path)
    tmp = target.with_name(f".{target.name}.partial.npy")
    try:
        np.save(tmp, array)
        os.replace(tmp, target)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise VoxtralEdgeError(f"{path}: cannot write ({e.strerror or e})") from None


def synthesize_to(synth, text: str, voice: str, output: str, **options):
    """Synthesize a whole utterance and write it as a WAV file; returns the Result."""
    from .audio import write_wav

    result = synth.synthesize(text, voice, **options)
    write_wav(output, result.audio, result.sample_rate)
    return result


def _report(result, output: str) -> str:
    t, frames = result.timings, max(len(result.codes), 1)
    where = "stdout" if output == "-" else output
    ended = "ended by the model" if result.finished else "stopped at max frames"
    seed = f", seed {result.seed}" if result.seed is not None else ""
    return (f"wrote {where}: {result.duration:.2f} s of audio ({len(result.codes)} frames, {ended}{seed}) in "
            f"{t['total_ms'] / 1e3:.2f} s, real-time factor {t['total_ms'] / 1e3 / max(result.duration, 1e-9):.2f}; "
            f"per frame: backbone {t['backbone_ms'] / frames:.1f} ms, flow head {t['flow_ms'] / frames:.1f} ms, "
            f"codec {t['codec_ms'] / frames:.1f} ms; prefill {t['prefill_ms']:.0f} ms for {result.prompt_tokens} tokens")


def cmd_quality(args: argparse.Namespace) -> int:
    from .quant.quality import quality_report, to_markdown, write_report

    report = quality_report(args.reference, args.candidate, voice=args.voice, frames=args.frames,
                            steps=args.steps, seed=args.seed, threads=args.threads)
    md, js = write_report(report, args.out)
    print(to_markdown(report))
    print(f"wrote {md} and {js}", file=sys.stderr)
    return 0


def _apply_profile(args: argparse.Namespace) -> None:
    """A device profile's runtime settings fill in the options not given on the command line."""
    if getattr(args, "profile", None) is None:
        return
    from .profiles import load_profile

    profile = load_profile(args.profile)
    for option, value in (("threads", profile.threads), ("steps", profile.steps), ("cfg", profile.cfg),
                          ("max_context", profile.max_context), ("codec_threads", profile.codec_threads)):
        if getattr(args, option, None) is None:
            setattr(args, option, value)
    args.codec_pipeline = getattr(args, "codec_pipeline", False) or profile.codec_pipeline


def cmd_devices(args: argparse.Namespace) -> int:
    from .profiles import list_profiles

    for p in list_profiles():
        print(f"{p.name:20s} {p.precision:8s} {p.threads:2d} threads  {p.memory_bandwidth_gbs:6.1f} GB/s  "
              f"{', '.join(p.execution_providers):10s} {p.description}")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from . import bench

    _apply_profile(args)
    info, rows = bench.run_bench(args.bundle, threads=args.threads, steps=args.steps, cfg_alpha=args.cfg or 1.2,
                                 frames=args.frames, repeats=args.repeats, max_context=args.max_context,
                                 verify=not args.no_verify, saved_graphs=False if args.no_saved_graphs else None,
                                 codec_threads=args.codec_threads, codec_pipeline=args.codec_pipeline)
    print(bench.to_json_lines(info, rows) if args.json else bench.to_markdown(info, rows))
    if args.plot:
        print(f"wrote {bench.plot(info, rows, args.plot)}", file=sys.stderr)
    if args.estimate:
        from .estimate import estimate_frame, estimate_profiles
        from .manifest import Manifest
        from .profiles import list_profiles, load_profile

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


def cmd_say(args: argparse.Namespace) -> int:
    from .audio import WavWriter
    from .runtime import Synthesizer

    _apply_profile(args)
    text = _read_text(args.text)
    noise = None
    if args.noise:
        try:
            noise = np.load(args.noise, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise VoxtralEdgeError(f"{args.noise}: cannot read a .npy array ({e})") from None
    synth = Synthesizer.open(args.bundle, threads=args.threads, verify=not args.no_verify,
                             max_context=args.max_context, saved_graphs=False if args.no_saved_graphs else None,
                             codec_threads=args.codec_threads, codec_pipeline=args.codec_pipeline)
    synth.voice(args.voice)  # an unknown voice fails before any file is created
    wav = WavWriter(args.output, synth.sample_rate) if args.output not in (None, "-") else None
    player = None
    try:
        if args.play:
            from .playback import Player

            player = Player(synth.sample_rate, prebuffer_s=float("inf"))  # set from the first chunk's pace
        interrupted = _speak(synth, text, args, wav, player, noise)
    except BaseException:
        if wav:
            wav.discard()
        if player:
            player.close()
        raise
    if wav:
        wav.close()
    result = synth.last_result
    if args.dump_codes:
        _save_npy(args.dump_codes, result.codes.astype(np.int32))
    print(_report(result, args.output or "the speakers"), file=sys.stderr)
    if player:
        print(f"playback: {player.played_s:.2f} s played, started after {player.started_after_s or 0:.2f} s, "
              f"{player.underruns} underruns ({player.underrun_s:.2f} s of silence inserted)", file=sys.stderr)
    if interrupted:
        print(f"voxtral-edge: interrupted; {args.output or 'output'} holds the {result.duration:.2f} s made so far",
              file=sys.stderr)
        return 130
    return 0


def _speak(synth, text: str, args: argparse.Namespace, wav, player, noise) -> bool:
    """Stream the speech to the WAV file, stdout and/or the player; True if Ctrl-C stopped it."""
    import time
    import warnings

    from .audio import to_pcm16
    from .runtime import RunawayWarning

    chunk_frames = args.chunk_frames
    chunks = synth.stream(text, args.voice, chunk_frames=chunk_frames, seed=args.seed, steps=args.steps,
                          cfg_alpha=1.2 if args.cfg is None else args.cfg, max_frames=args.max_frames, noise=noise,
                          normalize=not args.raw, lang=args.lang)
    previous = None  # when the last chunk arrived: the pace is measured past the first (which holds the prefill)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", RunawayWarning)
        try:
            for chunk in chunks:
                if wav:
                    wav.write(chunk)
                if args.output == "-":
                    sys.stdout.buffer.write(to_pcm16(chunk))
                    sys.stdout.buffer.flush()
                if player:
                    now = time.perf_counter()
                    if previous is not None and player.prebuffer_s == float("inf"):  # margin for the pace seen
                        from .playback import choose_prebuffer

                        frame_ms = 1e3 * (now - previous) / (len(chunk) // synth._samples_per_frame)
                        expected = args.max_frames or 10 * len(synth.tokenizer.encode(text).ids)
                        player.prebuffer_s = choose_prebuffer(frame_ms, chunk_frames, expected)
                    previous = now
                    player.write(chunk)
            if player:
                player.finish()
            interrupted = False
        except KeyboardInterrupt:
            chunks.close()
            if player:
                player.close()
            interrupted = True
    for w in caught:
        print(f"voxtral-edge: warning: {w.message}", file=sys.stderr)
    return interrupted


def cmd_verify(args: argparse.Namespace) -> int:
    from .manifest import verify_bundle

    report = verify_bundle(args.bundle, progress=True)
    print(f"{args.bundle}: all {report['files']} files match the manifest ({report['bytes'] / 1e9:.2f} GB hashed in "
          f"{report['seconds']:.1f} s); stamp renewed")
    return 0


def cmd_optimize(args: argparse.Namespace) -> int:
    from .optimized import optimize_bundle

    for name, r in optimize_bundle(args.bundle, threads=args.threads).items():
        print(f"{name}: {'made' if r['made'] else 'already saved'}, {r['mb']:.0f} MB in {r['path']} "
              f"({r['seconds']:.1f} s)")
    return 0


def cmd_render(args: argparse.Namespace) -> int:
    import warnings

    from .render import Settings, render

    settings = Settings(format=args.format, steps=args.steps, cfg=1.2 if args.cfg is None else args.cfg,
                        max_frames=args.max_frames, max_context=args.max_context, normalize=not args.raw)
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.showwarning = lambda message, *_, **__: print(f"voxtral-edge: warning: {message}", file=sys.stderr)
        summary = render(args.catalog, args.bundle, args.out, settings=settings, workers=args.workers,
                         threads=args.threads, ray=args.ray is not None, ray_address=args.ray or None,
                         verify=not args.no_verify)
    print(summary, file=sys.stderr)
    return 1 if summary.failed else 0


def cmd_voices(args: argparse.Namespace) -> int:
    from .manifest import Manifest

    manifest = Manifest.load(args.bundle, verify=False)
    for name, voice in sorted(manifest["voices"].items()):
        print(f"{name:20s} {voice['tokens']:4d} tokens")
    return 0


DEMO_TEXT = "Hello! This is voxtral-edge, speaking offline on your CPU."


def cmd_demo(args: argparse.Namespace) -> int:
    from .export.bundle import export_bundle
    from .export.make_checkpoint import make_checkpoint
    from .runtime import Synthesizer

    root = Path(args.dir)
    print(f"1/3 writing a tiny checkpoint with random weights to {root / 'checkpoint'}", file=sys.stderr)
    make_checkpoint(root / "checkpoint", size="tiny", seed=0, force=True, progress=False)
    print(f"2/3 exporting it to the bundle {root / 'bundle'}", file=sys.stderr)
    export_bundle(root / "checkpoint", root / "bundle", max_context=512, force=True, progress=False)
    print(f"3/3 speaking {DEMO_TEXT!r}", file=sys.stderr)
    synth = Synthesizer.open(root / "bundle")
    output = str(root / "demo.wav")
    result = synthesize_to(synth, DEMO_TEXT, "casual_male", output, seed=0, max_frames=args.max_frames)
    print(_report(result, output), file=sys.stderr)
    print(f"""
The pipeline ran end to end: tokenizer -> backbone -> flow head -> codec -> {output}.
The weights are random, so the audio is noise. To hear real speech, download the released checkpoint
(mistralai/Voxtral-4B-TTS-2603, CC BY-NC 4.0) and run:
  voxtral-edge export --checkpoint path/to/Voxtral-4B-TTS-2603 --out voxtral-bundle
  voxtral-edge say "Hello from the car." --bundle voxtral-bundle --voice casual_male -o hello.wav""")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from .serve.server import default_cache_dir, serve

    _apply_profile(args)
    try:
        from .serve.app import ServiceConfig
    except ImportError as e:
        raise UsageError(f"serve needs the [serve] extra ({e.name} is missing): pip install 'voxtral-edge[serve]'") \
            from None
    config = ServiceConfig(
        bundle=Path(args.bundle), model_name=args.served_model_name, api_key=args.api_key, threads=args.threads,
        max_context=args.max_context, verify=not args.no_verify, seed=args.seed, steps=args.steps,
        cfg=1.2 if args.cfg is None else args.cfg,
        cache_dir=None if args.no_cache else Path(args.cache_dir) if args.cache_dir else default_cache_dir(),
        cache_bytes=int(args.cache_mb * (1 << 20)), queue_limit=args.queue_limit,
        max_body_bytes=args.max_body_kb << 10)
    if not Path(args.bundle).is_dir():
        raise UsageError(f"--bundle {args.bundle}: not a folder (give a bundle made by `voxtral-edge export`)")
    serve(config, host=args.host, port=args.port, unix=args.unix, max_connections=args.max_connections,
          log_level=args.log_level)
    return 0


def _normalize_options(p: argparse.ArgumentParser, default: str) -> None:
    p.add_argument("--normalize", action="store_true",
                   help="normalize TEXT first, as `say` does (see `voxtral-edge normalize`)")
    p.add_argument("--lang", choices=LANGUAGES, metavar="L",
                   help=f"language for --normalize: {', '.join(LANGUAGES)} (default: {default})")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="voxtral-edge",
        description="Offline text-to-speech with Voxtral TTS 4B on a CPU: export the released checkpoint "
                    "to ONNX, quantize it, and speak.",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"voxtral-edge {__version__}")
    parser.add_argument("--debug", action="store_true", help="show the full traceback on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    def command(name: str, func, help: str, description: str, epilog: str = "") -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=description, epilog=epilog,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        p.set_defaults(func=func)
        return p

    p = command(
        "make-checkpoint", cmd_make_checkpoint, "write a checkpoint with random weights in the released layout",
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

    p = command(
        "tokens", cmd_tokens, "print the token ids of a text (JSON list)",
        "Tokenize TEXT with a tekken.json exactly as mistral-common does (no BOS/EOS) and print the ids "
        "as a JSON list. TEXT '-' reads standard input.",
        "example:\n  voxtral-edge tokens --tokenizer work/tiny/tekken.json 'Hello world'")
    p.add_argument("--tokenizer", required=True, metavar="TEKKEN_JSON", help="path to tekken.json")
    p.add_argument("text", metavar="TEXT")
    _normalize_options(p, "English")

    p = command(
        "prompt", cmd_prompt, "print the speech prompt ids for a text and voice (JSON list)",
        "Print the ids of the speech request prompt, [BOS] [BEGIN_AUDIO] [AUDIO] x N [NEXT_AUDIO_TEXT] "
        "text [REPEAT_AUDIO_TEXT] [BEGIN_AUDIO], as mistral-common's encode_speech_request builds it. "
        "TEXT '-' reads standard input.",
        "example:\n  voxtral-edge prompt --checkpoint work/tiny --voice casual_male 'Hello world'")
    p.add_argument("--checkpoint", required=True, metavar="DIR", help="checkpoint folder (reads its tekken.json)")
    p.add_argument("--voice", required=True, metavar="NAME", help="preset voice name")
    p.add_argument("text", metavar="TEXT")
    _normalize_options(p, "the voice's language")

    p = command(
        "normalize", cmd_normalize, "print a text as it will be spoken (numbers, units, times... in words)",
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

    p = command(
        "export", cmd_export, "export a checkpoint folder to a bundle (ONNX graphs + manifest)",
        "Build the bundle the runtime reads from a checkpoint folder in the released layout: "
        "backbone_step.onnx (with its KV cache interface), flow_head.onnx, codec_decoder.onnx, the embedding "
        "tables as memory-mappable .npy files, the voices, tokenizer.json and manifest.json (every file with "
        "its sha256). Tensors are streamed, so the full-size model exports within 24 GB of memory.",
        "example:\n  voxtral-edge export --checkpoint path/to/Voxtral-4B-TTS-2603 --out voxtral-bundle")
    p.add_argument("--checkpoint", required=True, metavar="DIR", help="checkpoint folder (released layout)")
    p.add_argument("--out", required=True, metavar="BUNDLE", help="bundle folder to create")
    p.add_argument("--max-context", type=_positive(int), metavar="N",
                   help="longest prompt + audio in positions, 12.5 per second of audio (default: 4096, or the "
                        "model's max_seq_len if smaller)")
    p.add_argument("--precision", default="fp32", metavar="PLAN",
                   help="fp32 (default), int8, int4, int4-all, int4-fast, int4-all-fast, or a TOML plan file; "
                        "weights are quantized one "
                        "at a time as they are written (see `voxtral-edge quantize --help`)")
    p.add_argument("--force", action="store_true", help="replace BUNDLE if it exists")

    p = command(
        "quantize", cmd_quantize, "write a quantized copy of an fp32 bundle",
        "Rewrite an fp32 bundle with a precision plan, weight by weight (the fp32 graph is never loaded "
        "whole). The same plans work with `voxtral-edge export --precision PLAN`, which quantizes while "
        "exporting and never writes fp32 graphs.",
        "plans:\n"
        "  fp32      nothing quantized\n"
        "  int8           backbone and codec 8-bit (MatMulNBits), flow head dynamic int8\n"
        "  int4           backbone 4-bit in blocks of 32, flow head and codec int8 (the quality default)\n"
        "  int4-all       backbone and flow head 4-bit, codec int8\n"
        "  int4-fast      int4 with the backbone in blocks of 128 (faster, a little less exact)\n"
        "  int4-all-fast  int4-all with the backbone in blocks of 128\n"
        "  FILE.toml per graph: method (nbits | dynamic-int8 | fp32), bits, block_size, symmetric,\n"
        "            accuracy_level, skip (weight-name patterns kept fp32); see src/voxtral_edge/quant/plans.py\n\n"
        "example:\n  voxtral-edge quantize voxtral-bundle --plan int4 --out voxtral-bundle-int4")
    p.add_argument("bundle", metavar="BUNDLE", help="fp32 bundle folder")
    p.add_argument("--plan", required=True, metavar="PLAN", help="a named plan or a TOML plan file")
    p.add_argument("--out", required=True, metavar="BUNDLE2", help="bundle folder to create")
    p.add_argument("--force", action="store_true", help="replace BUNDLE2 if it exists")

    p = command(
        "quality", cmd_quality, "measure a quantized bundle against the fp32 one (markdown + JSON report)",
        "Run both bundles on the same inputs and the same injected noise: per graph, cosine similarity and "
        "max error; end to end over several sentences, semantic and acoustic code agreement (teacher-forced "
        "and free-running), waveform SNR and log-mel distance; bundle sizes and ms per frame per graph.",
        "example:\n  voxtral-edge quality --reference voxtral-bundle --candidate voxtral-bundle-int4 --out int4-quality")
    p.add_argument("--reference", required=True, metavar="BUNDLE", help="the fp32 bundle")
    p.add_argument("--candidate", required=True, metavar="BUNDLE", help="the quantized bundle")
    p.add_argument("--out", default="quality-report", metavar="PATH",
                   help="report path without extension: writes PATH.md and PATH.json (default: quality-report)")
    p.add_argument("--voice", metavar="NAME", help="voice to use (default: the first)")
    p.add_argument("--frames", type=_positive(int), default=40, help="frames per sentence (default: 40)")
    p.add_argument("--steps", type=_positive(int), help="Euler steps (default: the model's)")
    p.add_argument("--seed", type=int, default=0, help="seed of the injected noise (default: 0)")
    p.add_argument("--threads", type=_positive(int), help="onnxruntime threads")

    p = command(
        "say", cmd_say, "speak a text to a WAV file (or raw PCM on stdout)",
        "Synthesize TEXT with a preset voice from a bundle. TEXT '-' reads standard input. The text is "
        "normalized first for --lang, else the voice's language (see `voxtral-edge normalize`; --raw speaks it "
        "as written). A summary with per-stage timings goes to standard error.",
        "examples:\n  voxtral-edge say 'Turn left in 200 metres.' --bundle voxtral-bundle --voice casual_male -o turn.wav\n"
        "  echo 'Bonjour' | voxtral-edge say - --bundle voxtral-bundle --voice fr_female -o - | aplay -f S16_LE -r 24000")
    p.add_argument("text", metavar="TEXT")
    p.add_argument("--bundle", required=True, metavar="DIR", help="bundle folder made by `voxtral-edge export`")
    p.add_argument("--voice", required=True, metavar="NAME", help="preset voice (see `voxtral-edge voices`)")
    p.add_argument("-o", "--output", metavar="FILE",
                   help="WAV file to write (written as the audio is made; Ctrl-C leaves a valid file of what was "
                        "made), or '-' for raw signed 16-bit little-endian mono PCM on stdout, as it is made")
    p.add_argument("--play", action="store_true",
                   help="play through the speakers as the audio is made (needs sounddevice and PortAudio)")
    p.add_argument("--chunk-frames", type=_positive(int), default=4, metavar="N",
                   help="frames (80 ms each) per audio chunk written or played (default: 4)")
    p.add_argument("--seed", type=_positive(int, 0, 2**63 - 1),
                   help="random seed of the flow-matching noise, 0..2^63-1 (default: random, reported)")
    p.add_argument("--steps", type=_positive(int, 1, 64), help="Euler steps per frame, 1..64 (default: the model's, 7)")
    p.add_argument("--cfg", type=_positive(float, 0, 10), metavar="ALPHA",
                   help="classifier-free guidance strength (default: 1.2; 1 skips the unconditional pass)")
    p.add_argument("--max-frames", type=_positive(int), metavar="N",
                   help="stop after N frames of 80 ms (default: 2048, or the rows of --noise)")
    p.add_argument("--noise", metavar="FILE.npy", help="float32 [frames, 36]: row f is frame f's initial noise")
    p.add_argument("--dump-codes", metavar="FILE.npy", help="also write the codes, int32 [frames, 37]")
    p.add_argument("--threads", type=_positive(int, 1, 256), help="onnxruntime threads (default: onnxruntime's choice)")
    p.add_argument("--no-verify", action="store_true",
                   help="skip the sha256 check of files changed since they were last verified (sizes are "
                        "still checked; see `voxtral-edge verify`)")
    p.add_argument("--max-context", type=_positive(int), metavar="N",
                   help="KV cache positions to allocate (default: the bundle's)")
    p.add_argument("--no-saved-graphs", action="store_true",
                   help="build the sessions from the bundle's graphs, neither using nor saving this machine's "
                        "optimized graphs (see `voxtral-edge optimize`)")
    p.add_argument("--profile", metavar="NAME|FILE",
                   help="device profile whose settings (threads, steps, cfg, max context, codec thread) fill in "
                        "unset options")
    p.add_argument("--codec-threads", type=_positive(int, 1, 256), metavar="N",
                   help="the codec's own onnxruntime threads (default: --threads)")
    p.add_argument("--codec-pipeline", action="store_true",
                   help="decode audio on a second thread while the next frames are computed (the same audio; "
                        "pays when the codec has cores of its own)")
    p.add_argument("--raw", action="store_true",
                   help="speak TEXT as written: no normalization (see `voxtral-edge normalize`)")
    p.add_argument("--lang", choices=LANGUAGES, metavar="L",
                   help=f"language TEXT is normalized for: {', '.join(LANGUAGES)} (default: the voice's, else en)")

    p = command("devices", cmd_devices, "list the shipped device profiles",
                "List the device profiles shipped with voxtral-edge (devices/*.toml): their precision plan, threads, "
                "memory bandwidth and execution providers. `--profile NAME|FILE` applies one to say and bench.")

    p = command(
        "bench", cmd_bench, "measure a bundle, llama-bench style (markdown or JSON lines)",
        "Open a bundle and synthesize a fixed sentence several times; print one row per measure with its "
        "median and spread: load time, prefill tok/s, backbone / flow head / codec ms per frame, flow head ms "
        "per Euler step, time to first audio, real-time factor, peak RSS; with the machine, thread count, "
        "onnxruntime version, bundle precision and git commit. With --estimate, calibrate the roofline model "
        "on this run and predict a frame's time on another device profile.",
        "examples:\n  voxtral-edge bench --bundle voxtral-int4\n"
        "  voxtral-edge bench --bundle voxtral-int4 --json --plot frame.png\n"
        "  voxtral-edge bench --bundle voxtral-int4 --estimate raspberry-pi-5   (or --estimate all)")
    p.add_argument("--bundle", required=True, metavar="DIR", help="bundle folder")
    p.add_argument("--profile", metavar="NAME|FILE", help="device profile for threads, steps, cfg, max context")
    p.add_argument("--threads", type=_positive(int), help="onnxruntime threads")
    p.add_argument("--codec-threads", type=_positive(int, 1, 256), metavar="N",
                   help="the codec's own onnxruntime threads (default: --threads)")
    p.add_argument("--codec-pipeline", action="store_true",
                   help="decode audio on a second thread while the next frames are computed (the same audio; "
                        "pays when the codec has cores of its own)")
    p.add_argument("--steps", type=_positive(int, 1, 64), help="Euler steps, 1..64 (default: the model's)")
    p.add_argument("--cfg", type=_positive(float, 0, 10), metavar="ALPHA", help="guidance strength (default: 1.2)")
    p.add_argument("--max-context", type=_positive(int), metavar="N", help="KV cache positions")
    p.add_argument("--frames", type=_positive(int), default=25, help="frames per run (default: 25, 2 s)")
    p.add_argument("--repeats", type=_positive(int), default=3, help="runs (default: 3)")
    p.add_argument("--json", action="store_true", help="JSON lines instead of a markdown table")
    p.add_argument("--no-verify", action="store_true",
                   help="load without checking sha256 (sizes still checked); by default only files changed since "
                        "they were last verified are hashed")
    p.add_argument("--no-saved-graphs", action="store_true",
                   help="build the sessions from the bundle's graphs, neither using nor saving optimized graphs")
    p.add_argument("--plot", metavar="FILE.png", help="also draw where a frame's time goes (needs matplotlib)")
    p.add_argument("--estimate", metavar="PROFILE|all", help="predict a frame's time on this device profile")
    p.add_argument("--here", default="x86-avx512", metavar="PROFILE",
                   help="the profile of this machine, for the calibration (default: x86-avx512)")

    p = command(
        "verify", cmd_verify, "hash every file of a bundle against its manifest (the full check)",
        "Hash every file of BUNDLE and compare it with the sha256 its manifest lists, whatever the verified "
        "stamp says; exit 1 naming the first file that differs. Opening a bundle (say, bench, Python) hashes "
        "only the files whose size, mtime, ctime or inode changed since they last matched; this command also "
        "finds what that cannot see (a change that kept all four, such as bit rot on the disk). It renews "
        "the stamp.",
        "example:\n  voxtral-edge verify voxtral-int4")
    p.add_argument("bundle", metavar="BUNDLE", help="bundle folder")

    p = command(
        "optimize", cmd_optimize, "save this machine's optimized graphs of a bundle, with packed weights to map",
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
    p.add_argument("--threads", type=_positive(int), help="onnxruntime threads")

    p = command(
        "render", cmd_render, "pre-render a catalog of prompts to audio files (local workers or Ray)",
        "Render every item of CATALOG to OUT/<id>.<ext> and list them in OUT/index.jsonl (id, file, sha256, "
        "duration, frames, seed, settings, spoken text, bundle identity), in catalog order. CATALOG is CSV "
        "(with a header) or JSON Lines: columns id, text, voice, and optional lang (the language the text is "
        "normalized in; default: the voice's), seed, steps, cfg; an item "
        "without a seed gets one derived from its id (the first 63 bits of sha256(id)). The whole catalog is "
        "checked first: a bad row stops the run before any work, naming its line.\n\n"
        "A rerun renders only the items that are new or changed (text, voice, seed, settings, bundle or "
        "runtime) or whose file is missing or altered; every file is written atomically, so an interrupted "
        "run leaves only whole files and the next run goes on from there. The same catalog and bundle give "
        "byte-identical files whatever the backend or the number of workers. Items that fail on their own "
        "(a text the context cannot hold) go to OUT/errors.jsonl and the run goes on.\n\n"
        "Exit status: 0 when every item is done, 1 when some failed, 2 on usage errors.",
        "examples:\n"
        "  voxtral-edge render prompts.csv --bundle voxtral-int4 --out clips/\n"
        "  voxtral-edge render prompts.jsonl --bundle voxtral-int4 --out clips/ --workers 2 --format pcm\n"
        "  voxtral-edge render prompts.csv --bundle /opt/voxtral-int4 --out clips/ --ray auto   (on a node of a running cluster)\n\n"
        "prompts.csv:\n"
        "  id,text,voice,lang,seed\n"
        "  nav_turn_left,Turn left in 200 metres.,casual_male,en,\n"
        "  nav_turn_left_fr,Tournez à gauche dans 200 mètres.,fr_female,fr,42")
    p.add_argument("catalog", metavar="CATALOG", help="the prompts: a .csv or .jsonl file")
    p.add_argument("--bundle", required=True, metavar="DIR",
                   help="bundle folder (with --ray: at this same path on every node)")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder (created if needed)")
    p.add_argument("--workers", type=_positive(int), metavar="N",
                   help="worker processes (or Ray actors), each holding the bundle once (default: as many as the "
                        "cores and the free memory hold; on Ray, as many as the cluster holds)")
    p.add_argument("--threads", type=_positive(int, 1, 256), metavar="T",
                   help="onnxruntime threads per worker (default: cores / workers; on Ray: 1, one CPU per actor)")
    p.add_argument("--ray", nargs="?", const="", metavar="ADDRESS",
                   help="render on a Ray cluster (needs voxtral-edge[fleet]): ADDRESS as ray.init takes it (auto, "
                        "HOST:6379, ray://HOST:10001); without one, RAY_ADDRESS or a new local cluster")
    p.add_argument("--format", choices=["wav", "pcm", "flac"], default="wav",
                   help="wav (16-bit mono), pcm (raw signed 16-bit little-endian), or flac (needs "
                        "voxtral-edge[flac]); default: wav")
    p.add_argument("--steps", type=_positive(int, 1, 64), help="Euler steps for items without a steps column "
                                                                "(default: the model's, 7)")
    p.add_argument("--cfg", type=_positive(float, 0, 10), metavar="ALPHA",
                   help="guidance strength for items without a cfg column (default: 1.2)")
    p.add_argument("--raw", action="store_true",
                   help="speak the texts as written (default: normalized, in the item's lang or its voice's "
                        "language, as `voxtral-edge normalize` prints them)")
    p.add_argument("--max-frames", type=_positive(int), metavar="N", help="stop each clip after N frames of 80 ms")
    p.add_argument("--max-context", type=_positive(int), metavar="N",
                   help="KV cache positions per worker (default: the bundle's); fewer take less memory")
    p.add_argument("--no-verify", action="store_true",
                   help="skip the sha256 check of the bundle's files on this machine (Ray actors always check)")

    p = command(
        "serve", cmd_serve, "run the speech service (OpenAI-compatible HTTP API, priorities, phrase cache)",
        "Serve a bundle over HTTP: POST /v1/audio/speech (OpenAI's speech API; wav or pcm, streamed as it is "
        "made), GET /v1/audio/voices, GET /v1/models, POST /v1/audio/prefetch, GET /health (503 while the bundle "
        "loads) and a test page at /. Requests have a priority (navigation, assistant, message, media, "
        "background): a higher one preempts a lower one at the next 80 ms frame, which then resumes where it "
        "stopped. Finished audio is kept in a phrase cache on disk. SIGTERM ends every stream at the next frame "
        "with valid audio. Binds to 127.0.0.1; any other address needs --api-key. Needs the [serve] extra.",
        "examples:\n  voxtral-edge serve --bundle voxtral-int4 --profile raspberry-pi-5\n"
        "  curl -s localhost:8000/v1/audio/speech -H 'Content-Type: application/json' \\\n"
        "       -d '{\"input\": \"Turn left.\", \"voice\": \"casual_male\", \"priority\": \"navigation\"}' -o turn.wav")
    p.add_argument("--bundle", required=True, metavar="DIR", help="bundle folder")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1; others need --api-key)")
    p.add_argument("--port", type=_positive(int, 0, 65535), default=8000, help="TCP port (default: 8000)")
    p.add_argument("--unix", metavar="PATH", help="serve on this unix socket instead of TCP")
    p.add_argument("--api-key", metavar="KEY", default=os.environ.get("VOXTRAL_EDGE_API_KEY"),
                   help="require 'Authorization: Bearer KEY' on /v1/ (default: $VOXTRAL_EDGE_API_KEY)")
    p.add_argument("--profile", metavar="NAME|FILE", help="device profile for threads, steps, cfg, max context")
    p.add_argument("--threads", type=_positive(int, 1, 256), help="onnxruntime threads")
    p.add_argument("--steps", type=_positive(int, 1, 64), help="default Euler steps (default: the model's)")
    p.add_argument("--cfg", type=_positive(float, 0, 10), metavar="ALPHA", help="default guidance (default: 1.2)")
    p.add_argument("--max-context", type=_positive(int), metavar="N", help="KV cache positions")
    p.add_argument("--seed", type=_positive(int, 0, 2**63 - 1), default=0,
                   help="seed of requests that give none (default: 0: a prompt always sounds the same)")
    p.add_argument("--served-model-name", metavar="NAME",
                   help="the model id of /v1/models and requests (default: the bundle's checkpoint folder name)")
    p.add_argument("--cache-dir", metavar="DIR",
                   help="phrase cache folder (default: $CACHE_DIRECTORY/phrases under systemd, else "
                        "~/.cache/voxtral-edge/phrases)")
    p.add_argument("--cache-mb", type=_positive(float), default=256, help="phrase cache size cap in MB (default: 256)")
    p.add_argument("--no-cache", action="store_true", help="keep no phrase cache")
    p.add_argument("--queue-limit", type=_positive(int), default=16,
                   help="requests per priority class, in progress or waiting, before 429 (default: 16)")
    p.add_argument("--max-connections", type=_positive(int), default=32,
                   help="concurrent connections before 503 (default: 32)")
    p.add_argument("--max-body-kb", type=_positive(int), default=64, help="request body limit in KB (default: 64)")
    p.add_argument("--log-level", choices=["debug", "info", "warning", "error"], default="info",
                   help="server log detail (default: info, one line per request)")
    p.add_argument("--no-verify", action="store_true", help="load without hashing the bundle (sizes still checked)")

    p = command("voices", cmd_voices, "list the preset voices of a bundle",
                "List the bundle's preset voices with the number of [AUDIO] tokens each takes in the prompt.")
    p.add_argument("--bundle", required=True, metavar="DIR", help="bundle folder")

    p = command(
        "demo", cmd_demo, "run the whole pipeline with no downloaded weights",
        "Make a tiny checkpoint with random weights, export it to a bundle, and speak a sentence to "
        "DIR/demo.wav. The weights are random, so the audio is noise: the demo shows the pipeline works "
        "on this machine and how long each stage takes.")
    p.add_argument("--dir", default="voxtral-demo", metavar="DIR", help="working folder (default: voxtral-demo)")
    p.add_argument("--max-frames", type=_positive(int), default=40, metavar="N",
                   help="frames to generate (default: 40, 3.2 s)")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "say" and args.output is None and not args.play:
        parser.error("say: give -o FILE (or -o - for stdout), --play, or both")
    try:
        return args.func(args)
    except VoxtralEdgeError as e:
        if args.debug:
            raise
        print(f"voxtral-edge: error: {e}", file=sys.stderr)
        return 2 if isinstance(e, UsageError) else 1
    except KeyboardInterrupt:
        print("voxtral-edge: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # a bug, or a failure below us (onnxruntime, the OS): one line, traceback on --debug
        if args.debug:
            raise
        print(f"voxtral-edge: internal error: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''} "
              f"(run with --debug for the traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
