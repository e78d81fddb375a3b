"""Every bad input gets a clear one-line error, the right exit code, and leaves no output file;
hostile bundles are refused before onnxruntime opens anything; one Synthesizer is safe across threads."""

from __future__ import annotations

import io
import json
import shutil
import sys
import threading

import numpy as np
import onnx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from voxtral_edge.cli import main
from voxtral_edge.errors import BundleError, UsageError
from voxtral_edge.manifest import MANIFEST, file_entry
from voxtral_edge.prompt import SpeechSpecialIds
from voxtral_edge.runtime import Synthesizer

GOOD = ["--voice", "casual_male", "--seed", "0", "--max-frames", "2"]


@pytest.fixture
def env(tiny_bundle_dirs, tiny_checkpoint_dir, tmp_path):
    """Paths the cases below refer to by name."""
    (tmp_path / "out").mkdir()
    (tmp_path / "a-file.txt").write_text("not a folder")
    (tmp_path / "empty-dir").mkdir()
    np.save(tmp_path / "noise-wrong.npy", np.zeros((4, 7), np.float32))
    np.save(tmp_path / "noise-short.npy", np.zeros((1, 5), np.float32))
    np.save(tmp_path / "noise-object.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    damaged = tmp_path / "damaged"
    shutil.copytree(tiny_bundle_dirs[0], damaged)
    raw = bytearray((damaged / "tokenizer.json").read_bytes())
    raw[100] ^= 1
    (damaged / "tokenizer.json").write_bytes(bytes(raw))
    return {"bundle": str(tiny_bundle_dirs[0]), "ckpt": str(tiny_checkpoint_dir), "tmp": tmp_path,
            "out": str(tmp_path / "out" / "x.wav"), "dir": str(tmp_path / "out"),
            "file": str(tmp_path / "a-file.txt"), "empty": str(tmp_path / "empty-dir"), "damaged": str(damaged)}


def say(text, *extra, out="{out}"):
    return ["say", text, "--bundle", "{bundle}", "-o", out, *extra]


# (argv with {placeholders}, stdin bytes or None, exit code, message regex)
CLI_CASES = [
    (say("", *GOOD), None, 2, "text is empty"),
    (say("   \n\t ", *GOOD), None, 2, "text is empty"),
    (say("-", *GOOD), b"", 2, "text is empty"),
    (say("-", *GOOD), b"\xff\xfe bad", 2, "not valid UTF-8 at byte 0"),
    (say("-", *GOOD), b"caf\xc3", 2, "not valid UTF-8 at byte 3"),
    (say("bell \x07 here", *GOOD), None, 2, "control character U\\+0007 at position 5"),
    (say("-", *GOOD), b"nul \x00 here", 2, "control character U\\+0000"),
    (say("colour \x1b[31mred", *GOOD), None, 2, "control character U\\+001B"),
    (say("Hi", "--voice", "nobody"), None, 2, "unknown voice 'nobody'; this bundle has: casual_male"),
    (say("Hi", *GOOD, "--steps", "0"), None, 2, "--steps: must be from 1 to 64, found 0"),
    (say("Hi", *GOOD, "--steps", "65"), None, 2, "--steps: must be from 1 to 64"),
    (say("Hi", *GOOD, "--steps", "two"), None, 2, "--steps: expected an integer, found 'two'"),
    (say("Hi", *GOOD, "--cfg", "-1"), None, 2, "--cfg: must be from 0 to 10"),
    (say("Hi", *GOOD, "--cfg", "nan"), None, 2, "--cfg: expected a finite number"),
    (say("Hi", *GOOD, "--cfg", "11"), None, 2, "--cfg: must be from 0 to 10"),
    (say("Hi", *GOOD, "--max-frames", "0"), None, 2, "--max-frames: must be > 0"),
    (say("Hi", *GOOD, "--max-frames", "-3"), None, 2, "--max-frames: must be > 0"),
    (say("Hi", *GOOD, "--seed", "-1"), None, 2, "--seed: must be from 0 to"),
    (say("Hi", *GOOD, "--seed", str(2**63)), None, 2, "--seed: must be from 0 to"),
    (say("Hi", *GOOD, "--seed", "1.5"), None, 2, "--seed: expected an integer"),
    (say("Hi", *GOOD, "--threads", "0"), None, 2, "--threads: must be from 1 to 256"),
    (say("Hi", *GOOD, "--chunk-frames", "0"), None, 2, "--chunk-frames: must be > 0"),
    (say("Hi", *GOOD, out="{dir}"), None, 2, "is a directory; give a file name"),
    (say("Hi", *GOOD, out="{tmp}/missing/x.wav"), None, 1, "x.wav: cannot write"),
    (say("Hi", *GOOD, out="{file}/x.wav"), None, 1, "x.wav: cannot write"),
    (["say", "Hi", "--bundle", "{tmp}/nowhere", "-o", "{out}", *GOOD], None, 2, "nowhere: not a bundle directory"),
    (["say", "Hi", "--bundle", "{file}", "-o", "{out}", *GOOD], None, 2, "not a bundle directory"),
    (["say", "Hi", "--bundle", "{empty}", "-o", "{out}", *GOOD], None, 2, "manifest.json: missing"),
    (["say", "Hi", "--bundle", "{damaged}", "-o", "{out}", *GOOD], None, 1, "tokenizer.json: sha256 differs"),
    (say("Hi", *GOOD, "--noise", "{tmp}/none.npy"), None, 1, "none.npy: cannot read a .npy array"),
    (say("Hi", "--voice", "casual_male", "--noise", "{tmp}/noise-wrong.npy"), None, 2,
     r"noise must be float32 \[frames, 5\], found \[4, 7\]"),
    (say("Hi", "--voice", "casual_male", "--noise", "{tmp}/noise-short.npy", "--max-frames", "3"), None, 2,
     "max_frames 3 needs 3 rows of noise, found 1"),
    (say("Hi", *GOOD, "--noise", "{tmp}/noise-object.npy"), None, 1, "noise-object.npy: cannot read a .npy array"),
    (["say", "Hi", "--bundle", "{bundle}", *GOOD], None, 2, "give -o FILE"),
    (say("Hi", *GOOD, "--bogus"), None, 2, "unrecognized arguments: --bogus"),
    (say("Hi", *GOOD, "--profile", "toaster"), None, 2, "unknown device profile 'toaster'"),
    (["voices", "--bundle", "{tmp}/nowhere"], None, 2, "not a bundle directory"),
    (["bench", "--bundle", "{tmp}/nowhere"], None, 2, "not a bundle directory"),
    (["export", "--checkpoint", "{tmp}/nowhere", "--out", "{tmp}/b"], None, 1, "nowhere: not a directory"),
    (["export", "--checkpoint", "{ckpt}", "--out", "{tmp}/b", "--max-context", "0"], None, 2, "must be > 0"),
    (["export", "--checkpoint", "{ckpt}", "--out", "{tmp}/b", "--plan", "int3"], None, 2,
     "--plan int3: neither a named plan"),
    (["quantize", "{bundle}", "--plan", "int9", "--out", "{tmp}/q"], None, 2, "neither a named plan"),
    (["prompt", "--checkpoint", "{ckpt}", "--voice", "nobody", "Hi"], None, 2, "unknown voice 'nobody'"),
    (["tokens", "--tokenizer", "{tmp}/none.json", "Hi"], None, 1, "none.json: cannot read"),
    (["make-checkpoint", "--size", "huge", "--out", "{tmp}/c"], None, 2, "invalid choice: 'huge'"),
]


@pytest.mark.parametrize("argv, stdin, code, message", CLI_CASES,
                         ids=[f"{i:02d}-{c[3][:30]}" for i, c in enumerate(CLI_CASES)])
def test_bad_cli_input(argv, stdin, code, message, env, capsys, monkeypatch):
    argv = [a.format(**env) for a in argv]
    before = sorted(p.relative_to(env["tmp"]) for p in env["tmp"].rglob("*"))
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(stdin if stdin is not None else b"")))
    try:
        got = main(argv)
    except SystemExit as e:  # argparse's usage errors
        got = e.code
    err = capsys.readouterr().err
    assert got == code, err
    assert __import__("re").search(message, err), err
    assert "Traceback" not in err and err.count("error:") == 1  # one error line (after argparse's usage, if any)
    assert __import__("re").search(message, err.strip().splitlines()[-1]), err
    assert sorted(p.relative_to(env["tmp"]) for p in env["tmp"].rglob("*")) == before  # nothing left behind


API_CASES = [
    (dict(text=""), "text is empty"),
    (dict(text=None), "text must be a str, found NoneType"),
    (dict(text="tab\tand\nnewline are fine \x7f but DEL is not"), "control character U\\+007F"),
    (dict(voice="nobody"), "unknown voice 'nobody'"),
    (dict(steps=0), "steps must be an integer from 1 to 64, found 0"),
    (dict(steps=2.5), "steps must be an integer from 1 to 64, found 2.5"),
    (dict(steps=True), "steps must be an integer"),
    (dict(cfg_alpha=float("nan")), "cfg_alpha must be a number from 0 to 10, found nan"),
    (dict(cfg_alpha=-0.5), "cfg_alpha must be a number from 0 to 10"),
    (dict(cfg_alpha="1.2"), "cfg_alpha must be a number"),
    (dict(max_frames=0), "max_frames must be an integer >= 1, found 0"),
    (dict(seed=-1), "seed must be an integer from 0 to"),
    (dict(seed=1.5), "seed must be an integer"),
    (dict(noise=np.zeros((3, 4), np.float32)), r"noise must be float32 \[frames, 5\]"),
    (dict(noise=np.zeros(5, np.float32)), r"noise must be float32 \[frames, 5\], found \[5\]"),
]


@pytest.mark.parametrize("kwargs, message", API_CASES, ids=[c[1][:30] for c in API_CASES])
def test_bad_api_input(kwargs, message, tiny_bundle_dirs):
    synth = Synthesizer.open(tiny_bundle_dirs[0])
    call = {"text": "Hello", "voice": "casual_male", "seed": 0, "max_frames": 2, **kwargs}
    text, voice = call.pop("text"), call.pop("voice")
    with pytest.raises(UsageError, match=message):
        synth.synthesize(text, voice, **call)
    with pytest.raises(UsageError, match=message):
        list(synth.stream(text, voice, **call))
    assert len(synth.synthesize("Hello", "casual_male", seed=0, max_frames=1).codes) == 1  # still usable


def _rewrite_location(bundle, graph: str, location: str) -> None:
    """A hostile bundle: point a graph's first external tensor elsewhere and re-sign the manifest."""
    path = bundle / f"{graph}.onnx"
    model = onnx.load(str(path), load_external_data=False)
    tensor = next(t for t in model.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL)
    for entry in tensor.external_data:
        if entry.key == "location":
            entry.value = location
    path.write_bytes(model.SerializeToString())
    manifest = json.loads((bundle / MANIFEST).read_text())
    manifest["files"][path.name] = file_entry(path)
    (bundle / MANIFEST).write_text(json.dumps(manifest))


@pytest.mark.parametrize("location", ["../../outside.data", "/etc/passwd", "voices/casual_male.npy"])
def test_graphs_reading_data_outside_their_file_are_refused(tiny_bundle_dirs, tmp_path, monkeypatch, location):
    import onnxruntime

    bundle = tmp_path / "hostile"
    shutil.copytree(tiny_bundle_dirs[0], bundle)
    _rewrite_location(bundle, "flow_head", location)
    monkeypatch.setattr(onnxruntime, "InferenceSession", lambda *a, **k: pytest.fail("a session was built"))
    with pytest.raises(BundleError, match=rf"flow_head.onnx: tensor data is read from \['{location}'\], but the only "
                                          r"data file this graph may use is \['flow_head.onnx.data'\]"):
        Synthesizer.open(bundle)


def test_a_garbage_graph_file_is_refused(tiny_bundle_dirs, tmp_path):
    bundle = tmp_path / "garbage"
    shutil.copytree(tiny_bundle_dirs[0], bundle)
    (bundle / "codec_decoder.onnx").write_bytes(b"\x0a\xff\xff\xff\xff\x0f not protobuf")
    manifest = json.loads((bundle / MANIFEST).read_text())
    manifest["files"]["codec_decoder.onnx"] = file_entry(bundle / "codec_decoder.onnx")
    (bundle / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="codec_decoder.onnx: not a valid ONNX file"):
        Synthesizer.open(bundle)


def test_nan_weights_are_reported_not_fatal(tiny_checkpoint_dir, tmp_path):
    from safetensors.numpy import load_file, save_file

    from voxtral_edge.export.bundle import export_bundle

    ck = tmp_path / "ck"
    shutil.copytree(tiny_checkpoint_dir, ck)
    tensors = load_file(str(ck / "consolidated.safetensors"))
    tensors["layers.1.ffn_norm.weight"][3] = np.nan
    save_file(tensors, str(ck / "consolidated.safetensors"))
    with pytest.warns(UserWarning, match=r"1 NaN or infinite values in 1 tensors: layers.1.ffn_norm.weight \(1\)"):
        export_bundle(ck, tmp_path / "b", progress=False)


def test_one_synthesizer_serves_several_threads(tiny_bundle_dirs):
    synth = Synthesizer.open(tiny_bundle_dirs[1])
    want = {seed: synth.synthesize("Uma frase.", "fr_female", seed=seed, max_frames=6).codes for seed in range(4)}
    got, errors = {}, []

    def speak(seed):
        try:
            got[seed] = synth.synthesize("Uma frase.", "fr_female", seed=seed, max_frames=6).codes
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=speak, args=(s,)) for s in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and all(np.array_equal(got[s], want[s]) for s in want)


def test_the_same_seed_gives_the_same_audio_across_runs_and_thread_counts(tiny_bundle_dirs):
    results = [Synthesizer.open(tiny_bundle_dirs[2], threads=t).synthesize("Olá a todos.", "casual_male", seed=9,
                                                                           max_frames=8) for t in (1, 1, 2)]
    np.testing.assert_array_equal(results[0].audio, results[1].audio)  # bit-identical run to run
    np.testing.assert_array_equal(results[0].codes, results[2].codes)
    np.testing.assert_array_equal(results[0].audio, results[2].audio)  # and across thread counts, here


@settings(max_examples=150, deadline=None)
@given(st.text(min_size=1, max_size=300))
def test_any_text_is_refused_cleanly_or_becomes_valid_prompts(text):
    synth = _fuzz_synth()
    ids = SpeechSpecialIds.from_dict(synth.manifest["special_ids"])
    try:
        pieces = synth.pieces(text, "casual_male")
        from voxtral_edge.runtime import check_request

        check_request(text, 7, 1.2, None, None)
    except UsageError:
        return
    assert pieces and "".join("".join(p.split()) for p in pieces) == "".join(text.split())
    for piece in pieces:
        prompt = synth.prompt(piece, "casual_male")
        assert prompt[:2] == [ids.bos, ids.begin_audio] and prompt[-2:] == [ids.repeat_audio_text, ids.begin_audio]
        assert len(prompt) <= synth.max_context


_FUZZ = {}


def _fuzz_synth():
    if "synth" not in _FUZZ:
        from voxtral_edge.export.bundle import export_bundle
        from voxtral_edge.export.make_checkpoint import make_checkpoint
        import tempfile

        root = __import__("pathlib").Path(tempfile.mkdtemp())
        make_checkpoint(root / "ck", size="tiny", seed=5, progress=False)
        export_bundle(root / "ck", root / "b", max_context=96, progress=False)
        _FUZZ["synth"] = Synthesizer.open(root / "b")
    return _FUZZ["synth"]
