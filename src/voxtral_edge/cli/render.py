"""`voxtral-edge render`: a catalog of prompts to audio files, on local workers or a Ray cluster."""

from __future__ import annotations

import argparse
import sys
import warnings

from .. import defaults
from ..chain import SAMPLE_RATES, SPEED_RANGE
from ..chain.loudness import LOUDNESS_RANGE
from .common import add_command, positive


def render(args: argparse.Namespace) -> int:
    from ..render import Settings, render as run
    from ..text.lexicon import load_lexicon

    settings = Settings(format=args.format, steps=args.steps, cfg=defaults.CFG_ALPHA if args.cfg is None else args.cfg,
                        max_frames=args.max_frames, max_context=args.max_context, normalize=not args.raw,
                        sample_rate=args.sample_rate, speed=args.speed, loudness=args.loudness,
                        lexicon=load_lexicon(args.lexicon))
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.showwarning = lambda message, *_, **__: print(f"voxtral-edge: warning: {message}", file=sys.stderr)
        summary = run(args.catalog, args.bundle, args.out, settings=settings, workers=args.workers,
                      threads=args.threads, ray=args.ray is not None, ray_address=args.ray or None,
                      verify=not args.no_verify, batch=args.batch)
    print(summary, file=sys.stderr)
    return 1 if summary.failed else 0


def add_render(sub) -> None:
    p = add_command(
        sub, "render", render, "pre-render a catalog of prompts to audio files (local workers or Ray)",
        "Render every item of CATALOG to OUT/<id>.<ext> and list them in OUT/index.jsonl (id, file, sha256, "
        "duration, frames, seed, settings, spoken text, bundle identity), in catalog order. CATALOG is CSV "
        "(with a header) or JSON Lines: columns id, text, voice, and optional lang (the language the text is "
        "normalized in; default: the voice's), seed, steps, cfg; an item "
        "without a seed gets one derived from its id (the first 63 bits of sha256(id)). The whole catalog is "
        "checked first: a bad row stops the run before any work, naming its line.\n\n"
        "A rerun renders only the items that are new or changed (text, voice, seed, settings, bundle or "
        "runtime) or whose file is missing or altered; every file is written atomically, so an interrupted "
        "run leaves only whole files and the next run goes on from there. The same catalog and bundle give "
        "byte-identical files whatever the backend, the number of workers or the batch. Items that fail on their own "
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
    p.add_argument("--workers", type=positive(int), metavar="N",
                   help="worker processes (or Ray actors), each holding the bundle once (default: as many as the "
                        "cores and the free memory hold; on Ray, as many as the cluster holds)")
    p.add_argument("--batch", type=positive(int, 1, 64), default=1, metavar="B",
                   help="items each worker renders together, 1..64 (default: 1): one backbone and flow-head pass "
                        "serves B items, a finished item's row taken by the next at once; the same bytes")
    p.add_argument("--threads", type=positive(int, 1, 256), metavar="T",
                   help="onnxruntime threads per worker (default: cores / workers; on Ray: 1, one CPU per actor)")
    p.add_argument("--ray", nargs="?", const="", metavar="ADDRESS",
                   help="render on a Ray cluster (needs voxtral-edge[fleet]): ADDRESS as ray.init takes it (auto, "
                        "HOST:6379, ray://HOST:10001); without one, RAY_ADDRESS or a new local cluster")
    p.add_argument("--format", choices=["wav", "pcm", "flac", "opus", "mp3"], default="wav",
                   help="wav (16-bit mono), pcm (raw signed 16-bit little-endian), flac, opus (Ogg Opus: 8000, "
                        "16000, 24000 or 48000 Hz) or mp3 (the last three need voxtral-edge[audio]); default: wav")
    p.add_argument("--sample-rate", type=int, choices=SAMPLE_RATES, metavar="HZ",
                   help=f"clip rate: {', '.join(map(str, SAMPLE_RATES))} (default: 24000, the model's)")
    p.add_argument("--speed", type=positive(float, *SPEED_RANGE), default=1.0,
                   help=f"speaking rate, {SPEED_RANGE[0]:g} to {SPEED_RANGE[1]:g}, the pitch kept (default: 1)")
    p.add_argument("--loudness", type=positive(float, *LOUDNESS_RANGE), metavar="LUFS",
                   help="bring each clip to this loudness (ITU-R BS.1770; true peak <= -1 dBTP); needs [audio]")
    p.add_argument("--steps", type=positive(int, 1, defaults.MAX_STEPS),
                   help="Euler steps for items without a steps column (default: the model's, 7)")
    p.add_argument("--cfg", type=positive(float, 0, defaults.MAX_CFG), metavar="ALPHA",
                   help=f"guidance strength for items without a cfg column (default: {defaults.CFG_ALPHA})")
    p.add_argument("--raw", action="store_true",
                   help="speak the texts as written (default: normalized, in the item's lang or its voice's "
                        "language, as `voxtral-edge normalize` prints them)")
    p.add_argument("--lexicon", metavar="FILE",
                   help="pronunciation overrides applied when normalizing (default: ~/.config/voxtral-edge/"
                        "lexicon.toml when it exists); a changed entry renders again only the items it respells")
    p.add_argument("--max-frames", type=positive(int), metavar="N", help="stop each clip after N frames of 80 ms")
    p.add_argument("--max-context", type=positive(int), metavar="N",
                   help="KV cache positions per worker (default: the bundle's); fewer take less memory")
    p.add_argument("--no-verify", action="store_true",
                   help="skip the sha256 check of the bundle's files on this machine (Ray actors always check)")


COMMANDS = [add_render]
