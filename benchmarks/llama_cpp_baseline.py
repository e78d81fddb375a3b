"""The llama.cpp yardstick: Q4_0 prefill and decode speed of the Voxtral TTS backbone shape on this machine.

Our speed targets are ratios to llama.cpp measured in the same run on the same machine: "LD" is
llama.cpp's Q4_0 decode time per token, and llama.cpp's prefill throughput is the other reference.
This script writes (once, cached) a GGUF file with random weights of the backbone's shape, loads it
with llama-cpp-python and times, with token ids fed directly:

* prefill (pp): one prompt of --prompt-tokens tokens (default 200, about a voice prompt plus a
  sentence) into an empty KV cache, reported as tokens/s;
* decode (tg): --decode-tokens single-token steps (default 32) right after that prompt, reported as
  ms/token.

Each of --repeats runs clears the KV cache and does both; the table gives the median and the best
repeat (least time: min ms/token, max tokens/s). On 2 cores, any other busy process makes llama.cpp's
spinning threads lose their core and can slow a repeat tenfold: run it on an idle machine (the
1-minute load average before the run is recorded) and trust "best" over "median" when they differ.

The shape is the Voxtral TTS backbone, a Ministral-3B decoder: llama architecture, 26 layers, width
3072, 32 query heads and 8 KV heads of dim 128 (so q is 4096 wide, not 3072), SwiGLU FFN 9216,
RMSNorm eps 1e-5, rope theta 1e6, context 4096. All matrices are Q4_0, norms F32.

Vocabulary: n_vocab = 8320 with an untied output matrix [8320 x 3072]. Our runtime's per-token head
is the semantic head [8320 x 3072], not Ministral's 131072-row LM head, so this keeps llama.cpp doing
the same per-token work as we do (a 131072-row head would add about 0.2 GB of Q4_0 reads per token
and make the yardstick easier to beat). llama.cpp still needs a tokenizer in the file, so it gets a
minimal SentencePiece-style ("llama") vocabulary: <unk>, <s>, </s>, the 256 byte tokens and dummy
pieces; it is never used for text, since token ids are fed directly.

Weights are normal with std 1/sqrt(fan_in) (norm weights 1), so activations stay finite; the
values do not affect timing, but a finite output is checked and reported.

    python benchmarks/llama_cpp_baseline.py [--cache work/llama-baseline] [--threads N]
        [--prompt-tokens 200] [--decode-tokens 32] [--repeats 3] [--json]

Needs `pip install llama-cpp-python gguf` (not a project dependency). From Python:

    measure(cache_dir, threads=None, prompt_tokens=200, decode_tokens=32, repeats=3) -> dict
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from voxtral_edge.machine import cpu_model, usable_cores

INSTALL_HINT = "llama_cpp_baseline needs llama-cpp-python and gguf: pip install llama-cpp-python gguf"

# Q4_0 stores blocks of 32 weights as one f16 scale and 16 bytes of nibbles.
Q4_0_BLOCK = 32
Q4_0_BLOCK_BYTES = 18


@dataclass(frozen=True)
class BackboneShape:
    n_layers: int
    dim: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    hidden_dim: int
    n_vocab: int  # the rows of the per-token head: the semantic head's (see above)
    norm_eps: float
    rope_theta: float
    context_length: int

    @classmethod
    def of(cls, config, context_length: int) -> "BackboneShape":
        """The backbone of a model config (`voxtral_edge.export.config.ModelConfig`)."""
        b = config.backbone
        return cls(n_layers=b.n_layers, dim=b.dim, n_heads=b.n_heads, n_kv_heads=b.n_kv_heads, head_dim=b.head_dim,
                   hidden_dim=b.hidden_dim, n_vocab=config.audio.semantic_logits, norm_eps=b.norm_eps,
                   rope_theta=b.rope_theta, context_length=context_length)


def released_backbone() -> BackboneShape:
    """The released checkpoint's backbone, from the same params the project's full-size checkpoint has."""
    from voxtral_edge.defaults import MAX_CONTEXT
    from voxtral_edge.export.config import FULL_PARAMS, ModelConfig

    return BackboneShape.of(ModelConfig.from_dict(FULL_PARAMS), MAX_CONTEXT)


VOXTRAL_BACKBONE = released_backbone()


@dataclass(frozen=True)
class TensorSpec:
    """One tensor, shape in numpy order (rows, cols): GGUF stores it reversed, cols is the input dim."""

    name: str
    shape: tuple[int, ...]
    quantized: bool

    @property
    def n_elements(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n

    @property
    def fan_in(self) -> int:
        return self.shape[-1]

    @property
    def nbytes(self) -> int:
        if self.quantized:
            return self.n_elements // Q4_0_BLOCK * Q4_0_BLOCK_BYTES
        return 4 * self.n_elements


def tensor_plan(shape: BackboneShape = VOXTRAL_BACKBONE) -> list[TensorSpec]:
    """The llama-architecture tensors in file order, with llama.cpp's GGUF names."""
    q_dim, kv_dim = shape.n_heads * shape.head_dim, shape.n_kv_heads * shape.head_dim
    plan = [TensorSpec("token_embd.weight", (shape.n_vocab, shape.dim), True)]
    for i in range(shape.n_layers):
        plan += [
            TensorSpec(f"blk.{i}.attn_norm.weight", (shape.dim,), False),
            TensorSpec(f"blk.{i}.attn_q.weight", (q_dim, shape.dim), True),
            TensorSpec(f"blk.{i}.attn_k.weight", (kv_dim, shape.dim), True),
            TensorSpec(f"blk.{i}.attn_v.weight", (kv_dim, shape.dim), True),
            TensorSpec(f"blk.{i}.attn_output.weight", (shape.dim, q_dim), True),
            TensorSpec(f"blk.{i}.ffn_norm.weight", (shape.dim,), False),
            TensorSpec(f"blk.{i}.ffn_gate.weight", (shape.hidden_dim, shape.dim), True),
            TensorSpec(f"blk.{i}.ffn_up.weight", (shape.hidden_dim, shape.dim), True),
            TensorSpec(f"blk.{i}.ffn_down.weight", (shape.dim, shape.hidden_dim), True),
        ]
    plan += [
        TensorSpec("output_norm.weight", (shape.dim,), False),
        TensorSpec("output.weight", (shape.n_vocab, shape.dim), True),
    ]
    return plan


def vocab(n_vocab: int) -> tuple[list[str], list[float], list[int]]:
    """A minimal SentencePiece vocabulary: tokens, scores and GGUF token types (2 unknown, 3 control, 6 byte, 1 normal)."""
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
    types = [2, 3, 3] + [6] * 256
    tokens += [f"\u2581t{i}" for i in range(n_vocab - len(tokens))]
    types += [1] * (n_vocab - len(types))
    scores = [0.0] * 259 + [-float(i) for i in range(n_vocab - 259)]
    return tokens, scores, types


def gguf_filename(shape: BackboneShape = VOXTRAL_BACKBONE) -> str:
    """The cache name carries a hash of the shape, so a changed shape writes a new file."""
    tag = hashlib.sha256(json.dumps(asdict(shape), sort_keys=True).encode()).hexdigest()[:10]
    return f"voxtral-backbone-random-{tag}-q4_0.gguf"


def format_table(result: dict) -> str:
    """llama-bench-style markdown rows for one measure() result."""
    head = "| model | size GB | params | threads | test | unit | median | best |"
    rule = "| --- | ---: | ---: | ---: | --- | --- | ---: | ---: |"
    common = (
        f"| {result['model']} | {result['gguf_bytes'] / 1e9:.2f} | {result['n_params'] / 1e9:.2f} B "
        f"| {result['threads']} "
    )
    rows = [
        common + f"| pp{result['prompt_tokens']} | t/s "
        f"| {result['prefill_tokens_per_s']:.2f} | {result['prefill_tokens_per_s_best']:.2f} |",
        common + f"| tg{result['decode_tokens']} | ms/token "
        f"| {result['decode_ms_per_token']:.2f} | {result['decode_ms_per_token_min']:.2f} |",
    ]
    provenance = [
        f"CPU: {result['cpu']} ({result['cores']} cores), llama-cpp-python {result['llama_cpp_version']}, "
        f"{result['repeats']} repeats, 1-min load average before: {result['load_avg_1min_before']:.2f}",
        f"GGUF: {result['gguf_path']} ({result['gguf_bytes']} bytes)",
    ]
    if result.get("gguf_write_s") is not None:
        provenance[-1] += f", written in {result['gguf_write_s']:.1f} s by this run"
    return "\n".join([head, rule, *rows, "", *provenance])


def json_lines(result: dict) -> str:
    """One JSON object per test (pp, then tg), each carrying the provenance fields."""
    per_test = {"prefill_ms", "decode_ms_per_token_samples"}
    provenance = {k: v for k, v in result.items() if k not in per_test}
    pp = {"test": f"pp{result['prompt_tokens']}", "unit": "t/s", "median": result["prefill_tokens_per_s"],
          "best": result["prefill_tokens_per_s_best"], "samples_ms": result["prefill_ms"]}
    tg = {"test": f"tg{result['decode_tokens']}", "unit": "ms/token", "median": result["decode_ms_per_token"],
          "best": result["decode_ms_per_token_min"], "samples_ms_per_token": result["decode_ms_per_token_samples"]}
    return "\n".join(json.dumps({**test, **provenance}) for test in (pp, tg))


def _import_backends():
    """gguf and llama_cpp, or an ImportError whose message is the install hint (callers may skip on it)."""
    try:
        import gguf
        import llama_cpp
    except ImportError:
        raise ImportError(INSTALL_HINT) from None
    return gguf, llama_cpp


def write_gguf(path: Path, shape: BackboneShape = VOXTRAL_BACKBONE, seed: int = 0) -> float:
    """Write the random-weight GGUF tensor by tensor (peak memory: one tensor); return seconds taken."""
    import numpy as np

    gguf, _ = _import_backends()
    from gguf.quants import quantize

    start = time.perf_counter()
    plan = tensor_plan(shape)
    # Written under a temporary name and renamed, so an interrupted write never looks cached.
    partial = path.with_name(path.stem + ".partial.gguf")
    writer = gguf.GGUFWriter(partial, "llama")
    writer.add_name("voxtral-tts-backbone-random")
    writer.add_context_length(shape.context_length)
    writer.add_embedding_length(shape.dim)
    writer.add_block_count(shape.n_layers)
    writer.add_feed_forward_length(shape.hidden_dim)
    writer.add_head_count(shape.n_heads)
    writer.add_head_count_kv(shape.n_kv_heads)
    writer.add_key_length(shape.head_dim)
    writer.add_value_length(shape.head_dim)
    writer.add_rope_dimension_count(shape.head_dim)
    writer.add_rope_freq_base(shape.rope_theta)
    writer.add_layer_norm_rms_eps(shape.norm_eps)
    writer.add_vocab_size(shape.n_vocab)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_Q4_0)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    tokens, scores, types = vocab(shape.n_vocab)
    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    writer.add_unk_token_id(0)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)

    # Declare every tensor first: the header holds all offsets, then the data follows in this order.
    for spec in plan:
        raw = gguf.GGMLQuantizationType.Q4_0 if spec.quantized else gguf.GGMLQuantizationType.F32
        writer.add_tensor_info(spec.name, spec.shape, np.dtype(np.float32), spec.nbytes, raw_dtype=raw)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()

    rng = np.random.default_rng(seed)
    rows_per_chunk = 256
    for spec in plan:
        if not spec.quantized:
            writer.write_tensor_data(np.ones(spec.shape, dtype=np.float32))
            continue
        rows, cols = spec.shape
        std = np.float32(1.0 / np.sqrt(spec.fan_in))
        out = np.empty((rows, cols // Q4_0_BLOCK * Q4_0_BLOCK_BYTES), dtype=np.uint8)
        # Chunks of rows keep the float32 working set small (the largest matrix is 113 MB as f32).
        for r in range(0, rows, rows_per_chunk):
            chunk = rng.standard_normal((min(rows_per_chunk, rows - r), cols), dtype=np.float32) * std
            out[r : r + len(chunk)] = quantize(chunk, gguf.GGMLQuantizationType.Q4_0)
        writer.write_tensor_data(out)
    writer.close()
    os.replace(partial, path)
    return time.perf_counter() - start


def ensure_gguf(cache_dir: str | os.PathLike, shape: BackboneShape = VOXTRAL_BACKBONE) -> tuple[Path, float | None]:
    """The cached GGUF path, and the seconds spent writing it (None when it was already there)."""
    path = Path(cache_dir) / gguf_filename(shape)
    if path.exists():
        return path, None
    path.parent.mkdir(parents=True, exist_ok=True)
    size_gb = sum(spec.nbytes for spec in tensor_plan(shape)) / 1e9
    print(f"writing {path} (once, {size_gb:.2f} GB) ...", file=sys.stderr)
    return path, write_gguf(path, shape)


def measure(cache_dir="work/llama-baseline", threads=None, prompt_tokens=200, decode_tokens=32, repeats=3) -> dict:
    """Time llama.cpp prefill and decode on the cached random-weight backbone GGUF; see the module docstring."""
    import numpy as np

    _, llama_cpp = _import_backends()
    shape = VOXTRAL_BACKBONE
    if prompt_tokens < 1 or decode_tokens < 1 or repeats < 1:
        raise ValueError("prompt_tokens, decode_tokens and repeats must be positive")
    if prompt_tokens + decode_tokens > shape.context_length:
        raise ValueError(f"prompt_tokens + decode_tokens must fit the {shape.context_length}-token context")
    # Other work on the cores distorts this badly (spinning OpenMP threads lose their core), so record the
    # load; taken before our own GGUF write, which would count in it.
    load_before = os.getloadavg()[0]
    path, write_s = ensure_gguf(cache_dir, shape)
    threads = threads or usable_cores()
    n_batch = 512

    llm = llama_cpp.Llama(
        model_path=str(path), n_ctx=shape.context_length, n_batch=n_batch, n_ubatch=n_batch,
        n_threads=threads, n_threads_batch=threads, verbose=False,
    )
    ctx = llm.ctx
    memory = llama_cpp.llama_get_memory(ctx)
    rng = np.random.default_rng(0)
    # Ids 3.. avoid the special tokens; the values do not change the work done.
    prompt_ids = rng.integers(3, shape.n_vocab, prompt_tokens).tolist()
    # A prompt longer than n_batch goes in several llama_decode calls, as llama-bench does.
    chunks = [prompt_ids[i : i + n_batch] for i in range(0, prompt_tokens, n_batch)]
    chunks = [((llama_cpp.llama_token * len(c))(*c), len(c)) for c in chunks]
    steps = rng.integers(3, shape.n_vocab, decode_tokens).tolist()
    one = (llama_cpp.llama_token * 1)()

    def decode(tokens, n) -> None:
        # A batch from llama_batch_get_one asks for logits of its last token only, as a generator does.
        if llama_cpp.llama_decode(ctx, llama_cpp.llama_batch_get_one(tokens, n)) != 0:
            raise RuntimeError("llama_decode failed")

    def prefill() -> None:
        for tokens, n in chunks:
            decode(tokens, n)
        llama_cpp.llama_synchronize(ctx)

    def step(token: int) -> None:
        one[0] = token
        decode(one, 1)
        llama_cpp.llama_synchronize(ctx)

    # Timed: llama_decode of the transformer (embedding lookup, 26 layers, final norm and the
    # 8320-row output head for the last position) plus a few microseconds of ctypes call overhead.
    # Not timed: model loading, tokenization (ids are fed directly), logits copy-out, sampling.
    llama_cpp.llama_memory_clear(memory, True)
    decode(chunks[0][0], min(8, prompt_tokens))  # warm-up, as llama-bench does: first-touch of weights and buffers
    step(steps[0])
    prefill_ms, decode_ms = [], []
    for _ in range(repeats):
        llama_cpp.llama_memory_clear(memory, True)
        start = time.perf_counter()
        prefill()
        prefill_ms.append(1e3 * (time.perf_counter() - start))
        start = time.perf_counter()
        for token in steps:
            step(token)
        decode_ms.append(1e3 * (time.perf_counter() - start) / decode_tokens)
    logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(ctx, -1), shape=(shape.n_vocab,))
    logits_finite = bool(np.isfinite(logits).all())

    pp_ms_median, pp_ms_min = statistics.median(prefill_ms), min(prefill_ms)
    result = {
        "model": f"llama {shape.n_layers}L {shape.dim}d Q4_0 (Voxtral TTS backbone, random)",
        "decode_ms_per_token": statistics.median(decode_ms),
        "decode_ms_per_token_min": min(decode_ms),
        "prefill_tokens_per_s": 1e3 * prompt_tokens / pp_ms_median,
        "prefill_tokens_per_s_best": 1e3 * prompt_tokens / pp_ms_min,
        "prefill_ms": prefill_ms,
        "decode_ms_per_token_samples": decode_ms,
        "prompt_tokens": prompt_tokens,
        "decode_tokens": decode_tokens,
        "repeats": repeats,
        "threads": threads,
        "cores": usable_cores(),
        "cpu": cpu_model(),
        "llama_cpp_version": llama_cpp.__version__,
        "system_info": llama_cpp.llama_print_system_info().decode(errors="replace").strip(),
        "flash_attn": False,
        "n_params": int(llama_cpp.llama_model_n_params(llm.model)),
        "load_avg_1min_before": load_before,
        "gguf_path": str(path),
        "gguf_bytes": path.stat().st_size,
        "gguf_write_s": write_s,
        "logits_finite": logits_finite,
        "shape": asdict(shape),
    }
    llm.close()
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cache", default="work/llama-baseline", help="folder for the cached GGUF")
    parser.add_argument("--threads", type=int, help="threads (default: the cores this process may use)")
    parser.add_argument("--prompt-tokens", type=int, default=200)
    parser.add_argument("--decode-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", action="store_true", help="JSON lines instead of a markdown table")
    args = parser.parse_args(argv)
    try:
        _import_backends()
    except ImportError as error:
        raise SystemExit(str(error)) from None
    result = measure(args.cache, args.threads, args.prompt_tokens, args.decode_tokens, args.repeats)
    print(json_lines(result) if args.json else format_table(result))
    if not result["logits_finite"]:
        print("warning: the output logits are not all finite", file=sys.stderr)


if __name__ == "__main__":
    main()
