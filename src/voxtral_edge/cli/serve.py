"""`voxtral-edge serve`: the speech service of a head unit (needs the [serve] extra)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from ..chain.resample import SAMPLE_RATES
from ..errors import UsageError
from .common import add_bundle_options, add_command, apply_profile, bundle_settings, positive


def serve(args: argparse.Namespace) -> int:
    from ..serve.server import default_cache_dir, serve as run
    from ..text.lexicon import load_lexicon

    apply_profile(args)
    try:
        from ..serve.app import DEADLINES_MS, ServiceConfig
        from ..serve.scheduler import AGING_FRAMES
    except ImportError as e:
        raise UsageError(f"serve needs the [serve] extra ({e.name} is missing): pip install 'voxtral-edge[serve]'") \
            from None
    if not Path(args.bundle).is_dir():
        raise UsageError(f"--bundle {args.bundle}: not a folder (give a bundle made by `voxtral-edge export`)")
    config = ServiceConfig(
        bundle=Path(args.bundle), model_name=args.served_model_name, api_key=args.api_key,
        synth_options=bundle_settings(args), seed=args.seed, steps=args.steps, cfg=args.cfg,
        chunk_frames=args.chunk_frames,
        cache_dir=None if args.no_cache else Path(args.cache_dir) if args.cache_dir else default_cache_dir(),
        cache_bytes=int(args.cache_mb * (1 << 20)), queue_limit=args.queue_limit,
        max_body_bytes=args.max_body_kb << 10, sample_rate=args.sample_rate, lexicon=load_lexicon(args.lexicon),
        aging={c: n for c, n in {**AGING_FRAMES, **dict(args.aging)}.items() if n},  # 0: never
        deadlines={c: ms for c, ms in {**DEADLINES_MS, **dict(args.deadline)}.items() if ms},
        memory_reserve=int(args.memory_reserve_mb * (1 << 20)))
    run(config, host=args.host, port=args.port, unix=args.unix, max_connections=args.max_connections,
        log_level=args.log_level)
    return 0


def class_value(text: str, top: bool = True) -> tuple[str, int]:
    """CLASS=N (--aging, --deadline)."""
    from ..serve.scheduler import PRIORITIES

    name, _, value = text.partition("=")
    classes = PRIORITIES if top else PRIORITIES[1:]
    if name not in classes or not value.isdigit():
        raise argparse.ArgumentTypeError(f"expected CLASS=N, CLASS one of {', '.join(classes)} and N a whole number, "
                                         f"found {text!r}")
    return name, int(value)


def add_serve(sub) -> None:
    p = add_command(
        sub, "serve", serve, "run the speech service (OpenAI-compatible HTTP API, priorities, phrase cache)",
        "Serve a bundle over HTTP: POST /v1/audio/speech (OpenAI's speech API; wav, pcm, flac, opus or mp3, "
        "streamed as it is made; the body's sample_rate, speed and loudness as say's options; SSML input, see the "
        "README), GET /v1/audio/marks/ID (where the marks and sentences of a request are heard: the address is in "
        "its response's X-Marks header), GET /v1/audio/voices, GET /v1/models, POST /v1/audio/prefetch, "
        "GET /health (503 while the bundle loads) and a test page at /. Requests have a priority (navigation, "
        "assistant, message, media, background): a higher one preempts a lower one at the next 80 ms frame, "
        "which then resumes where it stopped; a class that has waited its --aging bound competes one class "
        "higher, so none starves. "
        "With --batch B the requests competing at one class share each frame, up to B (each stream as it would "
        "be alone); a higher class still takes the next frame for itself. "
        "Identical requests in flight share one synthesis; a request's deadline_ms (default per class, "
        "--deadline) bounds the wait for its first audio (else 504). Finished audio is kept in a phrase cache on "
        "disk; a cache folder that turns read-only or full costs no request. GET /metrics answers in Prometheus' "
        "text format. A bundle file changed while serving and memory near its limit are answered with 503s, not "
        "a dead process. SIGTERM ends every stream at the next frame with valid audio. Binds to 127.0.0.1; any "
        "other address needs --api-key. Needs the [serve] extra.",
        "examples:\n  voxtral-edge serve --bundle voxtral-int4 --profile raspberry-pi-5\n"
        "  curl -s localhost:8000/v1/audio/speech -H 'Content-Type: application/json' \\\n"
        "       -d '{\"input\": \"Turn left.\", \"voice\": \"casual_male\", \"priority\": \"navigation\"}' -o turn.wav")
    p.add_argument("--bundle", required=True, metavar="DIR", help="bundle folder")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1; others need --api-key)")
    p.add_argument("--port", type=positive(int, 0, 65535), default=8000, help="TCP port (default: 8000)")
    p.add_argument("--unix", metavar="PATH", help="serve on this unix socket instead of TCP (mode 0660; a socket "
                   "left by a server that died is replaced, a live server's is not)")
    p.add_argument("--api-key", metavar="KEY", default=os.environ.get("VOXTRAL_EDGE_API_KEY"),
                   help="require 'Authorization: Bearer KEY' on /v1/ (default: $VOXTRAL_EDGE_API_KEY)")
    p.add_argument("--seed", type=positive(int, 0, 2**63 - 1), default=0,
                   help="seed of requests that give none (default: 0: a prompt always sounds the same)")
    p.add_argument("--sample-rate", type=int, choices=SAMPLE_RATES, metavar="HZ",
                   help=f"output rate of requests that give no sample_rate: {', '.join(map(str, SAMPLE_RATES))} "
                        f"(default: 24000, the model's)")
    p.add_argument("--lexicon", metavar="FILE",
                   help="pronunciation overrides for every request (TOML, see the README; default: "
                        "~/.config/voxtral-edge/lexicon.toml when it exists)")
    p.add_argument("--served-model-name", metavar="NAME",
                   help="the model id of /v1/models and requests (default: the bundle's checkpoint folder name)")
    p.add_argument("--cache-dir", metavar="DIR",
                   help="phrase cache folder (default: $CACHE_DIRECTORY/phrases under systemd, else "
                        "~/.cache/voxtral-edge/phrases)")
    p.add_argument("--cache-mb", type=positive(float), default=256, help="phrase cache size cap in MB (default: 256)")
    p.add_argument("--no-cache", action="store_true", help="keep no phrase cache")
    p.add_argument("--queue-limit", type=positive(int), default=16,
                   help="requests per priority class, in progress or waiting, before 429 (default: 16)")
    p.add_argument("--max-connections", type=positive(int), default=32,
                   help="concurrent connections before 503 (default: 32)")
    p.add_argument("--max-body-kb", type=positive(int), default=64, help="request body limit in KB (default: 64)")
    p.add_argument("--log-level", choices=["debug", "info", "warning", "error"], default="info",
                   help="server log detail (default: info, one line per request)")
    p.add_argument("--aging", type=lambda text: class_value(text, top=False), action="append", default=[],
                   metavar="CLASS=FRAMES",
                   help="frames the other classes may make while the first request of CLASS waits, before it "
                        "competes one class higher; 0: never (default: assistant=25 message=50 media=100 "
                        "background=250; 80 ms of speech per frame)")
    p.add_argument("--deadline", type=class_value, action="append", default=[], metavar="CLASS=MS",
                   help="deadline_ms of CLASS's requests that give none: their first audio must start within it, "
                        "else 504; 0: none (default: navigation=5000)")
    p.add_argument("--memory-reserve-mb", type=positive(float, 0), default=256, metavar="MB",
                   help="new syntheses get 503 while less than this remains under the process's memory limit "
                        "(cgroup memory.max or RLIMIT_AS; default: 256)")
    add_bundle_options(p, pipeline=False)


COMMANDS = [add_serve]
