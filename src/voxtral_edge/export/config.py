"""The model's arguments, read from `params.json`.

One frozen dataclass per piece (backbone, flow head, audio codes, codec), built and validated once
and used by the reader, the generator, the reference and the exporter alike. Field names follow
`params.json`; every dimension anywhere in the project comes from here. `ModelConfig.tensor_shapes()`
is the list of tensors a checkpoint must hold, with their shapes.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigError

# The released voices and their [AUDIO] counts (= rows of voice_embedding/<name>.pt), in params order.
RELEASED_VOICES = {
    "casual_female": 214, "casual_male": 147, "cheerful_female": 132, "neutral_female": 218,
    "neutral_male": 169, "pt_male": 144, "pt_female": 175, "nl_male": 138, "nl_female": 146,
    "it_male": 168, "it_female": 172, "fr_male": 97, "fr_female": 97, "es_male": 208, "es_female": 138,
    "de_male": 163, "de_female": 147, "ar_male": 67, "hi_male": 94, "hi_female": 86,
}

# The released params.json (Voxtral-4B-TTS-2603), key for key.
FULL_PARAMS = {
    "dim": 3072, "n_layers": 26, "head_dim": 128, "hidden_dim": 9216, "n_heads": 32, "n_kv_heads": 8,
    "use_biases": False, "causal": True, "rope_theta": 1000000.0, "norm_eps": 1e-05, "vocab_size": 131072,
    "model_parallel": 1, "tied_embeddings": True,
    "multimodal": {
        "bos_token_id": 1,
        "audio_model_args": {
            "semantic_codebook_size": 8192, "acoustic_codebook_size": 21, "n_acoustic_codebook": 36,
            "audio_encoding_args": {
                "codebook_pattern": "parallel", "interleave_audio_tokens_per_segment": 8192,
                "interleave_text_tokens_per_segment": 8192, "single_trailing_segment": False,
                "num_codebooks": 37, "sampling_rate": 24000, "frame_rate": 12.5,
            },
            "audio_token_id": 24, "begin_audio_token_id": 25, "input_embedding_concat_type": "sum",
            "acoustic_transformer_args": {
                "input_dim": 3072, "dim": 3072, "n_layers": 3, "head_dim": 128, "hidden_dim": 9216,
                "n_heads": 32, "n_kv_heads": 8, "use_biases": False, "rope_theta": 10000.0,
                "sigma": 1e-05, "sigma_max": 1.0,
            },
            "p_uncond": 0.0, "text_feature_bugged": False, "condition_dropped_token_id": 42,
        },
        "audio_tokenizer_args": {
            "channels": 1, "sampling_rate": 24000, "pretransform_patch_size": 240, "patch_proj_kernel_size": 7,
            "semantic_codebook_size": 8192, "semantic_dim": 256, "acoustic_codebook_size": 21,
            "acoustic_dim": 36, "conv_weight_norm": True, "causal": True, "attn_sliding_window_size": 16,
            "half_attn_window_upon_downsampling": True, "dim": 1024, "hidden_dim": 4096, "head_dim": 128,
            "n_heads": 8, "n_kv_heads": 8, "qk_norm_eps": 1e-06, "qk_norm": True, "use_biases": False,
            "norm_eps": 0.01, "layer_scale": True, "layer_scale_init": 0.01,
            "decoder_transformer_lengths_str": "2,2,2,2", "decoder_convs_kernels_str": "3,4,4,4",
            "decoder_convs_strides_str": "1,2,2,2",
            "voice": {name: i for i, name in enumerate(RELEASED_VOICES)},
        },
    },
    "max_seq_len": 65536, "model_type": "voxtral_tts", "max_position_embeddings": 128000,
}

# The two ids every audio codebook reserves before its codes: [EMPTY_AUDIO] and [END_AUDIO].
EMPTY_AUDIO = 0
END_AUDIO = 1
N_AUDIO_SPECIALS = 2
# Output heads and the audio embedding table are padded to a multiple of this many rows.
PAD_MULTIPLE = 128
# The reference server's Euler step count when params.json does not set n_decoding_steps.
DEFAULT_DECODING_STEPS = 7


def _round_up(n: int, multiple: int) -> int:
    return multiple * ((n + multiple - 1) // multiple)


class _Section:
    """Typed access to one object of params.json; errors name the file and the dotted key."""

    def __init__(self, data: Any, path: str, source: str):
        if not isinstance(data, dict):
            raise ConfigError(f"{source}: '{path or '<top level>'}' must be an object, found {type(data).__name__}")
        self.data, self.path, self.source = data, path, source

    def _key(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def _get(self, key: str, default: Any) -> Any:
        if key in self.data:
            return self.data[key]
        if default is _REQUIRED:
            raise ConfigError(f"{self.source}: missing key '{self._key(key)}'")
        return default

    def section(self, key: str) -> "_Section":
        return _Section(self._get(key, _REQUIRED), self._key(key), self.source)

    def int(self, key: str, default: Any = None, *, minimum: int = 1) -> int:
        value = self._get(key, _REQUIRED if default is None else default)
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{self.source}: '{self._key(key)}' must be an integer, found {value!r}")
        if value < minimum:
            raise ConfigError(f"{self.source}: '{self._key(key)}' must be >= {minimum}, found {value}")
        return value

    def float(self, key: str, default: Any = None, *, positive: bool = True) -> float:
        value = self._get(key, _REQUIRED if default is None else default)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ConfigError(f"{self.source}: '{self._key(key)}' must be a number, found {value!r}")
        if positive and value <= 0:
            raise ConfigError(f"{self.source}: '{self._key(key)}' must be > 0, found {value}")
        return float(value)

    def bool(self, key: str, default: Any = None) -> bool:
        value = self._get(key, _REQUIRED if default is None else default)
        if not isinstance(value, bool):
            raise ConfigError(f"{self.source}: '{self._key(key)}' must be true or false, found {value!r}")
        return value

    def int_list(self, key: str, default: str) -> tuple[int, ...]:
        value = self._get(key, default)
        try:
            items = tuple(int(v) for v in str(value).split(","))
        except ValueError:
            items = ()
        if not items or any(v < 1 for v in items):
            raise ConfigError(f"{self.source}: '{self._key(key)}' must be comma-separated positive integers, "
                              f"found {value!r}")
        return items

    def require(self, ok: bool, message: str) -> None:
        if not ok:
            raise ConfigError(f"{self.source}: {message}")


_REQUIRED = object()


@dataclass(frozen=True)
class TransformerShape:
    """What a Mistral-style attention + SwiGLU block needs to know about its widths."""

    dim: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    hidden_dim: int
    norm_eps: float

    def layer_tensor_shapes(self, prefix: str) -> dict[str, tuple[int, ...]]:
        q, kv = self.n_heads * self.head_dim, self.n_kv_heads * self.head_dim
        return {
            f"{prefix}.attention.wq.weight": (q, self.dim),
            f"{prefix}.attention.wk.weight": (kv, self.dim),
            f"{prefix}.attention.wv.weight": (kv, self.dim),
            f"{prefix}.attention.wo.weight": (self.dim, q),
            f"{prefix}.attention_norm.weight": (self.dim,),
            f"{prefix}.feed_forward.w1.weight": (self.hidden_dim, self.dim),
            f"{prefix}.feed_forward.w2.weight": (self.dim, self.hidden_dim),
            f"{prefix}.feed_forward.w3.weight": (self.hidden_dim, self.dim),
            f"{prefix}.ffn_norm.weight": (self.dim,),
        }


@dataclass(frozen=True)
class BackboneConfig(TransformerShape):
    """The Ministral-3B decoder: causal, RoPE with interleaved pairs, GQA."""

    rope_theta: float = 1e6
    vocab_size: int = 0
    max_seq_len: int = 0


@dataclass(frozen=True)
class FlowHeadConfig(TransformerShape):
    """The acoustic transformer: bidirectional, no positions, over 3 tokens [x, t, h]."""

    input_dim: int = 0
    n_decoding_steps: int = DEFAULT_DECODING_STEPS


@dataclass(frozen=True)
class AudioConfig:
    """The audio codes the backbone emits and reads back, and the special token ids of the prompt."""

    semantic_codebook_size: int
    acoustic_codebook_size: int
    n_acoustic_codebook: int
    sampling_rate: int
    frame_rate: float
    audio_token_id: int
    begin_audio_token_id: int
    bos_token_id: int

    @property
    def num_codebooks(self) -> int:
        return 1 + self.n_acoustic_codebook

    @property
    def codebook_sizes(self) -> tuple[int, ...]:
        """Rows of each codebook in the embedding table, the two specials included."""
        return (self.semantic_codebook_size + N_AUDIO_SPECIALS,) + (
            self.acoustic_codebook_size + N_AUDIO_SPECIALS,) * self.n_acoustic_codebook

    @property
    def codebook_offsets(self) -> tuple[int, ...]:
        """Where each codebook starts in `audio_codebook_embeddings` (running sum of the unpadded sizes)."""
        sizes = self.codebook_sizes
        return tuple(sum(sizes[:i]) for i in range(len(sizes)))

    @property
    def embedding_rows(self) -> int:
        return _round_up(sum(self.codebook_sizes), PAD_MULTIPLE)

    @property
    def semantic_logits(self) -> int:
        """Rows of the semantic output head: codes + specials, padded."""
        return _round_up(self.semantic_codebook_size + N_AUDIO_SPECIALS, PAD_MULTIPLE)


@dataclass(frozen=True)
class CodecBlock:
    """One block of the codec decoder, in order: `decoder_blocks.{index}`."""

    kind: str  # "conv", "conv_transpose" or "transformer"
    index: int
    in_dim: int = 0
    out_dim: int = 0
    kernel: int = 0
    stride: int = 0
    n_layers: int = 0
    window: int = 0


@dataclass(frozen=True)
class CodecConfig(TransformerShape):
    """The audio tokenizer's decoder (the encoder is not in the open checkpoint)."""

    semantic_dim: int = 0
    acoustic_dim: int = 0
    semantic_codebook_size: int = 0
    acoustic_codebook_size: int = 0
    patch_size: int = 0
    patch_proj_kernel: int = 0
    qk_norm_eps: float = 1e-6
    sampling_rate: int = 0
    blocks: tuple[CodecBlock, ...] = ()
    voices: tuple[tuple[str, int], ...] = field(default=())

    @property
    def latent_dim(self) -> int:
        return self.semantic_dim + self.acoustic_dim

    @property
    def upsampling(self) -> int:
        """Decoder positions per frame."""
        return math.prod(b.stride for b in self.blocks if b.kind == "conv_transpose")

    @property
    def samples_per_frame(self) -> int:
        return self.patch_size * self.upsampling

    def tensor_shapes(self) -> dict[str, tuple[int, ...]]:
        p = "audio_tokenizer"
        shapes = {
            f"{p}.quantizer.semantic_codebook.embedding_sum": (self.semantic_codebook_size, self.semantic_dim),
            f"{p}.quantizer.semantic_codebook.cluster_usage": (self.semantic_codebook_size,),
        }
        q, kv = self.n_heads * self.head_dim, self.n_kv_heads * self.head_dim
        for b in self.blocks:
            prefix = f"{p}.decoder_blocks.{b.index}"
            if b.kind == "transformer":
                for k in range(b.n_layers):
                    lp = f"{prefix}.layers.{k}"
                    shapes.update(self.layer_tensor_shapes(lp))
                    shapes[f"{lp}.attention.q_norm.weight"] = (q,)
                    shapes[f"{lp}.attention.k_norm.weight"] = (kv,)
                    shapes[f"{lp}.attention_scale"] = (self.dim,)
                    shapes[f"{lp}.ffn_scale"] = (self.dim,)
            else:
                # torch's weight_norm keeps g per slice of the weight's first axis: out for a conv,
                # in for a transposed conv (whose weight is [in, out, k]).
                v = (b.out_dim, b.in_dim, b.kernel) if b.kind == "conv" else (b.in_dim, b.out_dim, b.kernel)
                shapes[f"{prefix}.conv.parametrizations.weight.original0"] = (v[0], 1, 1)
                shapes[f"{prefix}.conv.parametrizations.weight.original1"] = v
        shapes[f"{p}.output_proj.conv.parametrizations.weight.original0"] = (self.patch_size, 1, 1)
        shapes[f"{p}.output_proj.conv.parametrizations.weight.original1"] = (
            self.patch_size, self.dim, self.patch_proj_kernel)
        return shapes


@dataclass(frozen=True)
class ModelConfig:
    backbone: BackboneConfig
    flow_head: FlowHeadConfig
    audio: AudioConfig
    codec: CodecConfig
    source: str = "params.json"

    @classmethod
    def from_file(cls, path: str | Path) -> "ModelConfig":
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as e:
            raise ConfigError(f"{path}: cannot read ({e.strerror or e})") from None
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise ConfigError(f"{path}: not valid JSON ({e})") from None
        return cls.from_dict(data, source=str(path))

    @classmethod
    def from_dict(cls, data: dict, source: str = "params.json") -> "ModelConfig":
        top = _Section(data, "", source)
        mm = top.section("multimodal")
        am = mm.section("audio_model_args")
        at = am.section("acoustic_transformer_args")
        enc = am.section("audio_encoding_args")
        tok = mm.section("audio_tokenizer_args")

        for section, key in ((top, "use_biases"), (at, "use_biases"), (tok, "use_biases")):
            section.require(not section.bool(key, False),
                            f"'{section._key(key)}' is true; only bias-free checkpoints exist and are supported")

        backbone = BackboneConfig(
            dim=top.int("dim"), n_layers=top.int("n_layers"), n_heads=top.int("n_heads"),
            n_kv_heads=top.int("n_kv_heads"), head_dim=top.int("head_dim"), hidden_dim=top.int("hidden_dim"),
            norm_eps=top.float("norm_eps"), rope_theta=top.float("rope_theta"),
            vocab_size=top.int("vocab_size"), max_seq_len=top.int("max_seq_len"))
        flow = FlowHeadConfig(
            dim=at.int("dim"), n_layers=at.int("n_layers"), n_heads=at.int("n_heads"),
            n_kv_heads=at.int("n_kv_heads"), head_dim=at.int("head_dim"), hidden_dim=at.int("hidden_dim"),
            norm_eps=at.float("norm_eps", 1e-5), input_dim=at.int("input_dim"),
            n_decoding_steps=at.int("n_decoding_steps", DEFAULT_DECODING_STEPS))
        audio = AudioConfig(
            semantic_codebook_size=am.int("semantic_codebook_size"),
            acoustic_codebook_size=am.int("acoustic_codebook_size", minimum=2),
            n_acoustic_codebook=am.int("n_acoustic_codebook"),
            sampling_rate=enc.int("sampling_rate"), frame_rate=enc.float("frame_rate"),
            audio_token_id=am.int("audio_token_id", minimum=0),
            begin_audio_token_id=am.int("begin_audio_token_id", minimum=0),
            bos_token_id=mm.int("bos_token_id", minimum=0))
        codec = _codec_config(tok)

        for name, shape, section in (("backbone", backbone, top), ("flow head", flow, at), ("codec", codec, tok)):
            section.require(shape.n_heads % shape.n_kv_heads == 0,
                            f"{name}: n_heads ({shape.n_heads}) must be a multiple of n_kv_heads ({shape.n_kv_heads})")
        top.require(backbone.head_dim % 2 == 0, f"'head_dim' must be even for RoPE pairs, found {backbone.head_dim}")
        at.require(flow.dim % 2 == 0, f"'{at._key('dim')}' must be even (the time embedding is cos and sin "
                                      f"halves), found {flow.dim}")
        at.require(flow.input_dim == backbone.dim,
                   f"'{at._key('input_dim')}' ({flow.input_dim}) must equal the backbone 'dim' ({backbone.dim}): "
                   f"llm_projection reads the backbone's hidden state")
        enc.require(enc.int("num_codebooks") == audio.num_codebooks,
                    f"'{enc._key('num_codebooks')}' ({enc.int('num_codebooks')}) must be 1 + n_acoustic_codebook "
                    f"({audio.num_codebooks})")
        tok.require(codec.semantic_codebook_size == audio.semantic_codebook_size,
                    f"'{tok._key('semantic_codebook_size')}' ({codec.semantic_codebook_size}) disagrees with "
                    f"'{am._key('semantic_codebook_size')}' ({audio.semantic_codebook_size})")
        tok.require(codec.acoustic_codebook_size == audio.acoustic_codebook_size,
                    f"'{tok._key('acoustic_codebook_size')}' ({codec.acoustic_codebook_size}) disagrees with "
                    f"'{am._key('acoustic_codebook_size')}' ({audio.acoustic_codebook_size})")
        tok.require(codec.acoustic_dim == audio.n_acoustic_codebook,
                    f"'{tok._key('acoustic_dim')}' ({codec.acoustic_dim}) must equal "
                    f"'{am._key('n_acoustic_codebook')}' ({audio.n_acoustic_codebook})")
        tok.require(codec.sampling_rate == audio.sampling_rate,
                    f"'{tok._key('sampling_rate')}' ({codec.sampling_rate}) disagrees with "
                    f"'{enc._key('sampling_rate')}' ({audio.sampling_rate})")
        enc.require(abs(codec.samples_per_frame * audio.frame_rate - audio.sampling_rate) < 1e-6,
                    f"'{enc._key('frame_rate')}' ({audio.frame_rate}) must equal sampling_rate / samples per frame "
                    f"({audio.sampling_rate} / {codec.samples_per_frame})")
        for key in ("audio_token_id", "begin_audio_token_id"):
            am.require(am.int(key, minimum=0) < backbone.vocab_size,
                       f"'{am._key(key)}' ({am.int(key, minimum=0)}) must be below vocab_size ({backbone.vocab_size})")
        return cls(backbone, flow, audio, codec, source)

    def tensor_shapes(self) -> dict[str, tuple[int, ...]]:
        """Every tensor of `consolidated.safetensors` with the shape this config expects."""
        b, f, a = self.backbone, self.flow_head, self.audio
        shapes: dict[str, tuple[int, ...]] = {}
        for i in range(b.n_layers):
            shapes.update(b.layer_tensor_shapes(f"layers.{i}"))
        shapes["norm.weight"] = (b.dim,)
        shapes["mm_audio_embeddings.tok_embeddings.weight"] = (b.vocab_size, b.dim)
        shapes["mm_audio_embeddings.audio_codebook_embeddings.embeddings.weight"] = (a.embedding_rows, b.dim)
        p = "acoustic_transformer"
        for j in range(f.n_layers):
            shapes.update(f.layer_tensor_shapes(f"{p}.layers.{j}"))
        shapes[f"{p}.norm.weight"] = (f.dim,)
        shapes[f"{p}.input_projection.weight"] = (f.dim, a.n_acoustic_codebook)
        shapes[f"{p}.time_projection.weight"] = (f.dim, f.dim)
        shapes[f"{p}.llm_projection.weight"] = (f.dim, f.input_dim)
        shapes[f"{p}.acoustic_codebook_output.weight"] = (a.n_acoustic_codebook, f.dim)
        # The semantic head reads the backbone's hidden state, so its input width is the backbone's.
        shapes[f"{p}.semantic_codebook_output.weight"] = (a.semantic_logits, b.dim)
        shapes.update(self.codec.tensor_shapes())
        return shapes


def _codec_config(tok: _Section) -> CodecConfig:
    """The decoder's block list and attention windows, built the way the reference server builds them."""
    for key in ("causal", "qk_norm", "layer_scale", "conv_weight_norm"):
        tok.require(tok.bool(key, True), f"'{tok._key(key)}' is false; only the released codec layout "
                                         f"(true) is supported")
    tok.require(tok.int("channels", 1) == 1, f"'{tok._key('channels')}' must be 1 (mono)")
    dim = tok.int("dim")
    kernels = tok.int_list("decoder_convs_kernels_str", "3,4,4,4")
    strides = tok.int_list("decoder_convs_strides_str", "1,2,2,2")
    lengths = tok.int_list("decoder_transformer_lengths_str", "2,2,2,2")
    tok.require(len(kernels) == len(strides) == len(lengths),
                f"decoder_convs_kernels_str, decoder_convs_strides_str and decoder_transformer_lengths_str "
                f"must have the same length, found {len(kernels)}, {len(strides)}, {len(lengths)}")
    half = tok.bool("half_attn_window_upon_downsampling", True)
    window = tok.int("attn_sliding_window_size")
    # The windows are set by the encoder's downsampling even though the encoder is not shipped.
    enc_kernels = tok.int_list("encoder_convs_kernels_str", "4,4,4,3")
    enc_strides = tok.int_list("encoder_convs_strides_str", "2,2,2,1")
    tok.require(len(enc_kernels) == len(enc_strides), "encoder_convs_kernels_str and encoder_convs_strides_str "
                                                      "must have the same length")
    for s in enc_strides:
        if half and s > 1:
            tok.require(s == 2, f"encoder stride {s}: only 2x downsampling halves the attention window")
            window //= 2
            tok.require(window >= 1, f"'{tok._key('attn_sliding_window_size')}' is too small for the "
                                     f"encoder's downsampling")
    tok.require(strides[0] == 1, f"'{tok._key('decoder_convs_strides_str')}' starts with {strides[0]}: "
                                 f"a strided first decoder conv is not supported (the release uses 1)")
    for s in strides:
        tok.require(not half or s in (1, 2), f"decoder stride {s}: only 1 or 2 is supported with "
                                             f"half_attn_window_upon_downsampling")

    latent = tok.int("semantic_dim") + tok.int("acoustic_dim")
    blocks = [CodecBlock("conv", 0, latent, dim, kernels[0], strides[0])]
    for idx, n_layers in enumerate(lengths):
        blocks.append(CodecBlock("transformer", len(blocks), dim, dim, n_layers=n_layers, window=window))
        if idx + 1 < len(lengths) and (kernels[idx + 1] != 1 or strides[idx + 1] != 1):
            blocks.append(CodecBlock("conv_transpose", len(blocks), dim, dim, kernels[idx + 1], strides[idx + 1]))
            if half and strides[idx + 1] > 1:
                window *= 2

    voices = tok._get("voice", {})
    tok.require(isinstance(voices, dict) and all(isinstance(k, str) and isinstance(v, int) for k, v in voices.items()),
                f"'{tok._key('voice')}' must map voice names to integers")
    return CodecConfig(
        dim=dim, n_layers=sum(lengths), n_heads=tok.int("n_heads"), n_kv_heads=tok.int("n_kv_heads"),
        head_dim=tok.int("head_dim"), hidden_dim=tok.int("hidden_dim"), norm_eps=tok.float("norm_eps"),
        semantic_dim=tok.int("semantic_dim"), acoustic_dim=tok.int("acoustic_dim"),
        semantic_codebook_size=tok.int("semantic_codebook_size"),
        acoustic_codebook_size=tok.int("acoustic_codebook_size", minimum=2),
        patch_size=tok.int("pretransform_patch_size"), patch_proj_kernel=tok.int("patch_proj_kernel_size"),
        qk_norm_eps=tok.float("qk_norm_eps"), sampling_rate=tok.int("sampling_rate"),
        blocks=tuple(blocks), voices=tuple(sorted(voices.items(), key=lambda kv: kv[1])))
