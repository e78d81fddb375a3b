"""The codec on its own thread (codec_pipeline) against the codec inline, interleaved in one process.

    python benchmarks/codec_pipeline.py --bundle BUNDLE [--frames 25] [--rounds 4] [--threads 2] [--codec-threads N]

One Synthesizer; each round streams the same sentence with the same seed once each way (the order
alternating), chunks of 4 frames. Prints the wall time per frame past the first chunk (which holds the
prefill) and the time to first audio, medians of each way, their ratio, and checks that the audio is
identical.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from voxtral_edge.runtime import Synthesizer

SENTENCE = "Turn left in two hundred metres, then keep right at the roundabout."


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", required=True)
    parser.add_argument("--frames", type=int, default=25)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--steps", type=int)
    parser.add_argument("--threads", type=int)
    parser.add_argument("--codec-threads", type=int)
    args = parser.parse_args()
    synth = Synthesizer.open(args.bundle, threads=args.threads, codec_threads=args.codec_threads, verify=False,
                             max_context=2048)
    voice = sorted(synth.voices)[0]
    synth.synthesize(SENTENCE, voice, seed=0, steps=args.steps, max_frames=2)  # warm-up, voice prefix cached
    per_frame, first, audio = {False: [], True: []}, {False: [], True: []}, {}
    for r in range(args.rounds):
        for pipeline in ((False, True) if r % 2 else (True, False)):
            synth.codec_pipeline = pipeline
            start = time.perf_counter()
            chunks, stamps = [], []
            for chunk in synth.stream(SENTENCE, voice, chunk_frames=4, seed=0, steps=args.steps,
                                      max_frames=args.frames):
                stamps.append(time.perf_counter())
                chunks.append(chunk)
            first[pipeline].append(1e3 * (stamps[0] - start))
            later = sum(len(c) for c in chunks[1:]) // synth.samples_per_frame
            per_frame[pipeline].append(1e3 * (stamps[-1] - stamps[0]) / later)
            audio[pipeline] = np.concatenate(chunks)
    inline, piped = statistics.median(per_frame[False]), statistics.median(per_frame[True])
    print(f"{synth.manifest['quantization']['plan']}, {args.frames} frames, {args.rounds} rounds, threads "
          f"{args.threads or 'default'}, codec threads {args.codec_threads or args.threads or 'default'}")
    print(f"codec inline:        {inline:.1f} ms/frame past the first chunk, first audio "
          f"{statistics.median(first[False]):.0f} ms")
    print(f"codec on its thread: {piped:.1f} ms/frame past the first chunk, first audio "
          f"{statistics.median(first[True]):.0f} ms")
    print(f"pipelined / inline = {piped / inline:.3f}; audio identical: {np.array_equal(audio[False], audio[True])}")


if __name__ == "__main__":
    main()
