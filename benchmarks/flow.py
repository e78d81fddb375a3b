"""One frame of the flow head at full size: the per-step graph (one call per Euler step, guidance in
numpy) against the frame graph (flow_head: every step in one call), interleaved in one process.

    python benchmarks/flow.py --checkpoint work/bench/checkpoint --plan int4 [--steps 7] [--rounds 15]

Builds only the two flow graphs for the plan (cached in --work) and times them in turn on the same
inputs, so that a loaded machine slows both alike; prints ms per frame and per step of each and their
ratio, and checks that both give the same codes.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

from voxtral_edge import defaults
from voxtral_edge.export.checkpoint import Checkpoint
from voxtral_edge.export.graphs import build_flow_head, build_flow_velocity
from voxtral_edge.quant.plans import load_plan
from voxtral_edge.sessions import create_session, session_options

f32 = np.float32


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--plan", default="int4")
    parser.add_argument("--work", default="work/bench/flow")
    parser.add_argument("--steps", type=int, default=7)
    parser.add_argument("--cfg", type=float, default=defaults.CFG_ALPHA)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    ck = Checkpoint(args.checkpoint)
    plan = load_plan(args.plan).graph("flow_head")
    work = Path(args.work) / args.plan
    work.mkdir(parents=True, exist_ok=True)
    paths = {"per-step": work / "flow_velocity.onnx", "frame": work / "flow_head.onnx"}
    for (name, path), build in zip(paths.items(), (build_flow_velocity, build_flow_head)):
        if not path.exists():
            build(ck.config, ck.tensor, path, plan)
    sessions = {n: create_session(p, session_options(args.threads)) for n, p in paths.items()}
    rng = np.random.default_rng(0)
    n_ac, dim, levels = ck.config.audio.n_acoustic_codebook, ck.config.backbone.dim, ck.config.audio.acoustic_codebook_size
    h = rng.standard_normal(dim).astype(f32)
    timesteps = np.linspace(0, 1, args.steps + 1, dtype=f32)
    alpha = args.cfg

    def per_step(noise):  # what the runtime did before: one call per step, guidance and FSQ in numpy
        x, hb = noise.copy(), np.stack([h, np.zeros_like(h)])
        for k in range(args.steps):
            rows = sessions["per-step"].run(["velocity"], {"x": np.stack([x, x]), "t": timesteps[k:k + 1], "h": hb})[0]
            x = x + (f32(alpha) * rows[0] + f32(1 - alpha) * rows[1]) * (timesteps[k + 1] - timesteps[k])
        return np.round((np.clip(x, -1, 1) + 1) / 2 * (levels - 1)).astype(np.int64)

    def frame(noise):
        return sessions["frame"].run(["codes"], {"noise": noise[None], "h": h[None], "timesteps": timesteps,
                                                 "cfg_weights": np.array([[alpha, 1 - alpha]], f32)})[0][0]

    times = {"per-step": [], "frame": []}
    same = 0
    for r in range(args.rounds + 1):
        noise = rng.standard_normal(n_ac).astype(f32)
        codes = {}
        for name, fn in (("per-step", per_step), ("frame", frame)) if r % 2 else (("frame", frame), ("per-step", per_step)):
            t0 = time.perf_counter()
            codes[name] = fn(noise)
            if r:  # the first round warms up
                times[name].append(1e3 * (time.perf_counter() - t0))
        same += int(np.array_equal(codes["per-step"], codes["frame"]))
    a, b = statistics.median(times["per-step"]), statistics.median(times["frame"])
    print(f"plan {args.plan} (flow head {plan.precision}), {args.steps} steps, cfg {alpha}, {args.rounds} rounds, "
          f"ort {ort.__version__}")
    print(f"per-step graph: {a:.1f} ms/frame ({a / args.steps:.2f} ms/step), min {min(times['per-step']):.1f}")
    print(f"frame graph:    {b:.1f} ms/frame ({b / args.steps:.2f} ms/step), min {min(times['frame']):.1f}")
    print(f"frame / per-step = {b / a:.3f}; same codes in {same} of {args.rounds + 1} frames")


if __name__ == "__main__":
    main()
