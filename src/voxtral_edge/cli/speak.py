"""Speaking: `say` (a file, raw PCM on stdout, the speakers), `voices`, and the `demo` that needs no
downloaded weights."""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

import numpy as np

from .. import defaults
from ..chain import SAMPLE_FORMATS, SAMPLE_RATES, SPEED_RANGE
from ..chain.loudness import LOUDNESS_RANGE
from ..files import replace_file
from ..errors import VoxtralEdgeError
from ..text.tables import LANGUAGES
from .common import add_bundle_options, add_command, apply_profile, bundle_settings, positive, read_text, report, \
    save_npy


CONTAINERS = {".wav": "wav", ".flac": "flac", ".ogg": "opus", ".opus": "opus", ".mp3": "mp3"}


def say(args: argparse.Namespace) -> int:
    from ..audio import WavWriter
    from ..chain import Output
    from ..runtime import Synthesizer
    from ..speech import Speech
    from ..text.lexicon import load_lexicon

    apply_profile(args)
    text = read_text(args.text)
    noise = None
    if args.noise:
        try:
            noise = np.load(args.noise, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise VoxtralEdgeError(f"{args.noise}: cannot read a .npy array ({e})") from None
    to_file = args.output not in (None, "-")
    container = CONTAINERS.get(Path(args.output).suffix.lower(), "wav") if to_file else "pcm"
    # a file alone is normalized as a whole; a stream (stdout, speakers) takes its voice's stored gain
    whole = to_file and not args.play
    output = Output(args.sample_rate, args.speed, args.loudness, container if whole else "pcm", args.format)
    lexicon = load_lexicon(args.lexicon)
    synth = Synthesizer.open(args.bundle, **bundle_settings(args))
    synth.voice(args.voice)  # an unknown voice fails before any file is created
    speech = Speech(synth, text, args.voice, output, stream=not whole, chunk_frames=args.chunk_frames,
                    seed=args.seed, steps=args.steps, cfg_alpha=args.cfg, max_frames=args.max_frames, noise=noise,
                    normalize=not args.raw, lang=args.lang, ssml=True if args.ssml else None, lexicon=lexicon,
                    timings=bool(args.marks))
    wav = WavWriter(args.output, args.sample_rate) if to_file and container == "wav" else None
    encoder = None
    if to_file and container != "wav":
        from ..chain.encode import Encoder

        encoder = Encoder(container, args.sample_rate, stream=False)
    stdout = None
    if args.output == "-":
        from ..chain.encode import Encoder

        stdout = Encoder("pcm", args.sample_rate, args.format)
    player = None
    try:
        if args.play:
            from ..playback import Player

            player = Player(args.sample_rate, prebuffer_s=float("inf"))  # set from the first chunk's pace
        interrupted = _speak(speech, text, args, wav, encoder, stdout, player)
    except BaseException:
        if wav:
            wav.discard()
        if player:
            player.close()
        raise
    if wav:
        wav.close()
    if encoder:
        replace_file(args.output, encoder.finish())
    result = speech.result or synth.last_result
    if args.dump_codes:
        save_npy(args.dump_codes, result.codes.astype(np.int32))
    if args.marks:
        replace_file(args.marks, (json.dumps([t.as_dict() for t in speech.timings], indent=1) + "\n").encode())
    print(report(result, args.output or "the speakers"), file=sys.stderr)
    if player:
        print(f"playback: {player.played_s:.2f} s played, started after {player.started_after_s or 0:.2f} s, "
              f"{player.underruns} underruns ({player.underrun_s:.2f} s of silence inserted)", file=sys.stderr)
    if interrupted:
        print(f"voxtral-edge: interrupted; {args.output or 'output'} holds the {result.duration:.2f} s made so far",
              file=sys.stderr)
        return 130
    return 0


def _speak(speech, text: str, args: argparse.Namespace, wav, encoder, stdout, player) -> bool:
    """Stream the speech to the WAV file, an encoder, stdout and/or the player; True if Ctrl-C stopped it."""
    from ..runtime import RunawayWarning

    rate = args.sample_rate
    chunks = speech.audio()
    previous = None  # when the last chunk arrived: the pace is measured past the first (which holds the prefill)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", RunawayWarning)
        try:
            for chunk in chunks:
                if wav:
                    wav.write(chunk)
                if encoder:
                    encoder.feed(chunk)
                if stdout:
                    sys.stdout.buffer.write(stdout.feed(chunk))
                    sys.stdout.buffer.flush()
                if player:
                    now = time.perf_counter()
                    if previous is not None and player.prebuffer_s == float("inf"):  # margin for the pace seen
                        from ..playback import choose_prebuffer

                        frame_ms = 1e3 * (now - previous) / max(len(chunk) / rate / 0.08, 1e-9)
                        expected = args.max_frames or 10 * len(speech.synth.tokenizer.encode(text).ids)
                        player.prebuffer_s = choose_prebuffer(frame_ms, args.chunk_frames, expected)
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


def add_say(sub) -> None:
    p = add_command(
        sub, "say", say, "speak a text to a WAV file (or raw PCM on stdout)",
        "Synthesize TEXT with a preset voice from a bundle. TEXT '-' reads standard input. The text is "
        "normalized first for --lang, else the voice's language (see `voxtral-edge normalize`; --raw speaks it "
        "as written). A summary with per-stage timings goes to standard error.",
        "examples:\n  voxtral-edge say 'Turn left in 200 metres.' --bundle voxtral-bundle --voice casual_male -o turn.wav\n"
        "  echo 'Bonjour' | voxtral-edge say - --bundle voxtral-bundle --voice fr_female -o - | aplay -f S16_LE -r 24000")
    p.add_argument("text", metavar="TEXT")
    p.add_argument("--bundle", required=True, metavar="DIR", help="bundle folder made by `voxtral-edge export`")
    p.add_argument("--voice", required=True, metavar="NAME", help="preset voice (see `voxtral-edge voices`)")
    p.add_argument("-o", "--output", metavar="FILE",
                   help="file to write: .wav (written as the audio is made; Ctrl-C leaves a valid file of what was "
                        "made), or .flac, .ogg/.opus (Ogg Opus) or .mp3 (written at the end; need the [audio] "
                        "extra); or '-' for raw little-endian mono PCM on stdout (see --format), as it is made")
    p.add_argument("--sample-rate", type=int, choices=SAMPLE_RATES, default=24000, metavar="HZ",
                   help=f"output rate: {', '.join(map(str, SAMPLE_RATES))} (default: 24000, the model's; others are "
                        f"resampled with libsoxr)")
    p.add_argument("--format", choices=SAMPLE_FORMATS, default="s16",
                   help="raw PCM on stdout: s16 (signed 16-bit) or f32 (32-bit float); default: s16")
    p.add_argument("--speed", type=positive(float, *SPEED_RANGE), default=1.0,
                   help=f"speaking rate, {SPEED_RANGE[0]:g} to {SPEED_RANGE[1]:g}, the pitch kept (default: 1)")
    p.add_argument("--loudness", type=positive(float, *LOUDNESS_RANGE), metavar="LUFS",
                   help="loudness target (ITU-R BS.1770), e.g. -16 or -23: a file is normalized as a whole; a "
                        "stream (stdout, --play) takes the gain its voice needs, measured once and kept in the "
                        "user cache; never above -1 dBTP (a true-peak limiter). Default: as made. Needs [audio]")
    p.add_argument("--ssml", action="store_true",
                   help="TEXT is SSML (the default when it starts with <speak); see the README for the subset")
    p.add_argument("--marks", metavar="FILE.json",
                   help="write where each <mark> and each sentence starts: [{name, kind, sample, time_s}], at the "
                        "output's rate and speed, exact to the 80 ms frame (each sentence is then spoken as a "
                        "piece of its own)")
    p.add_argument("--lexicon", metavar="FILE",
                   help="pronunciation overrides (TOML, see the README; default: ~/.config/voxtral-edge/"
                        "lexicon.toml when it exists)")
    p.add_argument("--play", action="store_true",
                   help="play through the speakers as the audio is made (needs sounddevice and PortAudio)")
    p.add_argument("--seed", type=positive(int, 0, 2**63 - 1),
                   help="random seed of the flow-matching noise, 0..2^63-1 (default: random, reported)")
    p.add_argument("--max-frames", type=positive(int), metavar="N",
                   help=f"stop after N frames of 80 ms (default: {defaults.MAX_FRAMES} per piece of text, or the "
                        f"rows of --noise)")
    p.add_argument("--noise", metavar="FILE.npy", help="float32 [frames, 36]: row f is frame f's initial noise")
    p.add_argument("--dump-codes", metavar="FILE.npy", help="also write the codes, int32 [frames, 37]")
    p.add_argument("--raw", action="store_true",
                   help="speak TEXT as written: no normalization (see `voxtral-edge normalize`)")
    p.add_argument("--lang", choices=LANGUAGES, metavar="L",
                   help=f"language TEXT is normalized for: {', '.join(LANGUAGES)} (default: the voice's, else en)")
    add_bundle_options(p)


def voices(args: argparse.Namespace) -> int:
    from ..manifest import Manifest

    manifest = Manifest.load(args.bundle, verify=False)
    for name, voice in sorted(manifest["voices"].items()):
        print(f"{name:20s} {voice['tokens']:4d} tokens")
    return 0


def add_voices(sub) -> None:
    p = add_command(sub, "voices", voices, "list the preset voices of a bundle",
                    "List the bundle's preset voices with the number of [AUDIO] tokens each takes in the prompt.")
    p.add_argument("--bundle", required=True, metavar="DIR", help="bundle folder")


DEMO_TEXT = "Hello! This is voxtral-edge, speaking offline on your CPU."


def demo(args: argparse.Namespace) -> int:
    from ..audio import write_wav
    from ..export.bundle import export_bundle
    from ..export.make_checkpoint import make_checkpoint
    from ..runtime import Synthesizer

    root = Path(args.dir)
    print(f"1/3 writing a tiny checkpoint with random weights to {root / 'checkpoint'}", file=sys.stderr)
    make_checkpoint(root / "checkpoint", size="tiny", seed=0, force=True, progress=False)
    print(f"2/3 exporting it to the bundle {root / 'bundle'}", file=sys.stderr)
    export_bundle(root / "checkpoint", root / "bundle", max_context=512, force=True, progress=False)
    print(f"3/3 speaking {DEMO_TEXT!r}", file=sys.stderr)
    synth = Synthesizer.open(root / "bundle")
    output = str(root / "demo.wav")
    result = synth.synthesize(DEMO_TEXT, "casual_male", seed=0, max_frames=args.max_frames)
    write_wav(output, result.audio, result.sample_rate)
    print(report(result, output), file=sys.stderr)
    print(f"""
The pipeline ran end to end: tokenizer -> backbone -> flow head -> codec -> {output}.
The weights are random, so the audio is noise. To hear real speech, download the released checkpoint
(mistralai/Voxtral-4B-TTS-2603, CC BY-NC 4.0) and run:
  voxtral-edge export --checkpoint path/to/Voxtral-4B-TTS-2603 --out voxtral-bundle
  voxtral-edge say "Hello from the car." --bundle voxtral-bundle --voice casual_male -o hello.wav""")
    return 0


def add_demo(sub) -> None:
    p = add_command(
        sub, "demo", demo, "run the whole pipeline with no downloaded weights",
        "Make a tiny checkpoint with random weights, export it to a bundle, and speak a sentence to "
        "DIR/demo.wav. The weights are random, so the audio is noise: the demo shows the pipeline works "
        "on this machine and how long each stage takes.")
    p.add_argument("--dir", default="voxtral-demo", metavar="DIR", help="working folder (default: voxtral-demo)")
    p.add_argument("--max-frames", type=positive(int), default=40, metavar="N",
                   help="frames to generate (default: 40, 3.2 s)")


COMMANDS = [add_say, add_voices, add_demo]
