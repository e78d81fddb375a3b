"""Load on the speech service: many clients, mixed priorities, over loopback only.

    python benchmarks/serve_load.py --bundle BUNDLE [--requests 200] [--clients 20] [--queue-limit 4]

Starts `voxtral-edge serve` on a free 127.0.0.1 port (a fresh phrase cache in a temporary folder), warms
it with one request per priority class, then sends REQUESTS requests from CLIENTS concurrent clients,
each with a random class (navigation, assistant, message, media, background), sentence, voice and
length (--frames range; some repeat, so the cache is hit). Every request must be answered (a valid WAV)
or refused with 429 and Retry-After; one that is neither, or takes longer than --request-timeout, is
lost. Prints, per class: requests, answered, refused, cache hits and the p50/p95 time to first byte
(client side, from sending the request) and, from the server, the frames made between a request's
arrival and its first audio (a cache hit makes none); the server's RSS after the warm-up and after the load; the
scheduler's counters. Exits 1 if a request was lost or RSS grew by more than 5 %. Bounded: the whole
run stops after --time-limit seconds.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time

import httpx
import numpy as np

from voxtral_edge.machine import rss_bytes

PRIORITIES = ("navigation", "assistant", "message", "media", "background")
WEIGHTS = (1, 2, 2, 3, 2)  # a head unit's mix: few navigation prompts, many media and background ones
SENTENCES = ["Turn left in two hundred metres.", "Le prochain arrêt est la gare centrale.",
             "Die Batterie ist zu achtzig Prozent geladen.", "La temperatura esterna è di diciotto gradi.",
             "El próximo destino está a diez minutos.", "You have a new message from Anna.",
             "Traffic ahead: expect a delay of ten minutes.", "The next exit is in two kilometres."]


def one_request(client: httpx.Client, url: str, body: dict, timeout: float) -> dict:
    start = time.perf_counter()
    record = {"priority": body["priority"], "status": None, "ttfb": None, "cache": None}
    try:
        with client.stream("POST", url + "/v1/audio/speech", json=body, timeout=timeout) as response:
            record["status"] = response.status_code
            if response.status_code == 429:
                record["retry_after"] = response.headers.get("retry-after")
                response.read()
                return record
            data = b""
            for part in response.iter_bytes():
                if record["ttfb"] is None:
                    record["ttfb"] = time.perf_counter() - start
                data += part
            record["cache"] = response.headers.get("x-cache")
            record["valid"] = response.status_code == 200 and data[:4] == b"RIFF" and (len(data) - 44) % 2 == 0
    except httpx.HTTPError as e:
        record["error"] = f"{type(e).__name__}: {e}"
    return record


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", required=True)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--queue-limit", type=int, default=16, help="per class (default: 16, the server's)")
    parser.add_argument("--frames", type=int, nargs=2, default=(6, 30), metavar=("MIN", "MAX"),
                        help="max_frames of each request, drawn from this range (default: 6 30)")
    parser.add_argument("--threads", type=int, help="onnxruntime threads of the server")
    parser.add_argument("--request-timeout", type=float, default=600.0)
    parser.add_argument("--time-limit", type=float, default=900.0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = random.Random(args.seed)

    cache = tempfile.mkdtemp(prefix="voxtral-serve-load-")
    with socket.socket() as s:  # a free loopback port
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    command = [sys.executable, "-m", "voxtral_edge.cli", "serve", "--bundle", args.bundle, "--host", "127.0.0.1",
               "--port", str(port), "--cache-dir", cache, "--queue-limit", str(args.queue_limit), "--no-verify",
               "--log-level", "warning"]
    if args.threads:
        command += ["--threads", str(args.threads)]
    server = subprocess.Popen(command)
    deadline = time.monotonic() + args.time_limit
    url = f"http://127.0.0.1:{port}"
    try:
        while True:
            try:
                if httpx.get(url + "/health").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("the server did not start")
            time.sleep(0.1)
        voices = httpx.get(url + "/v1/audio/voices").json()["voices"]
        with httpx.Client() as client:  # warm-up: every class once, so that lazy allocations are made
            for i, priority in enumerate(PRIORITIES):
                one_request(client, url, {"input": SENTENCES[i], "voice": voices[i % len(voices)], "priority": priority,
                                          "max_frames": args.frames[1], "seed": 10**6 + i}, args.request_timeout)
        rss_before = rss_bytes(server.pid) / 1e6

        bodies = [{"input": rng.choice(SENTENCES), "voice": rng.choice(voices),
                   "priority": rng.choices(PRIORITIES, WEIGHTS)[0], "max_frames": rng.randint(*args.frames),
                   "seed": rng.randrange(2)} for _ in range(args.requests)]
        records, lock, todo = [], threading.Lock(), list(enumerate(bodies))

        def client_loop():
            with httpx.Client() as client:
                while time.monotonic() < deadline:
                    with lock:
                        if not todo:
                            return
                        _, body = todo.pop(0)
                    record = one_request(client, url, body, min(args.request_timeout, deadline - time.monotonic()))
                    with lock:
                        records.append(record)

        started = time.perf_counter()
        threads = [threading.Thread(target=client_loop) for _ in range(args.clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(max(0.0, deadline - time.monotonic()) + 5)
        wall = time.perf_counter() - started
        rss_after = rss_bytes(server.pid) / 1e6
        health = httpx.get(url + "/health").json()
    finally:
        server.terminate()
        server.wait(60)
        shutil.rmtree(cache, ignore_errors=True)

    lost = [r for r in records if not (r["status"] == 429 and r.get("retry_after") or r.get("valid"))]
    lost += [None] * (args.requests - len(records))  # never sent or never answered within the time limit
    print(f"{len(records)} of {args.requests} requests answered in {wall:.1f} s by {args.clients} clients "
          f"(queue limit {args.queue_limit} per class, max_frames {args.frames[0]}..{args.frames[1]}, bundle "
          f"{args.bundle})\n")
    print("| class | requests | answered | 429 | cache hits | TTFB p50 ms | TTFB p95 ms |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for priority in PRIORITIES:
        mine = [r for r in records if r["priority"] == priority]
        ttfb = [1e3 * r["ttfb"] for r in mine if r.get("valid") and r["ttfb"] is not None]
        p50, p95 = (np.percentile(ttfb, 50), np.percentile(ttfb, 95)) if ttfb else (float("nan"),) * 2
        print(f"| {priority} | {len(mine)} | {sum(1 for r in mine if r.get('valid'))} | "
              f"{sum(1 for r in mine if r['status'] == 429)} | {sum(1 for r in mine if r.get('cache') == 'hit')} | "
              f"{p50:.0f} | {p95:.0f} |")
    growth = rss_after / rss_before - 1
    print(f"\nserver RSS: {rss_before:.1f} MB after the warm-up, {rss_after:.1f} MB after the load ({growth:+.1%})")
    waits = health["scheduler"].pop("steps_to_first_audio")
    print("server side, steps (frames of any request) from arrival to first audio, median / max: " + ", ".join(
        f"{p} {w['median']} / {w['max']}" for p, w in waits.items()))
    print("scheduler: " + json.dumps({k: v for k, v in health["scheduler"].items() if k != "queued"}))
    print("cache: " + json.dumps(health["cache"]))
    if lost:
        print(f"LOST: {len(lost)} requests neither answered nor refused with 429: {lost[:5]}")
    if abs(growth) > 0.05:
        print("RSS grew by more than 5 %")
    return 1 if lost or abs(growth) > 0.05 else 0


if __name__ == "__main__":
    sys.exit(main())
