"""A roofline estimate of a bundle's time per 80 ms frame on a device profile, and its calibration.

    estimate_profiles(manifest, here, measured, targets) -> calibrated on this machine, each target's estimate
    estimate_frame(manifest, profile)          -> backbone_ms, flow_step_ms, flow_ms, codec_ms, frame_ms, rtf,
                                                  bound {graph: "memory" | "compute"}, graphs {graph: details}
    calibrate(manifest, profile, measured)     -> {graph: factor} that makes the estimate reproduce `measured`
    calibration_error(runs, profile, fit_on)   -> {bundle: {graph: relative error}}: factors fitted on one
                                                  bundle, used to predict the others

`manifest` is a bundle's manifest dict (Manifest.data or the parsed manifest.json): nothing is loaded.
Per graph call, ms = max(bytes / bandwidth, flops / throughput) / calibration[graph]:

bytes       the graph's weights, its .onnx + .onnx.data sizes from manifest["files"]: 0.15-12 GB per graph
            do not stay in cache, so every call streams them from memory.
flops       2 x params x rows, params = bytes / bytes per weight: 4 for fp32; for MatMulNBits bits/8 plus a
            4-byte fp32 scale per block (blocks of 32: int8 1.125, int4 0.625), plus packed zero points when
            asymmetric; 1 for dynamic-int8 (one scale per column). On the full-size bundles this gives the
            int8 flow head 368.8 M params (its fp32 file: 368.4 M) and the int4 backbone 3.20 G (fp32: 3.05 G;
            5% high because the semantic head stays fp32, which is harmless: at one row the step is
            memory-bound). Norms, biases and other non-matmul weights are counted as matmul weights;
            they are a negligible share.
rows        backbone step 1 (one position); flow head 4.4 per Euler step, the mean over its weights of
            the rows each multiplies (conditional and unconditional rows x 3 tokens = 6 in most layers; 2 in
            the first layer's q, k, v, whose latent and time tokens are shared, and in the last layer's q,
            wo and feed-forward, which serve token 0 only; the time and conditioning projections once per
            frame; at full size: 1.59 G row-weights over 0.36 G weights);
            codec 15/4 per frame: its four transformer stages hold about a quarter of the weights each and
            run 1, 2, 4 and 8 positions per frame. One codec call decodes `chunk_frames` frames
            (default profile.chunk_frames), so its weights are read once per chunk.
throughput  int8_gops for int4/int8 graphs (MatMulNBits at accuracy_level 4 computes in int8), fp32_gflops
            for fp32, both scaled by min(threads, cores) / cores.

A frame is one backbone step, `steps` flow-head calls and 1/chunk_frames of a codec call; with the
profile's codec_pipeline the codec runs on its own thread and cores (codec_threads, at the profile's
per-core throughput), beside the other two: a frame then takes the longer of the two. Not counted:
Python and numpy between calls, and attention's reads of the KV cache unless `position` is given (2 x
layers x kv_heads x head_dim x 4 bytes per cached position: 0.21 MB at full size, 0.44 GB at position 2048).
"""

from __future__ import annotations

from collections.abc import Mapping

from .errors import BundleError
from .manifest import GRAPHS
from .profiles import DeviceProfile

ROWS = {"backbone_step": 1.0, "flow_head": 4.4, "codec_decoder": 15 / 4}
# What calibrate() takes per graph: ms per frame (backbone), per Euler step (flow head), per frame (codec).
MEASURED = {"backbone_step": "backbone_ms", "flow_head": "flow_step_ms", "codec_decoder": "codec_ms"}
_DEFAULT_BYTES = {"fp32": 4.0, "int8": 1.125, "int4": 0.625}  # blocks of 32 with fp32 scales, symmetric


def bytes_per_weight(manifest: dict, graph: str) -> float:
    """Bytes one matmul weight takes in the graph's files, from its precision and quantization entry."""
    precision = manifest["graphs"][graph]["precision"]
    q = manifest.get("quantization", {}).get("graphs", {}).get(graph)
    if precision != "fp32" and isinstance(q, dict):
        if q.get("method") == "dynamic-int8":
            return 1.0
        if q.get("method") == "nbits":
            bits, block = q["bits"], q["block_size"]
            zero_points = 0 if q.get("symmetric", True) else bits / 8 / block
            return bits / 8 + 4 / block + zero_points
    if precision not in _DEFAULT_BYTES:
        raise BundleError(f"graph '{graph}': unknown precision {precision!r} (expected {', '.join(_DEFAULT_BYTES)})")
    return _DEFAULT_BYTES[precision]


def graph_bytes(manifest: dict, graph: str) -> int:
    """The graph's weight bytes: its .onnx and .onnx.data files."""
    g = manifest["graphs"][graph]
    return sum(manifest["files"][f]["size"] for f in (g["file"], g.get("data")) if f)


def estimate_frame(manifest: dict, profile: DeviceProfile, steps: int | None = None,
                   calibration: Mapping[str, float] | None = None, *, position: int = 0,
                   chunk_frames: int | None = None) -> dict:
    """Milliseconds per frame of each stage, the real-time factor, and each graph's bound (see the module)."""
    steps = profile.steps if steps is None else int(steps)
    chunk = profile.chunk_frames if chunk_frames is None else int(chunk_frames)
    calibration = calibration or {}
    b = manifest["model"]["backbone"]
    kv_bytes = 2 * b["n_layers"] * b["n_kv_heads"] * b["head_dim"] * 4 * position  # the KV cache is fp32
    calls = {"backbone_step": 1.0, "flow_head": float(steps), "codec_decoder": 1 / chunk}  # per frame
    graphs = {}
    for graph in GRAPHS:
        weights = graph_bytes(manifest, graph)
        precision = manifest["graphs"][graph]["precision"]
        rows = ROWS[graph] * (chunk if graph == "codec_decoder" else 1)
        flops = 2 * weights / bytes_per_weight(manifest, graph) * rows
        read = weights + (kv_bytes if graph == "backbone_step" else 0)
        threads = profile.codec_threads if graph == "codec_decoder" and profile.codec_threads else profile.threads
        gops = (profile.fp32_gflops if precision == "fp32" else profile.int8_gops) * (
            min(threads, profile.cores) / profile.cores)
        memory_ms, compute_ms = read / (profile.memory_bandwidth_gbs * 1e6), flops / (gops * 1e6)
        factor = float(calibration.get(graph, 1.0))
        graphs[graph] = {"bytes": read, "flops": flops, "precision": precision, "calls_per_frame": calls[graph],
                         "memory_ms": memory_ms, "compute_ms": compute_ms, "calibration": factor,
                         "call_ms": max(memory_ms, compute_ms) / factor,
                         "bound": "memory" if memory_ms >= compute_ms else "compute"}
    backbone = graphs["backbone_step"]["call_ms"]
    flow_step = graphs["flow_head"]["call_ms"]
    codec = graphs["codec_decoder"]["call_ms"] / chunk
    frame = max(backbone + steps * flow_step, codec) if profile.codec_pipeline else backbone + steps * flow_step + codec
    frame_duration_ms = 1e3 / manifest["audio"]["frame_rate"]
    return {"backbone_ms": backbone, "flow_step_ms": flow_step, "flow_ms": steps * flow_step, "codec_ms": codec,
            "frame_ms": frame, "rtf": frame / frame_duration_ms, "steps": steps, "chunk_frames": chunk,
            "codec_pipeline": profile.codec_pipeline,
            "bound": {g: graphs[g]["bound"] for g in GRAPHS}, "graphs": graphs}


def calibrate(manifest: dict, profile: DeviceProfile, measured: Mapping[str, float], **options) -> dict[str, float]:
    """Per-graph factor = predicted / measured ms on this machine, for the graphs in `measured` (keys
    backbone_step: ms per frame, flow_head: ms per Euler step, codec_decoder: ms per frame). Passing the
    factors as `calibration` makes estimate_frame reproduce the measurements. `options` go to estimate_frame
    (steps, position, chunk_frames: say how the measurement was taken)."""
    predicted = estimate_frame(manifest, profile, **options)
    factors = {}
    for graph, ms in measured.items():
        if graph not in MEASURED:
            raise ValueError(f"measured: unknown graph {graph!r} (expected {', '.join(MEASURED)})")
        if not ms > 0:
            raise ValueError(f"measured[{graph!r}] = {ms!r}: must be a positive number of milliseconds")
        factors[graph] = predicted[MEASURED[graph]] / ms
    return factors


def calibration_error(runs: Mapping[str, tuple[dict, Mapping[str, float]]], profile: DeviceProfile, fit_on: str,
                      **options) -> dict[str, dict[str, float]]:
    """Fit factors on runs[fit_on] and predict every run with them: {run: {graph: predicted / measured - 1}},
    plus "frame" where all three graphs were measured. `runs` maps a name (e.g. "fp32", "int4") to a bundle's
    manifest and its measurements on this machine, as calibrate() takes them."""
    manifest, measured = runs[fit_on]
    factors = calibrate(manifest, profile, measured, **options)
    errors = {}
    for name, (manifest, measured) in runs.items():
        estimate = estimate_frame(manifest, profile, calibration=factors, **options)
        errors[name] = {g: estimate[MEASURED[g]] / ms - 1 for g, ms in measured.items()}
        if set(measured) == set(GRAPHS):
            frame = measured["backbone_step"] + estimate["steps"] * measured["flow_head"] + measured["codec_decoder"]
            errors[name]["frame"] = estimate["frame_ms"] / frame - 1
    return errors


def estimate_profiles(manifest: dict, here: DeviceProfile, measured: Mapping[str, float], targets: list[DeviceProfile],
                      *, steps: int, chunk_frames: int) -> tuple[dict[str, float], dict[str, dict]]:
    """Calibrate on this machine's measurements (as calibrate() takes them, taken with `steps` Euler steps and
    codec calls of `chunk_frames`) and estimate a frame on each target with those factors, at `steps`
    and the target's own chunk size; returns (factors, {target name: estimate_frame's dict})."""
    factors = calibrate(manifest, here, measured, steps=steps, chunk_frames=chunk_frames)
    return factors, {t.name: estimate_frame(manifest, t, steps=steps, calibration=factors) for t in targets}
