"""The speech service, over real HTTP on a loopback port: OpenAI's client and plain httpx against a tiny
bundle. Oracles: the `say` command and the Synthesizer run alone with the same seed (bit for bit), the
WAV format, OpenAI's error shape, the scheduler's own step counts."""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import wave
from contextlib import contextmanager

import httpx
import numpy as np
import openai
import pytest

from voxtral_edge.audio import to_pcm16, wav_header
from voxtral_edge.errors import UsageError
from voxtral_edge.runtime import Synthesizer

from audio_decoders import mp3_frames, read_unknown_length
from voxtral_edge.serve.app import ServiceConfig
from voxtral_edge.serve.cache import PhraseCache, cache_key
from voxtral_edge.serve.server import check_binding, make_server

pytestmark = pytest.mark.filterwarnings("ignore::voxtral_edge.runtime.RunawayWarning")  # random weights never end

LONG = ("The traffic report for the ring road follows. There are delays near the airport exit. "
        "Roadworks continue on the bridge until Friday.")


@contextmanager
def running(config: ServiceConfig, wait_ready: bool = True, **options):
    """A real server on a free loopback port, in a thread; yields (base url, server). Stopped as SIGTERM
    stops it when the block ends."""
    server = make_server(config, host="127.0.0.1", port=0, log_level="warning", **options)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_for(lambda: server.started and server.servers or not thread.is_alive(), what="the server to start")
    url = "http://127.0.0.1:%d" % server.servers[0].sockets[0].getsockname()[1]
    try:
        if wait_ready:
            wait_for(lambda: server.service.state != "loading", what="the bundle to load")
        yield url, server
    finally:
        server.handle_exit(signal.SIGTERM, None)
        thread.join(30)
        assert not thread.is_alive(), "the server did not stop"


def wait_for(condition, timeout: float = 30.0, what: str = "the condition"):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.005)


@contextmanager
def raw_request(url: str, body: dict):
    """A speech request sent on a socket of our own, which the block's end closes: a client that leaves."""
    host, port = url.split("//")[1].split(":")
    data = json.dumps(body).encode()
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(b"POST /v1/audio/speech HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\n"
                  b"Content-Length: %d\r\n\r\n%s" % (host.encode(), len(data), data))
        yield s


def speech(url: str, body, **kwargs) -> httpx.Response:
    return httpx.post(url + "/v1/audio/speech", json=body, timeout=60, **kwargs)


def alone(bundle, text, voice, seed, max_frames=None, max_context=None) -> bytes:
    """The oracle: the same utterance from a Synthesizer of its own, streamed as the service streams."""
    synth = Synthesizer.open(bundle, max_context=max_context)
    return b"".join(to_pcm16(c) for c in synth.stream(text, voice, seed=seed, max_frames=max_frames,
                                                        chunk_frames=4, first_chunk_frames=1))


@pytest.fixture(scope="module")
def bundle(tiny_bundle_dirs):
    return tiny_bundle_dirs[0]


@pytest.fixture(scope="module")
def server(bundle, tmp_path_factory):
    config = ServiceConfig(bundle=bundle, model_name="voxtral-tiny", cache_dir=tmp_path_factory.mktemp("phrases"),
                           queue_limit=3, max_body_bytes=16 << 10)
    with running(config) as (url, srv):
        yield url, srv.service


@pytest.fixture
def service(server):
    """The module's server, its queues idle and its queue bound as configured."""
    url, service = server
    wait_for(lambda: service.scheduler.current is None or service.scheduler.current.state != "running")
    yield service
    service.scheduler.queue_limit = 3


def test_openai_client_streams_what_say_writes(server, bundle, tmp_path):
    url, service = server
    client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
    with client.audio.speech.with_streaming_response.create(
            model="voxtral-tiny", voice="fr_female", input="Bonjour, tournez à gauche.", response_format="pcm",
            extra_body={"seed": 11, "max_frames": 14}) as response:
        assert response.headers["content-type"] == "audio/pcm"
        assert response.headers.get("transfer-encoding") == "chunked"
        pcm = b"".join(response.iter_bytes())
    say = subprocess.run([sys.executable, "-m", "voxtral_edge.cli", "say", "Bonjour, tournez à gauche.", "--bundle",
                          str(bundle), "--voice", "fr_female", "--seed", "11", "--max-frames", "14", "-o", "-"],
                         capture_output=True, check=True)
    assert len(pcm) == 14 * 1920 * 2 and pcm == say.stdout
    # wav: OpenAI's streamed header (sizes 0xFFFFFFFF), then the same samples; a request without a seed
    # gets the server's (0), so it equals say --seed 0
    with client.audio.speech.with_streaming_response.create(model="voxtral-tiny", voice="casual_male",
                                                            input="Turn left.", extra_body={"max_frames": 6}) as r:
        data = r.read()
    assert data[:44] == wav_header(24000) and data[4:8] == b"\xff\xff\xff\xff" and data[40:44] == b"\xff\xff\xff\xff"
    with wave.open(io.BytesIO(data)) as w:
        assert (w.getnchannels(), w.getsampwidth(), w.getframerate()) == (1, 2, 24000)
        assert w.readframes(10**6) == data[44:] == alone(bundle, "Turn left.", "casual_male", 0, 6)


def test_voices_models_and_health_answer_as_vllm_omni(server):
    url, service = server
    assert httpx.get(url + "/v1/audio/voices").json() == {
        "voices": ["casual_male", "fr_female", "neutral_female"], "uploaded_voices": []}
    models = httpx.get(url + "/v1/models").json()
    assert models["object"] == "list" and [m["id"] for m in models["data"]] == ["voxtral-tiny"]
    assert models["data"][0]["object"] == "model" and models["data"][0]["max_model_len"] == 256
    assert [m.id for m in openai.OpenAI(base_url=url + "/v1", api_key="x").models.list()] == ["voxtral-tiny"]
    health = httpx.get(url + "/health").json()
    assert health["status"] == "ok" and health["scheduler"]["queue_limit"] == 3


ERRORS = [  # body, status, param, code, message
    (b"{not json", 400, None, "invalid_json", "not valid JSON"),
    ([1, 2], 400, None, "invalid_json", "must be a JSON object, found list"),
    ({"voice": "casual_male"}, 400, "input", "missing_required_parameter", "input is required"),
    ({"input": 5, "voice": "casual_male"}, 400, "input", "invalid_type", "input must be a string, found int"),
    ({"input": "  \n", "voice": "casual_male"}, 400, "input", "invalid_value", "input is empty"),
    ({"input": "a" * 4097, "voice": "casual_male"}, 400, "input", "string_above_max_length", "4097 characters"),
    ({"input": "Stop\x07", "voice": "casual_male"}, 400, "input", "invalid_value", "control character U\\+0007"),
    ({"input": "Hi"}, 400, "voice", "missing_required_parameter", "voice is required"),
    ({"input": "Hi", "voice": "alloy"}, 400, "voice", "invalid_value",
     "unknown voice 'alloy'; this server has: casual_male, fr_female, neutral_female"),
    ({"input": "Hi", "voice": "casual_male", "model": "tts-1"}, 404, "model", "model_not_found", "`tts-1`"),
    ({"input": "Hi", "voice": "casual_male", "response_format": "aac"}, 400, "response_format", "invalid_value",
     "'aac' is not supported: use wav, pcm, flac, opus, mp3"),
    ({"input": "Hi", "voice": "casual_male", "response_format": "opus", "sample_rate": 44100}, 400,
     "response_format", "invalid_value", "opus takes 8000, 12000, 16000, 24000, 48000 Hz, not 44100"),
    ({"input": "Hi", "voice": "casual_male", "sample_rate": 32000}, 400, "sample_rate", "invalid_value",
     "sample rate must be one of 8000, 16000, 22050, 24000, 44100, 48000"),
    ({"input": "Hi", "voice": "casual_male", "speed": 4.0}, 400, "speed", "invalid_value",
     "speed must be a number from 0.5 to 2"),
    ({"input": "Hi", "voice": "casual_male", "loudness": 3}, 400, "loudness", "invalid_value",
     "loudness must be a number of LUFS from -40 to -5"),
    ({"input": "<speak>Hi <break time='1s'></speak>", "voice": "casual_male"}, 400, "input", "invalid_value",
     "SSML line 1, column 30: mismatched tag"),
    ({"input": "Hi", "voice": "casual_male", "speed": "fast"}, 400, "speed", "invalid_type", "must be a number"),
    ({"input": "Hi", "voice": "casual_male", "stream_format": "sse"}, 400, "stream_format", "invalid_value", "sse"),
    ({"input": "Hi", "voice": "casual_male", "seed": -1}, 400, "seed", "invalid_value", "from 0 to"),
    ({"input": "Hi", "voice": "casual_male", "seed": True}, 400, "seed", "invalid_type", "must be an integer"),
    ({"input": "Hi", "voice": "casual_male", "steps": 65}, 400, "steps", "invalid_value", "from 1 to 64, found 65"),
    ({"input": "Hi", "voice": "casual_male", "cfg": 10.5}, 400, "cfg", "invalid_value", "from 0 to 10"),
    ({"input": "Hi", "voice": "casual_male", "cfg": float("nan")}, 400, None, "invalid_json", "NaN is not a JSON"),
    ({"input": "Hi", "voice": "casual_male", "priority": "urgent"}, 400, "priority", "invalid_value", "navigation"),
    ({"input": "Hi", "voice": "casual_male", "max_frames": 0}, 400, "max_frames", "invalid_value", "from 1"),
    ({"input": "Hi", "voice": "casual_male", "file": "/etc/passwd"}, 400, "file", "unknown_parameter",
     "unrecognized request argument: file"),
    ({"input": "Hi", "voice": "casual_male", "instructions": "whisper"}, 400, "instructions", "invalid_value", ""),
    ({"input": "x" * 17000, "voice": "casual_male"}, 413, None, "request_too_large", "at most 16384"),
]


@pytest.mark.parametrize("body, status, param, code, message", ERRORS)
def test_every_bad_request_answers_its_status_in_openai_shape(server, body, status, param, code, message):
    url, service = server
    steps = service.scheduler.counters["steps"]
    content = body if isinstance(body, bytes) else json.dumps(body)  # json.dumps writes NaN as NaN
    response = httpx.post(url + "/v1/audio/speech", content=content, headers={"Content-Type": "application/json"})
    assert response.status_code == status
    error = response.json()
    assert list(error) == ["error"] and sorted(error["error"]) == ["code", "message", "param", "type"]
    assert (error["error"]["param"], error["error"]["code"], error["error"]["type"]) == (
        param, code, "invalid_request_error")
    assert re.search(message, error["error"]["message"]), error
    assert service.scheduler.counters["steps"] == steps  # refused before any work


def test_the_openai_client_sees_errors_as_its_exceptions(server):
    url, _ = server
    client = openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0)
    with pytest.raises(openai.BadRequestError) as e:
        client.audio.speech.create(model="voxtral-tiny", voice="alloy", input="Hi")
    assert e.value.status_code == 400 and "casual_male, fr_female, neutral_female" in e.value.message
    for method, path, status in (("GET", "/v1/nothing", 404), ("GET", "/v1/audio/speech", 405)):
        response = httpx.request(method, url + path)
        assert response.status_code == status and set(response.json()["error"]) == {"message", "type", "param", "code"}


def test_navigation_preempts_media_at_a_frame_and_media_resumes_bit_identical(service, server, bundle):
    url, _ = server
    media_body = {"input": LONG, "voice": "neutral_female", "priority": "media", "seed": 7, "max_frames": 150,
                  "response_format": "pcm"}
    nav_body = {"input": "In two hundred metres, turn right.", "voice": "casual_male", "priority": "navigation",
                "seed": 3, "max_frames": 8, "response_format": "pcm"}
    scheduler = service.scheduler
    with httpx.Client(timeout=60) as http, http.stream("POST", url + "/v1/audio/speech", json=media_body) as media:
        parts = media.iter_bytes()
        media_pcm = [next(parts)]  # media is in flight
        nav = http.post(url + "/v1/audio/speech", json=nav_body)
        assert nav.status_code == 200
        media_pcm += list(parts)
    media_pcm = b"".join(media_pcm)
    jobs = {job.priority: job for job in list(scheduler.finished)[-2:]}
    assert jobs["navigation"].state == jobs["media"].state == "done"
    # the navigation prompt's first audio came after at most the media frame in progress and its own first
    # step (its prefill and first frame): counted in frames, not in seconds
    assert jobs["navigation"].first_audio_step - jobs["navigation"].submitted_step <= 2
    assert jobs["media"].suspensions == 1 and jobs["media"].closed_step > jobs["navigation"].closed_step
    assert nav.content == alone(bundle, nav_body["input"], "casual_male", 3, 8)
    assert media_pcm == alone(bundle, LONG, "neutral_female", 7, 150)  # paused, not restarted, not changed


def test_within_a_class_first_come_first_served(service, server):
    url, _ = server
    bodies = [{"input": f"Message number {i}.", "voice": "casual_male", "max_frames": 40, "seed": i,
               "priority": "message"} for i in range(3)]
    threads = [threading.Thread(target=speech, args=(url, b)) for b in bodies]
    with service.scheduler.hold():  # all three queue, in this order, before a frame is made
        for i, t in enumerate(threads):
            t.start()
            wait_for(lambda: service.scheduler.snapshot()["queued"]["message"] == i + 1, what=f"request {i} to queue")
    for t in threads:
        t.join()
    last = list(service.scheduler.finished)[-3:]
    assert [j.id for j in last] == sorted(j.id for j in last) and all(j.suspensions == 0 for j in last)
    assert last[1].submitted_step < last[0].closed_step  # the second waited while the first was spoken


def test_a_client_that_leaves_stops_costing_compute_within_a_frame(service, server):
    url, _ = server
    scheduler = service.scheduler
    cancelled = scheduler.counters["cancelled"]
    body = {"input": LONG, "voice": "casual_male", "priority": "media", "max_frames": 2000}
    with httpx.Client(timeout=60) as http:
        with http.stream("POST", url + "/v1/audio/speech", json=body) as media:
            parts = media.iter_bytes()  # (kept: a dropped iterator closes the response)
            next(parts)
            # a second client waits behind it in the same class, then leaves before it is served
            with raw_request(url, {**body, "seed": 1}):
                wait_for(lambda: scheduler.snapshot()["queued"]["media"] == 2, what="the second request to queue")
        wait_for(lambda: scheduler.counters["cancelled"] == cancelled + 2 and scheduler.current.state != "running",
                 what="both jobs to be dropped")
    jobs = list(scheduler.finished)[-2:]
    waiting = next(j for j in jobs if j.first_audio_step is None)
    running = next(j for j in jobs if j is not waiting)
    assert waiting.state == running.state == "cancelled"
    assert waiting.frames == 0  # it never cost a frame
    assert running.closed_step - running.cancel_step <= 1 and running.frames < 2000  # dropped at the next frame
    wait_for(lambda: scheduler.idle, what="the worker to wait for work")
    assert scheduler.counters["steps"] == max(j.closed_step for j in jobs)  # no frame after both were dropped


def test_past_the_queue_bound_429_with_retry_after(service, server):
    url, _ = server
    service.scheduler.queue_limit = 1
    body = {"input": LONG, "voice": "casual_male", "priority": "media", "max_frames": 2000, "seed": 5}
    with httpx.Client(timeout=60) as http, http.stream("POST", url + "/v1/audio/speech", json=body) as media:
        parts = media.iter_bytes()
        next(parts)
        refused = http.post(url + "/v1/audio/speech", json={**body, "seed": 6})
        other_class = http.post(url + "/v1/audio/speech", json={**body, "priority": "assistant", "max_frames": 3})
    assert refused.status_code == 429 and int(refused.headers["retry-after"]) >= 1
    assert refused.json()["error"]["code"] == "rate_limit_exceeded" and "media queue is full" in \
        refused.json()["error"]["message"]
    assert other_class.status_code == 200 and len(other_class.content) == 44 + 3 * 3840  # its own queue had room


def test_a_cache_hit_returns_the_same_bytes_without_the_model(service, server, bundle):
    url, _ = server
    scheduler, cache = service.scheduler, service.cache
    body = {"input": "Your destination is on the left.", "voice": "neutral_female", "seed": 21, "max_frames": 9}
    first = speech(url, body)
    steps = scheduler.counters["steps"]
    second = speech(url, body)
    assert (first.headers["x-cache"], second.headers["x-cache"]) == ("miss", "hit")
    assert second.content == first.content and scheduler.counters["steps"] == steps  # no model call
    assert first.content[44:] == alone(bundle, body["input"], "neutral_female", 21, 9)
    pcm = speech(url, {**body, "response_format": "pcm"})
    assert pcm.headers["x-cache"] == "hit" and pcm.content == first.content[44:]
    # a damaged entry is dropped and rendered again, never served
    path = next(p for p in cache.folder.glob("*.pcm") if p.read_bytes().endswith(first.content[44:]))
    data = bytearray(path.read_bytes())
    data[-100] ^= 0x55
    path.write_bytes(bytes(data))
    corrupt = cache.counters["corrupt"]
    third = speech(url, body)
    assert third.headers["x-cache"] == "miss" and third.content == first.content
    assert cache.counters["corrupt"] == corrupt + 1 and scheduler.counters["steps"] > steps
    assert speech(url, body).headers["x-cache"] == "hit"


def test_prefetch_renders_in_the_background_into_the_cache(service, server, bundle):
    url, _ = server
    body = {"input": "At the roundabout, take the third exit.", "voice": "casual_male", "seed": 2, "max_frames": 12}
    queued = httpx.post(url + "/v1/audio/prefetch", json=body)
    assert queued.status_code == 202 and queued.json()["status"] == "queued"
    wait_for(lambda: httpx.post(url + "/v1/audio/prefetch", json=body).status_code == 200, what="the prefetch")
    steps = service.scheduler.counters["steps"]
    hit = speech(url, {**body, "priority": "navigation"})
    assert hit.headers["x-cache"] == "hit" and service.scheduler.counters["steps"] == steps
    assert hit.content[44:] == alone(bundle, body["input"], "casual_male", 2, 12)
    assert list(service.scheduler.finished)[-1].priority == "background"


def test_phrase_cache_is_lru_atomic_and_verified(tmp_path):
    key = [cache_key(text=t) for t in "abcd"]
    (tmp_path / f".{key[0]}.x.partial").write_bytes(b"half")  # a write cut short
    cache = PhraseCache(tmp_path, max_bytes=3 * (40 + 1000))
    assert not list(tmp_path.glob(".*"))
    for k in key[:3]:
        cache.put(k, k.encode()[:10] * 100)
    assert cache.get(key[0]) == key[0].encode()[:10] * 100  # now the most recent
    cache.put(key[3], b"\0" * 1000)
    assert cache.get(key[1]) is None and cache.counters["evictions"] == 1  # the least recently used went
    assert sorted(p.stem for p in tmp_path.glob("*.pcm")) == sorted([key[0], key[2], key[3]])
    cache.put(key[1], b"\0" * 5000)  # larger than the cap: not kept
    assert cache.get(key[1]) is None and cache.bytes <= 3 * 1040
    again = PhraseCache(tmp_path, max_bytes=10**6)  # the index is rebuilt from the folder
    assert again.get(key[3]) == b"\0" * 1000
    (tmp_path / f"{key[3]}.pcm").write_bytes(b"VXEPCM1\n" + b"\0" * 32)
    assert again.get(key[3]) is None and not (tmp_path / f"{key[3]}.pcm").exists()
    with pytest.raises(ValueError):
        cache.path("../../etc/passwd")


def test_health_reports_loading_until_the_bundle_is_open(bundle, monkeypatch, tmp_path):
    opened = threading.Event()
    real_open = Synthesizer.open

    def slow_open(*args, **kwargs):
        opened.wait(30)
        return real_open(*args, **kwargs)

    monkeypatch.setattr(Synthesizer, "open", slow_open)
    with running(ServiceConfig(bundle=bundle, cache_dir=None), wait_ready=False) as (url, server):
        response = httpx.get(url + "/health")
        assert response.status_code == 503 and response.json() == {"status": "loading"}
        early = speech(url, {"input": "Hi", "voice": "casual_male"})
        assert early.status_code == 503 and early.json()["error"]["code"] == "loading"
        opened.set()
        wait_for(lambda: httpx.get(url + "/health").status_code == 200, what="ready")
        assert speech(url, {"input": "Hi", "voice": "casual_male", "max_frames": 2}).status_code == 200


def test_api_key_and_loopback_rules(bundle):
    check_binding("127.0.0.1", None, None), check_binding("::1", None, None), check_binding("localhost", None, None)
    check_binding("0.0.0.0", "/tmp/x.sock", None)  # a unix socket: the file's permissions guard it
    check_binding("0.0.0.0", None, "key")
    with pytest.raises(UsageError, match="--host 0.0.0.0 is not a loopback address: give --api-key"):
        check_binding("0.0.0.0", None, None)
    cli = subprocess.run([sys.executable, "-m", "voxtral_edge.cli", "serve", "--bundle", str(bundle), "--host",
                          "192.168.1.20"], capture_output=True, text=True, timeout=60,
                         env={**os.environ, "VOXTRAL_EDGE_API_KEY": ""})
    assert cli.returncode == 2 and len(cli.stderr.strip().splitlines()) == 1 and "--api-key" in cli.stderr
    with running(ServiceConfig(bundle=bundle, cache_dir=None, api_key="s3cret")) as (url, _):
        for headers in ({}, {"Authorization": "Bearer wrong"}):
            response = httpx.get(url + "/v1/audio/voices", headers=headers)
            assert response.status_code == 401 and response.json()["error"]["code"] == "invalid_api_key"
        assert httpx.get(url + "/health").status_code == 200  # for the supervisor
        client = openai.OpenAI(base_url=url + "/v1", api_key="s3cret")
        with client.audio.speech.with_streaming_response.create(model="tiny0", voice="casual_male", input="Hi",
                                                                extra_body={"max_frames": 2}) as r:
            assert len(r.read()) == 44 + 2 * 3840


def test_limits_on_headers_and_connections(bundle):
    with running(ServiceConfig(bundle=bundle, cache_dir=None), max_connections=3) as (url, _):
        host, port = url[7:].split(":")
        with socket.create_connection((host, int(port)), timeout=10) as s:
            s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * (64 << 10) + b"\r\n\r\n")
            assert s.recv(100).split(b"\r\n")[0] in (b"HTTP/1.1 400 Bad Request", b"HTTP/1.1 431 Request Header "
                                                                                 b"Fields Too Large")
        body = {"input": LONG, "voice": "casual_male", "max_frames": 2000}
        with httpx.Client(timeout=60) as a, httpx.Client(timeout=60) as b:
            with a.stream("POST", url + "/v1/audio/speech", json=body) as r1, \
                    b.stream("POST", url + "/v1/audio/speech", json={**body, "seed": 1}) as r2:
                parts = r1.iter_bytes()
                next(parts)
                assert r2.status_code == 200
                assert httpx.get(url + "/health").status_code == 503  # a third connection is at the limit (3)


def test_sigterm_ends_streams_at_a_frame_with_valid_audio(bundle, tmp_path):
    server = subprocess.Popen([sys.executable, "-m", "voxtral_edge.cli", "serve", "--bundle", str(bundle), "--port",
                               "0", "--no-cache"], stderr=subprocess.PIPE, text=True)
    try:
        for line in server.stderr:
            found = re.search(r"running on http://127.0.0.1:(\d+)", line)
            if found:
                break
        url = f"http://127.0.0.1:{found.group(1)}"
        wait_for(lambda: httpx.get(url + "/health").status_code == 200, what="ready")
        body = {"input": LONG, "voice": "casual_male", "max_frames": 2000, "seed": 4}
        with httpx.stream("POST", url + "/v1/audio/speech", json=body, timeout=60) as media:
            parts = media.iter_bytes()
            data = next(parts)
            server.send_signal(signal.SIGTERM)
            data += b"".join(parts)  # the stream ends, cleanly
        assert server.wait(30) in (0, -signal.SIGTERM)
    finally:
        server.kill()
        server.wait()
    assert data[:44] == wav_header(24000) and (len(data) - 44) % 3840 == 0 and len(data) - 44 < 2000 * 3840
    assert data[44:] == alone(bundle, LONG, "casual_male", 4, (len(data) - 44) // 3840)  # whole frames of the same audio


def test_the_page_lists_the_voices_and_plays_a_request_in_a_real_browser(server, bundle):
    """Debian's chromium and chromium-driver, headless: the page fetches the voices, and one request's
    streamed PCM is scheduled for playback in Web Audio, sample for sample what the Synthesizer makes."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service as ChromeService
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    url, _ = server
    browser = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    driver_path = shutil.which("chromedriver")
    assert browser and driver_path, "this test needs Chromium and its driver on PATH (Debian: apt-get install " \
                                    "chromium chromium-driver; .ci/run installs them)"
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                     "--autoplay-policy=no-user-gesture-required"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=ChromeService(driver_path), options=options)
    try:
        driver.set_page_load_timeout(30)
        driver.get(url + "/")
        WebDriverWait(driver, 30).until(lambda d: d.execute_script("return window.voxtral.voices.length") > 0)
        assert [o.text for o in Select(driver.find_element(By.ID, "voice")).options] == [
            "casual_male", "fr_female", "neutral_female"]
        Select(driver.find_element(By.ID, "voice")).select_by_visible_text("fr_female")
        Select(driver.find_element(By.ID, "priority")).select_by_visible_text("navigation")
        box = driver.find_element(By.ID, "text")
        box.clear()
        box.send_keys("Oui.")
        driver.find_element(By.ID, "speak").click()
        WebDriverWait(driver, 60).until(lambda d: d.execute_script("return window.voxtral.done || !!window.voxtral.error"))
        player = driver.execute_script("return window.voxtral")
    finally:
        driver.quit()
    assert player["error"] is None and player["contextState"] == "running"
    assert player["samplesScheduled"] == len(alone(bundle, "Oui.", "fr_female", 0)) // 2
    assert player["chunks"] > 1  # played as it arrived, not as one file


ROOT = __import__("pathlib").Path(__file__).resolve().parents[1]


def test_the_readme_examples_run_as_written(bundle, tmp_path, monkeypatch):
    section = (ROOT / "README.md").read_text(encoding="utf-8").split("\n## Serve")[1].split("\n## ")[0]
    blocks = re.findall(r"```(sh|python)\n(.*?)```", section, re.S)
    assert [kind for kind, _ in blocks] == ["sh", "python"]
    # a short context, so that the random weights' utterances (which never end) stop early
    config = ServiceConfig(bundle=bundle, model_name="Voxtral-4B-TTS-2603", cache_dir=tmp_path / "cache",
                           synth_options={"max_context": 72})
    with running(config) as (url, server):
        for kind, code in blocks:
            code = code.replace("http://127.0.0.1:8000", url)
            if kind == "sh":
                run = subprocess.run(["bash", "-euo", "pipefail", "-c", code], cwd=tmp_path, capture_output=True,
                                     text=True, timeout=120)
                assert run.returncode == 0, run.stderr
                assert json.loads(run.stdout)["status"] == "queued"  # the prefetch
            else:
                monkeypatch.chdir(tmp_path)
                exec(compile(code, "README.md", "exec"), {})
        wait_for(lambda: server.service.scheduler.counters["completed"] == 4, what="the prefetch")
        scheduler = server.service.scheduler
        # (the media request may overtake the prefetch: background yields to every other class)
        assert sorted(j.priority for j in scheduler.finished) == ["background", "media", "message", "navigation"]
    assert (tmp_path / "turn.wav").read_bytes() == wav_header(24000) + alone(
        bundle, "In two hundred metres, turn left.", "casual_male", 0, max_context=72)
    assert (tmp_path / "bonjour.pcm").read_bytes() == alone(bundle, "Bonjour.", "fr_female", 0, max_context=72)
    assert (tmp_path / "traffic.wav").read_bytes()[44:] == alone(bundle, "Traffic ahead on the ring road.",
                                                                 "casual_male", 0, max_context=72)


def test_the_systemd_unit_runs_a_command_the_cli_accepts():
    import configparser
    import shlex

    from voxtral_edge.cli import build_parser

    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str
    unit.read(ROOT / "deploy" / "voxtral-edge.service")
    argv = shlex.split(unit["Service"]["ExecStart"])
    assert argv[0].endswith("/voxtral-edge")
    args = build_parser().parse_args(argv[1:])
    assert args.command == "serve" and args.host == "127.0.0.1" and args.profile
    from voxtral_edge.profiles import load_profile
    load_profile(args.profile)  # a shipped profile
    assert unit["Service"]["KillSignal"] == "SIGTERM" and unit["Service"]["CacheDirectory"] == "voxtral-edge"


def test_a_bundle_that_cannot_be_opened_stops_the_server_with_one_line(tmp_path):
    (tmp_path / "manifest.json").write_text("{}")
    run = subprocess.run([sys.executable, "-m", "voxtral_edge.cli", "serve", "--bundle", str(tmp_path), "--port", "0",
                          "--no-cache", "--log-level", "error"], capture_output=True, text=True, timeout=60)
    assert run.returncode == 1
    assert re.search(r"voxtral-edge: error: --bundle .*manifest.json", run.stderr.strip().splitlines()[-1]), run.stderr


# -- output rates, formats, speed, loudness and marks (issue 25) -------------------------------------------
def test_the_output_fields_change_the_audio_as_say_does(server, bundle):
    import soundfile
    import soxr

    url, _ = server
    body = {"input": "Turn left.", "voice": "casual_male", "seed": 3, "max_frames": 12}
    base = np.frombuffer(speech(url, {**body, "response_format": "pcm"}).content, "<i2")
    r16 = speech(url, {**body, "response_format": "pcm", "sample_rate": 16000})
    assert r16.headers["x-sample-rate"] == "16000"
    pcm16 = np.frombuffer(r16.content, "<i2").astype(np.int32)
    whole = np.round(np.clip(soxr.resample(base.astype(np.float32) / 32767, 24000, 16000), -1, 1) * 32767)
    assert len(pcm16) == len(base) * 2 // 3 and np.abs(pcm16 - whole).max() <= 1  # streamed == whole, 1 LSB
    flac = speech(url, {**body, "response_format": "flac", "sample_rate": 16000})
    assert flac.headers["content-type"] == "audio/flac"
    assert np.array_equal(read_unknown_length(flac.content).astype(np.int32), pcm16)  # lossless
    opus = speech(url, {**body, "response_format": "opus", "sample_rate": 48000})
    back, rate = soundfile.read(io.BytesIO(opus.content))
    assert opus.headers["content-type"] == "audio/ogg" and rate == 48000 and abs(len(back) - 2 * len(base)) <= 960
    mp3 = speech(url, {**body, "response_format": "mp3", "sample_rate": 22050})
    assert mp3.headers["content-type"] == "audio/mpeg" and mp3_frames(mp3.content)[1] >= len(base) * 22050 // 24000
    fast = speech(url, {**body, "response_format": "pcm", "speed": 1.5})
    assert len(fast.content) // 2 == round(len(base) / 1.5)


def test_marks_of_an_ssml_request(server):
    url, _ = server
    doc = '<speak><s>Turn left.</s><mark name="here"/><break time="500ms"/><s>Then right.</s></speak>'
    r = speech(url, {"input": doc, "voice": "casual_male", "seed": 0, "response_format": "pcm", "sample_rate": 16000,
                     "speed": 1.25})
    pcm = np.frombuffer(r.content, "<i2")
    marks = httpx.get(url + r.headers["x-marks"], timeout=10).json()
    assert marks["done"] and marks["sample_rate"] == 16000
    kinds = [(m["kind"], m["name"]) for m in marks["marks"]]
    assert kinds == [("sentence", "Turn left."), ("mark", "here"), ("sentence", "Then right.")]
    here, then = marks["marks"][1]["sample"], marks["marks"][2]["sample"]
    assert then - here == round(0.5 / 1.25 * 16000)  # the break, at the output's rate and speed
    assert np.abs(pcm[here + 400:then - 400]).max() <= 2  # and silent there
    assert marks["marks"][1]["time_s"] == pytest.approx(here / 16000)
    missing = httpx.get(url + "/v1/audio/marks/nope", timeout=10)
    assert missing.status_code == 404 and "X-Marks header" in missing.json()["error"]["message"]


def test_serve_makes_its_sessions_without_the_memory_arena_unless_asked(tiny_bundle_dirs, monkeypatch):
    """The service opens its bundle with memory_arena False (a process that runs for months gives each step's
    tensors back) unless its synth_options say otherwise, as `serve --memory-arena` does; `say` and `bench`
    keep the runtime's default (the arena on)."""
    import voxtral_edge.serve.server as server
    from voxtral_edge.cli import build_parser, main
    from voxtral_edge.cli.common import apply_profile, bundle_settings
    from voxtral_edge.serve.app import Service

    arenas = {}
    for options in ({}, {"memory_arena": True}):
        service = Service(ServiceConfig(bundle=tiny_bundle_dirs[0], synth_options=options))
        service.load()
        try:
            arenas[bool(options)] = {s.get_session_options().enable_cpu_mem_arena
                                     for s in service.synth.sessions.values()}
        finally:
            service.stop()
    assert arenas == {False: {False}, True: {True}}
    seen = []
    monkeypatch.setattr(server, "serve", lambda config, **kw: seen.append(config.synth_options.get("memory_arena")))
    for extra in ([], ["--memory-arena"], ["--no-memory-arena"]):
        assert main(["serve", "--bundle", str(tiny_bundle_dirs[0]), "--no-cache", *extra]) == 0
    assert seen == [None, True, False]  # unset: the service's default above
    for command in (["say", "hello", "--voice", "v", "--bundle", "b"], ["bench", "--bundle", "b"]):
        assert "memory_arena" not in bundle_settings(apply_profile(build_parser().parse_args(command)))
    assert Synthesizer.open(tiny_bundle_dirs[0]).sessions["backbone_step"].get_session_options().enable_cpu_mem_arena
