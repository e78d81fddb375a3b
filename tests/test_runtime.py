"""The runtime against the numpy reference end to end, its KV cache, and bundle verification."""

from __future__ import annotations

import shutil
import subprocess
import sys
import warnings

import numpy as np
import pytest

from voxtral_edge.errors import BundleError, VoxtralEdgeError
from voxtral_edge.export.checkpoint import Checkpoint
from voxtral_edge.export.reference import KVCache, Reference
from voxtral_edge.manifest import MANIFEST, Manifest
from voxtral_edge.runtime import Synthesizer

TEXT = "Der schnelle braune Fuchs springt über den faulen Hund."


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_codes_and_waveform_equal_the_reference(seed, tiny_checkpoint_dirs, tiny_bundle_dirs):
    ref = Reference(Checkpoint(tiny_checkpoint_dirs[seed]))
    synth = Synthesizer.open(tiny_bundle_dirs[seed])
    noise = np.random.default_rng(seed + 10).standard_normal((44, ref.config.audio.n_acoustic_codebook))
    noise = noise.astype(np.float32)
    want_codes, want_audio = ref.synthesize(TEXT, "neutral_female", noise, steps=7, cfg_alpha=1.2)
    result = synth.synthesize(TEXT, "neutral_female", noise=noise, steps=7, cfg_alpha=1.2)
    assert len(want_codes) == 44 and result.codes.dtype == np.int32
    np.testing.assert_array_equal(result.codes, want_codes)
    assert result.audio.shape == want_audio.shape
    assert np.abs(result.audio - want_audio).max() <= 1e-3
    assert result.sample_rate == 24000 and not result.finished and result.seed is None
    assert result.timings["frames"] == 44 and result.timings["total_ms"] > 0


def test_the_step_api_follows_the_reference_frame_by_frame(tiny_checkpoint_dirs, tiny_bundle_dirs):
    ref = Reference(Checkpoint(tiny_checkpoint_dirs[1]))
    synth = Synthesizer.open(tiny_bundle_dirs[1])
    layout = synth.audio_layout
    noise = np.random.default_rng(3).standard_normal((20, layout["n_acoustic_codebook"])).astype(np.float32)
    want, _ = ref.synthesize(TEXT, "casual_male", noise, steps=7, cfg_alpha=1.2)
    # each frame predicted from the reference's history is the reference's frame
    np.testing.assert_array_equal(synth.teacher_forced(TEXT, "casual_male", want, noise, steps=7), want)
    changed = want.copy()
    changed[3, 1:] = (changed[3, 1:] + 1) % layout["acoustic_codebook_size"]
    forced = synth.teacher_forced(TEXT, "casual_male", changed, noise, steps=7)
    np.testing.assert_array_equal(forced[:4], want[:4])  # frame f is predicted from the frames before it
    assert (forced[4:] != want[4:]).any()  # the changed frame was fed, not ignored
    # prefill, one backbone step and the flow head, as the reference computes them
    prompt = synth.prompt(TEXT, "casual_male")
    hidden, logits = synth.prefill(prompt, "casual_male")
    cache = KVCache()
    want_hidden = ref.backbone(ref.embed_prompt(prompt, synth.voice("casual_male")), cache)
    np.testing.assert_allclose(hidden[-1], want_hidden[-1], rtol=1e-4, atol=1e-4 * np.abs(want_hidden).max())
    assert int(np.argmax(logits)) == ref.semantic_code(want_hidden[-1])
    latent = synth.flow_latent(hidden[-1], noise[0], 7, 1.2)
    levels = layout["acoustic_codebook_size"]  # FSQ: the latent in [-1, 1] rounded to its level
    np.testing.assert_array_equal(synth.acoustic_codes(hidden[-1], noise[0], 7, 1.2),
                                  np.round((np.clip(latent, -1, 1) + 1) / 2 * (levels - 1)))
    step_hidden, _ = synth.backbone_step(want[0], len(prompt))
    frame_in = ref.audio_embedding(want[0])[None]
    np.testing.assert_allclose(step_hidden, ref.backbone(frame_in, cache)[-1], rtol=1e-4,
                               atol=1e-4 * np.abs(want_hidden).max())


def test_seeded_noise_is_reproducible(tiny_bundle_dirs):
    synth = Synthesizer.open(tiny_bundle_dirs[0])
    a = synth.synthesize("Hallo", "casual_male", seed=7, max_frames=6)
    b = synth.synthesize("Hallo", "casual_male", seed=7, max_frames=6)
    c = synth.synthesize("Hallo", "casual_male", seed=8, max_frames=6)
    np.testing.assert_array_equal(a.codes, b.codes)
    np.testing.assert_array_equal(a.audio, b.audio)
    assert not np.array_equal(a.codes, c.codes) and a.seed == 7
    # seed s is the same as passing the rows numpy's generator draws from s
    rng = np.random.default_rng(7)
    noise = np.stack([rng.standard_normal(a.codes.shape[1] - 1, dtype=np.float32) for _ in range(6)])
    np.testing.assert_array_equal(synth.synthesize("Hallo", "casual_male", noise=noise).codes, a.codes)


def test_prefill_then_steps_equals_one_long_prefill(tiny_checkpoint_dirs, tiny_bundle_dirs):
    ref = Reference(Checkpoint(tiny_checkpoint_dirs[1]))
    synth = Synthesizer.open(tiny_bundle_dirs[1])
    x = synth.prompt_embeddings(synth.prompt(TEXT, "fr_female"), "fr_female")
    whole, _ = synth.backbone(x, 0)
    parts = [synth.backbone(x[:9], 0)[0]] + [synth.backbone(x[i:i + 1], i)[0] for i in range(9, 20)]
    parts.append(synth.backbone(x[20:], 20)[0])  # a prefill chunk after steps
    np.testing.assert_allclose(np.concatenate(parts), whole, rtol=1e-4, atol=1e-4 * np.abs(whole).max())
    np.testing.assert_allclose(whole, ref.backbone(x, KVCache()), rtol=1e-4, atol=1e-4 * np.abs(whole).max())


def test_kv_cache_is_one_buffer_written_in_place(tiny_checkpoint_dirs, tiny_bundle_dirs):
    ref = Reference(Checkpoint(tiny_checkpoint_dirs[0]))
    synth = Synthesizer.open(tiny_bundle_dirs[0])
    x = synth.prompt_embeddings(synth.prompt(TEXT, "casual_male"), "casual_male")
    kv = synth.kv_cache
    pointers = [a.__array_interface__["data"][0] for a in kv]
    synth.backbone(x[:-1], 0)
    synth.backbone(x[-1:], len(x) - 1)
    # the arrays allocated once are where the steps wrote: no second cache exists
    assert [a.__array_interface__["data"][0] for a in synth.kv_cache] == pointers
    cache = KVCache()
    ref.backbone(x, cache)
    keys = kv[0][0]  # layer 0 keys [kv_heads, max_context, head_dim]
    np.testing.assert_allclose(keys[:, :len(x)], cache.keys[0].transpose(1, 0, 2), rtol=1e-4, atol=1e-4)
    assert not keys[:, len(x):].any()  # nothing beyond the last position was written


def test_end_audio_ends_the_utterance(tiny_bundle_dirs, monkeypatch):
    synth = Synthesizer.open(tiny_bundle_dirs[0])
    calls = []
    backbone_rows = Synthesizer.backbone_rows  # every backbone call of the frame loop goes through it

    def ending_backbone(self, x, positions, first_row=0):
        hidden, logits = backbone_rows(self, x, positions, first_row)
        calls.append(x.shape[1])
        if calls.count(1) == 3:  # after the prefill (one or two calls: voice prefix, text) and three steps
            logits = np.full_like(logits, -np.inf)
            logits[:, self.audio_layout["end_audio"]] = 0
        return hidden, logits

    monkeypatch.setattr(Synthesizer, "backbone_rows", ending_backbone)
    result = synth.synthesize("Fin.", "casual_male", seed=0, max_frames=20)
    assert result.finished and len(result.codes) == 3
    assert result.audio.shape == (3 * 1920,)


def test_errors_name_the_argument(tiny_bundle_dirs):
    synth = Synthesizer.open(tiny_bundle_dirs[0])
    with pytest.raises(VoxtralEdgeError, match="unknown voice 'nobody'; this bundle has: casual_male, fr_female"):
        synth.synthesize("Hi", "nobody", seed=0)
    with pytest.raises(VoxtralEdgeError, match=r"noise must be float32 \[frames, 5\], found \[3, 4\]"):
        synth.synthesize("Hi", "casual_male", noise=np.zeros((3, 4), np.float32))
    with pytest.raises(VoxtralEdgeError, match="max_frames 9 needs 9 rows of noise, found 3"):
        synth.synthesize("Hi", "casual_male", noise=np.zeros((3, 5), np.float32), max_frames=9)
    small = Synthesizer.open(tiny_bundle_dirs[0], max_context=12)
    with pytest.raises(VoxtralEdgeError, match="the prompt takes 15 positions, max_context is 12"):
        small.synthesize("Hello there", "casual_male", seed=0)  # 9 voice + 5 + 1 text token: no room


@pytest.fixture
def bundle_copy(tiny_bundle_dirs, tmp_path):
    copy = tmp_path / "bundle"
    shutil.copytree(tiny_bundle_dirs[0], copy)
    return copy


def _no_sessions(monkeypatch):
    import onnxruntime

    def refuse(*a, **k):
        raise AssertionError("a session was built for a damaged bundle")

    monkeypatch.setattr(onnxruntime, "InferenceSession", refuse)


def test_damaged_bundles_are_refused_before_any_session(bundle_copy, monkeypatch):
    _no_sessions(monkeypatch)
    data = bundle_copy / "flow_head.onnx.data"
    raw = bytearray(data.read_bytes())
    raw[len(raw) // 2] ^= 0xFF  # same size, one byte altered
    data.write_bytes(bytes(raw))
    with pytest.raises(BundleError, match=r"flow_head.onnx.data: sha256 differs from the manifest's"):
        Synthesizer.open(bundle_copy)
    data.write_bytes(bytes(raw[:-10]))
    with pytest.raises(BundleError, match=rf"flow_head.onnx.data: {len(raw) - 10} bytes, the manifest says {len(raw)}"):
        Synthesizer.open(bundle_copy, verify=False)  # sizes are checked even without hashing
    raw[len(raw) // 2] ^= 0xFF
    data.write_bytes(bytes(raw))  # repaired: now only the voice below is wrong
    (bundle_copy / "voices" / "fr_female.npy").unlink()
    with pytest.raises(BundleError, match=r"fr_female.npy: missing from the bundle"):
        Synthesizer.open(bundle_copy)


def test_altered_file_passes_without_verify_only(bundle_copy):
    voice = bundle_copy / "voices" / "casual_male.npy"
    raw = bytearray(voice.read_bytes())
    raw[-1] ^= 0x01  # the last bit of the last value: same size, different content
    voice.write_bytes(bytes(raw))
    with pytest.raises(BundleError, match="casual_male.npy: sha256 differs"):
        Manifest.load(bundle_copy)
    Manifest.load(bundle_copy, verify=False)


@pytest.mark.parametrize("edit, message", [
    (lambda m: m.update(schema_version=2), "schema version 2 was written by a newer voxtral-edge"),
    (lambda m: m.update(format="something"), "not a voxtral-edge bundle manifest"),
    (lambda m: m.pop("voices"), r"missing keys \['voices'\]"),
    (lambda m: m["files"].pop("tokenizer.json"), "'tokenizer.json' is used but not listed"),
    (lambda m: m["files"].update({"../outside": {"size": 1, "sha256": "0"}}), "points outside the bundle"),
])
def test_bad_manifests_are_refused(bundle_copy, monkeypatch, edit, message):
    import json

    _no_sessions(monkeypatch)
    manifest = json.loads((bundle_copy / MANIFEST).read_text())
    edit(manifest)
    (bundle_copy / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match=message):
        Synthesizer.open(bundle_copy)


def test_not_a_bundle(tmp_path):
    with pytest.raises(BundleError, match="not a bundle directory"):
        Synthesizer.open(tmp_path / "nowhere")
    with pytest.raises(BundleError, match="manifest.json: missing"):
        Synthesizer.open(tmp_path)


def test_the_runtime_imports_neither_exporter_nor_export_dependencies(tiny_bundle_dirs):
    code = (f"import sys; import voxtral_edge.profiles, voxtral_edge.playback, voxtral_edge.bench, voxtral_edge.render; "
            f"from voxtral_edge.runtime import Synthesizer; s = Synthesizer.open({str(tiny_bundle_dirs[0])!r}); "
            "s.synthesize('Hi', 'casual_male', seed=0, max_frames=2); "
            "import voxtral_edge.cli; "
            "bad = [m for m in sys.modules if m.startswith(('voxtral_edge.export', 'voxtral_edge.quant', 'onnx.', "
            "'safetensors', 'ml_dtypes', 'torch', 'starlette', 'uvicorn', 'httpx', 'openai', 'ray.', 'soundfile')) "
            "or m in ('onnx', 'ray')]; assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_without_guidance_the_unconditional_row_is_skipped_exactly(tiny_checkpoint_dirs, tiny_bundle_dirs):
    ref = Reference(Checkpoint(tiny_checkpoint_dirs[2]))
    noise = np.random.default_rng(3).standard_normal((12, 5)).astype(np.float32)
    want, _ = ref.synthesize(TEXT, "casual_male", noise, steps=4, cfg_alpha=1.0)  # computes both rows
    got = Synthesizer.open(tiny_bundle_dirs[2]).synthesize(TEXT, "casual_male", noise=noise, steps=4, cfg_alpha=1.0)
    np.testing.assert_array_equal(got.codes, want)


@pytest.mark.parametrize("chunk", [1, 3, 5])
def test_streaming_equals_synthesizing(tiny_bundle_dirs, chunk):
    synth = Synthesizer.open(tiny_bundle_dirs[1])
    noise = np.random.default_rng(chunk).standard_normal((17, 5)).astype(np.float32)
    whole = synth.synthesize(TEXT, "neutral_female", noise=noise)
    chunks = list(synth.stream(TEXT, "neutral_female", chunk_frames=chunk, noise=noise))
    assert [len(c) for c in chunks[:-1]] == [1920] + [chunk * 1920] * (len(chunks) - 2)  # the first is 1 frame
    np.testing.assert_allclose(np.concatenate(chunks), whole.audio, rtol=1e-4, atol=1e-4 * np.abs(whole.audio).max())
    np.testing.assert_array_equal(synth.last_result.codes, whole.codes)


@pytest.mark.parametrize("chunk, max_context", [(1, None), (3, None), (2, 64)])
def test_the_codec_on_its_own_thread_gives_the_same_audio(tiny_bundle_dirs, chunk, max_context):
    """codec_pipeline decodes chunks on a second thread while frames are computed: the same chunks, bit for bit
    (with max_context 64 the text is spoken in several pieces, each with a fresh codec state)."""
    text = TEXT if max_context is None else TEXT + " Ein zweiter Satz folgt ihm. Und ein dritter!"
    noise = np.random.default_rng(chunk).standard_normal((40, 5)).astype(np.float32)
    chunks = {}
    for pipeline in (False, True):
        synth = Synthesizer.open(tiny_bundle_dirs[1], max_context=max_context, codec_threads=1, codec_pipeline=pipeline)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pieces that run to their guard
            chunks[pipeline] = list(synth.stream(text, "neutral_female", chunk_frames=chunk, noise=noise))
        assert synth.sessions["codec_decoder"].get_session_options().intra_op_num_threads == 1
    assert len(chunks[True]) == len(chunks[False]) > 3
    for a, b in zip(chunks[True], chunks[False]):
        np.testing.assert_array_equal(a, b)
    stream = synth.stream(text, "neutral_female", chunk_frames=2, noise=noise)
    heard = [next(stream), next(stream)]
    stream.close()  # with chunks still on the codec thread: what was heard is the result
    assert len(synth.last_result.audio) == sum(map(len, heard)) and len(synth.last_result.codes) == 3


def test_without_the_memory_arena_the_audio_is_the_same(tiny_bundle_dirs):
    """memory_arena=False (the service's sessions) reaches every session, and the codes and waveform equal
    those of the default sessions, which keep onnxruntime's arena, bit for bit."""
    noise = np.random.default_rng(5).standard_normal((30, 5)).astype(np.float32)
    results = {}
    for arena in (True, False):
        synth = Synthesizer.open(tiny_bundle_dirs[2], memory_arena=arena)
        assert {g: s.get_session_options().enable_cpu_mem_arena for g, s in synth.sessions.items()} == \
            dict.fromkeys(synth.sessions, arena)
        results[arena] = synth.synthesize(TEXT, "neutral_female", noise=noise, max_frames=30)
    assert len(results[False].codes) > 3
    np.testing.assert_array_equal(results[False].codes, results[True].codes)
    np.testing.assert_array_equal(results[False].audio, results[True].audio)


def test_a_stream_stopped_early_keeps_what_was_heard(tiny_bundle_dirs):
    synth = Synthesizer.open(tiny_bundle_dirs[0])
    stream = synth.stream(TEXT, "casual_male", chunk_frames=2, first_chunk_frames=2, seed=3, max_frames=30)
    heard = [next(stream), next(stream)]
    stream.close()
    assert len(synth.last_result.codes) == 4 and len(synth.last_result.audio) == sum(map(len, heard))
    assert len(synth.synthesize("Weiter.", "casual_male", seed=0, max_frames=2).codes) == 2  # the lock was released


def test_the_voice_prefix_is_computed_once_and_reused(tiny_bundle_dirs, monkeypatch):
    synth = Synthesizer.open(tiny_bundle_dirs[2])
    noise = np.random.default_rng(5).standard_normal((9, 5)).astype(np.float32)
    first = synth.synthesize(TEXT, "fr_female", noise=noise)  # computes and keeps the prefix
    lengths = []
    backbone_rows = Synthesizer.backbone_rows
    monkeypatch.setattr(Synthesizer, "backbone_rows", lambda self, x, p, row=0: (
        lengths.append((x.shape[1], p[0])), backbone_rows(self, x, p, row))[1])
    second = synth.synthesize(TEXT, "fr_female", noise=noise)
    np.testing.assert_array_equal(second.codes, first.codes)
    np.testing.assert_allclose(second.audio, first.audio, atol=1e-5)
    prefix = synth.voices["fr_female"] + 3  # [BOS] [BEGIN_AUDIO] [AUDIO] x N [NEXT_AUDIO_TEXT]
    assert lengths[0][1] == prefix  # the prefill started after the cached prefix
    for voice in ("casual_male", "neutral_female", "fr_female", "casual_male", "neutral_female"):
        synth.synthesize("Oi", voice, seed=0, max_frames=1)
    assert synth.cached_voices == ("fr_female", "casual_male", "neutral_female")


def test_long_text_is_spoken_piece_by_piece(tiny_bundle_dirs):
    synth = Synthesizer.open(tiny_bundle_dirs[0], max_context=64)
    text = ("The first sentence is here. A second one follows it closely! Does a third need asking? "
            "Yes, and a fourth.")
    pieces = synth.pieces(text, "casual_male")
    assert len(pieces) > 1 and " ".join(pieces).split() == text.split()
    assert synth.spoken_text(text, "casual_male") == text  # nothing to normalize: the pieces are what is spoken
    noise = np.random.default_rng(0).standard_normal((60, 5)).astype(np.float32)
    with pytest.warns(UserWarning, match="did not end after .* no END_AUDIO"):
        result = synth.synthesize(text, "casual_male", noise=noise, max_frames=60)
    # the same as speaking each piece alone, the noise rows taken in turn
    done, codes, audio = 0, [], []
    for piece in pieces:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # each piece runs to its guard, as in the whole text
            part = synth.synthesize(piece, "casual_male", noise=noise[done:], max_frames=60 - done, normalize=False)
        codes.append(part.codes)
        audio.append(part.audio)
        done += len(part.codes)
        if done >= 60:
            break
    np.testing.assert_array_equal(result.codes, np.concatenate(codes)[:60])
    np.testing.assert_allclose(result.audio, np.concatenate(audio)[:len(result.audio)], atol=1e-5)
    assert not result.finished


@pytest.mark.filterwarnings("ignore::voxtral_edge.runtime.RunawayWarning")
def test_utterances_taking_turns_sound_as_they_would_alone(tiny_bundle_dirs):
    """Two utterances stepped in turns (each one's KV rows set aside while the other has the cache) give,
    bit for bit, the chunks each gives streamed alone; one of them spans several pieces."""
    synth = Synthesizer.open(tiny_bundle_dirs[0], max_context=64)
    long_text = "The first sentence is here. A second one follows it closely! Does a third need asking?"
    requests = [(long_text, "casual_male", 3, 70), ("Kurz.", "fr_female", 4, 9)]
    alone = [list(synth.stream(t, v, seed=s, max_frames=n)) for t, v, s, n in requests]
    assert len(synth.pieces(long_text, "casual_male")) > 1
    utterances = [synth.start(t, v, seed=s, max_frames=n) for t, v, s, n in requests]
    chunks, set_aside = [[], []], 0
    turns = [0] * 5 + [1] * 3 + [0] * 20 + [1] * 2 + [0, 1] * 100
    for who in turns:
        u, other = utterances[who], utterances[1 - who]
        chunk = synth.step(u)
        set_aside += other.kv is not None
        if len(chunk):
            chunks[who].append(chunk)
    assert all(u.done for u in utterances) and set_aside > 0
    for made, want in zip(chunks, alone):
        assert [len(c) for c in made] == [len(c) for c in want]
        np.testing.assert_array_equal(np.concatenate(made), np.concatenate(want))
    assert synth.close(utterances[0]).timings["frames"] == 70  # two pieces: 40 (the runaway guard) + 30
