"""The standard speech interfaces: `wyoming` (Home Assistant and voice hubs) and speech-dispatcher
(`speechd-config`, and `speechd-speak`, the command its generic module runs)."""

from __future__ import annotations

import argparse
import sys

from ..chain import SAMPLE_RATES, SPEED_RANGE
from ..chain.loudness import LOUDNESS_RANGE
from ..errors import UsageError
from .common import add_bundle_options, add_command, apply_profile, bundle_settings, positive, read_text


def wyoming(args: argparse.Namespace) -> int:
    import asyncio
    import logging

    try:
        from ..wyoming import WyomingConfig, serve
    except ImportError as e:
        raise UsageError(f"wyoming needs the [wyoming] extra ({e.name} is missing): "
                         f"pip install 'voxtral-edge[wyoming]'") from None
    from ..chain import Output
    from ..runtime import Synthesizer
    from ..text.lexicon import load_lexicon

    apply_profile(args)
    logging.basicConfig(level=getattr(logging, args.log_level.upper()), format="%(asctime)s %(name)s %(message)s")
    output = Output(args.sample_rate, args.speed, args.loudness, "pcm")
    synth = Synthesizer.open(args.bundle, **bundle_settings(args))
    synth.voice(args.voice)
    options = {"steps": args.steps, "cfg_alpha": args.cfg, "lexicon": load_lexicon(args.lexicon)}
    if args.chunk_frames:
        options["chunk_frames"] = args.chunk_frames
    config = WyomingConfig(args.voice, output, args.seed, options)
    print(f"voxtral-edge: serving Wyoming on {args.uri} (voices: {', '.join(sorted(synth.voices))})", file=sys.stderr)
    try:
        asyncio.run(serve(synth, config, args.uri))
    except KeyboardInterrupt:
        pass
    return 0


def add_wyoming(sub) -> None:
    p = add_command(
        sub, "wyoming", wyoming, "serve the Wyoming protocol (Home Assistant, voice hubs), as Piper does",
        "Serve a bundle over the Wyoming protocol: `describe` answers with the voices and their languages, "
        "`synthesize` (text or SSML) with audio-start, 16-bit mono audio chunks as they are made, audio-stop; "
        "streamed text (synthesize-start/-chunk/-stop) is spoken sentence by sentence as sentences complete. "
        "Every request uses --seed, so a phrase always sounds the same. Needs the [wyoming] extra.",
        "examples:\n  voxtral-edge wyoming --uri tcp://127.0.0.1:10200 --bundle voxtral-int4 --voice casual_male\n"
        "  (Home Assistant: Settings > Devices & services > Add integration > Wyoming Protocol, host and port)")
    p.add_argument("--uri", default="tcp://127.0.0.1:10200",
                   help="where to listen: tcp://HOST:PORT, unix://PATH or stdio:// (default: tcp://127.0.0.1:10200)")
    p.add_argument("--bundle", required=True, metavar="DIR", help="bundle folder")
    p.add_argument("--voice", required=True, metavar="NAME", help="the voice of requests that name none")
    p.add_argument("--sample-rate", type=int, choices=SAMPLE_RATES, default=24000, metavar="HZ",
                   help=f"audio rate: {', '.join(map(str, SAMPLE_RATES))} (default: 24000)")
    p.add_argument("--speed", type=positive(float, *SPEED_RANGE), default=1.0,
                   help=f"speaking rate, {SPEED_RANGE[0]:g} to {SPEED_RANGE[1]:g} (default: 1)")
    p.add_argument("--loudness", type=positive(float, *LOUDNESS_RANGE), metavar="LUFS",
                   help="loudness target (the voice's gain, measured once; needs [audio])")
    p.add_argument("--seed", type=positive(int, 0, 2**63 - 1), default=0, help="seed of every request (default: 0)")
    p.add_argument("--lexicon", metavar="FILE", help="pronunciation overrides (default: ~/.config/voxtral-edge/"
                                                     "lexicon.toml when it exists)")
    p.add_argument("--log-level", choices=["debug", "info", "warning", "error"], default="info")
    add_bundle_options(p)


def speechd_config(args: argparse.Namespace) -> int:
    from ..manifest import Manifest
    from ..speechd import install, module_config

    voices = sorted(Manifest.load(args.bundle, verify=False)["voices"])
    service = None if args.no_service else args.service
    if not args.install:
        sys.stdout.write(module_config(args.bundle, voices, service=service))
        return 0
    for path in install(args.bundle, voices, service=service, make_default=args.default):
        print(f"wrote {path}", file=sys.stderr)
    print("speech-dispatcher reads it when it next starts: `spd-say -o voxtral-edge 'Hello'` (a running daemon: "
          "`killall speech-dispatcher` first, or log out and in)", file=sys.stderr)
    return 0


def add_speechd_config(sub) -> None:
    p = add_command(
        sub, "speechd-config", speechd_config, "print or install the speech-dispatcher module configuration",
        "Print the configuration of a speech-dispatcher generic module (sd_generic) that speaks with the "
        "bundle's voices (listed with their languages), or with --install write it to "
        "$XDG_CONFIG_HOME/speech-dispatcher/modules/voxtral-edge.conf and load it from the user's speechd.conf "
        "(a copy of the system one if there is none; the other installed modules stay listed). For each "
        "message speech-dispatcher runs `voxtral-edge speechd-speak`, which asks the running service "
        "(`voxtral-edge serve`, where the model is already loaded) and opens the bundle itself when none "
        "answers. speech-dispatcher's rate (-100..100) becomes the speed 2^(rate/100).",
        "examples:\n  voxtral-edge speechd-config --bundle /opt/voxtral-int4 --install --default\n"
        "  spd-say -o voxtral-edge -y casual_male 'Turn left in two hundred metres.'")
    p.add_argument("--bundle", required=True, metavar="DIR", help="bundle folder (its absolute path is written)")
    p.add_argument("--service", default="http://127.0.0.1:8000", metavar="URL",
                   help="the voxtral-edge service to ask first (default: http://127.0.0.1:8000)")
    p.add_argument("--no-service", action="store_true", help="always open the bundle (no service is asked)")
    p.add_argument("--install", action="store_true", help="write the configuration for this user")
    p.add_argument("--default", action="store_true", help="with --install: make voxtral-edge the default module")


def speechd_speak(args: argparse.Namespace) -> int:
    from ..speechd import speak

    speak(read_text(args.text), args.voice, bundle=args.bundle, rate=args.rate, lang=args.lang, service=args.service)
    return 0


def add_speechd_speak(sub) -> None:
    p = add_command(
        sub, "speechd-speak", speechd_speak, "speak one speech-dispatcher message (run by its generic module)",
        "Read a message on standard input and write it as a streamed WAV on standard output: through the "
        "service at --service when it answers, else from the bundle. speech-dispatcher's generic module runs "
        "it (see `voxtral-edge speechd-config`).")
    p.add_argument("text", nargs="?", default="-", metavar="TEXT", help="the message (default: - , standard input)")
    p.add_argument("--bundle", required=True, metavar="DIR", help="bundle folder")
    p.add_argument("--voice", required=True, metavar="NAME", help="preset voice")
    p.add_argument("--lang", metavar="L", help="speech-dispatcher's language of the message")
    p.add_argument("--rate", type=int, default=0, help="speech-dispatcher's rate, -100..100 (default: 0)")
    p.add_argument("--service", metavar="URL", help="the voxtral-edge service to ask first")


COMMANDS = [add_wyoming, add_speechd_config, add_speechd_speak]
