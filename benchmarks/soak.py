"""Soak: does memory grow, do descriptors leak, does time drift, over a long run?

    python benchmarks/soak.py --bundle BUNDLE [--utterances 200] [--frames 12] [--threads N]
    python benchmarks/soak.py --service --bundle BUNDLE [--duration 7200] [--load 0.7] [--threads 1]

Without --service: many utterances through one Synthesizer, cycling through sentences in several languages
and all the bundle's voices, streamed as `say` streams them. The first tenth is the warm-up; over the rest
(the steady part) it prints the wall and CPU time per utterance (median of its first and last tenth) and
their Theil-Sen slope with a 95 % bootstrap interval, so that the slope and the two tenths describe the same
utterances and one slow outlier moves neither. RSS and its peak both come from /proc/self/status (VmRSS,
VmHWM, in MiB): the peak is never below an RSS printed.

With --service: starts `voxtral-edge serve` on a free loopback port (a phrase cache of --cache-mb in a
temporary folder), measures its capacity (uncached requests one after another), then drives it for
--duration seconds at --load of that capacity with a mixed load: every class, phrases that repeat (cache
hits) and new ones (misses), clients that disconnect after their first audio or while queued, bad requests
(400) and hopeless deadlines (504). Arrivals are Poisson; every minute the rate is corrected so that the
worker's measured utilization (its compute seconds per second, from /metrics) stays at --load. Every
--sample seconds it records the server's RSS, peak (VmHWM), open descriptors and threads. It reports per
class the p50/p99 time to first audio, every outcome, errors beyond the injected ones, RSS over time with a
slope over the steady part only (after --warmup seconds, default a tenth of the run) and descriptors;
--json FILE keeps every sample and request. Exits 1 on an unexpected outcome, an RSS slope of 1 MB/h or
more over the steady part, or more descriptors at the end than after the warm-up.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from voxtral_edge.machine import peak_rss_bytes, rss_bytes

MIB = 1 << 20
SENTENCES = ["Turn left in two hundred metres.", "Le prochain arrêt est la gare centrale.",
             "Die Batterie ist zu achtzig Prozent geladen.", "La temperatura esterna è di diciotto gradi.",
             "El próximo destino está a diez minutos.", "A porta traseira está aberta.",
             "De volgende afslag is over twee kilometer.", "अगले मोड़ पर दाएं मुड़ें।", "المنعطف التالي على اليمين."]
PRIORITIES = ("navigation", "assistant", "message", "media", "background")
WEIGHTS = (1, 2, 2, 3, 2)  # a head unit's mix, as benchmarks/serve_load.py
# what each request of the service soak does, and how often
KINDS = {"hit": 0.28, "miss": 0.46, "twin": 0.06, "leave_after_first": 0.06, "leave_queued": 0.04, "bad": 0.06,
         "late": 0.04}  # twin: the same new phrase asked twice at once (the second listens to the first's synthesis)


def status(pid: int | str = "self") -> dict[str, float]:
    """A process's resident memory and the kernel's peak mark (MiB), its threads, its open descriptors:
    all, and those that are not sockets (files: a leak there is not an open connection)."""
    with open(f"/proc/{pid}/status") as f:
        threads = int(re.search(r"Threads:\s+(\d+)", f.read()).group(1))
    fds = []
    for name in os.listdir(f"/proc/{pid}/fd"):
        try:
            fds.append(os.readlink(f"/proc/{pid}/fd/{name}"))
        except OSError:  # closed meanwhile
            pass
    return {"rss": rss_bytes(pid) / MIB, "peak": peak_rss_bytes(pid) / MIB, "threads": threads, "fds": len(fds),
            "files": sum(1 for f in fds if not f.startswith("socket:"))}


class Peak:
    """The highest of the kernel's mark and every RSS sampled: the kernel's per-CPU counters are approximate,
    so a mark read later can be a fraction of a MiB below a resident size read earlier."""

    def __init__(self):
        self.value = 0.0

    def __call__(self, sample: dict) -> float:
        self.value = max(self.value, sample["peak"], sample["rss"])
        return self.value


def theil_sen(x, y, rng: np.random.Generator, resamples: int = 200) -> tuple[float, float, float]:
    """The median of the pairwise slopes (robust to outliers) and a 95 % bootstrap interval."""
    x, y = np.asarray(x, float), np.asarray(y, float)

    def slope(i):
        a, b = np.triu_indices(len(i), 1)
        dx = x[i][b] - x[i][a]
        ok = dx != 0
        return float(np.median((y[i][b] - y[i][a])[ok] / dx[ok])) if ok.any() else 0.0
    every = np.arange(len(x))
    boot = [slope(np.sort(rng.choice(every, len(every)))) for _ in range(resamples)]
    return slope(every), float(np.percentile(boot, 2.5)), float(np.percentile(boot, 97.5))


# -- the Synthesizer alone ---------------------------------------------------------------------------
def soak_synthesizer(args) -> int:
    from voxtral_edge.runtime import Synthesizer

    synth = Synthesizer.open(args.bundle, threads=args.threads, verify=False)
    voices = sorted(synth.voices)
    wall, cpu, rss, peak = [], [], [], Peak()
    for i in range(args.utterances):
        start, start_cpu = time.perf_counter(), time.process_time()
        for _chunk in synth.stream(SENTENCES[i % len(SENTENCES)], voices[i % len(voices)], seed=i,
                                   max_frames=args.frames):
            pass
        wall.append(1e3 * (time.perf_counter() - start))
        cpu.append(1e3 * (time.process_time() - start_cpu))
        sample = status()
        rss.append(sample["rss"])
        top = peak(sample)
    warm = max(1, args.utterances // 10)
    steady = np.arange(warm, args.utterances)
    tenth = max(1, len(steady) // 10)
    rng = np.random.default_rng(0)
    print(f"{args.utterances} utterances of {args.frames} frames, {len(voices)} voices, {len(SENTENCES)} languages; "
          f"warm-up: the first {warm}, steady part: the other {len(steady)}")
    print(f"RSS: {rss[warm - 1]:.1f} MiB after the warm-up, {rss[-1]:.1f} MiB at the end "
          f"({rss[-1] - rss[warm - 1]:+.1f} MiB), peak {top:.1f} MiB (VmHWM)")
    for name, times in (("wall", np.array(wall)), ("CPU", np.array(cpu))):
        t = times[steady]
        slope, low, high = theil_sen(steady, t, rng)
        print(f"{name} time per utterance: first tenth of the steady part {np.median(t[:tenth]):.1f} ms, last tenth "
              f"{np.median(t[-tenth:]):.1f} ms (medians); slope {slope:+.4f} ms per utterance (95 % interval "
              f"{low:+.4f}..{high:+.4f}), {slope * len(t):+.1f} ms over the steady part")
    return 0


# -- the service -----------------------------------------------------------------------------------------
class Service:
    """`voxtral-edge serve` in a process of its own on a free loopback port."""

    def __init__(self, args, cache: str):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        command = [sys.executable, "-m", "voxtral_edge.cli", "serve", "--bundle", args.bundle, "--port", str(self.port),
                   "--cache-dir", cache, "--cache-mb", str(args.cache_mb), "--no-verify", "--log-level", "warning"]
        if args.threads:
            command += ["--threads", str(args.threads)]
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = open(os.path.join(cache, "..", "server.log"), "w")
        self.process = subprocess.Popen(command, stderr=self.log)

    def wait_ready(self, httpx, timeout: float = 300) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if httpx.get(self.url + "/health").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if self.process.poll() is not None:
                raise SystemExit(f"the server exited with {self.process.returncode}")
            time.sleep(0.2)
        raise SystemExit("the server did not become ready")

    def metric(self, httpx, name: str) -> float:
        text = httpx.get(self.url + "/metrics", timeout=30).text
        return sum(float(m.group(1)) for m in re.finditer(rf"^{name}(?:{{[^}}]*}})? (\S+)$", text, re.M))


def one_request(httpx, url: str, kind: str, body: dict, timeout: float, retries: int = 3) -> dict:
    """Send one request of a kind; the record says what came back and whether that was the expected outcome.
    A 429 is retried after its Retry-After, as OpenAI's client does (`retried` counts them); the time to
    first audio counts from the first attempt."""
    start, retried = time.perf_counter(), 0
    while True:
        record = _attempt(httpx, url, kind, body, timeout, start)
        if record["status"] != 429 or retried == retries:
            record["retried"] = retried
            return record
        retried += 1
        time.sleep(min(60.0, float(record.get("retry_after") or 1)))


def _attempt(httpx, url: str, kind: str, body: dict, timeout: float, start: float) -> dict:
    record = {"kind": kind, "class": body.get("priority"), "status": None, "first_audio": None, "at": time.time()}
    try:
        if kind == "leave_queued":  # the request is sent, then the connection closed before any answer
            host, port = url[7:].split(":")
            data = json.dumps(body).encode()
            with socket.create_connection((host, int(port)), timeout=timeout) as s:
                s.sendall(b"POST /v1/audio/speech HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                          b"Content-Length: %d\r\n\r\n%s" % (len(data), data))
                time.sleep(0.05)
            record["ok"] = True
            return record
        with httpx.stream("POST", url + "/v1/audio/speech", json=body, timeout=timeout) as response:
            record["status"] = response.status_code
            data = b""
            for part in response.iter_bytes():
                if record["first_audio"] is None:
                    record["first_audio"] = time.perf_counter() - start
                data += part
                if kind == "leave_after_first":
                    break
            record["cache"] = response.headers.get("x-cache")
            record["retry_after"] = response.headers.get("retry-after")
        if response.status_code == 200:
            record["ok"] = kind in ("hit", "miss", "twin", "leave_after_first") and data[:4] == b"RIFF" and \
                len(data) % 2 == 0
        else:
            error = json.loads(data or b"{}").get("error", {})
            record["code"] = error.get("code")
            record["ok"] = (kind, response.status_code) in (("bad", 400), ("late", 504)) and \
                set(error) == {"message", "type", "param", "code"}
    except Exception as e:  # noqa: BLE001 - every failure is a record
        record["error"] = f"{type(e).__name__}: {e}"
        record["ok"] = False
    return record


def request_body(kind: str, rng: random.Random, voices: list[str], frames: tuple[int, int], serial: int) -> dict:
    body = {"input": rng.choice(SENTENCES), "voice": rng.choice(voices), "priority": rng.choices(PRIORITIES, WEIGHTS)[0],
            "max_frames": rng.randint(*frames), "seed": 10**6 + serial}
    if kind == "hit":  # a small pool of phrases that come back: the first time a miss, then hits
        i = rng.randrange(12)
        body.update(input=SENTENCES[i % len(SENTENCES)], voice=voices[i % len(voices)], seed=i, max_frames=frames[0])
    elif kind == "bad":
        body.update(rng.choice([{"voice": "nobody"}, {"max_frames": 0}, {"speed": 3.0}, {"input": ""},
                                {"priority": "urgent"}, {"unknown_field": 1}]))
    elif kind == "late":
        body.update(deadline_ms=1, priority=rng.choice(("media", "background")))
    return body


def _interrupted(signum, frame):
    raise KeyboardInterrupt


def soak_service(args) -> int:
    import signal

    import httpx

    signal.signal(signal.SIGTERM, _interrupted)  # stopped from outside: the server goes too

    rng = random.Random(args.seed)
    work = tempfile.mkdtemp(prefix="voxtral-soak-")
    cache = os.path.join(work, "phrases")
    os.mkdir(cache)
    server = Service(args, cache)
    samples, records, lock = [], [], threading.Lock()
    stop = threading.Event()
    frames = tuple(args.frames)
    try:
        server.wait_ready(httpx)
        voices = httpx.get(server.url + "/v1/audio/voices").json()["voices"]
        # capacity: uncached requests one after another, with the load's own lengths
        busy0, t0 = server.metric(httpx, "voxtral_compute_seconds_total"), time.perf_counter()
        calibration = [one_request(httpx, server.url, "miss", request_body("miss", rng, voices, frames, -i), 600)
                       for i in range(1, args.calibrate + 1)]
        seconds = time.perf_counter() - t0
        per_miss = (server.metric(httpx, "voxtral_compute_seconds_total") - busy0) / len(calibration)
        assert all(r["ok"] for r in calibration), calibration
        costly = KINDS["miss"] + KINDS["twin"] + KINDS["leave_after_first"] + 0.5 * KINDS["leave_queued"]
        rate = args.load / (per_miss * costly)
        print(f"capacity: {len(calibration)} uncached requests in {seconds:.1f} s, {per_miss * 1e3:.0f} ms of compute "
              f"each; start at {rate:.2f} requests/s for {args.load:.0%} utilization", flush=True)

        def sampler():
            while not stop.wait(args.sample):
                try:
                    sample = {"t": time.time(), **status(server.process.pid),
                              "compute": server.metric(httpx, "voxtral_compute_seconds_total")}
                except (OSError, httpx.HTTPError):
                    continue
                with lock:
                    samples.append(sample)
        threading.Thread(target=sampler, daemon=True).start()

        started = time.time()
        end = started + args.duration
        pool = ThreadPoolExecutor(args.clients)
        serial, next_arrival, next_control = 0, time.monotonic(), time.monotonic() + 60
        busy_mark, wall_mark = server.metric(httpx, "voxtral_compute_seconds_total"), time.monotonic()
        kinds, weights = list(KINDS), list(KINDS.values())

        def run(kind, body):
            record = one_request(httpx, server.url, kind, body, args.request_timeout)
            with lock:
                records.append(record)

        last_report = started
        while time.time() < end:
            now = time.monotonic()
            if now >= next_control:  # keep the worker's utilization at --load
                busy = server.metric(httpx, "voxtral_compute_seconds_total")
                utilization = (busy - busy_mark) / (now - wall_mark)
                if utilization > 0:
                    rate *= min(2.0, max(0.5, args.load / utilization)) ** 0.5
                busy_mark, wall_mark, next_control = busy, now, now + 60
                with lock:
                    samples.append({"t": time.time(), "utilization": utilization, "rate": rate})
            if now < next_arrival:
                time.sleep(min(next_arrival - now, 0.5))
                continue
            next_arrival += rng.expovariate(rate)
            serial += 1
            kind = rng.choices(kinds, weights)[0]
            body = request_body(kind, rng, voices, frames, serial)
            for _ in range(2 if kind == "twin" else 1):
                pool.submit(run, kind, body)
            if time.time() - last_report > 600:
                last_report = time.time()
                with lock:
                    bad = sum(1 for r in records if not r["ok"])
                    last = [s for s in samples if "rss" in s][-1:] or [{}]
                print(f"{(last_report - started) / 60:.0f} min: {len(records)} requests, {bad} unexpected, "
                      f"RSS {last[0].get('rss', float('nan')):.1f} MiB, fds {last[0].get('fds')}", flush=True)
        pool.shutdown(wait=True)
        stop.set()
        metrics_text = httpx.get(server.url + "/metrics").text
    finally:
        stop.set()
        server.process.terminate()
        server.process.wait(60)
        shutil.rmtree(work, ignore_errors=True)
    return report(args, started, samples, records, metrics_text)


def report(args, started: float, samples: list[dict], records: list[dict], metrics_text: str) -> int:
    rng = np.random.default_rng(0)
    memory = [s for s in samples if "rss" in s]
    control = [s for s in samples if "utilization" in s]
    warmup = args.warmup if args.warmup is not None else args.duration / 10
    steady = [s for s in memory if s["t"] - started >= warmup]
    hours = np.array([(s["t"] - started) / 3600 for s in steady])
    rss = np.array([s["rss"] for s in steady])
    slope, low, high = theil_sen(hours, rss, rng) if len(steady) > 2 else (float("nan"),) * 3
    unexpected = [r for r in records if not r["ok"]]
    utilization = [c["utilization"] for c in control] or [float("nan")]
    print(f"\n{len(records)} requests in {args.duration / 3600:.2f} h at {args.load:.0%} of the measured capacity "
          f"(the worker's utilization per minute: median {np.median(utilization):.2f}, range "
          f"{min(utilization):.2f}..{max(utilization):.2f}), bundle {args.bundle}\n")
    print("| class | requests | answered 200 | first audio p50 ms | first audio p99 ms |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for priority in PRIORITIES:
        mine = [r for r in records if r["class"] == priority]
        ttfa = [1e3 * r["first_audio"] for r in mine if r["status"] == 200 and r["first_audio"] is not None]
        p50, p99 = (np.percentile(ttfa, 50), np.percentile(ttfa, 99)) if ttfa else (float("nan"),) * 2
        print(f"| {priority} | {len(mine)} | {sum(1 for r in mine if r['status'] == 200)} | {p50:.0f} | {p99:.0f} |")
    print("\n| kind | requests | as expected | outcomes |")
    print("| --- | ---: | ---: | --- |")
    for kind in KINDS:
        mine = [r for r in records if r["kind"] == kind]
        outcomes: dict[str, int] = {}
        for r in mine:
            key = str(r["status"]) + (f" {r['cache']}" if r.get("cache") else "") + (f" {r['code']}" if r.get("code") else "")
            key = r.get("error", key)[:60] if "error" in r else key
            outcomes[key] = outcomes.get(key, 0) + 1
        print(f"| {kind} | {len(mine)} | {sum(1 for r in mine if r['ok'])} | "
              f"{', '.join(f'{k}: {v}' for k, v in sorted(outcomes.items()))} |")
    retried = [r for r in records if r.get("retried")]
    by_class = {p: sum(1 for r in retried if r["class"] == p) for p in PRIORITIES}
    print(f"\n429 (a class's queue full) answered {sum(r['retried'] for r in records)} times, to {len(retried)} "
          f"requests ({', '.join(f'{p} {n}' for p, n in by_class.items() if n) or 'none'}), each retried after its "
          f"Retry-After as OpenAI's client does")
    print(f"unexpected outcomes (errors beyond the injected ones): {len(unexpected)}"
          + (f", e.g. {unexpected[:3]}" if unexpected else ""))
    print(f"\nserver RSS over time (MiB; warm-up: the first {warmup / 60:.0f} min), descriptors, threads:\n")
    print("| minute | RSS MiB | peak so far MiB | descriptors (files) | threads |")
    print("| ---: | ---: | ---: | ---: | ---: |")
    step, peak = max(1, len(memory) // 12), Peak()
    for i, s in enumerate(memory):
        top = peak(s)
        if i % step == 0 or i == len(memory) - 1:
            print(f"| {(s['t'] - started) / 60:.0f} | {s['rss']:.1f} | {top:.1f} | {s['fds']} ({s['files']}) | "
                  f"{s['threads']} |")
    first, last = steady[0], steady[-1]
    print(f"\nRSS over the steady part: {first['rss']:.1f} -> {last['rss']:.1f} MiB; Theil-Sen slope {slope:+.2f} MiB/h "
          f"(95 % interval {low:+.2f}..{high:+.2f}); peak {top:.1f} MiB")
    fds = [s["fds"] for s in steady]  # (each open connection is one: compare the floors, the fewest in a tenth)
    tenth = max(1, len(fds) // 10)
    floors = min(fds[:tenth]), min(fds[-tenth:])
    files = [s["files"] for s in steady]
    print(f"open descriptors over the steady part: fewest in its first tenth {floors[0]}, in its last tenth "
          f"{floors[1]} (most at any sample {max(fds)}); not sockets: {files[0]} -> {files[-1]} (most {max(files)}); "
          f"threads {first['threads']} -> {last['threads']} (most {max(s['threads'] for s in steady)})")
    wanted = ("voxtral_syntheses_total", "voxtral_shared_total", "voxtral_cache_hits_total", "voxtral_preemptions_total",
              "voxtral_aging_rises_total", "voxtral_deadline_drops_total", "voxtral_frames_total",
              "voxtral_heap_trims_total")
    print("server counters: " + ", ".join(f"{m.group(1)} {float(m.group(2)):.0f}" for m in re.finditer(
        r"^(\w+) (\S+)$", metrics_text, re.M) if m.group(1) in wanted))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"started": started, "samples": samples, "requests": records}, f)
    failed = bool(unexpected) or not slope < 1.0 or floors[1] > floors[0] or files[-1] > files[0]
    return 1 if failed else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", required=True)
    parser.add_argument("--threads", type=int, help="onnxruntime threads (of the server with --service)")
    parser.add_argument("--utterances", type=int, default=200, help="without --service (default: 200)")
    parser.add_argument("--frames", type=int, nargs="+", default=None, metavar="N",
                        help="frames per utterance: N (default 12), or MIN MAX per request with --service "
                             "(default 6 30)")
    parser.add_argument("--service", action="store_true", help="soak the HTTP service instead of a Synthesizer")
    parser.add_argument("--duration", type=float, default=7200, help="seconds of load (default: 7200)")
    parser.add_argument("--load", type=float, default=0.7, help="the worker's utilization to keep (default: 0.7)")
    parser.add_argument("--warmup", type=float, help="seconds left out of the RSS slope (default: a tenth)")
    parser.add_argument("--sample", type=float, default=10, help="seconds between samples (default: 10)")
    parser.add_argument("--calibrate", type=int, default=12, help="uncached requests to measure capacity (12)")
    parser.add_argument("--clients", type=int, default=24, help="concurrent requests at most (default: 24)")
    parser.add_argument("--cache-mb", type=float, default=16,
                        help="the server's phrase cache cap, small so that eviction runs (default: 16)")
    parser.add_argument("--request-timeout", type=float, default=300.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", metavar="FILE", help="write every sample and request there")
    args = parser.parse_args()
    if args.service:
        args.frames = args.frames or [6, 30]
        return soak_service(args)
    args.frames = (args.frames or [12])[0]
    return soak_synthesizer(args)


if __name__ == "__main__":
    sys.exit(main())
