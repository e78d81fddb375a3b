"""The model pinned to the official implementation, not only to our own reference.

`data/golden/official-tiny/golden.npz` holds what vLLM-Omni's own voxtral_tts torch modules computed
(float32, CPU) on a tiny checkpoint: codec audio for given codes, flow velocities, a frame's acoustic
codes from given noise, semantic logits and codes for given hidden states, summed audio embeddings.
The numpy reference, every graph and the runtime must give the same figures. This pins what the
reference, the graphs and the runtime each write down for themselves and could get wrong the same way:
the CFG mix, the FSQ rounding and its inverse, the codec's window, the SwiGLU gate order, the flow
head's token layout, the codec's input mapping, the semantic mask.

The checkpoint is not committed: it is regenerated with make_checkpoint and checked, file by file,
against the sha256 of the checkpoint the official code was run on.
"""

from __future__ import annotations

import hashlib
import inspect
import json
from pathlib import Path

import numpy as np
import onnx
import onnx.utils
import onnxruntime as ort
import pytest

from voxtral_edge.export.bundle import export_bundle
from voxtral_edge.export.checkpoint import Checkpoint
from voxtral_edge.export.config import N_AUDIO_SPECIALS
from voxtral_edge.export.graphs import build_flow_velocity
from voxtral_edge.export.make_checkpoint import make_checkpoint
from voxtral_edge.export.reference import Reference
from voxtral_edge.runtime import CodecStream, Synthesizer

GOLDEN = Path(__file__).parent / "data" / "golden" / "official-tiny"
RECORD = json.loads((GOLDEN / "checkpoint.sha256.json").read_text())
CODEC_TOLERANCE = 1e-5  # of the signal's peak
VELOCITY_TOLERANCE = 1e-5  # absolute
LOGIT_TOLERANCE = 1e-5  # of the largest finite logit


def file_hashes(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="session")
def official_checkpoint_dir(tmp_path_factory):
    """The official fixture's checkpoint, regenerated; refuses to serve one that differs by a bit."""
    params = json.loads((GOLDEN / RECORD["params"]).read_text())
    ck = make_checkpoint(tmp_path_factory.mktemp("official") / "checkpoint", params=params, seed=RECORD["seed"],
                         progress=False)
    assert file_hashes(ck) == RECORD["sha256"], "make_checkpoint no longer writes the official fixture's checkpoint"
    return ck


@pytest.fixture(scope="session")
def golden():
    with np.load(GOLDEN / "golden.npz", allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    arrays["meta"] = json.loads(str(arrays["meta"]))
    return arrays


@pytest.fixture(scope="session")
def reference(official_checkpoint_dir):
    return Reference(Checkpoint(official_checkpoint_dir))


@pytest.fixture(scope="session")
def official_bundle(official_checkpoint_dir, tmp_path_factory):
    return export_bundle(official_checkpoint_dir, tmp_path_factory.mktemp("official-bundle") / "fp32",
                         max_context=32, progress=False)


@pytest.fixture(scope="session")
def synth(official_bundle):
    return Synthesizer.open(official_bundle)


def assert_codec_audio(got, want):
    assert got.shape == want.shape
    peak = np.abs(want).max()
    assert np.abs(got - want).max() <= CODEC_TOLERANCE * peak, (np.abs(got - want).max(), peak)


def assert_velocity(got, want):
    assert got.shape == want.shape
    assert np.abs(got - want).max() <= VELOCITY_TOLERANCE, np.abs(got - want).max()


def assert_semantic_logits(got, want):
    """Same -inf entries (the mask) and the finite logits within tolerance."""
    assert got.shape == want.shape
    np.testing.assert_array_equal(np.isneginf(got), np.isneginf(want))
    finite = np.isfinite(want)
    assert np.isfinite(got[finite]).all()
    scale = np.abs(want[finite]).max()
    assert np.abs(got[finite] - want[finite]).max() <= LOGIT_TOLERANCE * scale


def test_make_checkpoint_reproduces_the_official_inputs_bit_for_bit(official_checkpoint_dir):
    assert file_hashes(official_checkpoint_dir) == RECORD["sha256"]
    assert len(RECORD["sha256"]) == 6  # params, weights, tekken and the three voices


def test_default_steps_and_cfg_are_the_officials(reference, synth, golden):
    meta = golden["meta"]
    assert reference.config.flow_head.n_decoding_steps == meta["steps"]
    assert synth.manifest["model"]["flow_head"]["n_decoding_steps"] == meta["steps"]
    for fn in (Synthesizer.synthesize, Synthesizer.stream, Reference.synthesize):
        assert inspect.signature(fn).parameters["cfg_alpha"].default == meta["cfg_alpha"]


# -- the numpy reference against the official code --------------------------------------------------------
def test_reference_codec_decode_matches_official(reference, golden):
    assert_codec_audio(reference.decode(golden["codec_codes"]), golden["codec_audio"])


def test_reference_flow_velocity_matches_official_cond_and_uncond(reference, golden):
    x, h = golden["vel_x"], golden["vel_h"]
    cond = np.stack([reference.velocity(x, float(t), h) for t in golden["vel_t"]])
    uncond = np.stack([reference.velocity(x, float(t), np.zeros_like(h)) for t in golden["vel_t"]])
    assert_velocity(cond, golden["vel_cond"])
    assert_velocity(uncond, golden["vel_uncond"])


def test_reference_acoustic_codes_match_official_euler_cfg_and_fsq(reference, golden):
    meta = golden["meta"]
    codes = np.stack([reference.acoustic_codes(h, noise, meta["steps"], meta["cfg_alpha"])
                      for h, noise in zip(golden["flow_h"], golden["flow_noise"])])
    np.testing.assert_array_equal(codes, golden["flow_codes"])


def test_reference_semantic_logits_mask_and_code_match_official(reference, golden):
    logits = reference.semantic_logits(golden["sem_hidden"].copy())
    assert_semantic_logits(logits, golden["sem_logits"])
    codes = [reference.semantic_code(h) - N_AUDIO_SPECIALS for h in golden["sem_hidden"]]  # golden: no specials
    np.testing.assert_array_equal(codes, golden["sem_code"])


def test_reference_audio_embedding_sum_matches_official_exactly(reference, golden):
    sums = np.stack([reference.audio_embedding(codes) for codes in golden["emb_codes"]])
    np.testing.assert_array_equal(sums, golden["emb_sum"])


# -- the exported graphs and the runtime against the official code ---------------------------------------
def test_codec_decoder_graph_matches_official_whole_and_streamed(synth, golden):
    codes = golden["codec_codes"]
    assert_codec_audio(synth.decode(codes), golden["codec_audio"])
    stream, parts, start = CodecStream(synth), [], 0
    for size in (1, 3, 7, 16, 21):  # chunks that carry conv tails and attention caches across calls
        parts.append(stream.decode(codes[start:start + size]))
        start += size
    assert start == len(codes)
    assert_codec_audio(np.concatenate(parts), golden["codec_audio"])


def test_flow_velocity_graph_matches_official_cond_and_uncond(reference, golden, tmp_path):
    """The flow head's layers as one evaluation (build_flow_velocity: the bundle's flow_head runs them for
    a whole frame, checked by the acoustic-codes test below)."""
    path = tmp_path / "flow_velocity.onnx"
    build_flow_velocity(reference.config, reference.checkpoint.tensor, path)
    flow = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x, h = golden["vel_x"], golden["vel_h"]

    def velocity(t, h):
        return flow.run(["velocity"], {"x": x, "t": np.array([t], np.float32), "h": h})[0]

    assert_velocity(np.stack([velocity(t, h) for t in golden["vel_t"]]), golden["vel_cond"])
    assert_velocity(np.stack([velocity(t, np.zeros_like(h)) for t in golden["vel_t"]]), golden["vel_uncond"])


def test_runtime_acoustic_codes_match_official_euler_cfg_and_fsq(synth, golden):
    """The bundle's flow_head graph: every Euler step, the guidance and the FSQ rounding in one call."""
    meta = golden["meta"]
    codes = np.stack([synth.acoustic_codes(h, noise, meta["steps"], meta["cfg_alpha"])
                      for h, noise in zip(golden["flow_h"], golden["flow_noise"])])
    np.testing.assert_array_equal(codes, golden["flow_codes"])


def test_backbone_graph_semantic_head_matches_official(official_bundle, synth, golden):
    """The backbone graph's own semantic head (its last-position logits, mask added), cut out of the
    exported graph so that it can be fed the official hidden states."""
    model = onnx.load(str(official_bundle / "backbone_step.onnx"))
    head = onnx.utils.Extractor(model).extract_model(["inputs_embeds", "hidden_states"], ["semantic_logits"])
    session = ort.InferenceSession(head.SerializeToString(), providers=["CPUExecutionProvider"])
    dim = golden["sem_hidden"].shape[1]
    logits = np.concatenate([  # inputs_embeds only gives the length: the head reads position T - 1
        session.run(None, {"inputs_embeds": np.zeros((1, 1, dim), np.float32), "hidden_states": h[None, None]})[0]
        for h in golden["sem_hidden"]])
    assert_semantic_logits(logits, golden["sem_logits"])
    codes = np.argmax(logits, axis=-1) - synth.audio_layout["n_specials"]  # as the runtime reads a frame's code
    np.testing.assert_array_equal(codes, golden["sem_code"])


def test_runtime_audio_embedding_sum_matches_official_exactly(synth, golden):
    sums = np.stack([synth.audio_embedding(codes) for codes in golden["emb_codes"]])
    np.testing.assert_array_equal(sums, golden["emb_sum"])
