"""The full-size graphs quantized (w8a16 / w4a16) and compiled for Qualcomm SoCs' NPUs, with the time, the
peak memory and the size of each step: what `export --plan w8a16` + `compile` do, split so that each step
fits in ~5 GB.

    python benchmarks/npu_compile.py --checkpoint CKPT --work DIR [--bits 8] [--socs sa8295p,sa8255p]
                                     [--layers-per-part 2] [--merge N ...] [--skip-parts]

onnxruntime's quantizer holds a float32 graph whole (the backbone's is 12 GB, with copies more), so the
backbone is built, calibrated and quantized in parts of `--layers-per-part` layers (`hidden_in` ->
`hidden_out`); each part is compiled on its own, and `--merge N` also stitches consecutive quantized
parts into graphs of N parts (weights left in the parts' files) and compiles those: N = all parts is the
whole backbone as one graph. `--skip-parts` reuses the quantized parts of an earlier run. Calibration here is 4
synthetic calls per graph: the weights are random, the point is whether and at what cost the graphs
quantize and compile. Every step runs in its own process, so its peak RSS is its own; the context binaries
are measured and deleted (disk). Needs the [export] and [qnn] extras. Prints one JSON line per step.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from voxtral_edge.defaults import CFG_ALPHA

P, ROWS, STEPS, FRAMES = 2048, 16, 7, 4  # the qualcomm profiles' max_context and chunk, the model's steps


def _peak_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6


def _backbone_feeds(config, layers: range, calls: int = 4) -> list[dict]:
    from voxtral_edge.export.htp_graphs import MASK
    from voxtral_edge.htp import rope_factors

    b, rng, feeds = config.backbone, np.random.default_rng(0), []
    for call in range(calls):
        position = (0, 16, 200, 1500)[call % 4]
        cos, sin = rope_factors(np.arange(position, position + ROWS), b.head_dim, b.rope_theta)
        bias = np.full((1, 1, ROWS, P + ROWS), MASK, np.float32)
        bias[..., :position] = 0
        bias[0, 0, :, P:] = np.where(np.tril(np.ones((ROWS, ROWS), bool)), 0, MASK)
        x = rng.standard_normal((1, ROWS, b.dim)).astype(np.float32) * (0.02 if layers[0] == 0 else 1.0)
        feed = {"inputs_embeds" if layers[0] == 0 else "hidden_in": x, "rope_cos": cos, "rope_sin": sin,
                "attention_bias": bias}
        for i in layers:
            for kind in ("key", "value"):
                kv = np.zeros((1, b.n_kv_heads, P, b.head_dim), np.float32)
                kv[:, :, :position] = rng.standard_normal((1, b.n_kv_heads, position, b.head_dim))
                feed[f"past_{kind}_{i}"] = kv
        feeds.append(feed)
    return feeds


def quantize_step(checkpoint: str, work: Path, graph: str, bits: int, part: int | None, per: int) -> dict:
    """Build one graph (or backbone part) in float32, calibrate, quantize; the float32 files are deleted."""
    import onnxruntime as ort

    from voxtral_edge.export import htp_graphs as hg
    from voxtral_edge.export.checkpoint import Checkpoint
    from voxtral_edge.quant.htp import quantize_graph

    ck = Checkpoint(checkpoint)
    config, rng = ck.config, np.random.default_rng(0)
    start = time.perf_counter()
    name = f"part{part}" if part is not None else graph
    src = work / f"{name}.fp32.onnx"
    if part is not None:
        layers = range(part * per, min((part + 1) * per, config.backbone.n_layers))
        g = hg.build_backbone_htp(config, ck.tensor, src, ROWS, P, layers)
        feeds, entry = _backbone_feeds(config, layers), {"file": "backbone_step.onnx", "htp": {}}
    elif graph == "flow_head":
        g = hg.build_flow_head_htp(config, ck.tensor, src, STEPS)
        feeds = [{"noise": rng.standard_normal((1, config.audio.n_acoustic_codebook)).astype(np.float32),
                  "h": rng.standard_normal((1, config.backbone.dim)).astype(np.float32),
                  "cfg_weights": np.array([[CFG_ALPHA], [1 - CFG_ALPHA]], np.float32)} for _ in range(4)]
        entry = {"file": "flow_head.onnx", "htp": {"steps": STEPS}}
    else:
        g = hg.build_codec_htp(config, ck.tensor, src, FRAMES)
        session = ort.InferenceSession(str(src), providers=["CPUExecutionProvider"])
        state = {i.name: np.zeros(i.shape, np.float32) for i in session.get_inputs()
                 if i.name not in ("codes", "frames_done")}
        outputs, feeds = [o.name for o in session.get_outputs()], []
        for call in range(4):
            a = config.audio
            codes = np.concatenate([rng.integers(0, a.semantic_codebook_size, (FRAMES, 1)),
                                    rng.integers(0, a.acoustic_codebook_size, (FRAMES, a.n_acoustic_codebook))], 1)
            feed = {"codes": codes.astype(np.int32), "frames_done": np.array([call * FRAMES], np.float32), **state}
            feeds.append(feed)
            out = dict(zip(outputs, session.run(None, feed)))
            state = {n: out[f"next_{n}"] for n in state}
        del session
        entry = {"file": "codec_decoder.onnx", "htp": {"frames": FRAMES, "frames_done_cap": hg.frames_done_cap(config)}}
    entry.update(inputs=g.inputs, outputs=g.outputs)
    built = time.perf_counter() - start
    float_gb = sum(p.stat().st_size for p in work.glob(f"{src.name}*")) / 1e9
    dst = work / f"{name}.w{bits}a16.onnx"
    quantize_graph(src, dst, entry["file"][:-len(".onnx")], entry["htp"], feeds, bits)
    for p in work.glob(f"{src.name}*"):
        p.unlink()
    return {"step": "quantize", "graph": name, "bits": bits, "build_s": round(built, 1),
            "quantize_s": round(time.perf_counter() - start - built, 1), "float32_gb": round(float_gb, 3),
            "qdq_gb": round(sum(p.stat().st_size for p in work.glob(f"{dst.name}*")) / 1e9, 3),
            "peak_rss_gb": round(_peak_gb(), 2)}


def compile_step(src: Path, soc_name: str) -> dict:
    """Compile a QDQ graph for a SoC; the context binary is measured, then deleted."""
    from voxtral_edge.qnn import compile_graph, soc

    start = time.perf_counter()
    out = src.with_name(f"{src.stem}.{soc_name}.onnx")
    try:
        compile_graph(src, out, soc(soc_name))
        binary = out.with_name(f"{out.stem}_qnn.bin")
        result = {"step": "compile", "graph": src.name, "soc": soc_name, "seconds": round(time.perf_counter() - start, 1),
                  "context_gb": round(binary.stat().st_size / 1e9, 3), "peak_rss_gb": round(_peak_gb(), 2)}
    except Exception as e:  # the limit that blocks it, as the QNN EP reports it
        result = {"step": "compile", "graph": src.name, "soc": soc_name, "error": str(e)[:400],
                  "seconds": round(time.perf_counter() - start, 1), "peak_rss_gb": round(_peak_gb(), 2)}
    for p in src.parent.glob(f"{out.stem}*"):
        p.unlink()
    return result


def merge_parts(work: Path, first: int, stop: int, bits: int) -> Path:
    """Parts first..stop-1 stitched into one graph (part k's hidden_out feeds part k+1's hidden_in; the last
    one's hidden_out stays an output); its initializers keep naming the parts' data files."""
    import onnx
    from onnx import helper

    nodes, initializers, inputs, outputs, seen = [], [], [], [], set()
    for k in range(first, stop):
        model = onnx.load(str(work / f"part{k}.w{bits}a16.onnx"), load_external_data=False)
        g = model.graph
        graph_inputs, graph_outputs = {i.name for i in g.input}, {o.name for o in g.output}
        own = {t.name for t in g.initializer} | {o for n in g.node for o in n.output}

        def rename(name: str, k=k, graph_inputs=graph_inputs, graph_outputs=graph_outputs, own=own) -> str:
            if name == "hidden_in":
                return f"part{k - 1}/hidden_out" if k > first else name
            if name == "hidden_out":
                return f"part{k}/hidden_out" if k < stop - 1 else name
            if not name or name in graph_inputs or name in graph_outputs:
                return name
            return f"part{k}/{name}" if name in own else name

        for t in g.initializer:
            t.name = rename(t.name)
            initializers.append(t)
        for n in g.node:
            n.name = f"part{k}/{n.name}"
            n.input[:] = [rename(x) for x in n.input]
            n.output[:] = [rename(x) for x in n.output]
            nodes.append(n)
        inputs += [i for i in g.input if (i.name != "hidden_in" or k == first) and i.name not in seen]
        seen.update(i.name for i in g.input)
        outputs += [o for o in g.output if o.name != "hidden_out" or k == stop - 1]
    merged = helper.make_model(helper.make_graph(nodes, "backbone_step", inputs, outputs, initializers),
                               opset_imports=model.opset_import, producer_name="voxtral-edge")
    merged.ir_version = model.ir_version
    path = work / f"parts{first}-{stop - 1}.w{bits}a16.onnx"
    onnx.save(merged, str(path))
    return path


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="a full-size checkpoint (make-checkpoint --size full)")
    p.add_argument("--work", required=True, help="working folder (QDQ graphs stay here: ~3.5 GB at w8a16)")
    p.add_argument("--bits", type=int, choices=(4, 8), default=8, help="backbone weight bits (default 8)")
    p.add_argument("--socs", default="sa8295p,sa8255p", help="SoCs to compile for (default sa8295p,sa8255p)")
    p.add_argument("--layers-per-part", type=int, default=2, help="backbone layers per part (default 2)")
    p.add_argument("--merge", type=int, nargs="*", metavar="N",
                   help="also stitch the parts into graphs of N parts each (the whole backbone when N covers it) "
                        "and compile those")
    p.add_argument("--skip-parts", action="store_true", help="reuse the quantized graphs already in --work")
    p.add_argument("--step", nargs="+", help=argparse.SUPPRESS)  # one step, in a child process
    args = p.parse_args()
    work = Path(args.work)
    if args.step:
        kind, *rest = args.step
        if kind == "quantize":
            graph, part = rest[0], (int(rest[1]) if len(rest) > 1 else None)
            result = quantize_step(args.checkpoint, work, graph, args.bits if part is not None else 8, part,
                                   args.layers_per_part)
        elif kind == "merge":
            start = time.perf_counter()
            path = merge_parts(work, int(rest[0]), int(rest[1]), args.bits)
            result = {"step": "merge", "graph": path.name, "seconds": round(time.perf_counter() - start, 1)}
        else:
            result = compile_step(Path(rest[0]), rest[1])
        print(json.dumps(result), flush=True)
        return 0
    work.mkdir(parents=True, exist_ok=True)
    from voxtral_edge.export.config import ModelConfig

    layers = ModelConfig.from_file(Path(args.checkpoint) / "params.json").backbone.n_layers
    parts = -(-layers // args.layers_per_part)
    socs = args.socs.split(",")

    def child(*step: str) -> None:
        command = [sys.executable, __file__, "--checkpoint", args.checkpoint, "--work", str(work), "--bits",
                   str(args.bits), "--layers-per-part", str(args.layers_per_part), "--step", *step]
        out = subprocess.run(command, capture_output=True, text=True)
        lines = [line for line in out.stdout.splitlines() if line.startswith("{")]
        print(lines[-1] if lines else json.dumps({"step": step, "error": out.stderr[-400:]}), flush=True)

    for graph in () if args.skip_parts else ("codec_decoder", "flow_head"):
        child("quantize", graph)
        for soc in socs:
            child("compile", str(work / f"{graph}.w8a16.onnx"), soc)
    for k in () if args.skip_parts else range(parts):
        child("quantize", "backbone_step", str(k))
        for soc in socs:
            child("compile", str(work / f"part{k}.w{args.bits}a16.onnx"), soc)
    for size in args.merge or ():
        for first in range(0, parts, size):
            stop = min(first + size, parts)
            child("merge", str(first), str(stop))
            for soc in socs:
                child("compile", str(work / f"parts{first}-{stop - 1}.w{args.bits}a16.onnx"), soc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
