"""NPU plans: the graphs a plan marks `qdq` are exported in the HTP form (`export.htp_graphs`), calibrated on
the float32 runtime and statically quantized to QDQ graphs that onnxruntime's QNN execution provider runs
whole on Qualcomm's Hexagon NPU.

    1. a stage bundle: the plan's graphs, the `qdq` ones in the HTP form in float32
    2. calibration: that bundle speaks CALIBRATION (one navigation sentence in each of the nine languages,
       `frames` frames each, fixed noise); every call of an HTP-form graph is recorded
    3. per graph: onnxruntime's MinMax ranges over the recorded calls, every range doubled (16-bit
       activations: one bit spent so that inputs outside the calibration set are not clipped; measured in
       docs/deploy-qnn.md), the ranges of state (KV cache, codec state) shared by input and output, the
       inputs whose range is known fixed; `quantize_static` in QDQ format with the QNN EP's preprocessing
       and configuration: activations uint16, MatMul weights int8 (w8a16) or int4 (w4a16) per output
       channel, convolutions uint8 per channel, norm weights uint8 (the HTP refuses 4-bit norm scales)
    4. the backbone's KV cache becomes uint16 graph input and output, so the runtime writes the rows the
       graph returns into its cache as they are, and nothing is quantized per call

The same stage bundle and calibration give the same bytes (the ranges are written to the bundle as
`calibration.json`). Needs the `[export]` dependencies (onnx) and onnxruntime's quantization tools.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

from ..defaults import CFG_ALPHA, MAX_CFG
from ..errors import VoxtralEdgeError
from ..files import replacing_folder
from ..manifest import Manifest, file_entry, graph_units, write_manifest
from ..progress import Progress

WIDEN = 2.0  # every calibrated activation range is doubled
# One sentence per language the text front-end speaks; never the sentences `quality` measures with.
CALIBRATION = {
    "en": "In three hundred metres, take the second exit at the roundabout.",
    "fr": "Dans cinq cents mètres, tournez à droite sur la D12.",
    "es": "Gire a la izquierda en la próxima intersección.",
    "pt": "Mantenha-se à esquerda e siga em direção ao centro.",
    "it": "Tra un chilometro, uscita a destra verso Milano.",
    "nl": "Neem over twee kilometer de afslag naar Utrecht.",
    "de": "Biegen Sie nach vierhundert Metern links ab.",
    "hi": "दो सौ मीटर के बाद दाएँ मुड़ें।",
    "ar": "بعد مئتي متر، انعطف يميناً.",
}
CALIBRATION_FRAMES = 16


@dataclass(frozen=True)
class NpuShapes:
    """The static sizes of the HTP-form graphs: backbone rows per call, flow-head Euler steps, codec frames
    per call (the cache positions are the bundle's max_context), and the graphs the backbone is split into
    (a full-size backbone does not compile as one HTP graph)."""

    rows: int = 16
    steps: int | None = None  # None: the model's n_decoding_steps
    frames: int = 4
    parts: int = 1


def export_npu_bundle(checkpoint: str | Path, out: str | Path, plan, *, max_context: int | None = None,
                      shapes: NpuShapes = NpuShapes(), calibration_frames: int = CALIBRATION_FRAMES,
                      force: bool = False, progress: bool = True) -> Path:
    """Export a checkpoint with a plan that has `qdq` graphs (see the module docstring); returns the bundle."""
    from ..export.bundle import export_bundle

    if calibration_frames < 2 * shapes.frames:  # the codec's state after a first chunk must be calibrated too
        raise VoxtralEdgeError(f"calibration frames {calibration_frames}: at least two codec calls are needed, "
                               f"{2 * shapes.frames} frames at {shapes.frames} per call")
    out = Path(out)
    with replacing_folder(out, force) as tmp:
        stage = tmp / ".stage"
        export_bundle(checkpoint, stage, max_context=max_context, plan=plan, npu_shapes=shapes, progress=progress,
                      stage=True)
        manifest = Manifest.load(stage, verify=False)
        npu = [g for g in manifest["graphs"] if "htp" in manifest["graphs"][g]]
        feeds = record_calibration(stage, calibration_frames, progress=progress)
        data = {k: v for k, v in manifest.data.items() if k not in ("files", "graphs")}
        data["graphs"], data["files"], ranges = {}, {}, {}
        bar = Progress(f"quantizing {out.name}", len(npu), unit="graph", enabled=progress)
        graph_files = {f for g in manifest["graphs"].values() for u in graph_units(g) for f in (u["file"], u.get("data"))}
        for name, entry in manifest["graphs"].items():
            if name not in npu:
                for f in (entry["file"], entry.get("data")):
                    if f:
                        shutil.move(str(stage / f), str(tmp / f))
                        data["files"][f] = manifest["files"][f]
                data["graphs"][name] = entry
                continue
            bits = plan.graph(name).spec.bits
            entry = json.loads(json.dumps(entry))
            units, quantized_io, ranges[name], calls = graph_units(entry), {}, {}, 0
            for k, unit in enumerate(units):
                key = name if len(units) == 1 else f"{name}.part{k}"
                uint16, hashes, ranges[name][key] = quantize_graph(stage / unit["file"], tmp / unit["file"], name,
                                                                   entry["htp"], feeds[key], bits)
                quantized_io.update(uint16)
                unit["data"] = f"{unit['file']}.data" if f"{unit['file']}.data" in hashes else None
                data["files"].update({f: file_entry(tmp / f, digest) for f, digest in hashes.items()})
                calls += len(feeds[key])
            entry.update(data=units[0]["data"], precision=f"w{bits}a16")
            for io in ("inputs", "outputs"):
                entry[io] = {k: dict(v, dtype="uint16") if k in quantized_io else v for k, v in entry[io].items()}
            if name == "backbone_step":
                entry["htp"]["kv_zero_points"] = {k: zp for k, zp in sorted(quantized_io.items()) if k.startswith("past_")}
            if len(units) == 1:
                ranges[name] = ranges[name][name]
            data["graphs"][name] = entry
            data["quantization"]["graphs"][name].update(activations="uint16", weights=f"int{bits} per output channel",
                                                        calibration_calls=calls)
            bar.advance(1, name)
        for f, entry in manifest["files"].items():
            if f not in data["files"] and f not in graph_files:
                (tmp / f).parent.mkdir(parents=True, exist_ok=True)
                shutil.move(str(stage / f), str(tmp / f))
                data["files"][f] = entry
        calibration = tmp / "calibration.json"
        calibration.write_text(json.dumps({"texts": CALIBRATION, "frames": calibration_frames, "widen": WIDEN,
                                           "ranges": ranges}, indent=1, sort_keys=True) + "\n", encoding="utf-8")
        data["files"]["calibration.json"] = file_entry(calibration)
        data["quantization"]["calibration"] = {"file": "calibration.json", "languages": list(CALIBRATION),
                                               "frames_per_text": calibration_frames}
        shutil.rmtree(stage)
        write_manifest(tmp, data)
        bar.finish()
    return out


def record_calibration(bundle: Path, frames: int, *, progress: bool = True) -> dict[str, list[dict]]:
    """Speak CALIBRATION with the stage bundle (CPU) and return every HTP-form graph call's inputs."""
    from ..runtime import Synthesizer
    from ..text import voice_language

    record: dict[str, list[dict]] = {}
    synth = Synthesizer.open(bundle, verify=False, saved_graphs=False, record=record)
    voices = sorted(synth.voices)
    bar = Progress("calibrating", len(CALIBRATION), unit="text", enabled=progress)
    n_acoustic = synth.audio_layout["n_acoustic_codebook"]
    for i, (lang, text) in enumerate(CALIBRATION.items()):
        voice = next((v for v in voices if voice_language(v) == lang), voices[i % len(voices)])
        noise = np.random.default_rng(1000 + i).standard_normal((frames, n_acoustic)).astype(np.float32)
        synth.synthesize(text, voice, noise=noise, lang=lang, cfg_alpha=CFG_ALPHA)
        bar.advance(1, lang)
    bar.finish()
    return record


def _ranges(model: Path, feeds: list[dict], op_types: list[str]) -> dict[str, tuple[float, float]]:
    """MinMax range of every tensor the quantizer will quantize, over the recorded calls."""
    from onnxruntime.quantization import CalibrationMethod
    from onnxruntime.quantization.calibrate import create_calibrator

    with tempfile.TemporaryDirectory(prefix="voxtral-calibrate-") as d:
        calibrator = create_calibrator(model, op_types, augmented_model_path=str(Path(d) / "augmented.onnx"),
                                       calibrate_method=CalibrationMethod.MinMax, use_external_data_format=True)
        calibrator.collect_data(_Reader(feeds))
        data = calibrator.compute_data()
    return {name: (float(np.ravel(v.range_value[0])[0]), float(np.ravel(v.range_value[1])[0]))
            for name, v in data.items()}


class _Reader:
    """onnxruntime's CalibrationDataReader over a list of feeds."""

    def __init__(self, feeds: list[dict]):
        self.feeds, self.position = feeds, 0

    def get_next(self) -> dict | None:
        if self.position == len(self.feeds):
            return None
        self.position += 1
        return self.feeds[self.position - 1]

    def rewind(self) -> None:
        self.position = 0

    def __len__(self) -> int:
        return len(self.feeds)


def _uint16(lo: float, hi: float) -> tuple[np.ndarray, np.ndarray]:
    """Scale and zero point of a uint16 range that contains 0."""
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    scale = np.float32((hi - lo) / 65535 if hi > lo else 1.0)
    return np.array(scale, np.float32), np.array(np.clip(np.round(-lo / scale), 0, 65535), np.uint16)


def _fixed_ranges(name: str, spec: dict) -> dict[str, tuple[float, float]]:
    """Inputs whose range is known, whatever calibration saw (`spec`: the graph's "htp" record)."""
    from ..export.htp_graphs import MASK

    if name == "backbone_step":
        return {"rope_cos": (-1.0, 1.0), "rope_sin": (-1.0, 1.0), "attention_bias": (MASK, 0.0)}
    if name == "flow_head":
        return {"cfg_weights": (1 - MAX_CFG, MAX_CFG)}
    return {"frames_done": (0.0, float(spec["frames_done_cap"]))}


def _state_groups(model: onnx.ModelProto, name: str) -> list[list[str]]:
    """Tensors that must share one quantization: the KV cache's past input, the new rows, their Concat and
    the new-rows output (per layer and kind); each codec state input and its next_ output."""
    groups = []
    if name == "backbone_step":
        for node in model.graph.node:
            if node.op_type == "Concat" and node.input[0].startswith(("past_key_", "past_value_")):
                groups.append([node.input[0], node.input[1], node.output[0], "new" + node.input[0][len("past"):]])
    elif name == "codec_decoder":
        outputs = {o.name for o in model.graph.output}
        groups = [[i.name, f"next_{i.name}"] for i in model.graph.input if f"next_{i.name}" in outputs]
    return groups


def quantize_graph(src: Path, dst: Path, name: str, htp: dict, feeds: list[dict], bits: int
                   ) -> tuple[dict[str, int], dict[str, str], dict]:
    """The QDQ graph of one HTP-form graph `name` (or one part of it), its "htp" record `htp`: returns
    ({graph input or output made uint16: its zero point}, {file written: sha256}, the measured ranges)."""
    from onnxruntime.quantization import QuantType, quantize_static
    from onnxruntime.quantization.calibrate import CalibrationMethod, TensorData, TensorsData, save_tensors_data
    from onnxruntime.quantization.execution_providers.qnn import get_qnn_qdq_config, qnn_preprocess_model

    with tempfile.TemporaryDirectory(prefix=f"voxtral-{name}-") as d:
        work = Path(d)
        model_path = work / "preprocessed.onnx"
        if not qnn_preprocess_model(str(src), str(model_path), save_as_external_data=True,
                                    all_tensors_to_one_file=True, external_data_location="preprocessed.onnx.data"):
            model_path = src
        model = onnx.load(str(model_path), load_external_data=False)
        initializers = {t.name for t in model.graph.initializer}
        overrides: dict[str, list[dict]] = {}
        for node in model.graph.node:
            if node.op_type == "MatMul" and node.input[1] in initializers:
                overrides[node.input[1]] = [{"quant_type": QuantType.QInt4 if bits == 4 else QuantType.QInt8,
                                             "axis": 1, "symmetric": True}]
            elif node.op_type == "RMSNormalization":
                overrides[node.input[1]] = [{"quant_type": QuantType.QUInt8}]
        config = get_qnn_qdq_config(str(model_path), _Reader(feeds), activation_type=QuantType.QUInt16,
                                    weight_type=QuantType.QUInt8, per_channel=True, init_overrides=overrides)
        measured = _ranges(model_path, feeds, config.op_types_to_quantize)
        ranges = {k: (lo * WIDEN, hi * WIDEN) for k, (lo, hi) in measured.items()}
        ranges.update(_fixed_ranges(name, htp))
        for group in _state_groups(model, name):
            lo = min(ranges[t][0] for t in group if t in ranges)
            hi = max(ranges[t][1] for t in group if t in ranges)
            for t in group:
                ranges[t] = (lo, hi)
        cache = work / "ranges.json"
        save_tensors_data(TensorsData(CalibrationMethod.MinMax, {
            k: TensorData(lowest=np.array(lo, np.float32), highest=np.array(hi, np.float32))
            for k, (lo, hi) in sorted(ranges.items())}), cache)
        qdq = work / "qdq.onnx"
        quantize_static(str(model_path), str(qdq), calibration_data_reader=None, calibration_cache_path=cache,
                        quant_format=config.quant_format, op_types_to_quantize=config.op_types_to_quantize,
                        per_channel=config.per_channel, activation_type=config.activation_type,
                        weight_type=config.weight_type, use_external_data_format=True,
                        calibrate_method=config.calibrate_method, extra_options=config.extra_options)
        quantized = onnx.load(str(qdq))
        kv = _quantized_io(quantized, [t for group in _state_groups(model, name) for t in (group[0], group[-1])]
                           if name == "backbone_step" else [])
        _save(quantized, dst)
    hashes = {p.name: file_entry(p)["sha256"] for p in (dst, dst.with_name(dst.name + ".data")) if p.exists()}
    return ({k: int(zp) for k, (scale, zp) in kv.items()}, hashes,
            {k: [round(lo, 7), round(hi, 7)] for k, (lo, hi) in sorted(measured.items())})


def _quantized_io(model: onnx.ModelProto, names: list[str]) -> dict[str, tuple[float, int]]:
    """Make the graph inputs and outputs in `names` uint16: an input's QuantizeLinear is dropped (its readers
    read the input), an output becomes its QuantizeLinear's result (a DequantizeLinear that other nodes read
    stays, under another name). Returns {name: (scale, zero point)}."""
    inits = {t.name: t for t in model.graph.initializer}
    graph_inputs = {i.name for i in model.graph.input}
    graph_outputs = {o.name for o in model.graph.output}
    producer = {out: node for node in model.graph.node for out in node.output}
    params, dropped, rename = {}, [], {}
    for node in model.graph.node:
        if node.op_type == "QuantizeLinear" and node.input[0] in names and node.input[0] in graph_inputs:
            rename[node.output[0]] = node.input[0]
            dropped.append(node)
            tensor = node.input[0]
        elif node.op_type == "DequantizeLinear" and node.output[0] in names and node.output[0] in graph_outputs:
            tensor, quantized = node.output[0], node.input[0]
            q = producer[quantized]
            q.output[list(q.output).index(quantized)] = tensor  # the graph output is the quantized value now
            node.output[0] = f"{tensor}_dequantized"  # for the nodes that read the float value, if any
            rename[quantized] = tensor
            rename[tensor] = node.output[0]
            node.input[0] = tensor
        else:
            continue
        params[tensor] = (float(numpy_helper.to_array(inits[node.input[1]])),
                          int(numpy_helper.to_array(inits[node.input[2]])))
    missing = set(names) - set(params)
    if missing:
        raise VoxtralEdgeError(f"{model.graph.name}: no QuantizeLinear/DequantizeLinear at the graph I/O "
                               f"{sorted(missing)}; cannot make them uint16")
    for node in dropped:
        model.graph.node.remove(node)
    for node in model.graph.node:
        if node.op_type == "DequantizeLinear" and node.output[0].endswith("_dequantized"):
            continue
        for i, tensor in enumerate(node.input):
            if tensor in rename:
                node.input[i] = rename[tensor]
    readers = {t for node in model.graph.node for t in node.input}
    for node in [n for n in model.graph.node if n.op_type == "DequantizeLinear" and n.output[0].endswith("_dequantized")
                 and n.output[0] not in readers]:
        model.graph.node.remove(node)
    for value in list(model.graph.input) + list(model.graph.output):
        if value.name in params:
            value.type.tensor_type.elem_type = TensorProto.UINT16
    return params


def _save(model: onnx.ModelProto, dst: Path) -> None:
    """Write the graph and its external data file (`<graph>.onnx.data`), fresh, through temporary names."""
    data = dst.with_name(dst.name + ".data")
    partial = dst.with_name(f".{dst.name}.partial")
    partial_data_name = f".{data.name}.partial"
    (dst.parent / partial_data_name).unlink(missing_ok=True)
    onnx.save(model, str(partial), save_as_external_data=True, all_tensors_to_one_file=True,
              location=partial_data_name, size_threshold=1024)
    # the graph names its data file: rewrite the location to the final name, then move both into place
    model = onnx.load(str(partial), load_external_data=False)
    for tensor in model.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = data.name
    partial.write_bytes(model.SerializeToString())
    (dst.parent / partial_data_name).replace(data)
    partial.replace(dst)

