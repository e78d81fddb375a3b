"""Utterances made together (a KV cache of several rows, `batch`). Oracles: each utterance run alone with the
same seed (bit for bit: the issue's requirement), the numpy reference for the batched backbone, the
reference's KV cache for each row, onnxruntime's own DynamicQuantizeMatMul for the per-utterance int8."""

from __future__ import annotations

import json
import shutil
import threading
import wave

import numpy as np
import pytest

from voxtral_edge.audio import to_pcm16
from voxtral_edge.errors import BundleError, VoxtralEdgeError
from voxtral_edge.export.bundle import export_bundle
from voxtral_edge.export.checkpoint import Checkpoint
from voxtral_edge.export.reference import KVCache, Reference
from voxtral_edge.runtime import DECODE_CHUNK, Synthesizer

pytestmark = pytest.mark.filterwarnings("ignore::voxtral_edge.runtime.RunawayWarning")  # random weights never end

ITEMS = [("Turn left in two hundred metres.", "casual_male", 11, 1.2), ("Traffic ahead.", "fr_female", 12, 1.2),
         ("Your destination is on the right.", "neutral_female", 13, 1.2), ("Low fuel.", "casual_male", 14, 1.2),
         ("Keep right at the fork, then take the second exit.", "fr_female", 15, 1.2)]


@pytest.fixture(scope="module")
def plan_bundles(tiny_checkpoint_dirs, tiny_bundle_dirs, tmp_path_factory):
    """The seed-0 tiny checkpoint as fp32 (the shared fixture), int4 and int4-all bundles."""
    root = tmp_path_factory.mktemp("plans")
    bundles = {"fp32": tiny_bundle_dirs[0]}
    for plan in ("int4", "int4-all"):
        bundles[plan] = export_bundle(tiny_checkpoint_dirs[0], root / plan, max_context=256, plan=plan,
                                      progress=False)
    return bundles


def alone(bundle, text, voice, seed, cfg, max_frames=8, max_context=None):
    return Synthesizer.open(bundle, max_context=max_context).synthesize(text, voice, seed=seed, cfg_alpha=cfg,
                                                                        max_frames=max_frames)


def together(synth, items, max_frames=8):
    """The items through run_many (continuous batching), their Results in item order."""
    us = [synth.start(text, voice, seed=seed, cfg_alpha=cfg, max_frames=max_frames, chunk_frames=DECODE_CHUNK,
                      first_chunk_frames=DECODE_CHUNK) for text, voice, seed, cfg in items]
    for _u, _chunk in synth.run_many(us):
        assert sum(u.row is not None for u in us) <= synth.batch  # never more in the cache than its rows
    return [synth.close(u) for u in us]


def test_rows_step_together_each_at_its_own_position(tiny_checkpoint_dirs, tiny_bundle_dirs):
    """One backbone call over three rows of different lengths: each row's hidden states and KV cache are the
    reference's for that utterance alone; nothing is written past a row's last position."""
    ref = Reference(Checkpoint(tiny_checkpoint_dirs[0]))
    synth = Synthesizer.open(tiny_bundle_dirs[0], batch=3)
    xs = [synth.prompt_embeddings(synth.prompt(text, voice), voice) for text, voice, _, _ in ITEMS[:3]]
    assert len({len(x) for x in xs}) == 3
    caches = [KVCache() for _ in xs]
    rng = np.random.default_rng(0)
    for row in (0, 2, 1):  # a row joins after the others: a prompt is a call of its own, on its row
        hidden, _ = synth.backbone_rows(xs[row][None], [0], row)
        want = ref.backbone(xs[row], caches[row])
        np.testing.assert_allclose(hidden[0], want, rtol=1e-4, atol=1e-4 * np.abs(want).max())
    positions = [len(x) for x in xs]
    for _ in range(4):
        step = rng.standard_normal((3, 1, xs[0].shape[1])).astype(np.float32) * 0.1
        hidden, logits = synth.backbone_rows(step, positions)
        for row in range(3):
            want = ref.backbone(step[row], caches[row])
            np.testing.assert_allclose(hidden[row], want, rtol=1e-4, atol=1e-4 * np.abs(want).max())
            finite = np.isfinite(logits[row])
            np.testing.assert_allclose(logits[row][finite], ref.semantic_logits(want[-1])[finite], rtol=1e-3,
                                       atol=1e-3 * np.abs(logits[row][finite]).max())
        positions = [p + 1 for p in positions]
    for row in range(3):
        keys = synth.kv_cache[0][row]  # layer 0's keys of this row [kv_heads, max_context, head_dim]
        np.testing.assert_allclose(keys[:, :positions[row]], caches[row].keys[0].transpose(1, 0, 2), rtol=1e-4,
                                   atol=1e-4)
        assert not keys[:, positions[row]:].any()


@pytest.mark.parametrize("plan", ["fp32", "int4", "int4-all"])
def test_each_utterance_sounds_as_it_would_alone(plan_bundles, plan):
    """Five utterances through three rows: codes and audio bit-identical to each one alone with its seed."""
    results = together(Synthesizer.open(plan_bundles[plan], batch=3), ITEMS)
    for (text, voice, seed, cfg), got in zip(ITEMS, results):
        want = alone(plan_bundles[plan], text, voice, seed, cfg)
        np.testing.assert_array_equal(got.codes, want.codes)
        np.testing.assert_array_equal(got.audio, want.audio)
        assert got.seed == seed and len(got.codes) == 8


@pytest.mark.parametrize("plan", ["fp32", "int4"])
def test_guided_and_unguided_utterances_share_a_step(plan_bundles, plan):
    """cfg 1 runs without the unconditional row: it gets a flow-head call of its own in the same step, and
    each utterance is still what it is alone."""
    items = [(text, voice, seed, 1.0 if i % 2 else 1.2) for i, (text, voice, seed, _) in enumerate(ITEMS[:4])]
    for (text, voice, seed, cfg), got in zip(items, together(Synthesizer.open(plan_bundles[plan], batch=4), items)):
        np.testing.assert_array_equal(got.codes, alone(plan_bundles[plan], text, voice, seed, cfg).codes)


def test_rows_join_and_leave_without_reallocation(tiny_bundle_dirs):
    synth = Synthesizer.open(tiny_bundle_dirs[1], batch=2)
    kv = synth.kv_cache
    pointers = [a.__array_interface__["data"][0] for a in kv]
    items = [(text, voice, seed, cfg) for text, voice, seed, cfg in ITEMS]
    max_frames = [3, 9, 5, 7, 4]  # rows free at different frames: each is taken at once by the next item
    us = [synth.start(t, v, seed=s, max_frames=m) for (t, v, s, _), m in zip(items, max_frames)]
    steps = []
    synth.on_step = lambda batch: steps.append([us.index(u) for u in batch])
    done = [u for u, chunk in synth.run_many(us) if chunk is None]
    # an utterance of m frames ends at its step m + 1; the next item takes its row at the step after
    assert [us.index(u) for u in done] == [0, 1, 2, 4, 3]
    assert steps[:4] == [[0, 1]] * 4 and steps[4] == [1, 2] and steps[10] == [3, 4]
    assert all(len(s) == 2 for s in steps[:15]) and steps[15:] == [[3]] * 3  # idle rows only once the queue is empty
    assert [a.__array_interface__["data"][0] for a in synth.kv_cache] == pointers
    for u, (text, voice, seed, _), m in zip(us, items, max_frames):
        np.testing.assert_array_equal(synth.close(u).codes, alone(tiny_bundle_dirs[1], text, voice, seed, 1.2, m).codes)


def test_when_rows_run_out_the_least_recently_stepped_is_set_aside(tiny_bundle_dirs):
    synth = Synthesizer.open(tiny_bundle_dirs[2], batch=2)
    us = [synth.start(text, voice, seed=seed, max_frames=6) for text, voice, seed, _ in ITEMS[:3]]
    synth.step(us[0])
    synth.step(us[1])
    synth.step(us[2])  # both rows held: the one stepped longest ago gives its row
    assert us[0].row is None and us[0].kv is not None and us[1].row is not None and us[2].row is not None
    while not all(u.done for u in us):
        for u in us:
            synth.step(u)
    for u, (text, voice, seed, cfg) in zip(us, ITEMS):
        np.testing.assert_array_equal(synth.close(u).codes, alone(tiny_bundle_dirs[2], text, voice, seed, cfg, 6).codes)


def test_a_request_that_fails_leaves_the_others_going(tiny_bundle_dirs):
    synth = Synthesizer.open(tiny_bundle_dirs[0], max_context=18, batch=2)
    long = synth.start("Hi.", "neutral_female", seed=0)  # 14 voice tokens + 5 + the text: no room
    short = synth.start("Hi.", "fr_female", seed=0, max_frames=3)  # 6 voice tokens: room for 3 frames
    chunks = synth.step_many([long, short])
    assert long.done and isinstance(long.error, VoxtralEdgeError) and "max_context is 18" in str(long.error)
    assert not len(chunks[0]) and not short.done
    with pytest.raises(VoxtralEdgeError, match="max_context is 18"):
        synth.step(long)  # one at a time, its failure is raised as before
    while not short.done:
        synth.step_many([short])
    assert len(synth.close(short).codes) == 3


def test_a_bundle_from_before_batching_takes_one_row(tiny_bundle_dirs, tmp_path):
    old = tmp_path / "old"
    shutil.copytree(tiny_bundle_dirs[0], old)
    manifest = json.loads((old / "manifest.json").read_text())
    for graph, first in (("backbone_step", "inputs_embeds"), ("flow_head", "noise")):
        manifest["graphs"][graph]["inputs"][first]["shape"][0] = 1  # as the exporter wrote them before
    (old / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match=r"old: its graphs take one utterance per call \(exported before "
                                          r"batching: .*re-export it for batch 2, or use batch 1"):
        Synthesizer.open(old, batch=2)
    with pytest.raises(VoxtralEdgeError, match="batch must be an integer >= 1, found 0"):
        Synthesizer.open(tiny_bundle_dirs[0], batch=0)


def test_long_text_is_spoken_sentence_by_sentence_side_by_side_in_order(tiny_bundle_dirs):
    """Each sentence is an utterance of its own (seed + i) made beside the others; the audio comes out in
    reading order, the first sentence's first frame after the first step."""
    text = "Turn left now. Keep right! Stop here?"
    synth = Synthesizer.open(tiny_bundle_dirs[0], max_context=96, batch=2)
    sentences = synth.sentences(text, "casual_male")
    assert sentences == ["Turn left now.", "Keep right!", "Stop here?"]
    steps = []
    synth.on_step = lambda batch: steps.append(len(batch))
    stream = synth.stream_sentences(text, "casual_male", seed=40, chunk_frames=3)
    first = next(stream)
    assert len(steps) == 1 and len(first) == synth.samples_per_frame  # out after the first step
    audio = np.concatenate([first, *stream])
    assert max(steps) == 2
    one = Synthesizer.open(tiny_bundle_dirs[0], max_context=96)
    want = []  # each sentence streamed alone, in the same chunks (the codec's chunking moves the last bits)
    for i, sentence in enumerate(sentences):
        want.append(list(one.stream(sentence, "casual_male", seed=40 + i, normalize=False, chunk_frames=3,
                                    first_chunk_frames=1 if i == 0 else 3)))
        want[-1] = one.last_result
    np.testing.assert_array_equal(audio, np.concatenate([r.audio for r in want]))
    result = synth.last_result
    np.testing.assert_array_equal(result.codes, np.concatenate([r.codes for r in want]))
    assert result.seed == 40 and result.timings["sentences"] == 3 and result.spoken_text == text
    cut = list(synth.stream_sentences(text, "casual_male", seed=40, max_frames=50))  # of the whole text
    assert sum(map(len, cut)) == 50 * synth.samples_per_frame and not synth.last_result.finished
    np.testing.assert_array_equal(synth.last_result.codes, result.codes[:50])


def test_say_with_batch_writes_the_sentences_in_order(tiny_bundle_dirs, tmp_path, capsys):
    from voxtral_edge.cli import main

    text = "Traffic ahead. Keep right at the fork."
    out = tmp_path / "say.wav"
    assert main(["say", text, "--bundle", str(tiny_bundle_dirs[1]), "--voice", "fr_female", "--seed", "9",
                 "--batch", "2", "--max-context", "96", "--raw", "-o", str(out)]) == 0
    assert "2 sentences side by side" in capsys.readouterr().err
    with wave.open(str(out)) as w:
        pcm = w.readframes(w.getnframes())
    one = Synthesizer.open(tiny_bundle_dirs[1], max_context=96)
    want = b"".join(to_pcm16(chunk) for i, s in enumerate(["Traffic ahead.", "Keep right at the fork."])
                    for chunk in one.stream(s, "fr_female", seed=9 + i, normalize=False, first_chunk_frames=1 if i == 0
                                            else 4))
    assert pcm == want
    assert main(["say", text, "--bundle", str(tiny_bundle_dirs[1]), "--voice", "fr_female", "--batch", "2",
                 "--noise", str(tmp_path / "n.npy"), "-o", str(tmp_path / "no.wav")]) == 2
    assert "--noise with --batch 2" in capsys.readouterr().err and not (tmp_path / "no.wav").exists()


def test_per_utterance_int8_is_dynamic_quantize_matmul_on_each_utterance(tmp_path):
    """The batched graphs' dynamic int8 against onnxruntime's own DynamicQuantizeMatMul run on each utterance's
    rows alone: the same bits (rows of very different ranges, one all zero)."""
    import onnxruntime as ort
    from onnx import TensorProto

    from voxtral_edge.export.onnx_graph import GraphBuilder
    from voxtral_edge.quant.matmul import QuantSpec, emit_quantized_matmul

    rng = np.random.default_rng(0)
    w = rng.standard_normal((40, 24)).astype(np.float32)
    paths = {}
    for per_utterance in (True, False):
        g = GraphBuilder("m", tmp_path / f"{per_utterance}.onnx")
        x = g.input("x", TensorProto.FLOAT, ["G", "R", 40])
        emit_quantized_matmul(g, x, w, QuantSpec("dynamic-int8"), "w", per_utterance=per_utterance,
                              outputs=[g.output("y", TensorProto.FLOAT, ["G", "R", 24])])
        g.save()
        paths[per_utterance] = tmp_path / f"{per_utterance}.onnx"
    grouped, whole = (ort.InferenceSession(str(paths[k]), providers=["CPUExecutionProvider"]) for k in (True, False))
    x = rng.standard_normal((4, 6, 40)).astype(np.float32) * np.array([1, 30, 1e-3, 0], np.float32)[:, None, None]
    x[2] += 5  # all positive: the range still includes 0
    y = grouped.run(None, {"x": x})[0]
    for g in range(4):
        np.testing.assert_array_equal(y[g:g + 1], whole.run(None, {"x": x[g:g + 1]})[0])
    assert not np.array_equal(whole.run(None, {"x": x})[0], y)  # one scale for all would have changed them


def test_render_with_batch_writes_the_same_bytes(rendered_catalog, tiny_bundle_dirs, tmp_path):
    from conftest import RENDER_MAX_FRAMES
    from voxtral_edge.render import Settings, render

    catalog, out_one = rendered_catalog
    summary = render(catalog, tiny_bundle_dirs[0], tmp_path / "batched", workers=1, batch=4, progress=False,
                     settings=Settings(max_frames=RENDER_MAX_FRAMES))
    assert summary.failed == 0 and summary.rendered == summary.total
    assert (tmp_path / "batched" / "index.jsonl").read_bytes() == (out_one / "index.jsonl").read_bytes()


def test_bench_reports_the_aggregate_of_the_batch(tiny_bundle_dirs, capsys):
    from voxtral_edge.cli import main

    assert main(["bench", "--bundle", str(tiny_bundle_dirs[0]), "--batch", "2", "--frames", "4", "--repeats", "1",
                 "--json"]) == 0
    rows = {r["test"]: r for r in map(json.loads, capsys.readouterr().out.splitlines())}
    assert rows["frames/s (aggregate)"]["unit"] == "frames/s" and rows["frames/s (aggregate)"]["median"] > 0
    assert rows["frame, one row of 2"]["unit"] == "ms/frame" and rows["frame, one row of 2"]["batch"] == 2


def test_the_service_shares_a_step_within_a_class_and_navigation_still_preempts(tiny_bundle_dirs, tmp_path):
    """Two message requests share each step; a navigation request arriving meanwhile is stepped alone from the
    next frame on (its first audio as without batching), then the two go on together; every stream is what
    its request gives alone."""
    import httpx
    from test_serve import LONG, alone as streamed_alone, running, wait_for

    from voxtral_edge.serve.app import ServiceConfig

    bundle = tiny_bundle_dirs[0]
    config = ServiceConfig(bundle=bundle, model_name="voxtral-tiny", cache_dir=tmp_path / "phrases",
                           synth_options={"batch": 2})
    bodies = [{"input": LONG, "voice": v, "priority": "message", "seed": s, "max_frames": 150, "response_format": "pcm"}
              for v, s in (("neutral_female", 1), ("fr_female", 2))]
    nav_body = {"input": "In two hundred metres, turn right.", "voice": "casual_male", "priority": "navigation",
                "seed": 3, "max_frames": 8, "response_format": "pcm"}
    with running(config) as (url, server):
        scheduler = server.service.scheduler
        stepped, original = [], scheduler.synth.step_many
        scheduler.synth.step_many = lambda us: (stepped.append(sorted(u.voice for u in us)), original(us))[1]
        results = {}

        def stream(i):
            with httpx.Client(timeout=60) as http, http.stream("POST", url + "/v1/audio/speech", json=bodies[i]) as r:
                parts = r.iter_bytes()
                results[i] = [next(parts)]
                results[f"first{i}"] = True
                results[i] += list(parts)

        threads = [threading.Thread(target=stream, args=(i,)) for i in range(2)]
        with scheduler.hold():  # both queue before a frame is made
            for i, t in enumerate(threads):
                t.start()
                wait_for(lambda: scheduler.snapshot()["queued"]["message"] == i + 1, what=f"request {i} to queue")
        wait_for(lambda: "first0" in results and "first1" in results, what="both messages to be in flight")
        nav = httpx.post(url + "/v1/audio/speech", json=nav_body, timeout=60)
        for t in threads:
            t.join()
    assert nav.status_code == 200
    messages = ["fr_female", "neutral_female"]
    assert stepped[0] == messages and ["casual_male"] in stepped  # the messages together; navigation alone
    first_nav = stepped.index(["casual_male"])
    # its 8 frames and the step that ends it, one after the other; then the two went on together
    assert stepped[first_nav:first_nav + 10] == [["casual_male"]] * 9 + [messages]
    assert all(s in (messages, ["casual_male"]) for s in stepped)
    job = next(j for j in scheduler.finished if j.priority == "navigation")
    assert job.first_audio_step - job.submitted_step <= 2
    assert nav.content == streamed_alone(bundle, nav_body["input"], "casual_male", 3, 8)
    for i, body in enumerate(bodies):
        assert b"".join(results[i]) == streamed_alone(bundle, LONG, body["voice"], body["seed"], 150)


def test_a_profile_sets_the_batch_and_the_command_line_wins(tmp_path):
    import argparse
    from importlib import resources

    from voxtral_edge.cli.common import apply_profile, bundle_settings
    from voxtral_edge.errors import ConfigError
    from voxtral_edge.profiles import load_profile

    shipped = resources.files("voxtral_edge.devices").joinpath("x86-avx512.toml").read_text(encoding="utf-8")
    path = tmp_path / "x86-avx512.toml"
    path.write_text(shipped.replace("[runtime]\n", "[runtime]\nbatch = 3\n", 1), encoding="utf-8")
    assert load_profile(path).batch == 3 and load_profile("x86-avx512").batch == 1
    args = argparse.Namespace(profile=str(path), batch=None, threads=None, steps=None, cfg=None, max_context=None,
                              codec_threads=None, chunk_frames=None, providers=None, no_verify=False,
                              no_saved_graphs=False, parallel_open=False)
    assert bundle_settings(apply_profile(args))["batch"] == 3
    args.batch = 2
    assert bundle_settings(apply_profile(args))["batch"] == 2
    path.write_text(shipped.replace("[runtime]\n", "[runtime]\nbatch = 0\n", 1), encoding="utf-8")
    with pytest.raises(ConfigError, match="'runtime.batch' = 0 is not a positive integer"):
        load_profile(path)


def test_with_aging_a_risen_job_shares_the_rows_and_no_job_in_progress_is_interrupted(tiny_bundle_dirs):
    """Two rows, a navigation line never short of work (two prompts in progress, one waiting): under strict
    priority media would wait for ever; with aging it rises and takes the row the next finished prompt
    leaves, beside the prompt in progress, within the bounds it has without batching; no navigation prompt
    is interrupted, and every stream is what its request gives alone."""
    from test_serve import LONG, alone as streamed_alone, wait_for
    from test_serve_robust import aging_gaps

    from voxtral_edge.serve.scheduler import Job, Scheduler

    bundle = tiny_bundle_dirs[0]
    synth = Synthesizer.open(bundle, batch=2)
    stepped, original = [], synth.step_many
    synth.step_many = lambda us: (stepped.append(sorted((u.voice, u.run.seed) for u in us)), original(us))[1]
    aging = {"assistant": 3, "message": 4, "media": 5, "background": 6}
    rise, nav_frames, chunk_frames = 5 + 4 + 3, 4, 4
    flooding, navs, heard, media_chunks = threading.Event(), [], [], []
    scheduler = Scheduler(synth, queue_limit=8, aging=aging)

    def submit():
        job = Job(synth.start("Turn left now.", "casual_male", seed=len(navs), max_frames=nav_frames), "navigation",
                  keep=True)
        navs.append(scheduler.submit(job))
        heard.append(job.recording)

    scheduler.on_end = lambda job: submit() if job.priority == "navigation" and flooding.is_set() else None
    flooding.set()
    media = Job(synth.start(LONG, "neutral_female", seed=7, max_frames=12), "media", keep=True)
    recording = media.recording
    recording.wakers.add(lambda: media_chunks.append(scheduler.counters["steps"]))
    with scheduler.hold():  # all queued before the first frame
        for _ in range(3):
            submit()
        scheduler.submit(media)
    wait_for(lambda: media.state == "done", what="the media job")
    flooding.clear()
    wait_for(lambda: all(not j.active for j in navs), what="the flood to end")
    scheduler.stop()
    gaps = aging_gaps(media, media_chunks, rise, nav_frames, chunk_frames)
    assert all(j.suspensions == 0 for j in navs)  # no prompt was interrupted
    voices = [[voice for voice, _ in step] for step in stepped]
    assert ["casual_male", "casual_male"] in voices and ["casual_male", "neutral_female"] in voices
    assert ["neutral_female"] not in voices  # it never had a step for itself: the flood never stopped
    assert media.risen == len(gaps) - 1
    assert b"".join(recording.chunks) == streamed_alone(bundle, LONG, "neutral_female", 7, 12)
    beside_media = {seed for step in stepped if len(step) == 2 and step[1][0] == "neutral_female"
                    for voice, seed in step if voice == "casual_male"}
    for seed in {0} | beside_media:  # beside another prompt all along; beside media
        assert b"".join(heard[seed].chunks) == streamed_alone(bundle, "Turn left now.", "casual_male", seed, nav_frames)
