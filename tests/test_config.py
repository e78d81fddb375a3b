"""params.json -> ModelConfig: the released shapes, derived layout, and clear errors."""

from __future__ import annotations

import copy
import json

import pytest

from voxtral_edge.errors import ConfigError
from voxtral_edge.export.config import ModelConfig
from voxtral_edge.export.config import FULL_PARAMS
from voxtral_edge.export.make_checkpoint import TINY_PARAMS

# Shapes read from the released checkpoint's safetensors header (tenstorrent/tt-metal,
# models/experimental/voxtral_tts/reference/CKPT_MANIFEST.json): an oracle independent of our config code.
RELEASED_SHAPES = {
    "acoustic_transformer.acoustic_codebook_output.weight": (36, 3072),
    "acoustic_transformer.input_projection.weight": (3072, 36),
    "acoustic_transformer.layers.2.attention.wk.weight": (1024, 3072),
    "acoustic_transformer.layers.0.attention.wo.weight": (3072, 4096),
    "acoustic_transformer.llm_projection.weight": (3072, 3072),
    "acoustic_transformer.semantic_codebook_output.weight": (8320, 3072),
    "acoustic_transformer.time_projection.weight": (3072, 3072),
    "audio_tokenizer.decoder_blocks.0.conv.parametrizations.weight.original0": (1024, 1, 1),
    "audio_tokenizer.decoder_blocks.0.conv.parametrizations.weight.original1": (1024, 292, 3),
    "audio_tokenizer.decoder_blocks.2.conv.parametrizations.weight.original1": (1024, 1024, 4),
    "audio_tokenizer.decoder_blocks.7.layers.1.attention.k_norm.weight": (1024,),
    "audio_tokenizer.decoder_blocks.5.layers.0.attention_scale": (1024,),
    "audio_tokenizer.decoder_blocks.3.layers.1.feed_forward.w2.weight": (1024, 4096),
    "audio_tokenizer.output_proj.conv.parametrizations.weight.original0": (240, 1, 1),
    "audio_tokenizer.output_proj.conv.parametrizations.weight.original1": (240, 1024, 7),
    "audio_tokenizer.quantizer.semantic_codebook.cluster_usage": (8192,),
    "audio_tokenizer.quantizer.semantic_codebook.embedding_sum": (8192, 256),
    "layers.25.attention.wq.weight": (4096, 3072),
    "layers.9.feed_forward.w1.weight": (9216, 3072),
    "mm_audio_embeddings.audio_codebook_embeddings.embeddings.weight": (9088, 3072),
    "mm_audio_embeddings.tok_embeddings.weight": (131072, 3072),
    "norm.weight": (3072,),
}


def test_released_params_give_the_released_tensor_layout():
    shapes = ModelConfig.from_dict(FULL_PARAMS).tensor_shapes()
    assert len(shapes) == 386
    counts = {p: sum(n.startswith(p) for n in shapes) for p in ("acoustic_transformer.", "audio_tokenizer.")}
    assert counts == {"acoustic_transformer.": 33, "audio_tokenizer.": 116}
    for name, shape in RELEASED_SHAPES.items():
        assert shapes[name] == shape, name


def test_released_params_derived_values():
    c = ModelConfig.from_dict(FULL_PARAMS)
    assert c.audio.codebook_sizes == (8194,) + (23,) * 36
    assert c.audio.codebook_offsets[:3] == (0, 8194, 8217) and c.audio.codebook_offsets[-1] == 8999
    assert (c.audio.embedding_rows, c.audio.semantic_logits, c.audio.num_codebooks) == (9088, 8320, 37)
    assert c.codec.samples_per_frame == 1920 and c.codec.upsampling == 8
    assert [(b.kind, b.index) for b in c.codec.blocks] == [
        ("conv", 0), ("transformer", 1), ("conv_transpose", 2), ("transformer", 3), ("conv_transpose", 4),
        ("transformer", 5), ("conv_transpose", 6), ("transformer", 7)]
    # 16 halved by the (unshipped) encoder's three 2x downsamplings, doubled by each decoder upsampling
    assert [b.window for b in c.codec.blocks if b.kind == "transformer"] == [2, 4, 8, 16]
    assert c.flow_head.norm_eps == 1e-5 and c.flow_head.n_decoding_steps == 7  # absent from the release
    assert c.codec.voices[0] == ("casual_female", 0) and len(c.codec.voices) == 20


def test_tiny_params_have_no_two_equal_widths():
    c = ModelConfig.from_dict(TINY_PARAMS)
    b, f, k = c.backbone, c.flow_head, c.codec
    widths = [b.dim, b.n_heads * b.head_dim, b.n_kv_heads * b.head_dim, b.hidden_dim, f.dim,
              f.n_heads * f.head_dim, f.n_kv_heads * f.head_dim, f.hidden_dim, k.dim, k.n_heads * k.head_dim,
              k.n_kv_heads * k.head_dim, k.hidden_dim, k.latent_dim, c.audio.semantic_codebook_size,
              c.audio.semantic_logits, c.audio.embedding_rows, b.vocab_size]
    assert len(set(widths)) == len(widths)


def _without(params: dict, dotted: str) -> dict:
    p = copy.deepcopy(params)
    *parents, last = dotted.split(".")
    node = p
    for key in parents:
        node = node[key]
    del node[last]
    return p


@pytest.mark.parametrize("key", [
    "dim", "n_layers", "rope_theta", "vocab_size", "multimodal.bos_token_id",
    "multimodal.audio_model_args.n_acoustic_codebook",
    "multimodal.audio_model_args.audio_encoding_args.frame_rate",
    "multimodal.audio_model_args.acoustic_transformer_args.hidden_dim",
    "multimodal.audio_tokenizer_args.dim", "multimodal.audio_tokenizer_args.attn_sliding_window_size",
])
def test_missing_key_is_named(key):
    with pytest.raises(ConfigError, match=rf"params.json: missing key '{key}'"):
        ModelConfig.from_dict(_without(FULL_PARAMS, key))


def _with(params: dict, dotted: str, value) -> dict:
    p = copy.deepcopy(params)
    *parents, last = dotted.split(".")
    node = p
    for key in parents:
        node = node[key]
    node[last] = value
    return p


@pytest.mark.parametrize("key, value, message", [
    ("multimodal.audio_model_args.audio_encoding_args.num_codebooks", 36, "num_codebooks' .36. must be 1 \\+ n_acoustic"),
    ("n_kv_heads", 7, "n_heads .32. must be a multiple of n_kv_heads .7."),
    ("multimodal.audio_tokenizer_args.acoustic_dim", 35, "acoustic_dim' .35. must equal"),
    ("multimodal.audio_tokenizer_args.semantic_codebook_size", 4096, "disagrees with"),
    ("multimodal.audio_model_args.acoustic_transformer_args.input_dim", 1024, "must equal the backbone 'dim'"),
    ("multimodal.audio_model_args.audio_encoding_args.frame_rate", 25.0, "frame_rate' .25.0. must equal"),
    ("dim", "3072", "'dim' must be an integer, found '3072'"),
    ("norm_eps", -1.0, "'norm_eps' must be > 0"),
    ("use_biases", True, "only bias-free checkpoints"),
    ("multimodal.audio_tokenizer_args.decoder_convs_strides_str", "1,2,2", "must have the same length"),
    ("multimodal.audio_tokenizer_args.decoder_convs_kernels_str", "3,x,4,4", "comma-separated positive integers"),
    ("multimodal.audio_tokenizer_args.qk_norm", False, "only the released codec layout"),
    ("multimodal.audio_model_args.acoustic_transformer_args.dim", 3071, "must be even"),
    ("multimodal.audio_model_args.audio_token_id", 131072, "must be below vocab_size"),
    ("multimodal", [], "'multimodal' must be an object"),
])
def test_inconsistent_params_are_named(key, value, message):
    with pytest.raises(ConfigError, match=message):
        ModelConfig.from_dict(_with(FULL_PARAMS, key, value))


def test_unknown_keys_are_ignored():
    c = ModelConfig.from_dict(_with(FULL_PARAMS, "training_only_setting", {"lr": 1e-4}))
    assert c.backbone.dim == 3072


def test_file_errors_name_the_file(tmp_path):
    missing = tmp_path / "params.json"
    with pytest.raises(ConfigError, match=str(missing)):
        ModelConfig.from_file(missing)
    missing.write_text("{not json")
    with pytest.raises(ConfigError, match=rf"{missing}: not valid JSON"):
        ModelConfig.from_file(missing)
    missing.write_text(json.dumps(_without(FULL_PARAMS, "head_dim")))
    with pytest.raises(ConfigError, match=rf"{missing}: missing key 'head_dim'"):
        ModelConfig.from_file(missing)
