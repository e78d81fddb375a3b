"""Faults outside the service, injected for real: a cache folder that is read-only or full, a cache entry cut
short, the process killed in the middle of a cache write, a bundle file changed under it, memory at its
limit, a unix socket left by a crash. Each time the service keeps speaking or answers 503, and the process
stays up. Oracles: the Synthesizer run alone (bit for bit), the files on disk, the process's exit status.

A read-only folder is a read-only bind mount where the tests may mount (root), else mode 0555 for a server
without CAP_DAC_OVERRIDE; a full one is a 64 KiB tmpfs, else a 64 KiB RLIMIT_FSIZE (EFBIG instead of ENOSPC).
"""

from __future__ import annotations

import ctypes
import os
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import threading
from contextlib import contextmanager
from functools import partial
from pathlib import Path

import httpx
import pytest
from test_serve import LONG, alone, running, wait_for

from voxtral_edge.errors import UsageError
from voxtral_edge.machine import memory_cgroup, memory_headroom
from voxtral_edge.serve.app import ServiceConfig
from voxtral_edge.serve.server import make_server

pytestmark = pytest.mark.filterwarnings("ignore::voxtral_edge.runtime.RunawayWarning")  # random weights never end

CACHE_WARNING = re.compile(r"phrase cache .*: cannot (write|use) .*speaking without storing new phrases")


@pytest.fixture(scope="module")
def bundle(tiny_bundle_dirs):
    return tiny_bundle_dirs[0]


class Spawned:
    """`voxtral-edge serve` in a process of its own on a free loopback port, its log collected."""

    def __init__(self, bundle, *args, preexec_fn=None, command=None):
        argv = [*(command or [sys.executable, "-m", "voxtral_edge.cli"]), "serve", "--bundle", str(bundle),
                "--port", "0", "--no-verify", *map(str, args)]
        self.process = subprocess.Popen(argv, stderr=subprocess.PIPE, text=True, preexec_fn=preexec_fn)
        self.log: list[str] = []
        port = threading.Event()
        self.url = None

        def read():
            for line in self.process.stderr:
                self.log.append(line)
                found = re.search(r"running on http://127.0.0.1:(\d+)", line)
                if found:
                    self.url = f"http://127.0.0.1:{found.group(1)}"
                    port.set()
        threading.Thread(target=read, daemon=True).start()
        wait_for(lambda: port.is_set() or self.process.poll() is not None, 60, "the server to start")
        assert self.url, "".join(self.log)
        wait_for(lambda: httpx.get(self.url + "/health").status_code in (200, 503) and
                 httpx.get(self.url + "/health").json()["status"] != "loading", 60, "the bundle to load")

    def post(self, body: dict, **kwargs) -> httpx.Response:
        return httpx.post(self.url + "/v1/audio/speech", json=body, timeout=60, **kwargs)

    def count(self, pattern: re.Pattern) -> int:
        return sum(1 for line in self.log if pattern.search(line))

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(30)
        finally:
            self.process.kill()


@contextmanager
def spawned(bundle, *args, **kwargs):
    server = Spawned(bundle, *args, **kwargs)
    try:
        yield server
    finally:
        server.stop()


def _mount(*args) -> bool:
    return os.geteuid() == 0 and subprocess.run(["mount", *map(str, args)], capture_output=True).returncode == 0


def _without_dac_override() -> None:
    """(in a child before exec) give up root's right to write where the mode bits say no"""
    libc = ctypes.CDLL(None, use_errno=True)
    for capability in (1, 2, 3):  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH, CAP_FOWNER
        if libc.prctl(24, capability, 0, 0, 0):  # PR_CAPBSET_DROP
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


@contextmanager
def read_only(folder: Path):
    """Make folder read-only for a server started in the block: yields its preexec_fn."""
    if _mount("--bind", folder, folder):
        try:
            subprocess.run(["mount", "-o", "remount,bind,ro", str(folder)], check=True)
            yield None
        finally:
            subprocess.run(["umount", str(folder)], check=True)
    else:
        folder.chmod(0o555)
        try:
            yield _without_dac_override if os.geteuid() == 0 else None
        finally:
            folder.chmod(0o755)


@contextmanager
def small_disk(folder: Path, size: int = 64 << 10):
    """Give folder room for `size` bytes, for a server started in the block: yields its preexec_fn."""
    if _mount("-t", "tmpfs", "-o", f"size={size}", "tmpfs", folder):
        try:
            yield None
        finally:
            subprocess.run(["umount", str(folder)], check=True)
    else:
        yield partial(resource.setrlimit, resource.RLIMIT_FSIZE, (size, size))


def test_a_read_only_cache_folder_still_serves_what_it_holds_and_says_so_once(bundle, tmp_path):
    cache = tmp_path / "phrases"
    cache.mkdir()
    held = {"input": "Turn left.", "voice": "casual_male", "max_frames": 6}
    new = {"input": "Turn right.", "voice": "fr_female", "max_frames": 6}
    with spawned(bundle, "--cache-dir", cache) as server:
        assert server.post(held).headers["x-cache"] == "miss"
    entries = sorted(cache.iterdir())
    with read_only(cache) as preexec, spawned(bundle, "--cache-dir", cache, preexec_fn=preexec) as server:
        hit = server.post(held)
        first, second = server.post(new), server.post(new)
        health = httpx.get(server.url + "/health").json()
        assert server.process.poll() is None
    assert hit.headers["x-cache"] == "hit" and hit.content[44:] == alone(bundle, "Turn left.", "casual_male", 0, 6)
    assert first.headers["x-cache"] == second.headers["x-cache"] == "miss"
    assert first.content == second.content and first.content[44:] == alone(bundle, "Turn right.", "fr_female", 0, 6)
    assert health["cache"]["writable"] is False and health["cache"]["hits"] == 1
    assert server.count(CACHE_WARNING) == 1, server.log
    assert sorted(cache.iterdir()) == entries  # nothing added, nothing half-written


def test_a_full_cache_folder_costs_the_entry_not_the_request(bundle, tmp_path):
    cache = tmp_path / "phrases"
    cache.mkdir()
    big = {"input": "In two hundred metres, turn right at the roundabout.", "voice": "neutral_female",
           "max_frames": 30}  # 115 kB of audio: more than fits
    small = {"input": "Exit.", "voice": "casual_male", "max_frames": 4}  # 15 kB
    with small_disk(cache) as preexec, spawned(bundle, "--cache-dir", cache, preexec_fn=preexec) as server:
        answers = [server.post(big) for _ in range(3)]
        wait_for(lambda: httpx.get(server.url + "/health").json()["cache"]["write_errors"] >= 2)
        stored = server.post(small)
        wait_for(lambda: httpx.get(server.url + "/health").json()["cache"]["writes"] == 1)
        again = server.post(small)
        files = sorted(p.name for p in cache.iterdir())
        assert server.process.poll() is None
    oracle = alone(bundle, big["input"], "neutral_female", 0, 30)
    assert all(a.status_code == 200 and a.content[44:] == oracle for a in answers)
    assert [a.headers["x-cache"] for a in answers[1:]] == ["miss", "miss"]  # (the second may share the first)
    assert stored.headers["x-cache"] == "miss" and again.headers["x-cache"] == "hit"
    assert len(files) == 1 and files[0].endswith(".pcm")  # no partial file left behind
    assert server.count(CACHE_WARNING) == 1 and server.count(re.compile("stores new phrases again")) == 1


def test_killed_during_a_cache_write_the_next_start_serves_no_partial_file(bundle, tmp_path):
    cache = tmp_path / "phrases"
    body = {"input": "Keep right at the fork.", "voice": "fr_female", "max_frames": 9, "seed": 3}
    hook = ("import os, sys, time\n"
            "real = os.fsync\n"
            "def fsync(fd):\n"
            "    if os.readlink(f'/proc/self/fd/{fd}').endswith('.partial'):\n"
            "        print('in fsync of', os.readlink(f'/proc/self/fd/{fd}'), file=sys.stderr, flush=True)\n"
            "        time.sleep(3600)\n"
            "    real(fd)\n"
            "os.fsync = fsync\n"
            "from voxtral_edge.cli import main\n"
            "sys.exit(main())\n")
    server = Spawned(bundle, "--cache-dir", cache, command=[sys.executable, "-c", hook])
    try:
        assert server.post(body).status_code == 200  # the writer thread then stops in fsync
        wait_for(lambda: server.count(re.compile("in fsync of")), what="the cache write")
        partial_file = [p for p in cache.iterdir() if p.name.endswith(".partial")]
        assert len(partial_file) == 1 and partial_file[0].stat().st_size == 8 + 32 + 9 * 3840
        server.process.kill()
        assert server.process.wait(30) == -signal.SIGKILL
    finally:
        server.stop()
    assert not list(cache.glob("*.pcm"))
    with spawned(bundle, "--cache-dir", cache) as again:
        assert not [p for p in cache.iterdir() if p.name.endswith(".partial")]
        answer = again.post(body)
        wait_for(lambda: httpx.get(again.url + "/health").json()["cache"]["writes"] == 1)
        assert answer.headers["x-cache"] == "miss" and again.post(body).headers["x-cache"] == "hit"
    assert answer.content[44:] == alone(bundle, body["input"], "fr_female", 3, 9)


def test_a_truncated_cache_entry_is_dropped_and_rendered_again(bundle, tmp_path):
    with running(ServiceConfig(bundle=bundle, cache_dir=tmp_path / "phrases")) as (url, server):
        body = {"input": "Speed camera ahead.", "voice": "neutral_female", "max_frames": 7}
        first = httpx.post(url + "/v1/audio/speech", json=body, timeout=60)
        server.service.cache.flush()
        (entry,) = (tmp_path / "phrases").glob("*.pcm")
        entry.write_bytes(entry.read_bytes()[:1000])  # cut short, as by a disk that filled up
        second = httpx.post(url + "/v1/audio/speech", json=body, timeout=60)
        server.service.cache.flush()
        third = httpx.post(url + "/v1/audio/speech", json=body, timeout=60)
        counters = server.service.cache.snapshot()
    assert [r.headers["x-cache"] for r in (first, second, third)] == ["miss", "miss", "hit"]
    assert first.content == second.content == third.content
    assert counters["corrupt"] == 1 and entry.stat().st_size == 8 + 32 + 7 * 3840


def test_a_bundle_file_cut_short_in_place_while_serving_gets_503s_not_a_dead_process(bundle, tmp_path):
    """The service holds a read lease on each bundle file: the truncation waits until the worker has
    stopped reading the mapped weights (without it, the next frame would end the process with SIGBUS)."""
    copy = tmp_path / "bundle"
    shutil.copytree(bundle, copy)
    with spawned(copy, "--no-cache") as server:
        assert httpx.get(server.url + "/health").json()["bundle_leases"] == "held"
        body = {"input": LONG, "voice": "casual_male", "max_frames": 2000, "priority": "media"}
        with httpx.stream("POST", server.url + "/v1/audio/speech", json=body, timeout=60) as media:
            parts = media.iter_bytes()
            data = next(parts)
            cut = subprocess.run([sys.executable, "-c", "import os, sys; os.truncate(sys.argv[1], 0)",
                                  str(copy / "backbone_step.onnx.data")], timeout=60)  # waits for the lease
            data += b"".join(parts)  # ends at a frame boundary
        assert cut.returncode == 0
        after = server.post({"input": "Hi", "voice": "casual_male", "max_frames": 2})
        health = httpx.get(server.url + "/health")
        assert server.process.poll() is None
    assert (len(data) - 44) % 3840 == 0 and len(data) - 44 < 2000 * 3840
    assert after.status_code == 503 and after.json()["error"]["code"] == "bundle_changed"
    assert "backbone_step.onnx.data" in after.json()["error"]["message"]
    assert health.status_code == 503 and health.json()["status"] == "bundle_changed"
    assert "is being written or truncated" in health.json()["error"]  # heard through the lease, before the cut


def test_a_bundle_file_replaced_or_removed_while_serving_gets_503s(bundle, tmp_path):
    copy = tmp_path / "bundle"
    shutil.copytree(bundle, copy)
    with running(ServiceConfig(bundle=copy, cache_dir=None)) as (url, server):
        assert httpx.post(url + "/v1/audio/speech", json={"input": "Hi", "voice": "fr_female", "max_frames": 2},
                          timeout=60).status_code == 200
        voice = copy / "voices" / "casual_male.npy"
        voice.unlink()
        gone = httpx.post(url + "/v1/audio/speech", json={"input": "Hi", "voice": "casual_male"}, timeout=60)
        health = httpx.get(url + "/health")
    assert gone.status_code == 503 and gone.json()["error"]["code"] == "bundle_changed"
    assert "casual_male.npy was removed" in gone.json()["error"]["message"]
    assert health.status_code == 503 and "casual_male.npy was removed" in health.json()["error"]


def _address_space(pid: int) -> int:
    with open(f"/proc/{pid}/statm") as f:
        return int(f.read().split()[0]) * resource.getpagesize()


def test_memory_at_its_limit_refuses_new_syntheses_with_503_and_the_process_stays_up(bundle):
    reserve = 64 << 20
    with spawned(bundle, "--no-cache", "--memory-reserve-mb", reserve >> 20) as server:
        warm = {"input": "Warm up.", "voice": "casual_male", "max_frames": 4}
        for priority in ("navigation", "media"):
            assert server.post({**warm, "priority": priority}).status_code == 200
        pid = server.process.pid
        limit = _address_space(pid) + reserve // 2  # RLIMIT_AS just above what it uses: half the reserve left
        hard = resource.prlimit(pid, resource.RLIMIT_AS)[1]
        resource.prlimit(pid, resource.RLIMIT_AS, (limit, hard))
        refused = server.post({"input": "A new sentence to say.", "voice": "fr_female", "max_frames": 40})
        health = httpx.get(server.url + "/health")
        resource.prlimit(pid, resource.RLIMIT_AS, (hard, hard))
        served = server.post({"input": "A new sentence to say.", "voice": "fr_female", "max_frames": 40})
        assert server.process.poll() is None
    assert refused.status_code == 503 and refused.json()["error"]["code"] == "memory_low"
    assert "RLIMIT_AS" in refused.json()["error"]["message"] and refused.headers["retry-after"] == "1"
    assert health.status_code == 200 and health.json()["memory"]["headroom_mb"] < reserve >> 20
    assert served.status_code == 200 and served.content[44:] == alone(bundle, "A new sentence to say.", "fr_female",
                                                                        0, 40)


def test_a_unix_socket_left_by_a_crash_is_replaced_a_live_one_is_not(bundle, tmp_path):
    path = str(tmp_path / "speech.sock")
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(path)  # bound and closed without unlinking: what a killed server leaves
    stale.close()
    config = ServiceConfig(bundle=bundle, cache_dir=None)
    server = make_server(config, unix=path, log_level="warning")
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        wait_for(lambda: server.started or not thread.is_alive(), what="the server to start")
        assert (os.stat(path).st_mode & 0o777) == 0o660
        transport = httpx.HTTPTransport(uds=path)
        with httpx.Client(transport=transport, base_url="http://voxtral") as client:
            wait_for(lambda: client.get("/health").status_code == 200, what="ready")
            response = client.post("/v1/audio/speech", json={"input": "Hi", "voice": "casual_male", "max_frames": 3})
        assert response.status_code == 200 and response.content[44:] == alone(bundle, "Hi", "casual_male", 0, 3)
        with pytest.raises(UsageError, match="another server is listening there"):
            make_server(config, unix=path)
    finally:
        server.handle_exit(signal.SIGTERM, None)
        thread.join(30)
    assert not os.path.exists(path)  # removed on the way out
    other = tmp_path / "not-a-socket"
    other.write_text("keep me")
    with pytest.raises(UsageError, match="exists and is not a socket"):
        make_server(config, unix=str(other))
    assert other.read_text() == "keep me"


def test_the_memory_limit_is_read_from_the_process_cgroup_v1_or_v2(tmp_path):
    """cgroup limits cannot be set here (the machine's cgroups are not the tests'): the files as the kernel
    writes them, in a folder of our own."""
    proc = tmp_path / "proc"
    proc.mkdir()
    (proc / "statm").write_text("1000 200 0 0 0 0 0\n")
    v2 = tmp_path / "v2"
    (v2 / "system.slice" / "voxtral-edge.service").mkdir(parents=True)
    folder = v2 / "system.slice" / "voxtral-edge.service"
    (folder / "memory.max").write_text(f"{512 << 20}\n")
    (folder / "memory.current").write_text(f"{400 << 20}\n")
    (folder / "memory.stat").write_text(f"anon {300 << 20}\nfile {100 << 20}\ninactive_file {60 << 20}\n")
    (proc / "cgroup").write_text("0::/system.slice/voxtral-edge.service\n")
    assert memory_cgroup(proc, v2) == ("v2", folder)
    room, limit = memory_headroom(proc, memory_cgroup(proc, v2))
    assert room == (512 - 400 + 60) << 20 and str(folder) in limit
    (folder / "memory.max").write_text("max\n")
    assert memory_headroom(proc, ("v2", folder)) is None  # no limit (and no RLIMIT_AS in the tests)
    v1 = tmp_path / "v1"
    folder = v1 / "memory" / "docker" / "abc"
    folder.mkdir(parents=True)
    (folder / "memory.limit_in_bytes").write_text(f"{1 << 30}\n")
    (folder / "memory.usage_in_bytes").write_text(f"{900 << 20}\n")
    (folder / "memory.stat").write_text(f"cache {200 << 20}\nrss {700 << 20}\ntotal_inactive_file {50 << 20}\n")
    (proc / "cgroup").write_text("5:cpuacct,cpu:/docker/abc\n4:memory:/docker/abc\n0::/\n")
    assert memory_cgroup(proc, v1) == ("v1", folder)
    assert memory_headroom(proc, ("v1", folder))[0] == (1024 - 900 + 50) << 20
    (folder / "memory.limit_in_bytes").write_text("9223372036854771712\n")  # v1's "no limit"
    assert memory_headroom(proc, ("v1", folder)) is None
