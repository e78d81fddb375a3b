"""Checkpoints in the released layout with random weights, for tests (`tiny`) and benchmarks (`full`).

`full` has the released shapes: the same 386 tensor names, dtypes (BF16) and shapes, the 20 voices
with their real row counts, a 150000-entry tekken.json. Tensors are generated and written one at a
time (big ones in row chunks), so memory stays far below the 8 GB the file takes on disk.
`tiny` keeps the structure with every dimension different from the others, so that a transposed
weight or a swapped axis cannot go unnoticed. Any size in between comes from a params.json.

Weights are scaled so that activations stay finite and the codes are not degenerate. The
END_AUDIO row of the semantic head is zero, so random weights never end an utterance by chance
(tests that need an end craft one).
"""

from __future__ import annotations

import copy
import json
import math
import shutil
import zlib
from pathlib import Path

import numpy as np

from ..errors import ConfigError, VoxtralEdgeError
from ..files import replacing_folder
from ..progress import Progress

from .checkpoint import PARAMS_FILE, TEKKEN_FILE, VOICE_DIR, WEIGHTS_FILE, SafetensorsWriter
from .config import END_AUDIO, FULL_PARAMS, RELEASED_VOICES, ModelConfig

def _tiny_params() -> dict:
    """The released structure at toy size; no two widths are equal."""
    p = copy.deepcopy(FULL_PARAMS)
    # head_dim 16: onnxruntime's GroupQueryAttention needs a multiple of 16
    p.update(dim=48, n_layers=3, head_dim=16, hidden_dim=88, n_heads=6, n_kv_heads=2, rope_theta=10000.0,
             vocab_size=2100, max_seq_len=512, max_position_embeddings=512)
    am = p["multimodal"]["audio_model_args"]
    am.update(semantic_codebook_size=113, acoustic_codebook_size=7, n_acoustic_codebook=5)
    am["audio_encoding_args"]["num_codebooks"] = 6
    am["acoustic_transformer_args"].update(input_dim=48, dim=40, n_layers=2, head_dim=14, hidden_dim=72,
                                           n_heads=4, n_kv_heads=2)
    tok = p["multimodal"]["audio_tokenizer_args"]
    tok.update(semantic_codebook_size=113, semantic_dim=11, acoustic_codebook_size=7, acoustic_dim=5, dim=52,
               hidden_dim=76, head_dim=9, n_heads=4, n_kv_heads=2, decoder_transformer_lengths_str="1,2,1,1",
               voice={"casual_male": 0, "neutral_female": 1, "fr_female": 2})
    return p


def _small_params() -> dict:
    """The released code layout (8192 semantic codes, 36 x 21 acoustic) at 1/6 of the width: big enough
    that block quantization behaves as it does at full size, small enough to run in seconds."""
    p = copy.deepcopy(TINY_PARAMS)
    p.update(dim=512, n_layers=4, head_dim=64, hidden_dim=1536, n_heads=8, n_kv_heads=2, vocab_size=4096,
             max_seq_len=4096, max_position_embeddings=4096)
    am = p["multimodal"]["audio_model_args"]
    am.update(semantic_codebook_size=8192, acoustic_codebook_size=21, n_acoustic_codebook=36)
    am["audio_encoding_args"]["num_codebooks"] = 37
    am["acoustic_transformer_args"].update(input_dim=512, dim=512, n_layers=3, head_dim=64, hidden_dim=1536,
                                           n_heads=8, n_kv_heads=2)
    p["multimodal"]["audio_tokenizer_args"].update(
        semantic_codebook_size=8192, semantic_dim=64, acoustic_codebook_size=21, acoustic_dim=36, dim=256,
        hidden_dim=1024, head_dim=64, n_heads=4, n_kv_heads=4, decoder_transformer_lengths_str="2,2,2,2")
    return p


TINY_PARAMS = _tiny_params()
SMALL_PARAMS = _small_params()
TINY_VOICES = {"casual_male": 9, "neutral_female": 14, "fr_female": 6}
SIZES = {"tiny": TINY_PARAMS, "small": SMALL_PARAMS, "full": FULL_PARAMS}
# Tensors bigger than this many elements are generated and written in row chunks.
CHUNK_ELEMENTS = 1 << 24


def voice_counts(params: dict) -> dict[str, int]:
    """Rows per voice: the released count for a released name, else a fixed count derived from the name."""
    names = params["multimodal"]["audio_tokenizer_args"].get("voice", {})
    if names.keys() == TINY_VOICES.keys():
        return dict(TINY_VOICES)
    return {n: RELEASED_VOICES.get(n, 8 + zlib.crc32(n.encode()) % 25) for n in names}


def tensor_init(name: str, config: ModelConfig, layer_scale: float) -> tuple[str, float]:
    """How a tensor is drawn: ('normal', std), ('one', std) for 1 + std*N, or ('uniform', high)."""
    if name.endswith("cluster_usage"):
        return "uniform", 2.0
    if name.endswith(("norm.weight", "q_norm.weight", "k_norm.weight")):
        return "one", 0.05
    if name.endswith(("attention_scale", "ffn_scale")):
        return "scale", layer_scale
    if name.endswith("weight.original0"):
        # the output projection's gain sets the waveform's loudness: keep it well inside [-1, 1]
        return ("one_scaled", 0.3) if ".output_proj." in name else ("one", 0.05)
    if name.endswith(("weight.original1", "embedding_sum", "tok_embeddings.weight")):
        return "normal", 1.0
    if name.endswith("audio_codebook_embeddings.embeddings.weight"):
        return "normal", 1.0 / math.sqrt(config.audio.num_codebooks)  # 37 rows are summed per frame
    fan_in = config.tensor_shapes()[name][-1]
    if name.endswith("semantic_codebook_output.weight"):
        return "normal", 3.0 / math.sqrt(fan_in)  # decisive logits: near-ties would make codes fragile
    if name.endswith("acoustic_codebook_output.weight"):
        return "normal", 0.5 / math.sqrt(fan_in)
    return "normal", 1.0 / math.sqrt(fan_in)


def _draw(rng: np.random.Generator, kind: str, scale: float, shape: tuple[int, ...]) -> np.ndarray:
    if kind == "uniform":
        return rng.uniform(0.5, scale, size=shape).astype(np.float32)
    x = rng.standard_normal(size=shape, dtype=np.float32)
    if kind == "normal":
        return x * np.float32(scale)
    if kind == "one":
        return 1 + x * np.float32(scale)
    if kind == "one_scaled":
        return np.float32(scale) * (1 + 0.1 * x)
    return np.float32(scale) * (1 + 0.1 * x)  # "scale": a layer scale around its init value


def _tensor_rng(seed: int, name: str) -> np.random.Generator:
    # one stream per tensor, so a tensor's values do not depend on the order of writing
    return np.random.default_rng([seed, zlib.crc32(name.encode())])


def make_checkpoint(out: str | Path, *, size: str = "tiny", params: dict | None = None, seed: int = 0,
                    force: bool = False, progress: bool = True, params_source: str = "params.json") -> Path:
    """Write a complete checkpoint folder (params.json, consolidated.safetensors in BF16, tekken.json,
    voice_embedding/*.pt) and return its path. `params` (read from `params_source`) overrides `size`."""
    from .torchfile import save_tensor

    from .tekken_gen import write_tekken

    out = Path(out)
    if params is None:
        if size not in SIZES:
            raise ConfigError(f"--size: unknown size {size!r} (expected one of {', '.join(SIZES)})")
        params = SIZES[size]
    config = ModelConfig.from_dict(params, source=params_source)
    shapes = config.tensor_shapes()
    total_bytes = 2 * sum(math.prod(s) for s in shapes.values())
    if out.exists() and any(out.iterdir()) and not force:
        raise VoxtralEdgeError(f"{out}: exists and is not empty (pass --force to replace it)")
    out.parent.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(out.parent).free
    if free < total_bytes * 1.05:
        raise VoxtralEdgeError(f"{out.parent}: {free / 1e9:.1f} GB free, the checkpoint needs "
                               f"{total_bytes / 1e9:.1f} GB")

    with replacing_folder(out, force) as tmp:
        (tmp / VOICE_DIR).mkdir()
        (tmp / PARAMS_FILE).write_text(json.dumps(params, indent=2) + "\n", encoding="utf-8")
        voices = voice_counts(params)
        n_special = 1000 if config.backbone.vocab_size > 4096 else 100
        released = config.backbone.vocab_size == FULL_PARAMS["vocab_size"]
        write_tekken(tmp / TEKKEN_FILE, n_special=n_special, vocab_size=config.backbone.vocab_size,
                     num_vocab_tokens=150000 if released else config.backbone.vocab_size - n_special + 300,
                     voices=voices, sampling_rate=config.audio.sampling_rate, frame_rate=config.audio.frame_rate,
                     seed=seed)
        for name, rows in voices.items():
            rng = _tensor_rng(seed, f"voice:{name}")
            save_tensor(tmp / VOICE_DIR / f"{name}.pt",
                        rng.standard_normal((rows, config.backbone.dim), dtype=np.float32))
        _write_weights(tmp / WEIGHTS_FILE, config, shapes, seed,
                       layer_scale=float(params["multimodal"]["audio_tokenizer_args"].get("layer_scale_init", 0.01)),
                       show=progress and total_bytes > 200e6)
    return out


def _write_weights(path: Path, config: ModelConfig, shapes: dict[str, tuple[int, ...]], seed: int,
                   layer_scale: float, show: bool) -> None:
    names = sorted(shapes)
    bar = Progress(f"writing {path.name}", 2 * sum(math.prod(shapes[n]) for n in names), unit="B", enabled=show)
    with SafetensorsWriter(path, [(n, "BF16", shapes[n]) for n in names],
                           metadata={"format": "pt", "generator": "voxtral-edge make-checkpoint",
                                     "seed": str(seed)}) as writer:
        for name in names:
            shape = shapes[name]
            kind, scale = tensor_init(name, config, layer_scale)
            rng = _tensor_rng(seed, name)
            rows_per_chunk = max(1, CHUNK_ELEMENTS // max(1, math.prod(shape[1:])))
            for start in range(0, shape[0], rows_per_chunk):
                block = _draw(rng, kind, scale, (min(rows_per_chunk, shape[0] - start),) + shape[1:])
                if name.endswith("semantic_codebook_output.weight") and start <= END_AUDIO < start + len(block):
                    block[END_AUDIO - start] = 0
                writer.write(name, block)
                bar.advance(2 * block.size, name)
    bar.finish()
