"""Streaming figures: time to first audio, and underruns while playing a long utterance in real time.

    python benchmarks/stream.py --bundle BUNDLE [--seconds 60] [--chunk-frames 4] [--steps N] [--threads N]

Time to first audio: one sentence, voice prefix already cached (as in a car, where the voice is fixed),
from the call to the first chunk (one frame). Playback: a simulated sound card pulls 20 ms blocks at
real time on its own thread (this machine has no audio device), fed by the same Player that `say
--play` uses, with the prebuffer chosen from the pace of the first chunk; the run reports underruns
(gaps) and the silence they inserted. With random weights the model never ends an utterance, so the
length is set by --seconds.
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time

import numpy as np

from voxtral_edge.playback import Player, choose_prebuffer
from voxtral_edge.runtime import Synthesizer

SENTENCE = "Turn left in two hundred metres, then keep right at the roundabout."
LONG = ("In two hundred metres, turn left onto the main road. Keep right at the roundabout and take the "
        "second exit. Traffic is light on the motorway. Your destination is on the left, after the bridge.")


class RealtimeDevice:
    """A stand-in sound card: pulls `block` samples every block / sample_rate seconds of wall time."""

    def __init__(self, samplerate, channels, dtype, callback, block: int = 480):
        self.rate, self.callback, self.block = samplerate, callback, block
        self.running = False

    def start(self):
        self.running = True
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        out = np.empty((self.block, 1), np.float32)
        next_time = time.perf_counter()
        while self.running:
            self.callback(out, self.block, None, None)
            next_time += self.block / self.rate
            time.sleep(max(0.0, next_time - time.perf_counter()))

    def stop(self):
        self.running = False
        self.thread.join()

    def close(self):
        pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", required=True)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--chunk-frames", type=int, default=4)
    parser.add_argument("--steps", type=int)
    parser.add_argument("--threads", type=int)
    parser.add_argument("--voice")
    args = parser.parse_args()
    synth = Synthesizer.open(args.bundle, threads=args.threads, verify=False, max_context=2048)
    voice = args.voice or sorted(synth.voices)[0]
    synth.synthesize(SENTENCE, voice, seed=0, steps=args.steps, max_frames=1)  # caches the voice prefix

    first = []
    for seed in range(5):
        start = time.perf_counter()
        stream = synth.stream(SENTENCE, voice, seed=seed, steps=args.steps, max_frames=8)
        next(stream)
        first.append(1e3 * (time.perf_counter() - start))
        stream.close()
    text_tokens = len(synth.tokenizer.encode(SENTENCE, add_special_tokens=False).ids)
    print(f"time to first audio ({text_tokens} text tokens, voice cached): median {statistics.median(first):.0f} ms, "
          f"min {min(first):.0f} ms")

    frames = int(args.seconds * 12.5)
    player = Player(synth.sample_rate, prebuffer_s=float("inf"),
                    stream_factory=lambda **kw: RealtimeDevice(**kw))
    start, made, previous = time.perf_counter(), 0, None
    for chunk in synth.stream(LONG, voice, chunk_frames=args.chunk_frames, seed=0, steps=args.steps,
                              max_frames=frames):
        made += len(chunk) // synth.samples_per_frame
        now = time.perf_counter()
        if previous is not None and player.prebuffer_s == float("inf"):  # the pace past the prefill
            frame_ms = 1e3 * (now - previous) / (len(chunk) // synth.samples_per_frame)
            player.prebuffer_s = choose_prebuffer(frame_ms, args.chunk_frames, frames)
        previous = now
        player.write(chunk)
    generated = time.perf_counter() - start
    player.finish()
    print(f"playing {made * 0.08:.1f} s: generated in {generated:.1f} s (RTF {generated / (made * 0.08):.2f}), "
          f"prebuffer {player.prebuffer_s:.1f} s, playback started after {player.started_after_s:.1f} s, "
          f"{player.underruns} underruns, {player.underrun_s:.2f} s of silence inserted, "
          f"{player.played_s:.1f} s played")


if __name__ == "__main__":
    main()
