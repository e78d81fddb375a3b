"""An estimate, not a measurement, of a frame's time on a Qualcomm Hexagon NPU ([npu] of a device profile).

Nothing here ran on an NPU: the HTP simulator of onnxruntime-qnn proves the graphs correct on an x86 host,
but its speed is the host's. The estimate rests on one published measurement per profile, a decoder of our
backbone's size running token by token on the same HTP class (`[[npu.run]]`, e.g. Llama-v3.2-3B-Instruct w4 on
the SA8295P ADP, 3.52 tokens/s). A decode step of such a decoder reads every weight once, so its time per GB
of weights read (both bandwidths peak figures),

    ms_per_gb = 1000 / tokens_per_s / (read_bytes / 1e9)                     ([[npu.run]], the first)
                x run's memory_bandwidth_gbs / the profile's memory_bandwidth_gbs  (a run on another SoC of the
                                                                                  class, scaled by DRAM bandwidth)

prices each of our graphs by the bytes one call reads: its weights at the NPU precision (the bundle's own
files for a graph in the NPU form; else its parameters at 8 bits, 4 for a w4a16 backbone) plus, for the
backbone, its uint16 KV cache at the compiled positions (the graph reads every slot). Per frame: one
backbone call, the flow head's weights once per Euler step (the HTP's 8 MB of VTCM cannot keep 0.37 GB),
the codec once per chunk. Assumed, not known: that the HTP is as efficient per byte on our graphs as on the
reference decoder (the flow head's 6 rows and the codec's convolutions may do better or worse), and that
computing `rows` positions in a decode step costs no more than one (HMX works on tiles of 32 rows).

The range: each of the profile's runs (scaled as above) prices the frame; the first run gives the middle,
the fastest and slowest runs the ends (one run: no range is known, and the three are equal).

    npu_frame_estimate(manifest, profile, steps, chunk_frames) -> {placement: {...}}   (an NPU-form bundle)
    npu_estimates(run, profile, cpu) -> [Estimate]   (a `bench --json` run: the NPU plans, as `estimate` prints them)
"""

from __future__ import annotations

# bytes per weight in a CPU-form graph's files, by precision (blocks of 32 with fp32 scales; dynamic int8 ~1)
_CPU_BYTES = {"fp32": 4.0, "int8": 1.1, "int4": 0.625}


def npu_rates(profile) -> list[tuple[float, str]]:
    """(ms per GB read, the run's name) for each [[npu.run]] of `profile`, scaled to its DRAM bandwidth."""
    if profile.npu is None:
        raise ValueError(f"profile {profile.name}: no [npu] section")
    return [(1000 / r.tokens_per_s / (r.read_bytes / 1e9) * r.memory_bandwidth_gbs / profile.memory_bandwidth_gbs,
             f"{r.model} on the {r.device}") for r in profile.npu.runs]


def _graph_bytes(manifest: dict, graph: str) -> int:
    """The graph's files (every part of a backbone in parts; a compiled one's context binaries)."""
    g = manifest["graphs"][graph]
    units = g.get("htp", {}).get("parts") or [g]
    names = [f for u in units for f in (u["file"], u.get("data"), u.get("compiled", {}).get("context")) if f]
    return sum(manifest["files"][f]["size"] for f in names)


def npu_weight_gb(manifest: dict, graph: str, bits: int) -> float:
    """GB of weights one call of `graph` reads on the NPU at `bits`: the bundle's file when the graph is in
    the NPU form (its weights are stored that way), else its parameters at `bits`."""
    entry = manifest["graphs"][graph]
    if "htp" in entry:
        return _graph_bytes(manifest, graph) / 1e9
    params = _graph_bytes(manifest, graph) / _CPU_BYTES.get(entry["precision"], 4.0)
    return params * bits / 8 / 1e9


def npu_frame_estimate(manifest: dict, profile, *, steps: int, chunk_frames: int, position: int | None = None) -> dict:
    """{placement: {backbone_ms, flow_ms, codec_ms, frame_ms, rtf, ms_per_gb, where, reference}} for "npu"
    (all three graphs there) and "cpu backbone" (flow head and codec on the NPU: backbone_ms None, frame_ms
    and rtf of the NPU's part only, to add to a CPU estimate of the backbone). `position`: KV slots the
    backbone reads (default: the bundle's max_context)."""
    (ms_per_gb, reference), *_ = npu_rates(profile)
    b = manifest["model"]["backbone"]
    positions = b["max_context"] if position is None else position
    kv_gb = 2 * b["n_layers"] * b["n_kv_heads"] * b["head_dim"] * 2 * positions / 1e9
    backbone_bits = 4 if manifest["graphs"]["backbone_step"]["precision"] in ("w4a16", "int4") else 8
    backbone = (npu_weight_gb(manifest, "backbone_step", backbone_bits) + kv_gb) * ms_per_gb
    flow = steps * npu_weight_gb(manifest, "flow_head", 8) * ms_per_gb
    codec = npu_weight_gb(manifest, "codec_decoder", 8) * ms_per_gb / chunk_frames
    frame_ms = 1e3 / manifest["audio"]["frame_rate"]
    out = {"npu": {"backbone_ms": backbone, "flow_ms": flow, "codec_ms": codec, "frame_ms": backbone + flow + codec,
                   "where": "all three graphs on the NPU"}}
    out["cpu backbone"] = {"backbone_ms": None, "flow_ms": flow, "codec_ms": codec, "frame_ms": flow + codec,
                           "where": "flow head and codec on the NPU (+ the backbone on the CPU)"}
    for e in out.values():
        e.update(rtf=e["frame_ms"] / frame_ms, ms_per_gb=ms_per_gb, reference=reference)
    return out


# the NPU plans a `bench --json` run of a CPU bundle is priced in: (backbone bits, backbone on the NPU)
NPU_PLANS = {"w8a16": (8, True), "w4a16": (4, True), "int4-w8a16": (None, False)}


def npu_estimates(run, profile, cpu):
    """The NPU plans' frame times on `profile` ([npu]) from the work of `run`'s bundle (voxtral_edge.bench.BenchRun:
    its graphs' weights, steps and chunk size), as voxtral_edge.estimate.Estimate rows: `w8a16` and `w4a16` with
    every graph on the NPU, `int4-w8a16` with the backbone on the CPU (the backbone stage of `cpu`, the CPU
    estimate of the same run on the same profile, whose plan must keep an int4 backbone) beside the flow head and
    codec on the NPU. The backbone reads its uint16 KV cache at every one of the profile's max_context slots."""
    from .estimate import Estimate, graph_work, kv_bytes_per_position

    work = graph_work(run)
    rates = npu_rates(profile)
    ends = {"low_ms": min(r for r, _ in rates), "mid_ms": rates[0][0], "high_ms": max(r for r, _ in rates)}
    kv_gb = kv_bytes_per_position(run) / 2 * profile.max_context / 1e9  # float32 on the CPU, uint16 on the NPU
    sources = [f"{'; '.join(s.status + ': ' + s.title for s in profile.npu.sources)}",
               *(f"{ms:.0f} ms per GB read: {name} ({r.status}: {r.title}, {r.url})"
                 for (ms, name), r in zip(rates, profile.npu.runs)),
               f"work: the weights of the {run.plan} bundle from {run.source} at the NPU plan's bits, the KV cache "
               f"uint16 at {profile.max_context} positions",
               "an estimate, not a measurement: the HTP assumed as efficient per byte on these graphs as on the "
               "published decoder's (voxtral_edge.estimate_npu)"]
    out = []
    for plan, (bits, backbone_on_npu) in NPU_PLANS.items():
        if not backbone_on_npu and not run.plan.startswith("int4"):
            continue  # the CPU backbone of int4-w8a16 is int4: only an int4 run's estimate prices it
        gb = {"flow head": work["flow_head"].weights * work["flow_head"].calls_per_frame / 1e9,
              "codec": work["codec_decoder"].weights * work["codec_decoder"].calls_per_frame / 1e9}
        if backbone_on_npu:
            gb["backbone"] = work["backbone_step"].weights * bits / 8 / 1e9 + kv_gb
        stages = {name: {end: g * rate for end, rate in ends.items()} | {"bound": "memory (NPU)"}
                  for name, g in gb.items()}
        if not backbone_on_npu:
            stages["backbone"] = {**cpu.stages["backbone"], "bound": f"{cpu.stages['backbone']['bound']} (CPU)"}
        stages = {k: stages[k] for k in ("backbone", "flow head", "codec")}
        dominant = max(stages, key=lambda k: stages[k]["mid_ms"])
        out.append(Estimate(device=profile.name, plan=plan, steps=run.steps, chunk_frames=run.chunk_frames,
                            threads=0 if backbone_on_npu else cpu.threads,
                            low_ms=sum(st["low_ms"] for st in stages.values()),
                            mid_ms=sum(st["mid_ms"] for st in stages.values()),
                            high_ms=sum(st["high_ms"] for st in stages.values()),
                            stages=stages, dominant=dominant, bound=stages[dominant]["bound"], codec_beside=False,
                            sources=sources + ([] if backbone_on_npu else cpu.sources)))
    return out
