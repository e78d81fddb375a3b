"""Live playback with a fake output stream: the test plays PortAudio's part by calling the callback with
output blocks. Samples in order and unaltered, the prebuffer, underruns and their silence, the final
drain, close() mid-stream, choose_prebuffer's arithmetic and the ring buffer. No sounddevice needed."""

from __future__ import annotations

import sys
import threading
import time

import numpy as np
import pytest

from voxtral_edge.errors import VoxtralEdgeError
from voxtral_edge.playback import Player, RingBuffer, choose_prebuffer

SR = 1000  # 1 sample = 1 ms keeps the arithmetic readable


class FakeStream:
    def __init__(self, samplerate, channels, dtype, callback):
        assert (samplerate, channels, dtype) == (SR, 1, "float32")
        self._callback = callback
        self.callback = None  # set by start(), like PortAudio starting to pull
        self.stopped = self.closed = False

    def start(self):
        self.callback = self._callback

    def stop(self):
        self.stopped = True

    def close(self):
        self.closed = True

    def pull(self, frames: int) -> np.ndarray:
        """One output block, as PortAudio would ask for it (filled with NaN first, to see what is written)."""
        assert self.callback is not None, "pulled before start()"
        out = np.full((frames, 1), np.nan, np.float32)
        self.callback(out, frames, None, None)
        return out[:, 0].copy()


def make_player(prebuffer_s: float = 0.0) -> tuple[Player, list[FakeStream]]:
    streams = []

    def factory(**kw):
        streams.append(FakeStream(**kw))
        return streams[-1]

    return Player(SR, prebuffer_s, stream_factory=factory), streams


def test_samples_come_out_in_order_and_unaltered():
    rng = np.random.default_rng(0)
    audio = rng.uniform(-1, 1, 10_000).astype(np.float32)
    player, (stream,) = make_player(prebuffer_s=0.5)
    cuts = [0, 1, 38, 700, 2500, 2501, 6000, 10_000]  # chunks of odd sizes, never a multiple of the block
    out = []
    for a, b in zip(cuts, cuts[1:]):
        player.write(audio[a:b])
        while stream.callback and player.buffered_s >= 0.256:  # pull while it cannot run dry
            out.append(stream.pull(256))
    player.done_writing()
    while player.buffered_s:
        out.append(stream.pull(256))
    out = np.concatenate(out)
    np.testing.assert_array_equal(out[:len(audio)], audio)
    assert not out[len(audio):].any()  # the final block is zero-filled
    assert player.underruns == 0 and player.underrun_s == 0
    assert player.played_s == 10.0


def test_playback_waits_for_the_prebuffer():
    player, (stream,) = make_player(prebuffer_s=0.5)
    for _ in range(4):
        player.write(np.ones(100, np.float32))
        assert stream.callback is None and player.started_after_s is None
    player.write(np.ones(100, np.float32))
    assert stream.callback is not None and player.started_after_s >= 0


def test_a_slow_producer_gives_counted_underruns():
    player, (stream,) = make_player(prebuffer_s=0.1)
    player.write(np.ones(100, np.float32))
    assert stream.pull(60).all()
    block = stream.pull(60)  # 40 samples of audio, then 20 of silence
    assert block[:40].all() and not block[40:].any()
    assert (player.underruns, player.underrun_s) == (1, 0.02)
    assert not stream.pull(60).any()  # still the same gap: more silence, not another underrun
    assert (player.underruns, player.underrun_s) == (1, 0.08)
    player.write(np.ones(70, np.float32))
    assert stream.pull(60).all()
    assert stream.pull(60)[:10].all()  # 10 samples, then dry again: a second gap
    assert (player.underruns, player.underrun_s) == (2, 0.13)
    assert player.played_s == 0.17


def test_the_final_drain_is_not_an_underrun():
    player, (stream,) = make_player(prebuffer_s=0.1)
    player.write(np.ones(100, np.float32))
    stream.pull(60)
    player.done_writing()
    assert stream.pull(60)[:40].all()
    assert not stream.pull(60).any()
    assert (player.underruns, player.underrun_s, player.played_s) == (0, 0.0, 0.1)
    player.finish()  # nothing left: returns at once
    assert stream.stopped and stream.closed


def test_finish_starts_playback_and_waits_until_everything_is_played():
    player, (stream,) = make_player(prebuffer_s=10.0)  # never reached by writes
    player.write(np.ones(300, np.float32))
    finisher = threading.Thread(target=player.finish)
    finisher.start()
    blocks = []
    while finisher.is_alive():
        if stream.callback is not None:
            blocks.append(stream.pull(64))
        time.sleep(0.001)
    finisher.join()
    assert np.concatenate(blocks)[:300].all() and len(blocks) >= 5  # it waited for all 300 samples
    assert stream.stopped and stream.closed
    assert (player.underruns, player.played_s) == (0, 0.3)


def test_close_stops_mid_stream():
    player, (stream,) = make_player()
    player.write(np.ones(500, np.float32))
    assert stream.pull(100).all()
    player.close()
    assert stream.stopped and stream.closed
    assert not stream.pull(100).any()  # a late callback plays silence, not counted
    player.write(np.ones(100, np.float32))  # ignored
    player.finish()  # returns at once
    assert (player.underruns, player.played_s) == (0, 0.1)


def test_missing_sounddevice_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "sounddevice", None)  # makes `import sounddevice` raise ImportError
    with pytest.raises(VoxtralEdgeError, match=r"pip install 'voxtral-edge\[play\]'.*libportaudio2"):
        Player(24000, 0.5)


@pytest.mark.parametrize("frame_ms,chunk_frames,expected_frames,seconds", [
    (40, 5, 100, 0.8),     # twice real time: two chunks of 5 x 80 ms
    (80, 5, 100, 0.8),     # exactly real time: still two chunks
    (160, 5, 100, 4.4),    # half real time: 8 s * (1 - 0.5) + one chunk (0.4 s)
    (84, 5, 10, 0.8),      # a little slow, short utterance: 0.8 * (1 - 80/84) + 0.4 = 0.44 < two chunks
    (8000, 5, 100, 8.0),   # 1% of real time: 8 * 0.99 + 0.4 > 8 s, so the whole utterance
    (200, 1, 50, 2.48),    # 4 s * (1 - 0.4) + 0.08
])
def test_choose_prebuffer(frame_ms, chunk_frames, expected_frames, seconds):
    assert choose_prebuffer(frame_ms, chunk_frames, expected_frames) == pytest.approx(seconds)


def test_choose_prebuffer_rejects_nonsense():
    with pytest.raises(ValueError):
        choose_prebuffer(100, 0, 10)


def test_ring_buffer_grows_and_keeps_order():
    ring = RingBuffer(capacity=4)
    ring.write(np.arange(3))
    np.testing.assert_array_equal(ring.read(2), [0, 1])
    ring.write(np.arange(3, 10))  # wraps around and grows
    assert len(ring) == 8
    np.testing.assert_array_equal(ring.read(100), np.arange(2, 10))
    assert len(ring) == 0 and len(ring.read(5)) == 0
    ring.write(np.arange(10, 13))
    np.testing.assert_array_equal(ring.read(3), [10, 11, 12])
    assert ring.read(1).dtype == np.float32


def test_ring_buffer_between_two_threads():
    n = 200_000
    ring, got = RingBuffer(capacity=16), []

    def writer():
        rng = np.random.default_rng(1)
        pos = 0
        while pos < n:
            k = int(rng.integers(1, 3000))
            ring.write(np.arange(pos, min(pos + k, n), dtype=np.float32))
            pos += k

    def reader():
        rng = np.random.default_rng(2)
        count = 0
        while count < n:
            block = ring.read(int(rng.integers(1, 3000)))
            got.append(block)
            count += len(block)

    threads = [threading.Thread(target=writer), threading.Thread(target=reader)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=10)
    np.testing.assert_array_equal(np.concatenate(got), np.arange(n, dtype=np.float32))
