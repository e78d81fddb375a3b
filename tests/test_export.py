"""Each exported graph against the numpy reference, on tiny checkpoints of three seeds."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

from voxtral_edge.export.checkpoint import Checkpoint
from voxtral_edge.export.graphs import build_flow_velocity
from voxtral_edge.export.reference import KVCache, Reference
from voxtral_edge.manifest import Manifest
from voxtral_edge.prompt import tekken_speech_prompt

SEEDS = [0, 1, 2]


def session(bundle, graph):
    return ort.InferenceSession(str(bundle / f"{graph}.onnx"), providers=["CPUExecutionProvider"])


def assert_close(got, want, rel=1e-4):
    """max abs error <= rel x the output's scale (its largest magnitude)."""
    scale = np.abs(want).max()
    assert got.shape == want.shape
    assert np.abs(got - want).max() <= rel * scale, (np.abs(got - want).max(), scale)


@pytest.fixture(scope="module", params=SEEDS)
def pair(request, tiny_checkpoint_dirs, tiny_bundle_dirs):
    return Reference(Checkpoint(tiny_checkpoint_dirs[request.param])), tiny_bundle_dirs[request.param]


def test_backbone_prefill_matches_reference(pair):
    ref, bundle = pair
    b = ref.config.backbone
    prompt = tekken_speech_prompt(ref.checkpoint.tekken, "Ciao! Come stai oggi?", "casual_male")
    x = ref.embed_prompt(prompt, ref.checkpoint.voice("casual_male"))
    max_context = Manifest.load(bundle)["model"]["backbone"]["max_context"]
    kv = {f"past_{kind}_{i}": np.zeros((1, b.n_kv_heads, max_context, b.head_dim), np.float32)
          for i in range(b.n_layers) for kind in ("key", "value")}
    s = session(bundle, "backbone_step")
    out = dict(zip([o.name for o in s.get_outputs()],
                   s.run(None, {"inputs_embeds": x[None], "past_length": np.array([0], np.int64), **kv})))
    cache = KVCache()
    want = ref.backbone(x, cache)
    assert_close(out["hidden_states"][0], want)
    logits = ref.semantic_logits(want[-1])
    finite = np.isfinite(logits)
    assert (np.isfinite(out["semantic_logits"][0]) == finite).all() and not finite[0]
    assert_close(out["semantic_logits"][0][finite], logits[finite])
    # the cache holds the rotated keys and the values, [1, kv_heads, position, head_dim]
    assert_close(out["present_key_0"][0, :, :len(x)], cache.keys[0].transpose(1, 0, 2))
    assert_close(out["present_value_2"][0, :, :len(x)], cache.values[2].transpose(1, 0, 2))


@pytest.fixture(scope="module")
def velocity_graph(pair, tmp_path_factory):
    """The single-evaluation flow graph (not in bundles) built from the same checkpoint."""
    ref, _ = pair
    path = tmp_path_factory.mktemp("velocity") / "flow_velocity.onnx"
    build_flow_velocity(ref.config, ref.checkpoint.tensor, path)
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("t", [0.0, 3 / 7, 6 / 7])
@pytest.mark.parametrize("batch", [1, 2, 4])
def test_flow_velocity_matches_reference(pair, velocity_graph, t, batch):
    ref, _ = pair
    rng = np.random.default_rng(batch)
    x = rng.standard_normal((batch, ref.config.audio.n_acoustic_codebook)).astype(np.float32)
    h = rng.standard_normal((batch, ref.config.backbone.dim)).astype(np.float32)
    h[-1] = 0  # the unconditional row
    v = velocity_graph.run(None, {"x": x, "t": np.array([t], np.float32), "h": h})[0]
    assert_close(v, ref.velocity(x, t, h))


def reference_latent(ref, h, noise, steps, cfg_alpha):
    """Reference.acoustic_codes' x at t = 1, before rounding."""
    x, timesteps = noise.copy(), np.linspace(0, 1, steps + 1, dtype=np.float32)
    for k in range(steps):
        v_cond, v_uncond = ref.velocity(np.stack([x, x]), float(timesteps[k]), np.stack([h, np.zeros_like(h)]))
        x = x + (np.float32(cfg_alpha) * v_cond + np.float32(1 - cfg_alpha) * v_uncond) * (timesteps[k + 1] - timesteps[k])
    return x


@pytest.mark.parametrize("steps", [1, 2, 7])
@pytest.mark.parametrize("cfg_alpha", [1.2, 1.0, 0.0])
def test_flow_frame_matches_reference(pair, steps, cfg_alpha):
    """A whole frame of 4 utterances in one call (every Euler step, the guidance, the rounding) gives each
    the reference's codes."""
    ref, bundle = pair
    a = ref.config.audio
    rng = np.random.default_rng(steps)
    s = session(bundle, "flow_head")
    noise = rng.standard_normal((4, a.n_acoustic_codebook)).astype(np.float32)
    h = rng.standard_normal((4, ref.config.backbone.dim)).astype(np.float32)
    weights = [1.0] if cfg_alpha == 1 else [cfg_alpha, 1 - cfg_alpha]  # [1]: the conditional row alone
    codes, latent = s.run(["codes", "latent"], {
        "noise": noise, "h": h, "timesteps": np.linspace(0, 1, steps + 1, dtype=np.float32),
        "cfg_weights": np.array([weights] * 4, np.float32)})
    assert codes.dtype == np.int64 and codes.shape == noise.shape
    for b in range(4):
        np.testing.assert_array_equal(codes[b], ref.acoustic_codes(h[b], noise[b], steps, cfg_alpha))
        assert_close(latent[b], reference_latent(ref, h[b], noise[b], steps, cfg_alpha))


def random_codes(config, frames, seed):
    a = config.audio
    rng = np.random.default_rng(seed)
    return np.concatenate([rng.integers(0, a.semantic_codebook_size, (frames, 1)),
                           rng.integers(0, a.acoustic_codebook_size, (frames, a.n_acoustic_codebook))], axis=1)


def codec_chunks(bundle, codes, sizes):
    """Decode `codes` chunk by chunk with the graph alone, carrying its state by hand."""
    s = session(bundle, "codec_decoder")
    inputs = Manifest.load(bundle)["graphs"]["codec_decoder"]["inputs"]
    state = {n: np.zeros(spec["shape"], np.float32) for n, spec in inputs.items() if n not in ("codes", "frames_done")}
    audio, done = [], 0
    for size in sizes:
        out = s.run(["audio"] + [f"next_{n}" for n in state],
                    {"codes": codes[done:done + size], "frames_done": np.array([done], np.int64), **state})
        audio.append(out[0])
        state = dict(zip(state, out[1:]))
        done += size
    return np.concatenate(audio)


@pytest.mark.parametrize("frames", [1, 2, 9])
def test_codec_matches_reference(pair, frames):
    ref, bundle = pair
    codes = random_codes(ref.config, frames, frames)
    audio = codec_chunks(bundle, codes, [frames])  # a whole utterance is one call from an empty state
    assert audio.shape == (frames * ref.config.codec.samples_per_frame,)
    assert_close(audio, ref.decode(codes))


@pytest.mark.parametrize("sizes", [[1] * 12, [2] * 6, [3] * 4, [5, 7], [1, 3, 2, 6], [4, 1, 1, 1, 5]])
def test_codec_in_chunks_equals_the_whole_decode(pair, sizes):
    ref, bundle = pair
    codes = random_codes(ref.config, sum(sizes), len(sizes))
    assert_close(codec_chunks(bundle, codes, sizes), ref.decode(codes))


def test_manifest_describes_the_graphs(tiny_bundle_dirs):
    m = Manifest.load(tiny_bundle_dirs[0])
    for name, graph in m["graphs"].items():
        s = session(m.bundle, name)
        assert {i.name for i in s.get_inputs()} == set(graph["inputs"])
        assert {o.name for o in s.get_outputs()} == set(graph["outputs"])
        assert graph["precision"] == "fp32"
    assert m["special_ids"] == {"bos": 1, "audio": 24, "begin_audio": 25, "next_audio_text": 36,
                                "repeat_audio_text": 35}  # ids resolved by name from the generated tekken.json
    assert set(m["voices"]) == {"casual_male", "neutral_female", "fr_female"}
    assert m["embeddings"]["text"]["dtype"] == "bfloat16"
