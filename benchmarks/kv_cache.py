"""Is the KV cache copied per step, and what would an fp16 cache cost? Time one backbone step at fixed
positions, for several cache sizes, with the cache in fp32 (the runtime) or fp16.

A step that copied the cache would cost time proportional to the buffer (max_context), whatever the
position; a step that writes in place costs attention work proportional to the position only. The
cache contents do not matter for the timing, so positions are reached by setting past_length, not by
running a prefill.

`--kv-dtype float16` times a variant of the bundle's backbone whose GroupQueryAttention runs in fp16
(onnxruntime's CPU kernel takes one type for the query, the cache and the rotary tables: the packed
q/k/v are cast to fp16 before it, its output back to fp32 after it). The variant is written beside the
bundle's graph (it reads the same data file) and deleted at the end; it needs the `onnx` package.

    python benchmarks/kv_cache.py --bundle BUNDLE [--contexts 256 1024 4096] [--positions 10 1000 2000]
                                  [--kv-dtype float32 float16] [--repeats 20] [--threads N]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

from voxtral_edge.runtime import Synthesizer
from voxtral_edge.sessions import create_session, session_options


def step_ms(run, position: int, repeats: int) -> tuple[float, float]:
    run(position)  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run(position)
        times.append(1e3 * (time.perf_counter() - start))
    return statistics.median(times), min(times)


def fp16_attention_graph(bundle: Path) -> Path:
    """Write BUNDLE/backbone_step.kv16.onnx: the backbone with GroupQueryAttention (and its cache) in fp16."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    from onnx.external_data_helper import load_external_data_for_tensor

    model = onnx.load(str(bundle / "backbone_step.onnx"), load_external_data=False)
    graph = model.graph
    for tensor in [t for t in graph.initializer if t.name in ("rope_cos", "rope_sin")]:
        load_external_data_for_tensor(tensor, str(bundle))
        graph.initializer.append(numpy_helper.from_array(numpy_helper.to_array(tensor).astype(np.float16),
                                                         f"{tensor.name}_fp16"))
        graph.initializer.remove(tensor)
    nodes = []
    for node in graph.node:
        if node.op_type == "GroupQueryAttention":
            qkv, out = node.input[0], node.output[0]
            nodes.append(helper.make_node("Cast", [qkv], [f"{qkv}_fp16"], to=TensorProto.FLOAT16))
            node.input[0], node.input[7], node.input[8] = f"{qkv}_fp16", "rope_cos_fp16", "rope_sin_fp16"
            node.output[0] = f"{out}_fp16"
            nodes += [node, helper.make_node("Cast", [f"{out}_fp16"], [out], to=TensorProto.FLOAT)]
        else:
            nodes.append(node)
    del graph.node[:]
    graph.node.extend(nodes)
    for value in list(graph.input) + list(graph.output):
        if value.name.startswith(("past_key", "past_value", "present_key", "present_value")):
            value.type.tensor_type.elem_type = TensorProto.FLOAT16
    path = bundle / "backbone_step.kv16.onnx"
    onnx.save(model, str(path))
    return path


def fp16_stepper(path: Path, manifest, context: int, threads: int | None):
    b = manifest["model"]["backbone"]
    session = create_session(path, session_options(threads))
    io = session.io_binding()
    arrays = [np.zeros((1, b["n_kv_heads"], context, b["head_dim"]), np.float16) for _ in range(2 * b["n_layers"])]
    values = [ort.OrtValue.ortvalue_from_numpy(a) for a in arrays]
    for i in range(b["n_layers"]):
        for j, kind in enumerate(("key", "value")):
            io.bind_ortvalue_input(f"past_{kind}_{i}", values[2 * i + j])
            io.bind_ortvalue_output(f"present_{kind}_{i}", values[2 * i + j])
    x = np.random.default_rng(0).standard_normal((1, 1, b["dim"])).astype(np.float32)

    def run(position: int):
        io.bind_cpu_input("inputs_embeds", x)
        io.bind_cpu_input("past_length", np.array([position], np.int64))
        io.bind_output("hidden_states")
        io.bind_output("semantic_logits")
        session.run_with_iobinding(io)

    return run, sum(a.nbytes for a in arrays) / 1e6, (session, arrays, values)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", required=True)
    parser.add_argument("--contexts", type=int, nargs="+", default=[256, 1024, 4096])
    parser.add_argument("--positions", type=int, nargs="+",
                        help="positions to time (default: 10, the middle and the end of each context)")
    parser.add_argument("--kv-dtype", nargs="+", choices=["float32", "float16"], default=["float32"])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--threads", type=int)
    args = parser.parse_args()
    bundle = Path(args.bundle)
    variant = fp16_attention_graph(bundle) if "float16" in args.kv_dtype else None
    try:
        print(f"{'KV dtype':>8} {'max_context':>11} {'position':>8} {'ms/step median':>15} {'min':>8} "
              f"{'KV buffer MB':>12}")
        for context in args.contexts:
            positions = sorted({p for p in args.positions or (10, context // 2, context - 10) if p < context})
            for dtype in args.kv_dtype:
                synth = Synthesizer.open(bundle, threads=args.threads, max_context=context, verify=False,
                                         saved_graphs=False)
                if dtype == "float32":
                    x = np.random.default_rng(0).standard_normal((1, synth.manifest["model"]["backbone"]["dim"]))
                    run = lambda p, x=x.astype(np.float32), s=synth: s.backbone(x, p)  # noqa: E731
                    mb, keep = sum(a.nbytes for a in synth.kv_cache) / 1e6, synth
                else:
                    run, mb, keep = fp16_stepper(variant, synth.manifest, context, args.threads)
                    del synth
                for position in positions:
                    median, best = step_ms(run, position, args.repeats)
                    print(f"{dtype:>8} {context:>11} {position:>8} {median:>15.2f} {best:>8.2f} {mb:>12.1f}",
                          flush=True)
                del keep, run
    finally:
        if variant is not None:
            variant.unlink(missing_ok=True)


if __name__ == "__main__":
    main()
