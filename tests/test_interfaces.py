"""The standard interfaces end to end: Wyoming with the wyoming package's own client, speech-dispatcher with
Debian's daemon and spd-say (its audio sent to a file by ALSA's file plugin), and the command its generic
module runs, through the service and without it."""

from __future__ import annotations

import asyncio
import io
import os
import shutil
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from voxtral_edge.chain import Output
from voxtral_edge.runtime import Synthesizer
from voxtral_edge.speechd import module_config, speak, speed_of_rate

CLI = [sys.executable, "-m", "voxtral_edge.cli"]


@pytest.fixture(scope="module")
def bundle(tiny_bundle_dirs):
    return tiny_bundle_dirs[0]


@pytest.fixture(scope="module")
def synth(bundle):
    return Synthesizer.open(bundle)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def say(bundle, text, *args) -> bytes:
    """What `voxtral-edge say -o -` writes (the oracle: another process, the command line's path)."""
    return subprocess.run([*CLI, "say", text, "--bundle", str(bundle), "--voice", "casual_male", "--seed", "0",
                           "-o", "-", *args], capture_output=True, check=True, timeout=300).stdout


# -- Wyoming ----------------------------------------------------------------------------------------------
def test_wyoming_with_its_own_client(synth, bundle):
    from wyoming.audio import AudioChunk, AudioStart
    from wyoming.client import AsyncTcpClient
    from wyoming.error import Error
    from wyoming.info import Describe, Info
    from wyoming.tts import Synthesize, SynthesizeChunk, SynthesizeStart, SynthesizeStop, SynthesizeVoice

    from voxtral_edge.wyoming import WyomingConfig, serve

    config = WyomingConfig("casual_male", Output(16000, format="pcm"), seed=0, options={"max_frames": 12})

    async def reply(client, until):
        events = []
        while True:
            event = await asyncio.wait_for(client.read_event(), 120)
            events.append(event)
            if event.type in until:
                return events

    async def session():
        port, ready = free_port(), asyncio.Event()
        server = asyncio.create_task(serve(synth, config, f"tcp://127.0.0.1:{port}", ready))
        await asyncio.wait_for(ready.wait(), 30)
        try:
            async with AsyncTcpClient("127.0.0.1", port) as client:
                await client.write_event(Describe().event())
                info = Info.from_event((await reply(client, {"info"}))[0])
                voices = {v.name: v.languages for v in info.tts[0].voices}
                await client.write_event(Synthesize("Turn left.", voice=SynthesizeVoice(name="casual_male")).event())
                single = await reply(client, {"audio-stop"})
                for event in (SynthesizeStart(voice=SynthesizeVoice(language="en")), SynthesizeChunk("Turn left. The"),
                              SynthesizeChunk("n right."), Synthesize("Turn left. Then right."), SynthesizeStop()):
                    await client.write_event(event.event())
                streamed = await reply(client, {"synthesize-stopped"})
                await client.write_event(Synthesize("Hi.", voice=SynthesizeVoice(name="nobody")).event())
                error = (await reply(client, {"error"}))[-1]
            return voices, single, streamed, error
        finally:
            server.cancel()

    voices, single, streamed, error = asyncio.run(session())
    assert voices == {"casual_male": ["en"], "fr_female": ["fr"], "neutral_female": ["en"]}
    start = AudioStart.from_event(single[0])
    assert (single[0].type, single[-1].type, start.rate, start.width, start.channels) == (
        "audio-start", "audio-stop", 16000, 2, 1)
    chunks = [AudioChunk.from_event(e) for e in single[1:-1]]
    assert len(chunks) > 1 and all(c.rate == 16000 for c in chunks)  # streamed as made, not one block
    first = say(bundle, "Turn left.", "--max-frames", "12", "--sample-rate", "16000")
    assert b"".join(c.audio for c in chunks) == first
    kinds = [e.type for e in streamed]
    assert kinds[0] == "audio-start" and kinds[-2:] == ["audio-stop", "synthesize-stopped"]
    assert kinds.count("audio-start") == 1 and kinds.count("audio-stop") == 1
    audio = b"".join(AudioChunk.from_event(e).audio for e in streamed if e.type == "audio-chunk")
    both = say(bundle, "Turn left.", "--max-frames", "12", "--sample-rate", "16000") + \
        say(bundle, "Then right.", "--max-frames", "12", "--sample-rate", "16000")
    assert audio == both  # the first sentence spoken when it was complete, the rest at the stop
    assert "unknown voice 'nobody'" in Error.from_event(error).text


def test_the_wyoming_command_serves_what_say_says(bundle):
    """`voxtral-edge wyoming` itself (a process of its own, on a free loopback port, stopped at the end): its
    audio for a request equals `say`'s with the same options, and it names what it serves."""
    from wyoming.audio import AudioChunk
    from wyoming.client import AsyncTcpClient
    from wyoming.tts import Synthesize

    port = free_port()
    options = ["--sample-rate", "16000", "--max-context", "96"]
    server = subprocess.Popen([*CLI, "wyoming", "--uri", f"tcp://127.0.0.1:{port}", "--bundle", str(bundle),
                               "--voice", "casual_male", "--seed", "0", "--log-level", "warning", *options],
                              stderr=subprocess.PIPE, text=True)

    async def ask():
        deadline = time.monotonic() + 120
        while True:  # until it listens
            try:
                client = AsyncTcpClient("127.0.0.1", port)
                await client.connect()
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise
                await asyncio.sleep(0.2)
        try:
            await client.write_event(Synthesize("Turn left.").event())
            events = []
            while not events or events[-1].type != "audio-stop":
                events.append(await asyncio.wait_for(client.read_event(), 120))
            return events
        finally:
            await client.disconnect()

    try:
        events = asyncio.run(ask())
    finally:
        server.terminate()
        _, err = server.communicate(timeout=30)
    audio = b"".join(AudioChunk.from_event(e).audio for e in events if e.type == "audio-chunk")
    assert audio and audio == say(bundle, "Turn left.", *options)
    assert f"serving Wyoming on tcp://127.0.0.1:{port} (voices: casual_male, fr_female, neutral_female)" in err


# -- speech-dispatcher --------------------------------------------------------------------------------------
def test_module_config_lists_voices_and_languages(bundle):
    text = module_config(bundle, ["casual_male", "fr_female", "neutral_female"], service=None)
    assert 'AddVoice "en" "MALE1" "casual_male"' in text and 'AddVoice "fr" "FEMALE1" "fr_female"' in text
    assert 'AddVoice "en" "FEMALE1" "neutral_female"' in text and 'DefaultVoice "casual_male"' in text
    assert 'GenericLanguage "de" "de" "utf-8"' in text and "--service" not in text
    assert [speed_of_rate(r) for r in (-100, 0, 50, 100, 300)] == [0.5, 1.0, 2 ** 0.5, 2.0, 2.0]


def wav_samples(data: bytes) -> np.ndarray:
    """The samples of a streamed WAV (sizes 0xFFFFFFFF): everything after the 44-byte header."""
    assert data[:4] == b"RIFF" and data[8:16] == b"WAVEfmt "
    return np.frombuffer(data[44:], "<i2")


def test_speechd_speak_asks_the_service_then_the_bundle(bundle, tmp_path):
    from test_serve import running

    from voxtral_edge.serve.app import ServiceConfig

    text, rate = "Turn left.", 50  # speed 2^0.5
    with running(ServiceConfig(bundle=bundle, model_name="tiny", cache_dir=None)) as (url, _):
        out = io.BytesIO()
        assert speak(text, "casual_male", bundle=bundle, rate=rate, service=url, out=out) == "service"
    alone = io.BytesIO()
    assert speak(text, "casual_male", bundle=bundle, rate=rate, service=f"http://127.0.0.1:{free_port()}",
                 out=alone) == "bundle"
    served, opened = wav_samples(out.getvalue()).astype(int), wav_samples(alone.getvalue()).astype(int)
    assert len(served) == len(opened) and np.abs(served - opened).max() <= 1  # the service hands 16-bit samples on
    plain = np.frombuffer(say(bundle, text), "<i2")
    assert len(wav_samples(alone.getvalue())) == round(len(plain) / 2 ** 0.5)


def wait_for_socket(path, daemon: subprocess.Popen, timeout: float) -> None:
    """Until the daemon accepts a connection on its unix socket; fails with its stderr if it exits first."""
    deadline = time.monotonic() + timeout
    while True:
        if daemon.poll() is not None:
            pytest.fail(f"speech-dispatcher exited with {daemon.returncode} before listening on {path}: "
                        f"{daemon.stderr.read()}")
        with socket.socket(socket.AF_UNIX) as s:
            try:
                s.connect(str(path))
                return
            except OSError:
                pass
        if time.monotonic() > deadline:
            pytest.fail(f"speech-dispatcher did not listen on {path} within {timeout} s")
        time.sleep(0.05)


def daemon_log(logdir) -> str:
    """The daemon's own log, for a failure's message."""
    log = logdir / "speech-dispatcher.log"
    return "\n--- speech-dispatcher.log (tail) ---\n" + "\n".join(log.read_text(errors="replace").splitlines()[-40:]) \
        if log.exists() else ""


def test_spd_say_speaks_through_voxtral_edge(bundle, tmp_path):
    assert shutil.which("spd-say") and shutil.which("aplay"), "this test needs speech-dispatcher and aplay (Debian: " \
        "apt-get install speech-dispatcher alsa-utils; .ci/run installs them)"
    home, run = tmp_path / "home", tmp_path / "run"
    home.mkdir()
    run.mkdir(mode=0o700)
    raw = tmp_path / "played.raw"
    # the sound card: ALSA's file plugin writes what aplay ($PLAY_COMMAND of the alsa backend) plays
    (home / ".asoundrc").write_text(f'pcm.!default {{ type file; slave.pcm "null"; file "{raw}"; format "raw" }}\n')
    env = {**os.environ, "HOME": str(home), "XDG_RUNTIME_DIR": str(run), "XDG_CONFIG_HOME": str(home / ".config")}
    subprocess.run([*CLI, "speechd-config", "--bundle", str(bundle), "--no-service", "--install", "--default"],
                   env=env, check=True, capture_output=True, timeout=60)
    conf = home / ".config" / "speech-dispatcher" / "speechd.conf"
    with open(conf, "a") as f:
        f.write(f'AudioOutputMethod "alsa"\nLogDir "{tmp_path}"\n')
    # The daemon is started here and kept until the end (-t 0), not autospawned by spd-say: an autospawned
    # daemon ends 5 s after its last client, and a second spd-say that arrives while it ends spawns one
    # that finds the old one's pid file and exits, so the connection is refused (seen on a CI machine).
    sock = run / "speechd.sock"
    env["SPEECHD_ADDRESS"] = f"unix_socket:{sock}"
    daemon = subprocess.Popen(["speech-dispatcher", "--run-single", "--timeout", "0", "--communication-method",
                               "unix_socket", "--socket-path", str(sock), "--pid-file", str(run / "speechd.pid"),
                               "--log-dir", str(tmp_path)], env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True)
    try:
        wait_for_socket(sock, daemon, timeout=60)
        listed = subprocess.run(["spd-say", "-o", "voxtral-edge", "-L"], env=env, capture_output=True, text=True,
                                timeout=60)
        spoken = subprocess.run(["spd-say", "-w", "-o", "voxtral-edge", "-y", "casual_male", "Turn left."], env=env,
                                capture_output=True, text=True, timeout=240)
    finally:
        daemon.terminate()
        try:
            daemon.wait(timeout=30)
        except subprocess.TimeoutExpired:
            daemon.kill()
            daemon.wait()
    assert spoken.returncode == 0, spoken.stderr + daemon_log(tmp_path)
    rows = [line.split() for line in listed.stdout.splitlines()[1:]]
    assert ["casual_male", "en", "MALE1"] in rows and ["fr_female", "fr", "FEMALE1"] in rows
    played = np.frombuffer(raw.read_bytes(), "<i2")
    expected = np.frombuffer(say(bundle, "Turn left."), "<i2")
    # aplay pads the last ALSA period with silence
    assert len(played) >= len(expected) and np.array_equal(played[:len(expected)], expected)
    assert not np.any(played[len(expected):])
