"""The command line as a user meets it: output, exit codes, one-line errors."""

from __future__ import annotations

import copy
import io
import json
import sys

import pytest

from voxtral_edge.cli import main
from voxtral_edge.export.checkpoint import Checkpoint
from voxtral_edge.export.make_checkpoint import TINY_PARAMS
from voxtral_edge.prompt import tekken_speech_prompt
from voxtral_edge.tekken import Tekken


def run(capsys, *argv, stdin: bytes | None = None, monkeypatch=None):
    if stdin is not None:
        monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(stdin)))
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_tokens_and_prompt_print_the_library_ids(capsys, monkeypatch, tiny_checkpoint_dir):
    tekken = Tekken.from_file(tiny_checkpoint_dir / "tekken.json")
    code, out, _ = run(capsys, "tokens", "--tokenizer", str(tiny_checkpoint_dir / "tekken.json"), "Olá, tudo bem?")
    assert code == 0 and json.loads(out) == tekken.encode("Olá, tudo bem?")
    code, out, _ = run(capsys, "prompt", "--checkpoint", str(tiny_checkpoint_dir), "--voice", "fr_female", "Salut !")
    assert code == 0 and json.loads(out) == tekken_speech_prompt(tekken, "Salut !", "fr_female")
    code, out, _ = run(capsys, "tokens", "--tokenizer", str(tiny_checkpoint_dir / "tekken.json"), "-",
                       stdin="Guten Tag\n".encode(), monkeypatch=monkeypatch)
    assert code == 0 and json.loads(out) == tekken.encode("Guten Tag")


def test_errors_are_one_line_with_exit_codes(capsys, monkeypatch, tiny_checkpoint_dir, tmp_path):
    code, out, err = run(capsys, "prompt", "--checkpoint", str(tiny_checkpoint_dir), "--voice", "nobody", "Hi")
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and "unknown voice 'nobody'" in err and "casual_male" in err
    code, _, err = run(capsys, "tokens", "--tokenizer", str(tmp_path / "missing.json"), "Hi")
    assert code == 1 and "missing.json" in err and "Traceback" not in err
    code, _, err = run(capsys, "tokens", "--tokenizer", str(tiny_checkpoint_dir / "tekken.json"), "-",
                       stdin=b"\xff\xfe bad", monkeypatch=monkeypatch)
    assert code == 2 and "standard input: not valid UTF-8 at byte 0" in err
    with pytest.raises(SystemExit) as e:
        main(["tokens"])
    assert e.value.code == 2


def test_make_checkpoint_refuses_to_overwrite_and_takes_a_params_file(capsys, tmp_path):
    code, out, _ = run(capsys, "make-checkpoint", "--size", "tiny", "--seed", "3", "--out", str(tmp_path / "a"))
    assert code == 0 and "random weights" in out
    before = (tmp_path / "a" / "consolidated.safetensors").read_bytes()
    code, _, err = run(capsys, "make-checkpoint", "--size", "tiny", "--out", str(tmp_path / "a"))
    assert code == 1 and "exists and is not empty (pass --force" in err
    assert (tmp_path / "a" / "consolidated.safetensors").read_bytes() == before

    params = copy.deepcopy(TINY_PARAMS)
    params.update(n_layers=2, hidden_dim=100)
    params["multimodal"]["audio_model_args"]["acoustic_transformer_args"]["n_layers"] = 1
    (tmp_path / "params.json").write_text(json.dumps(params))
    code, _, _ = run(capsys, "make-checkpoint", "--config", str(tmp_path / "params.json"), "--out", str(tmp_path / "b"))
    assert code == 0
    ck = Checkpoint(tmp_path / "b")
    assert ck.weights.shape("layers.1.feed_forward.w1.weight") == (100, 48)
    assert "layers.2.attention.wq.weight" not in ck.weights.names()
    assert not any(p.name.endswith(".partial") for p in tmp_path.iterdir())


def test_make_checkpoint_with_a_bad_params_file_leaves_nothing(capsys, tmp_path):
    params = copy.deepcopy(TINY_PARAMS)
    del params["multimodal"]["audio_model_args"]["n_acoustic_codebook"]
    (tmp_path / "params.json").write_text(json.dumps(params))
    code, _, err = run(capsys, "make-checkpoint", "--config", str(tmp_path / "params.json"), "--out", str(tmp_path / "c"))
    assert code == 1 and f"{tmp_path / 'params.json'}: missing key 'multimodal.audio_model_args.n_acoustic_codebook'" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.json"]


def test_say_writes_a_wav_and_raw_pcm(capsys, monkeypatch, tiny_bundle_dirs, tmp_path):
    import wave

    import numpy as np

    from voxtral_edge.runtime import Synthesizer

    bundle = str(tiny_bundle_dirs[0])
    out, codes = tmp_path / "x.wav", tmp_path / "codes.npy"
    code, _, err = run(capsys, "say", "Bom dia!", "--bundle", bundle, "--voice", "casual_male", "-o", str(out),
                       "--seed", "5", "--max-frames", "7", "--dump-codes", str(codes))
    assert code == 0 and "7 frames" in err and "seed 5" in err
    with wave.open(str(out)) as w:
        assert (w.getnchannels(), w.getsampwidth(), w.getframerate(), w.getnframes()) == (1, 2, 24000, 7 * 1920)
        pcm = np.frombuffer(w.readframes(w.getnframes()), "<i2")
    saved = np.load(codes)
    assert saved.dtype == np.int32 and saved.shape == (7, 6)
    result = Synthesizer.open(bundle).synthesize("Bom dia!", "casual_male", seed=5, max_frames=7)
    np.testing.assert_array_equal(saved, result.codes)
    # streamed in chunks of 4 frames: equal to the whole decode within float rounding, so within 1 LSB
    expected = np.round(np.clip(result.audio, -1, 1) * 32767).astype(np.int32)
    assert np.abs(pcm.astype(np.int32) - expected).max() <= 1

    noise = tmp_path / "noise.npy"
    np.save(noise, np.random.default_rng(0).standard_normal((4, 5)).astype(np.float32))
    stdout = io.BytesIO()
    monkeypatch.setattr(sys, "stdout", io.TextIOWrapper(stdout))
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO("Boa noite.\n".encode())))
    assert main(["say", "-", "--bundle", bundle, "--voice", "fr_female", "-o", "-", "--noise", str(noise)]) == 0
    assert len(stdout.getvalue()) == 4 * 1920 * 2  # raw 16-bit samples, 4 frames


def test_say_errors_leave_no_file(capsys, tiny_bundle_dirs, tmp_path):
    out = tmp_path / "x.wav"
    code, _, err = run(capsys, "say", "Hi", "--bundle", str(tiny_bundle_dirs[0]), "--voice", "nobody", "-o", str(out))
    assert code == 2 and "unknown voice 'nobody'" in err and not out.exists()
    code, _, err = run(capsys, "say", "Hi", "--bundle", str(tmp_path / "nope"), "--voice", "x", "-o", str(out))
    assert code == 2 and "not a bundle directory" in err
    code, _, err = run(capsys, "say", "Hi", "--bundle", str(tiny_bundle_dirs[0]), "--voice", "casual_male",
                       "-o", str(tmp_path), "--max-frames", "2", "--seed", "0")
    assert code == 2 and "is a directory" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == []
    with pytest.raises(SystemExit):
        main(["say", "Hi", "--bundle", "b", "--voice", "v", "-o", "x.wav", "--steps", "0"])


def test_voices_lists_the_bundle(capsys, tiny_bundle_dirs):
    code, out, _ = run(capsys, "voices", "--bundle", str(tiny_bundle_dirs[0]))
    assert code == 0 and out.splitlines() == ["casual_male             9 tokens", "fr_female               6 tokens",
                                              "neutral_female         14 tokens"]


def test_export_and_demo(capsys, tmp_path, tiny_checkpoint_dir):
    code, out, _ = run(capsys, "export", "--checkpoint", str(tiny_checkpoint_dir), "--out", str(tmp_path / "b"),
                       "--max-context", "300")
    assert code == 0 and (tmp_path / "b" / "manifest.json").exists()
    code, _, err = run(capsys, "export", "--checkpoint", str(tiny_checkpoint_dir), "--out", str(tmp_path / "b"))
    assert code == 1 and "pass --force" in err
    code, out, err = run(capsys, "demo", "--dir", str(tmp_path / "demo"), "--max-frames", "5")
    assert code == 0 and (tmp_path / "demo" / "demo.wav").stat().st_size == 44 + 5 * 1920 * 2
    assert "random, so the audio is noise" in out and "voxtral-edge export --checkpoint" in out


def test_quantize_quality_and_export_plan(capsys, tmp_path, tiny_bundle_dirs, tiny_checkpoint_dir):
    import json as _json

    code, out, _ = run(capsys, "quantize", str(tiny_bundle_dirs[0]), "--plan", "int8", "--out", str(tmp_path / "q"))
    assert code == 0 and "(int8)" in out
    code, out, err = run(capsys, "quality", "--reference", str(tiny_bundle_dirs[0]), "--candidate", str(tmp_path / "q"),
                         "--out", str(tmp_path / "report"), "--frames", "4")
    assert code == 0 and out.startswith("# Quality: int8 against fp32") and "report.md" in err
    report = _json.loads((tmp_path / "report.json").read_text())
    assert report["settings"]["frames"] == 4 and len(report["end_to_end"]["utterances"]) == 4
    code, out, _ = run(capsys, "export", "--checkpoint", str(tiny_checkpoint_dir), "--out", str(tmp_path / "e"),
                       "--plan", "int4-all")
    assert code == 0 and _json.loads((tmp_path / "e" / "manifest.json").read_text())["quantization"]["plan"] == "int4-all"
    code, _, err = run(capsys, "quantize", str(tiny_bundle_dirs[0]), "--plan", str(tmp_path / "none.toml"),
                       "--out", str(tmp_path / "x"))
    assert code == 2 and "neither a named plan" in err and not (tmp_path / "x").exists()


PROFILE = """\
name = "board"
description = "a test board"
[runtime]
threads = 1
plan = "int8"
steps = 3
cfg = 0.5
max_context = 200
providers = ["cpu"]
chunk_frames = 3
[hardware]
cores = 1
memory_bandwidth_gbs = 10.0
fp32_gflops = 10.0
int8_gops = 40.0
"""


def test_a_profile_fills_in_what_the_command_line_left_unset(capsys, monkeypatch, tiny_bundle_dirs, tmp_path,
                                                              tiny_checkpoint_dir):
    from voxtral_edge.runtime import Synthesizer

    profile = tmp_path / "board.toml"
    profile.write_text(PROFILE)
    calls = []
    start, opened = Synthesizer.start, Synthesizer.__init__

    def spy_start(self, text, voice, **options):  # say and bench both begin their utterances here
        calls.append(("start", options))
        return start(self, text, voice, **options)

    def spy_init(self, manifest, *args, **options):
        calls.append(("open", options))
        opened(self, manifest, *args, **options)

    monkeypatch.setattr(Synthesizer, "start", spy_start)
    monkeypatch.setattr(Synthesizer, "__init__", spy_init)
    bundle = str(tiny_bundle_dirs[0])
    assert run(capsys, "say", "Hi.", "--bundle", bundle, "--voice", "casual_male", "-o", str(tmp_path / "a.wav"),
               "--max-frames", "4", "--profile", str(profile), "--steps", "2")[0] == 0
    (_, opening), (_, streaming) = calls
    assert (opening["threads"], opening["max_context"], opening["providers"]) == (1, 200, ("cpu",))
    # the command line wins; the profile fills the rest: its guidance, its chunks
    assert (streaming["steps"], streaming["cfg_alpha"], streaming["chunk_frames"]) == (2, 0.5, 3)
    calls.clear()
    assert run(capsys, "bench", "--bundle", bundle, "--frames", "2", "--repeats", "1", "--cfg", "0", "--json")[0] == 0
    cfgs = {options["cfg_alpha"] for kind, options in calls if kind == "start"}
    assert cfgs == {0.0}  # --cfg 0 is guidance 0, not the default
    calls.clear()  # bench opens the bundle with every bundle option say has, the NPU's too
    assert run(capsys, "bench", "--bundle", bundle, "--frames", "2", "--repeats", "1", "--allow-fallback",
               "--soc", "sa8255p", "--max-context", "180", "--json")[0] == 0
    opening = next(options for kind, options in calls if kind == "open")
    assert (opening["allow_fallback"], opening["soc"], opening["max_context"]) == (True, "sa8255p", 180)
    code, out, _ = run(capsys, "export", "--checkpoint", str(tiny_checkpoint_dir), "--out", str(tmp_path / "b"),
                       "--profile", str(profile))
    manifest = json.loads((tmp_path / "b" / "manifest.json").read_text())
    assert code == 0 and manifest["quantization"]["plan"] == "int8"
    assert manifest["model"]["backbone"]["max_context"] == 200


def test_an_execution_provider_that_is_missing_is_refused_by_name(monkeypatch, tiny_bundle_dirs):
    from voxtral_edge import sessions
    from voxtral_edge.errors import UsageError
    from voxtral_edge.runtime import Synthesizer

    with pytest.raises(UsageError, match=r"execution provider 'npu': the runtime runs its graphs on cpu"):
        Synthesizer.open(tiny_bundle_dirs[0], providers=("npu",))
    monkeypatch.setitem(sessions.PROVIDERS, "imaginary", "ImaginaryExecutionProvider")
    with pytest.raises(UsageError, match=r"'imaginary' \(ImaginaryExecutionProvider\) is not in this onnxruntime"):
        Synthesizer.open(tiny_bundle_dirs[0], providers=("imaginary", "cpu"))


def test_ctrl_c_leaves_a_valid_wav_of_what_was_made(capsys, monkeypatch, tiny_bundle_dirs, tmp_path):
    import wave

    from voxtral_edge.runtime import Synthesizer

    made = Synthesizer.chunks

    def interrupted(self, utterance):
        chunks = made(self, utterance)
        yield next(chunks)
        yield next(chunks)
        raise KeyboardInterrupt  # as if Ctrl-C arrived while the third chunk was being made

    monkeypatch.setattr(Synthesizer, "chunks", interrupted)
    out = tmp_path / "cut.wav"
    code, _, err = run(capsys, "say", "Hello there, how are you?", "--bundle", str(tiny_bundle_dirs[0]),
                       "--voice", "casual_male", "-o", str(out), "--seed", "1", "--chunk-frames", "3")
    assert code == 130 and "interrupted" in err and "Traceback" not in err
    with wave.open(str(out)) as w:  # a complete header: the file's length matches what it says
        assert (w.getframerate(), w.getnframes()) == (24000, (1 + 3) * 1920)  # chunks of 1, then 3 frames
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cut.wav"]


def test_play_uses_a_player_and_reports_underruns(capsys, monkeypatch, tiny_bundle_dirs, tmp_path):
    import numpy as np

    from voxtral_edge import playback

    played = []

    class FakeStream:  # a device that pulls 20 ms blocks as fast as it can, on its own thread
        def __init__(self, samplerate, channels, dtype, callback):
            self.callback, self.running = callback, False

        def start(self):
            import threading

            self.running = True
            self.thread = threading.Thread(target=self.pull)
            self.thread.start()

        def pull(self):
            while self.running:
                out = np.empty((480, 1), np.float32)
                self.callback(out, 480, None, None)
                played.append(out[:, 0].copy())

        def stop(self):
            self.running = False
            self.thread.join()

        def close(self):
            pass

    monkeypatch.setattr(playback, "_sounddevice_stream", FakeStream)
    code, _, err = run(capsys, "say", "Olá!", "--bundle", str(tiny_bundle_dirs[0]), "--voice", "casual_male",
                       "--play", "--seed", "2", "--max-frames", "5")
    assert code == 0 and "playback: 0.40 s played" in err and "0 underruns" in err
    with pytest.raises(SystemExit) as e:
        main(["say", "Hi", "--bundle", "b", "--voice", "v"])
    assert e.value.code == 2
