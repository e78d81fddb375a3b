"""`voxtral-edge`: each command is a thin layer over one library call with the same arguments.

Each command lives beside the function that builds its parser (`add_<command>`), in the module of its
part: `speak` (say, voices, demo), `serve`, `render`, `model` (normalize, export, quantize, quality,
make-checkpoint, tokens, prompt), `measure` (bench, devices, verify, optimize) and `interfaces` (wyoming,
speechd-config, speechd-speak); `common` holds what
they share. Errors a user can act on print one line and exit 1 (2 for bad usage); `--debug` shows the
traceback. Commands that need the exporter import it when they run, so the runtime never loads it.
"""

from __future__ import annotations

import argparse
import sys

from .. import __version__
from ..errors import UsageError, VoxtralEdgeError
from . import interfaces, measure, model, render, serve, speak

COMMANDS = [*speak.COMMANDS, *serve.COMMANDS, *render.COMMANDS, *model.COMMANDS, *measure.COMMANDS,
            *interfaces.COMMANDS]


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
    for add in COMMANDS:
        add(sub)
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
