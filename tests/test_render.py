"""`voxtral-edge render` on the local backend: the catalog's checks, determinism across worker counts, the
index a rerun trusts, interruptions, formats. Oracles: Python's `wave` module reads the files, hashlib
checks the index, and `Synthesizer.synthesize` with the same seed gives the samples each file must hold."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import sys
import wave

import numpy as np
import pytest

from conftest import RENDER_MAX_FRAMES, write_csv_catalog
from voxtral_edge.audio import to_pcm16
from voxtral_edge.cli import main
from voxtral_edge.errors import UsageError
from voxtral_edge.render import Settings, load_catalog, render
from voxtral_edge.runtime import Synthesizer
from voxtral_edge.text import normalize
from voxtral_edge.text.lexicon import Lexicon

SETTINGS = Settings(max_frames=RENDER_MAX_FRAMES)


def seed_of(row: dict) -> int:
    """The documented default: the first 63 bits of sha256(id)."""
    if "seed" in row:
        return row["seed"]
    return int.from_bytes(hashlib.sha256(row["id"].encode()).digest()[:8], "big") >> 1


def index(folder) -> list[dict]:
    return [json.loads(line) for line in (folder / "index.jsonl").read_text(encoding="utf-8").splitlines()]


def clips(folder) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.suffix in (".wav", ".pcm", ".flac")}


def leftovers(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".partial") or p.name.startswith(".render-j"))


def test_one_worker_renders_what_the_synthesizer_says(rendered_catalog, render_rows, tiny_bundle_dirs):
    _, out = rendered_catalog
    records = index(out)
    assert [r["id"] for r in records] == [row["id"] for row in render_rows]  # catalog order
    synth = Synthesizer.open(tiny_bundle_dirs[0])
    for row, record in zip(render_rows, records):
        data = (out / f"{row['id']}.wav").read_bytes()
        assert record["file"] == f"{row['id']}.wav" and record["sha256"] == hashlib.sha256(data).hexdigest()
        with wave.open(str(out / record["file"])) as w:
            assert (w.getnchannels(), w.getsampwidth(), w.getframerate()) == (1, 2, 24000)
            samples = w.readframes(w.getnframes())
            assert record["duration"] == pytest.approx(w.getnframes() / 24000)
        want = synth.synthesize(row["text"], row["voice"], seed=seed_of(row), steps=row.get("steps", 7),
                                cfg_alpha=row.get("cfg", 1.2), max_frames=RENDER_MAX_FRAMES, lang=row["lang"])
        assert samples == to_pcm16(want.audio), row["id"]
        assert record["spoken_text"] == normalize(row["text"], row["lang"]) == want.spoken_text
        assert record["frames"] == len(want.codes) == RENDER_MAX_FRAMES
        assert record["seed"] == seed_of(row) and record["lang"] == row["lang"] and record["text"] == row["text"]
        assert record["settings"]["steps"] == row.get("steps", 7) and record["settings"]["cfg"] == row.get("cfg", 1.2)
        manifest = (tiny_bundle_dirs[0] / "manifest.json").read_bytes()
        assert record["bundle"] == hashlib.sha256(manifest).hexdigest()
    assert leftovers(out) == [] and not (out / "errors.jsonl").exists()
    assert records[0]["spoken_text"] == "Turn left in two hundred metres."  # the front-end ran, in English


def test_raw_texts_are_spoken_as_written(render_rows, tiny_bundle_dirs, tmp_path):
    rows = [r for r in render_rows if any(c.isdigit() for c in r["text"])]
    catalog = write_csv_catalog(tmp_path / "catalog.csv", rows)
    render(catalog, tiny_bundle_dirs[0], tmp_path / "out", workers=1, progress=False,
           settings=Settings(max_frames=RENDER_MAX_FRAMES, normalize=False))
    synth = Synthesizer.open(tiny_bundle_dirs[0])
    for row, record in zip(rows, index(tmp_path / "out")):
        assert record["spoken_text"] == row["text"] and record["settings"]["normalize"] is False
        with wave.open(str(tmp_path / "out" / record["file"])) as w:
            samples = w.readframes(w.getnframes())
        want = synth.synthesize(row["text"], row["voice"], seed=seed_of(row), max_frames=RENDER_MAX_FRAMES,
                                steps=row.get("steps", 7), cfg_alpha=row.get("cfg", 1.2), normalize=False)
        assert samples == to_pcm16(want.audio)


def test_two_workers_from_json_lines_give_the_same_bytes(rendered_catalog, render_rows, tiny_bundle_dirs, tmp_path):
    _, one = rendered_catalog
    catalog = tmp_path / "catalog.jsonl"
    # the same rows as JSON Lines, one with an explicit null for an absent value
    lines = [json.dumps(dict(row, lang=None) if row["id"] == "en_01" else row, ensure_ascii=False)
             for row in render_rows]
    catalog.write_text("\n".join(lines) + "\n", encoding="utf-8")
    summary = render(catalog, tiny_bundle_dirs[0], tmp_path / "two", settings=SETTINGS, workers=2, progress=False)
    assert (summary.workers, summary.rendered, summary.failed) == (2, 30, 0)
    assert clips(tmp_path / "two") == clips(one)
    got, want = index(tmp_path / "two"), index(one)
    assert got[1]["lang"] is None and want[1]["lang"] == "en"
    got[1]["lang"] = "en"
    assert got == want


def test_a_rerun_skips_what_is_done_and_renders_what_changed(rendered_catalog, render_rows, tiny_bundle_dirs,
                                                             tmp_path):
    _, one = rendered_catalog
    out = tmp_path / "out"
    shutil.copytree(one, out)
    rows = [dict(r) for r in render_rows]
    rows[3]["text"] = "Very low fuel."  # changed text
    rows[7]["seed"] = 5  # changed seed
    rows.append({"id": "en_new", "text": "New phrase.", "voice": "casual_male"})  # new item
    del rows[12]  # an item no longer in the catalog: dropped from the index (its file is left alone)
    (out / "es_02.wav").write_bytes(b"RIFF damaged")  # an altered file is rendered again
    (out / "fr_09.wav").unlink()  # and a missing one
    catalog = write_csv_catalog(tmp_path / "catalog.csv", rows)
    summary = render(catalog, tiny_bundle_dirs[0], out, settings=SETTINGS, workers=1, progress=False)
    assert (summary.rendered, summary.skipped, summary.failed) == (5, 25, 0)
    records = {r["id"]: r for r in index(out)}
    assert list(records) == [r["id"] for r in rows]
    before = {r["id"]: r for r in index(one)}
    for item_id in ("en_03", "en_07"):
        assert records[item_id]["sha256"] != before[item_id]["sha256"]
    for item_id in ("es_02", "fr_09"):
        assert records[item_id] == before[item_id] and (out / f"{item_id}.wav").read_bytes() == (
            one / f"{item_id}.wav").read_bytes()
    assert records["en_03"]["text"] == "Very low fuel." and records["en_07"]["seed"] == 5
    assert (out / before[render_rows[12]["id"]]["file"]).exists()
    # a changed setting makes every item stale
    summary = render(catalog, tiny_bundle_dirs[0], out, settings=Settings(max_frames=RENDER_MAX_FRAMES - 1),
                     workers=1, progress=False)
    assert (summary.rendered, summary.skipped) == (30, 0)
    assert all(r["frames"] == RENDER_MAX_FRAMES - 1 for r in index(out))


def test_a_lexicon_respells_as_say_does_and_a_changed_entry_renders_only_its_items(rendered_catalog, render_rows,
                                                                                  tiny_bundle_dirs, tmp_path):
    """Starting from clips rendered without a lexicon: only the items it respells are rendered again (the
    Spanish entry leaves the French "Radar" alone), each as the Synthesizer speaks it with the lexicon; an SSML
    item takes the whole lexicon with it. Changing an entry renders again only what it touches."""
    _, one = rendered_catalog
    out = tmp_path / "out"
    shutil.copytree(one, out)
    rows = [dict(r) for r in render_rows] + [{"id": "en_ssml", "text": "<speak>Low fuel.</speak>",
                                               "voice": "casual_male", "lang": "en"}]
    catalog = write_csv_catalog(tmp_path / "catalog.csv", rows)
    path = tmp_path / "lexicon.toml"

    def run(fuel: str):
        path.write_text(f'[en]\n"fuel" = "{fuel}"\n[es]\n"Radar" = "Rah-dar"\n', encoding="utf-8")
        lexicon = Lexicon.load(path)
        summary = render(catalog, tiny_bundle_dirs[0], out, workers=1, progress=False,
                         settings=Settings(max_frames=RENDER_MAX_FRAMES, lexicon=lexicon))
        return lexicon, summary, {r["id"]: r for r in index(out)}

    lexicon, summary, records = run("fyool")
    assert (summary.rendered, summary.skipped, summary.failed) == (3, 28, 0)
    before = {r["id"]: r for r in index(one)}
    synth = Synthesizer.open(tiny_bundle_dirs[0])
    for row in rows:
        record = records[row["id"]]
        if row["id"] not in ("en_03", "es_06", "en_ssml"):
            assert record == before[row["id"]]  # older records stay up to date
            continue
        want = synth.synthesize(row["text"], row["voice"], seed=seed_of(row), steps=row.get("steps", 7),
                                cfg_alpha=row.get("cfg", 1.2), max_frames=RENDER_MAX_FRAMES, lang=row["lang"],
                                lexicon=lexicon)
        with wave.open(str(out / record["file"])) as w:
            assert w.readframes(w.getnframes()) == to_pcm16(want.audio), row["id"]
        assert record["spoken_text"] == want.spoken_text and record["text"] == row["text"]
    assert "fyool" in records["en_03"]["spoken_text"] and "Rah-dar" in records["es_06"]["spoken_text"]
    assert records["fr_06"]["spoken_text"] == before["fr_06"]["spoken_text"]
    assert records["en_03"]["settings"]["respelled"] == "Low fyool."
    assert records["en_ssml"]["settings"]["lexicon"] == lexicon.to_data()

    _, summary, again = run("fewel")
    assert (summary.rendered, summary.skipped) == (2, 29)  # en_03 and the SSML item
    assert {i for i in again if again[i] != records[i]} == {"en_03", "en_ssml"}
    assert "fewel" in again["en_03"]["spoken_text"]


def test_render_names_a_bad_lexicon_and_exits_2(tmp_path, tiny_bundle_dirs, capsys):
    catalog = write_csv_catalog(tmp_path / "c.csv", [{"id": "a", "text": "Hi.", "voice": "casual_male"}])
    (tmp_path / "lexicon.toml").write_text('[xx]\n"a" = "b"\n', encoding="utf-8")
    code = main(["render", str(catalog), "--bundle", str(tiny_bundle_dirs[0]), "--out", str(tmp_path / "out"),
                 "--lexicon", str(tmp_path / "lexicon.toml")])
    assert code == 2 and "lexicon.toml: table [xx]: expected a language" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_an_interrupted_run_resumes_to_the_same_index(rendered_catalog, tiny_bundle_dirs, tmp_path):
    catalog, one = rendered_catalog
    out = tmp_path / "out"

    def stop_after_seven(state):
        if state.done == 7:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        render(catalog, tiny_bundle_dirs[0], out, settings=SETTINGS, workers=2, progress=False,
               observer=stop_after_seven)
    partial = index(out)
    assert len(partial) == 7 and leftovers(out) == []
    assert all((out / r["file"]).read_bytes() == (one / r["file"]).read_bytes() for r in partial)
    summary = render(catalog, tiny_bundle_dirs[0], out, settings=SETTINGS, workers=2, progress=False)
    assert (summary.rendered, summary.skipped) == (23, 7)
    assert (out / "index.jsonl").read_bytes() == (one / "index.jsonl").read_bytes()
    assert clips(out) == clips(one)


def test_a_killed_run_is_recovered_from_its_journal(rendered_catalog, tiny_bundle_dirs, tmp_path):
    """What SIGKILL leaves: clips in place, their records in the journal only (the last one cut short),
    a temporary file being written, no index."""
    catalog, one = rendered_catalog
    out = tmp_path / "out"
    out.mkdir()
    lines = (one / "index.jsonl").read_text(encoding="utf-8").splitlines()[:5]
    for line in lines:
        name = json.loads(line)["file"]
        shutil.copy(one / name, out / name)
    (out / ".render-journal.jsonl").write_text("\n".join(lines) + "\n" + lines[5 - 1][:40], encoding="utf-8")
    (out / ".es_00.wav.partial").write_bytes(b"RIFF....")
    summary = render(catalog, tiny_bundle_dirs[0], out, settings=SETTINGS, workers=1, progress=False)
    assert (summary.rendered, summary.skipped) == (25, 5)
    assert (out / "index.jsonl").read_bytes() == (one / "index.jsonl").read_bytes()
    assert leftovers(out) == []


@pytest.mark.parametrize("batch", [1, 3])
def test_a_worker_killed_mid_run_is_replaced_and_its_item_rendered(rendered_catalog, tiny_bundle_dirs, tmp_path,
                                                                   batch):
    catalog, one = rendered_catalog
    killed = []

    def kill_a_worker(state):
        busy = [w for w in state.pool.processes if w.jobs]  # workers with items now
        if state.done >= 4 and busy and not killed:
            os.kill(busy[0].process.pid, signal.SIGKILL)
            killed.extend(busy[0].jobs)

    summary = render(catalog, tiny_bundle_dirs[0], tmp_path / "out", settings=SETTINGS, workers=2, progress=False,
                     observer=kill_a_worker, batch=batch)
    assert 1 <= len(killed) <= batch and summary.restarts == 1  # each item it held rendered again
    assert (summary.rendered, summary.failed) == (30, 0)  # nothing lost, nothing twice
    assert (tmp_path / "out" / "index.jsonl").read_bytes() == (one / "index.jsonl").read_bytes()


def test_a_worker_found_dead_when_given_a_job_is_replaced(rendered_catalog, render_rows, tiny_bundle_dirs, tmp_path,
                                                          monkeypatch):
    # the death lands between two looks at the worker: the driver's next job meets a closed pipe (a CI run
    # once died here with BrokenPipeError), so the job must go back to the queue and the worker be replaced
    from voxtral_edge.render.local import LocalPool

    _, one = rendered_catalog
    rows = render_rows[:4]
    small = write_csv_catalog(tmp_path / "catalog.csv", rows)
    start = LocalPool.start

    def start_then_lose_a_worker(pool):
        start(pool)
        victim = pool.processes[0].process
        os.kill(victim.pid, signal.SIGKILL)
        victim.join()  # dead and reaped before the first job is sent

    monkeypatch.setattr(LocalPool, "start", start_then_lose_a_worker)
    summary = render(small, tiny_bundle_dirs[0], tmp_path / "out", settings=SETTINGS, workers=1, progress=False)
    assert summary.restarts == 1 and (summary.rendered, summary.failed) == (4, 0)
    assert clips(tmp_path / "out") == {name: (one / name).read_bytes() for name in clips(tmp_path / "out")}
    assert sorted(clips(tmp_path / "out")) == sorted(f"{row['id']}.wav" for row in rows)


def test_items_that_fail_on_their_own_go_to_errors_jsonl(render_rows, tiny_bundle_dirs, tmp_path, capsys):
    # 20 positions hold a prompt for casual_male (9 voice tokens) but not for neutral_female (14)
    rows = [r for r in render_rows if r["voice"] != "fr_female"][::3]
    rows.insert(1, {"id": "emoji", "text": "😀 👍", "voice": "casual_male"})  # nothing to say once normalized
    catalog = write_csv_catalog(tmp_path / "catalog.csv", rows)
    code = main(["render", str(catalog), "--bundle", str(tiny_bundle_dirs[0]), "--out", str(tmp_path / "out"),
                 "--max-context", "20", "--max-frames", "2", "--workers", "1"])
    err = capsys.readouterr().err
    assert code == 1 and "failed (see" in err
    errors = [json.loads(line) for line in (tmp_path / "out" / "errors.jsonl").read_text().splitlines()]
    failed = [r["id"] for r in rows if r["voice"] == "neutral_female" or r["id"] == "emoji"]
    assert [e["id"] for e in errors] == failed
    assert "nothing is left to speak once normalized" in errors[0]["error"]
    assert all("max_context is 20" in e["error"] for e in errors[1:])
    assert [e["line"] for e in errors] == [rows.index(r) + 2 for r in rows if r["id"] in failed]  # header is line 1
    assert [r["id"] for r in index(tmp_path / "out")] == [r["id"] for r in rows if r["id"] not in failed]


def test_pcm_and_flac_hold_the_wav_samples(rendered_catalog, render_rows, tiny_bundle_dirs, tmp_path):
    catalog, one = rendered_catalog
    rows = render_rows[:3]
    small = write_csv_catalog(tmp_path / "catalog.csv", rows)
    render(small, tiny_bundle_dirs[0], tmp_path / "pcm", settings=Settings(format="pcm", max_frames=RENDER_MAX_FRAMES),
           workers=1, progress=False)
    for row in rows:
        with wave.open(str(one / f"{row['id']}.wav")) as w:
            samples = w.readframes(w.getnframes())
        assert (tmp_path / "pcm" / f"{row['id']}.pcm").read_bytes() == samples
    soundfile = pytest.importorskip("soundfile")  # installed by voxtral-edge[flac], which CI installs
    render(small, tiny_bundle_dirs[0], tmp_path / "flac", workers=1, progress=False,
           settings=Settings(format="flac", max_frames=RENDER_MAX_FRAMES))
    for row in rows:
        audio, rate = soundfile.read(tmp_path / "flac" / f"{row['id']}.flac", dtype="int16")
        with wave.open(str(one / f"{row['id']}.wav")) as w:
            assert rate == 24000 and audio.tobytes() == w.readframes(w.getnframes())


def test_flac_without_soundfile_is_a_usage_error(rendered_catalog, tiny_bundle_dirs, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "soundfile", None)  # makes `import soundfile` raise ImportError
    with pytest.raises(UsageError, match=r"voxtral-edge\[audio\]"):
        render(rendered_catalog[0], tiny_bundle_dirs[0], tmp_path / "out", settings=Settings(format="flac"))
    assert not (tmp_path / "out").exists()


# -- the catalog's checks -----------------------------------------------------------------------------------
HEADER = "id,text,voice,lang,seed\n"
GOOD = "a1,Hello there.,casual_male,en,\n"


@pytest.mark.parametrize("name, content, expected", [
    ("dup.csv", HEADER + GOOD + "b2,Bye.,fr_female,fr,\na1,Again.,casual_male,en,\n",
     "line 4: id 'a1' repeats line 2"),
    ("case.csv", HEADER + GOOD + "A1,Again.,casual_male,en,\n", "line 3: id 'A1' differs only in case from 'a1' on line 2"),
    ("up.csv", HEADER + GOOD + "../evil,Hi.,casual_male,en,\n", "line 3: id '../evil' is not a safe file name"),
    ("sep.csv", HEADER + "dir/a,Hi.,casual_male,en,\n", "line 2: id 'dir/a' is not a safe file name"),
    ("dots.csv", HEADER + "a..b,Hi.,casual_male,en,\n", "line 2: id 'a..b' is not a safe file name"),
    ("long.csv", HEADER + "a" * 101 + ",Hi.,casual_male,en,\n", "line 2: id 'aaaa"),
    ("missing.csv", "id,text,lang\na1,Hi.,en\n", "line 1: missing column voice"),
    ("unknown.csv", "id,text,voice,sede\na1,Hi.,casual_male,1\n", "line 1: unknown column 'sede'"),
    ("voice.csv", HEADER + GOOD + "b2,Hi.,nobody,en,\n", "line 3: unknown voice 'nobody'"),
    ("empty.csv", HEADER + GOOD + 'b2,"   ",casual_male,en,\n', "line 3: text is empty"),
    ("fields.csv", HEADER + "b2,Hi, there.,casual_male,en,\n", "line 2: 6 fields, the header has 5"),
    ("seed.csv", HEADER + "b2,Hi.,casual_male,en,1.5\n", "line 2: seed must be an integer, found '1.5'"),
    ("lang.csv", HEADER + GOOD + "b2,Hi.,casual_male,xx,\n", "line 3: lang 'xx': expected one of en, fr"),
    ("utf8.csv", (HEADER + GOOD).encode() + b"b2,caf\xe9,casual_male,fr,\n", "line 3: not valid UTF-8"),
    ("missing.jsonl", '{"id": "a1", "text": "Hi.", "voice": "casual_male"}\n\n{"id": "b2", "text": "Hi."}\n',
     "line 3: missing column voice"),
    ("steps.jsonl", '{"id": "a1", "text": "Hi.", "voice": "casual_male", "steps": 0}\n',
     "line 1: steps must be an integer from 1 to 64, found 0"),
    ("json.jsonl", '{"id": "a1", "text": "Hi.", "voice": "casual_male"}\n{"id": "b2",\n', "line 2: not valid JSON"),
    ("type.jsonl", '{"id": 7, "text": "Hi.", "voice": "casual_male"}\n', "line 1: id must be a string"),
    ("nothing.csv", HEADER, "line 1: no items"),
])
def test_bad_catalogs_are_refused_with_the_line_named(tmp_path, tiny_bundle_dirs, name, content, expected):
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(UsageError) as e:
        render(path, tiny_bundle_dirs[0], tmp_path / "out", progress=False)
    assert f"{name} {expected}" in str(e.value)
    assert not (tmp_path / "out").exists()  # refused before any work


def test_every_bad_row_is_reported_at_once_and_the_cli_exits_2(tmp_path, tiny_bundle_dirs, capsys):
    path = tmp_path / "c.csv"
    path.write_text(HEADER + "a1,,casual_male,en,\n" + GOOD + "b/2,Hi.,casual_male,en,\n", encoding="utf-8")
    code = main(["render", str(path), "--bundle", str(tiny_bundle_dirs[0]), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and "2 bad rows" in err and "c.csv line 2: text is empty" in err and "c.csv line 4: id" in err


def test_a_catalog_with_a_byte_order_mark_and_quoted_newlines(tmp_path):
    path = tmp_path / "c.csv"
    path.write_bytes(b"\xef\xbb\xbf" + (HEADER + 'a1,"Two\nlines.",casual_male,en,3\nb2,Hi.,casual_male,,\n').encode())
    items = load_catalog(path, voices={"casual_male"})
    assert [(i.id, i.text, i.line, i.lang, i.seed) for i in items] == [
        ("a1", "Two\nlines.", 2, "en", 3), ("b2", "Hi.", 4, None, None)]
    assert items[1].effective_seed == int.from_bytes(hashlib.sha256(b"b2").digest()[:8], "big") >> 1


def test_two_runs_cannot_share_an_output_folder(rendered_catalog, tiny_bundle_dirs, tmp_path):
    from voxtral_edge.render.output import OutputDir

    holder = OutputDir(tmp_path / "out")
    try:
        with pytest.raises(UsageError, match="another render is writing"):
            render(rendered_catalog[0], tiny_bundle_dirs[0], tmp_path / "out", progress=False)
    finally:
        holder.close()


def test_the_default_worker_count_fits_the_memory(monkeypatch, render_rows, tiny_bundle_dirs, tmp_path):
    from voxtral_edge.render import MemoryWarning, driver

    catalog = write_csv_catalog(tmp_path / "catalog.csv", render_rows[:3])
    monkeypatch.setattr(driver, "usable_cores", lambda: 4)
    monkeypatch.setattr(driver, "available_memory", lambda: 1)  # nothing free: one worker, and a warning
    with pytest.warns(MemoryWarning, match=r"1 worker\(s\) of this bundle need about"):
        summary = render(catalog, tiny_bundle_dirs[0], tmp_path / "out", settings=SETTINGS, progress=False)
    assert summary.workers == 1 and summary.peak_rss > 0
    assert np.isclose(summary.audio_s, 3 * RENDER_MAX_FRAMES * 0.08)


def test_ray_without_the_fleet_extra_is_a_usage_error(monkeypatch, render_rows, tiny_bundle_dirs, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # makes `import ray` raise ImportError
    catalog = write_csv_catalog(tmp_path / "catalog.csv", render_rows[:1])
    code = main(["render", str(catalog), "--bundle", str(tiny_bundle_dirs[0]), "--out", str(tmp_path / "out"), "--ray"])
    assert code == 2 and "pip install 'voxtral-edge[fleet]'" in capsys.readouterr().err
    assert not (tmp_path / "out" / "index.jsonl").read_text()  # nothing rendered, nothing claimed


def test_clips_at_another_rate_speed_loudness_and_format(tiny_bundle_dirs, tmp_path):
    import io

    import pyloudnorm
    import soundfile
    from scipy.signal import resample_poly

    catalog = tmp_path / "catalog.csv"
    write_csv_catalog(catalog, [{"id": f"c{i}", "text": text, "voice": "casual_male", "lang": "en", "seed": i}
                                for i, text in enumerate(["Turn left.", "Keep right at the fork."])])
    settings = Settings(format="flac", sample_rate=16000, speed=1.25, loudness=-30.0, max_frames=25)
    render(catalog, tiny_bundle_dirs[0], tmp_path / "out", settings=settings, workers=1, progress=False)
    records = [json.loads(line) for line in (tmp_path / "out" / "index.jsonl").read_text().splitlines()]
    assert len(records) == 2 and all(r["settings"]["sample_rate"] == 16000 and r["settings"]["speed"] == 1.25
                                     for r in records)
    for r in records:
        audio, rate = soundfile.read(io.BytesIO((tmp_path / "out" / r["file"]).read_bytes()))
        assert r["file"].endswith(".flac") and rate == 16000
        assert len(audio) == round(r["frames"] * 1920 / 1.25 * 16000 / 24000)
        assert pyloudnorm.Meter(rate).integrated_loudness(audio) == pytest.approx(-30.0, abs=0.5)
        assert 20 * np.log10(np.abs(resample_poly(audio, 4, 1)).max()) <= -1.0
