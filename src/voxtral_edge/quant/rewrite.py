"""`voxtral-edge quantize`: an fp32 bundle -> a quantized bundle, graph by graph, weight by weight.

Each MatMul whose constant weight the plan selects is replaced through the same emitter the exporter
uses (`quantized_weight`), reading the fp32 weight straight from the bundle's external data file,
so the whole fp32 graph is never in memory. Everything else is copied unchanged. In a graph with a batch
dimension (its inputs' first dimension named "B") dynamic int8 quantizes each utterance apart, as the
exporter does.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

from ..errors import VoxtralEdgeError
from ..files import replacing_folder
from ..manifest import Manifest, file_entry, write_manifest
from ..progress import Progress

from .matmul import quantized_weight
from .plans import GRAPHS, GraphPlan, Plan, load_plan

ONNX_TO_NUMPY = {TensorProto.FLOAT: np.float32, TensorProto.FLOAT16: np.float16, TensorProto.INT64: np.int64,
                 TensorProto.INT32: np.int32, TensorProto.UINT8: np.uint8, TensorProto.INT8: np.int8,
                 TensorProto.BOOL: np.bool_}


def _external(tensor: onnx.TensorProto) -> dict[str, str]:
    return {e.key: e.value for e in tensor.external_data}


def rewrite_graph(src: Path, dst: Path, plan: GraphPlan, bar: Progress):
    """Write `dst` (and its data file): `src` with the plan's matmuls quantized. Returns the GraphFile."""
    from ..export.graphs import GraphFile
    from ..export.onnx_graph import GraphBuilder

    model = onnx.load(str(src), load_external_data=False)
    initializers = {t.name: t for t in model.graph.initializer}
    maps: dict[str, np.memmap] = {}

    def array(t: onnx.TensorProto) -> np.ndarray:
        if t.data_location != TensorProto.EXTERNAL:
            return numpy_helper.to_array(t)
        info = _external(t)
        location = src.parent / info["location"]
        if location.name not in maps:
            maps[location.name] = np.memmap(location, dtype=np.uint8, mode="r")
        offset, length = int(info.get("offset", 0)), int(info["length"])
        raw = maps[location.name][offset:offset + length]
        bar.advance(length, t.name)
        return np.frombuffer(raw, dtype=ONNX_TO_NUMPY[t.data_type]).reshape(tuple(t.dims))

    batched = any(i.type.tensor_type.shape.dim[:1] and i.type.tensor_type.shape.dim[0].dim_param == "B"
                  for i in model.graph.input)
    g = GraphBuilder(model.graph.name, dst)
    g._names.update(initializers)
    g.inputs, g.outputs = list(model.graph.input), list(model.graph.output)
    quantized, kept, shared = [], set(), {}

    def rewrite(nodes) -> None:
        """Add `nodes` to g with the plan's matmuls quantized, the bodies of Loops and Ifs too (their
        weights are the main graph's; a weight read by several nodes is quantized once)."""
        for node in nodes:
            weight = node.input[1] if node.op_type == "MatMul" and len(node.input) == 2 else None
            spec = plan.spec_for(weight) if weight in initializers else None
            if spec is not None:
                if weight not in shared:
                    shared[weight] = quantized_weight(g, array(initializers[weight]), spec, weight,
                                                      per_utterance=batched)
                    quantized.append(weight)
                shared[weight].emit(g, node.input[0], weight, list(node.output))
                continue
            for attribute in node.attribute:
                if attribute.type == onnx.AttributeProto.GRAPH:
                    with g.subgraph() as body:
                        rewrite(attribute.g.node)
                    del attribute.g.node[:]
                    attribute.g.node.extend(body)
            g.nodes.append(node)
            kept.update(node.input)

    try:
        rewrite(model.graph.node)
        for name, t in initializers.items():
            if name in kept:
                g.weight(name, array(t), exact_name=True)
        hashes = g.save()
    except BaseException:
        g.abort()
        raise
    finally:
        maps.clear()
    inputs = {i.name: {} for i in model.graph.input}
    outputs = {o.name: {} for o in model.graph.output}
    return GraphFile(model.graph.name, inputs, outputs, hashes, plan.precision, quantized)


def quantize_bundle(src: str | Path, out: str | Path, plan: str | Path | Plan, *, force: bool = False,
                    progress: bool = True) -> Path:
    """Write a quantized copy of an fp32 bundle and return its path."""
    manifest = Manifest.load(src)
    plan = plan if isinstance(plan, Plan) else load_plan(plan)
    out = Path(out)
    for name in GRAPHS:
        if plan.graph(name).quantizes and manifest["graphs"][name]["precision"] != "fp32":
            raise VoxtralEdgeError(f"{manifest.bundle}: graph '{name}' is already {manifest['graphs'][name]['precision']}"
                                   f"; quantize an fp32 bundle (re-export with --plan fp32)")
    data = manifest.data
    total = sum(data["files"][g["data"]]["size"] for name, g in data["graphs"].items()
                if g.get("data") and plan.graph(name).quantizes)
    bar = Progress(f"quantizing to {out.name}", total, unit="B", enabled=progress)
    with replacing_folder(out, force) as tmp:
        new = {k: v for k, v in data.items() if k not in ("files", "graphs", "quantization")}
        new["graphs"], new["files"], rewritten = {}, {}, {}
        for name, entry in data["graphs"].items():
            graph_plan = plan.graph(name)
            if not graph_plan.quantizes:
                new["graphs"][name] = entry
                continue
            g = rewrite_graph(manifest.path(entry["file"]), tmp / entry["file"], graph_plan, bar)
            rewritten[name] = g
            new["graphs"][name] = {**entry, "data": f"{entry['file']}.data" if f"{entry['file']}.data" in g.hashes
                                   else None, "precision": g.precision}
            for file, digest in g.hashes.items():
                new["files"][file] = file_entry(tmp / file, digest)
        for file, entry in data["files"].items():
            if file not in new["files"] and not any(file.startswith(f"{n}.onnx") for n in rewritten):
                (tmp / file).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(manifest.path(file), tmp / file)
                new["files"][file] = entry
        new["quantization"] = plan.describe()
        for name, g in rewritten.items():
            new["quantization"]["graphs"][name]["quantized_weights"] = len(g.quantized)
        new["quantization"]["from"] = str(manifest.bundle.name)
        write_manifest(tmp, new)
        bar.finish()
    return out
