"""checkpoint folder -> bundle folder: the three graphs, the embedding tables, voices, tokenizer, manifest.

Tensors are read one at a time and written straight to disk, so the full-size export needs memory for
the largest tensor, not for the model. The bundle appears under its name only once it is complete.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from .. import __version__
from ..defaults import MAX_CONTEXT
from ..errors import VoxtralEdgeError
from ..files import replacing_folder
from ..manifest import FORMAT, SCHEMA_VERSION, file_entry, write_manifest
from ..progress import Progress

from .checkpoint import Checkpoint
from .config import EMPTY_AUDIO, END_AUDIO, N_AUDIO_SPECIALS
from ..quant.plans import Plan, load_plan

from .graphs import GraphFile, build_backbone, build_codec, build_flow_head

ROWS_PER_CHUNK = 8192
# How the runtime reads an embedding table stored in each checkpoint dtype.
TABLE_DTYPES = {"BF16": ("bfloat16", np.uint16), "F16": ("float16", np.float16), "F32": ("float32", np.float32)}


def _write_table(ck: Checkpoint, name: str, path: Path, bar: Progress) -> dict:
    """Copy an embedding table to a .npy the runtime can memory-map, in its stored precision
    (BF16 as its raw 16-bit patterns, which the runtime widens exactly)."""
    dtype_name, np_dtype = TABLE_DTYPES[ck.weights.dtype(name)]
    shape = ck.weights.shape(name)
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np_dtype, shape=shape)
    for start in range(0, shape[0], ROWS_PER_CHUNK):
        rows = ck.weights.raw_rows(name, start, min(start + ROWS_PER_CHUNK, shape[0]))
        out[start:start + len(rows)] = rows.view(np_dtype)
        bar.advance(rows.nbytes, name)
    out.flush()
    del out
    return {"file": path.name, "dtype": dtype_name, "shape": list(shape)}


def graph_entry(g: GraphFile) -> dict:
    """A graph's manifest entry."""
    return {"file": f"{g.name}.onnx", "data": f"{g.name}.onnx.data" if f"{g.name}.onnx.data" in g.hashes else None,
            "precision": g.precision, "inputs": g.inputs, "outputs": g.outputs}


def quantization_entry(plan: Plan, graphs: dict[str, GraphFile]) -> dict:
    """The manifest's record of the plan, with how many weights each graph stores quantized."""
    described = plan.describe()
    for name, g in graphs.items():
        described["graphs"][name]["quantized_weights"] = len(g.quantized)
    return described


def export_bundle(checkpoint: str | Path, out: str | Path, *, max_context: int | None = None,
                  plan: str | Path | Plan = "fp32", force: bool = False, progress: bool = True,
                  npu_shapes=None, stage: bool = False) -> Path:
    """Export a checkpoint folder (released layout) to a bundle folder and return its path.
    `max_context` defaults to 4096 positions, or the model's max_seq_len if smaller. `plan` is a
    plan (name or TOML file): weights are quantized one at a time as they are written. A plan with graphs
    for the NPU (method qdq: w8a16, w4a16, ...) goes through `voxtral_edge.quant.htp.export_npu_bundle`,
    with `npu_shapes` (a `NpuShapes`: backbone rows per call, Euler steps, codec frames per call); `stage`
    is its first step: those graphs in the NPU form but float32."""
    plan = plan if isinstance(plan, Plan) else load_plan(plan)
    if plan.npu_graphs and not stage:
        from ..quant.htp import NpuShapes, export_npu_bundle

        return export_npu_bundle(checkpoint, out, plan, max_context=max_context, shapes=npu_shapes or NpuShapes(),
                                 force=force, progress=progress)
    ck = Checkpoint(checkpoint)
    cfg = ck.config
    out = Path(out)
    b = cfg.backbone
    max_context = min(MAX_CONTEXT, b.max_seq_len) if max_context is None else max_context
    if b.head_dim % 16 and "backbone_step" not in plan.npu_graphs:
        raise VoxtralEdgeError(f"{ck.dir / 'params.json'}: head_dim {b.head_dim} is not a multiple of 16, which "
                               f"onnxruntime's GroupQueryAttention needs")
    if not 1 <= max_context <= b.max_seq_len:
        raise VoxtralEdgeError(f"--max-context {max_context}: must be between 1 and the model's max_seq_len "
                               f"({b.max_seq_len})")

    shapes = cfg.tensor_shapes()
    total = 4 * sum(int(np.prod(s)) for n, s in shapes.items() if "embeddings" not in n)
    total += 2 * sum(int(np.prod(s)) for n, s in shapes.items() if "embeddings" in n)
    bar = Progress(f"exporting {out.name}", total, unit="B", enabled=progress)
    tensor_bytes = {n: 4 * int(np.prod(s)) for n, s in shapes.items()}

    nonfinite: dict[str, int] = {}

    def tensor(name: str) -> np.ndarray:
        bar.advance(tensor_bytes[name], name)
        value = ck.tensor(name)
        bad = int(value.size - np.count_nonzero(np.isfinite(value)))
        if bad:
            nonfinite[name] = bad
        return value

    with replacing_folder(out, force) as tmp:
        (tmp / "voices").mkdir()
        builders = {
            "backbone_step": lambda path: build_backbone(cfg, tensor, path, max_context, plan.graph("backbone_step")),
            "flow_head": lambda path: build_flow_head(cfg, tensor, path, plan.graph("flow_head")),
            "codec_decoder": lambda path: build_codec(cfg, tensor, path, plan.graph("codec_decoder")),
        }
        htp = {}
        if plan.npu_graphs:  # those in the NPU form, float32, with the sizes the runtime calls them with
            from .htp_graphs import npu_builders

            npu = npu_builders(cfg, tensor, max_context, npu_shapes)
            builders.update({g: npu[g][0] for g in plan.npu_graphs})
            htp = {g: npu[g][1] for g in plan.npu_graphs}
        graphs: dict[str, GraphFile] = {name: build(tmp / f"{name}.onnx") for name, build in builders.items()}
        embeddings = {
            "text": _write_table(ck, "mm_audio_embeddings.tok_embeddings.weight", tmp / "text_embeddings.npy", bar),
            "audio": _write_table(ck, "mm_audio_embeddings.audio_codebook_embeddings.embeddings.weight",
                                  tmp / "audio_embeddings.npy", bar),
        }
        voices = {}
        for name in ck.voice_names():
            rows = ck.voice(name)
            np.save(tmp / "voices" / f"{name}.npy", rows)
            voices[name] = {"file": f"voices/{name}.npy", "tokens": int(rows.shape[0])}
        if not voices:
            raise VoxtralEdgeError(f"{ck.dir / 'voice_embedding'}: no voice files; a bundle needs at least one voice")
        ck.tekken.save_hf_tokenizer(tmp / "tokenizer.json")
        from ..prompt import SpeechSpecialIds

        files = {}
        for g in graphs.values():
            for name, digest in g.hashes.items():
                files[name] = file_entry(tmp / name, digest)
        for path in [tmp / "text_embeddings.npy", tmp / "audio_embeddings.npy", tmp / "tokenizer.json",
                     *sorted((tmp / "voices").iterdir())]:
            files[str(path.relative_to(tmp))] = file_entry(path)

        a, f, c = cfg.audio, cfg.flow_head, cfg.codec
        manifest = {
            "format": FORMAT,
            "schema_version": SCHEMA_VERSION,
            "created_by": f"voxtral-edge {__version__}",
            "source": {"checkpoint": ck.dir.name, "params": cfg.source},
            "model": {
                "backbone": {"dim": b.dim, "n_layers": b.n_layers, "n_heads": b.n_heads, "n_kv_heads": b.n_kv_heads,
                             "head_dim": b.head_dim, "vocab_size": b.vocab_size, "max_context": max_context},
                "flow_head": {"dim": f.dim, "n_layers": f.n_layers, "n_decoding_steps": f.n_decoding_steps},
                "codec": {"samples_per_frame": c.samples_per_frame, "dim": c.dim},
            },
            "audio": {"sample_rate": a.sampling_rate, "frame_rate": a.frame_rate,
                      "samples_per_frame": c.samples_per_frame, "num_codebooks": a.num_codebooks,
                      "semantic_codebook_size": a.semantic_codebook_size,
                      "acoustic_codebook_size": a.acoustic_codebook_size,
                      "n_acoustic_codebook": a.n_acoustic_codebook, "codebook_offsets": list(a.codebook_offsets),
                      "n_specials": N_AUDIO_SPECIALS, "empty_audio": EMPTY_AUDIO, "end_audio": END_AUDIO},
            "special_ids": SpeechSpecialIds.from_tekken(ck.tekken).to_dict(),
            "graphs": {name: dict(graph_entry(g), **({"htp": htp[name]} if name in htp else {}))
                       for name, g in graphs.items()},
            "embeddings": embeddings,
            "voices": voices,
            "tokenizer": {"file": "tokenizer.json"},
            "quantization": quantization_entry(plan, graphs),
            "files": files,
        }
        write_manifest(tmp, manifest)
        bar.finish()
        if nonfinite:  # exported as they are (the bundle is faithful), but the user must know
            listed = ", ".join(f"{n} ({c})" for n, c in sorted(nonfinite.items())[:5])
            warnings.warn(f"{ck.dir / 'consolidated.safetensors'}: {sum(nonfinite.values())} NaN or infinite values "
                          f"in {len(nonfinite)} tensors: {listed}; the audio will likely be broken", stacklevel=2)
    return out
