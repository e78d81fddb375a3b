"""`voxtral-edge`: each command is a thin layer over one library call with the same arguments.

Errors a user can act on print one line and exit 1 (2 for bad usage); `--debug` shows the traceback.
Commands that need the exporter import it when they run, so the runtime never loads it.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from voxtral_edge import __version__
from voxtral_edge.errors import VoxtralEdgeError


def _read_text(text: str) -> str:
    """TEXT argument, or standard input when it is '-' (one trailing newline dropped, as `echo` adds it)."""
    if text != "-":
        return text
    data = sys.stdin.buffer.read()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise VoxtralEdgeError(f"standard input: not valid UTF-8 at byte {e.start}") from None
    return text[:-2] if text.endswith("\r\n") else text[:-1] if text.endswith("\n") else text


def cmd_make_checkpoint(args: argparse.Namespace) -> int:
    from voxtral_edge.export.make_checkpoint import make_checkpoint

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


def cmd_tokens(args: argparse.Namespace) -> int:
    from voxtral_edge.tekken import Tekken

    print(json.dumps(Tekken.from_file(args.tokenizer).encode(_read_text(args.text))))
    return 0


def cmd_prompt(args: argparse.Namespace) -> int:
    from voxtral_edge.prompt import tekken_speech_prompt
    from voxtral_edge.tekken import Tekken

    tekken = Tekken.from_file(Path(args.checkpoint) / "tekken.json")
    print(json.dumps(tekken_speech_prompt(tekken, _read_text(args.text), args.voice)))
    return 0


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
        "  full   the released shapes: 386 tensors, 20 voices, about 8 GB on disk\n\n"
        "example:\n  voxtral-edge make-checkpoint --size tiny --seed 0 --out work/tiny")
    p.add_argument("--size", choices=["tiny", "full"], default="tiny", help="which shapes (default: tiny)")
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

    p = command(
        "prompt", cmd_prompt, "print the speech prompt ids for a text and voice (JSON list)",
        "Print the ids of the speech request prompt, [BOS] [BEGIN_AUDIO] [AUDIO] x N [NEXT_AUDIO_TEXT] "
        "text [REPEAT_AUDIO_TEXT] [BEGIN_AUDIO], as mistral-common's encode_speech_request builds it. "
        "TEXT '-' reads standard input.",
        "example:\n  voxtral-edge prompt --checkpoint work/tiny --voice casual_male 'Hello world'")
    p.add_argument("--checkpoint", required=True, metavar="DIR", help="checkpoint folder (reads its tekken.json)")
    p.add_argument("--voice", required=True, metavar="NAME", help="preset voice name")
    p.add_argument("text", metavar="TEXT")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except VoxtralEdgeError as e:
        if args.debug:
            raise
        print(f"voxtral-edge: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("voxtral-edge: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
