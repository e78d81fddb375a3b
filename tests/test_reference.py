"""The numpy reference end to end on tiny generated checkpoints: determinism, the KV cache,
the codec's causality and the end of an utterance."""

from __future__ import annotations

import numpy as np
import pytest

from voxtral_edge.export.checkpoint import Checkpoint
from voxtral_edge.export.config import END_AUDIO
from voxtral_edge.export.reference import KVCache, Reference
from voxtral_edge.prompt import tekken_speech_prompt

TEXT = "Bonjour, ceci est un test."


@pytest.fixture(scope="module")
def ref(tiny_checkpoint_dir):
    return Reference(Checkpoint(tiny_checkpoint_dir))


def noise(ref, frames, seed=0):
    return np.random.default_rng(seed).standard_normal((frames, ref.config.audio.n_acoustic_codebook)).astype(np.float32)


def test_synthesize_is_deterministic_and_well_formed(ref):
    codes, audio = ref.synthesize(TEXT, "casual_male", noise(ref, 12), steps=4)
    codes2, audio2 = ref.synthesize(TEXT, "casual_male", noise(ref, 12), steps=4)
    np.testing.assert_array_equal(codes, codes2)
    np.testing.assert_array_equal(audio, audio2)
    a = ref.config.audio
    assert codes.shape == (12, a.num_codebooks)  # generated checkpoints never end by chance
    assert codes[:, 0].min() >= 0 and codes[:, 0].max() < a.semantic_codebook_size
    assert codes[:, 1:].min() >= 0 and codes[:, 1:].max() <= a.acoustic_codebook_size - 1
    assert len(np.unique(codes[:, 1:])) > 2  # the codes are not degenerate
    assert audio.dtype == np.float32 and audio.shape == (12 * ref.config.codec.samples_per_frame,)
    assert np.isfinite(audio).all() and 0 < np.abs(audio).max() < 10


def test_noise_voice_and_text_all_change_the_codes(ref):
    base, _ = ref.synthesize(TEXT, "casual_male", noise(ref, 6), steps=4)
    for other in (ref.synthesize(TEXT, "casual_male", noise(ref, 6, seed=1), steps=4)[0],
                  ref.synthesize(TEXT, "fr_female", noise(ref, 6), steps=4)[0],
                  ref.synthesize("Another sentence.", "casual_male", noise(ref, 6), steps=4)[0]):
        assert not np.array_equal(base, other)


def test_prefill_then_steps_equals_one_long_prefill(ref):
    prompt = tekken_speech_prompt(ref.checkpoint.tekken, TEXT, "neutral_female")
    x = ref.embed_prompt(prompt, ref.checkpoint.voice("neutral_female"))
    whole = ref.backbone(x, KVCache())
    cache = KVCache()
    parts = [ref.backbone(x[:10], cache)] + [ref.backbone(x[i:i + 1], cache) for i in range(10, len(x))]
    np.testing.assert_allclose(np.concatenate(parts), whole, rtol=1e-4, atol=1e-4)
    assert cache.length == len(x)


def test_voice_rows_replace_the_audio_placeholders(ref):
    prompt = tekken_speech_prompt(ref.checkpoint.tekken, TEXT, "fr_female")
    voice = ref.checkpoint.voice("fr_female")
    x = ref.embed_prompt(prompt, voice)
    audio_id = ref.config.audio.audio_token_id
    positions = [i for i, t in enumerate(prompt) if t == audio_id]
    np.testing.assert_array_equal(x[positions], voice)
    table = ref.checkpoint.tensor("mm_audio_embeddings.tok_embeddings.weight")
    others = [i for i, t in enumerate(prompt) if t != audio_id]
    np.testing.assert_array_equal(x[others], table[np.array(prompt)[others]])
    with pytest.raises(ValueError, match="has 6 \\[AUDIO\\] positions but the voice has 9 rows"):
        ref.embed_prompt(prompt, ref.checkpoint.voice("casual_male"))


def test_codec_is_causal(ref):
    codes, audio = ref.synthesize(TEXT, "casual_male", noise(ref, 10), steps=3)
    spf = ref.config.codec.samples_per_frame
    for k in (1, 4, 7):
        np.testing.assert_allclose(ref.decode(codes[:k]), audio[: k * spf], rtol=1e-5, atol=1e-6)
    assert not np.allclose(ref.decode(codes[:4])[-spf:], ref.decode(codes[1:5])[-2 * spf:-spf])


def test_audio_embedding_sums_one_row_per_codebook(ref):
    a = ref.config.audio
    codes = np.array([5] + [a.acoustic_codebook_size - 1] * a.n_acoustic_codebook)
    table = ref.checkpoint.tensor("mm_audio_embeddings.audio_codebook_embeddings.embeddings.weight")
    rows = [2 + 5] + [a.semantic_codebook_size + 2 + c * (a.acoustic_codebook_size + 2) + 2
                      + a.acoustic_codebook_size - 1 for c in range(a.n_acoustic_codebook)]
    np.testing.assert_allclose(ref.audio_embedding(codes), table[rows].sum(axis=0), rtol=1e-6)


def test_end_audio_from_the_head_stops_before_the_first_frame(tiny_checkpoint_dir):
    ref = Reference(Checkpoint(tiny_checkpoint_dir))
    name = "acoustic_transformer.semantic_codebook_output.weight"
    w = ref.w(name).copy()
    w[END_AUDIO] = 50 * ref.w("norm.weight")  # END's logit is now far above every other one
    ref._weights[name] = w
    codes, audio = ref.synthesize(TEXT, "casual_male", noise(ref, 5), steps=2)
    assert codes.shape == (0, ref.config.audio.num_codebooks) and audio.shape == (0,)


def test_end_audio_mid_utterance_drops_that_frame_and_stops(ref, monkeypatch):
    calls = []
    original = Reference.semantic_code

    def semantic_code(self, h):
        calls.append(1)
        return END_AUDIO if len(calls) == 4 else original(self, h)

    monkeypatch.setattr(Reference, "semantic_code", semantic_code)
    codes, audio = ref.synthesize(TEXT, "casual_male", noise(ref, 10), steps=2)
    assert len(calls) == 4 and codes.shape[0] == 3
    assert audio.shape == (3 * ref.config.codec.samples_per_frame,)


def test_max_frames_and_noise_rows(ref):
    codes, _ = ref.synthesize(TEXT, "casual_male", noise(ref, 8), steps=2, max_frames=5)
    assert codes.shape[0] == 5
    with pytest.raises(ValueError, match="max_frames 9 needs 9 rows of noise"):
        ref.synthesize(TEXT, "casual_male", noise(ref, 8), steps=2, max_frames=9)
