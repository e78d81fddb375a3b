"""SSML and marks: parsing (errors with positions, hostile XML refused unexpanded), spans through the
runtime (breaks are exact silence, marks sit where the chunks before them end), timings on the output."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from voxtral_edge.chain import Output
from voxtral_edge.runtime import Synthesizer
from voxtral_edge.speech import Speech
from voxtral_edge.text import ssml
from voxtral_edge.text.lexicon import Lexicon
from voxtral_edge.errors import UsageError


@pytest.fixture(scope="module")
def synth(tiny_bundle_dirs):
    return Synthesizer.open(tiny_bundle_dirs[0])


@pytest.mark.parametrize("markup, line, column, what", [
    ("<speak>Hello <break time='3s'></speak>", 1, 33, "mismatched tag"),
    ("<speak>\n  a &amp b\n</speak>", 2, 9, "not well-formed"),
    ("<speak>\n<p>x</p>\n<s>y</speak>", 3, 7, "mismatched tag"),
    ("<speak>a &nbsp; b</speak>", 1, 10, "undefined entity"),
    ("<speak>\n  <break time='3 parsecs'/></speak>", 2, 3, "expected a duration"),
    ("<speak><say-as interpret-as='cardinal'>twelve</say-as></speak>", 1, 8, "expected a whole number"),
    ("<speak><prosody rate='400%'>x</prosody></speak>", 1, 8, "from 0.5 to 2"),
])
def test_malformed_markup_names_line_and_column(markup, line, column, what):
    with pytest.raises(ssml.SsmlError, match=what) as e:
        ssml.parse(markup)
    assert (e.value.line, e.value.column) == (line, column)
    assert f"line {line}, column {column}" in str(e.value)


BILLION_LAUGHS = """<?xml version="1.0"?>
<!DOCTYPE speak [
 <!ENTITY lol "lol">
 <!ENTITY lol1 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol2 "&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
 <!ENTITY lol9 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
]>
<speak>&lol9;</speak>"""


@pytest.mark.parametrize("markup", [
    BILLION_LAUGHS,
    '<!DOCTYPE speak [<!ENTITY xxe SYSTEM "file:///etc/passwd">]><speak>&xxe;</speak>',
    '<!DOCTYPE speak [<!ENTITY % p SYSTEM "http://127.0.0.1:9/evil.dtd"> %p;]><speak>hi</speak>',
    '<!DOCTYPE speak SYSTEM "http://127.0.0.1:9/speak.dtd"><speak>hi</speak>',
])
def test_hostile_xml_is_refused_without_expansion(markup):
    with pytest.raises(ssml.SsmlError, match="not accepted") as e:
        ssml.parse(markup)
    assert e.value.line is not None
    assert "lol" not in str(e.value) and "root:" not in str(e.value)  # nothing expanded or read into the message


def test_the_subset_becomes_spans():
    doc = ('<speak xmlns="http://www.w3.org/2001/10/synthesis" xml:lang="en-US"><p>Turn <mark name="turn"/>left.'
           '</p><break time="300ms"/><break strength="strong"/><lang xml:lang="fr-FR">Bonjour.</lang>'
           '<prosody rate="slow">Slowly.</prosody><s><sub alias="Doctor">Dr.</sub> Who.</s>'
           '<s><say-as interpret-as="characters">AB1</say-as></s></speak>')
    assert ssml.parse(doc) == [
        ssml.Text("Turn", "en", 1.0, True), ssml.Mark("turn"), ssml.Text("left.", "en"),
        ssml.Break(300.0), ssml.Break(750.0), ssml.Text("Bonjour.", "fr", 1.0, True),
        ssml.Text("Slowly.", "en", 0.8, True), ssml.Text("Doctor Who.", "en", 1.0, True),
        ssml.Text("A B one", "en", 1.0, True)]


def test_unknown_elements_are_spoken_as_text_with_one_warning():
    with pytest.warns(ssml.SsmlWarning, match="<emphasis> is not in the supported SSML subset") as caught:
        spans = ssml.parse("<speak><emphasis>very</emphasis> <emphasis>much</emphasis> so</speak>")
    assert len([w for w in caught if issubclass(w.category, ssml.SsmlWarning)]) == 1
    assert spans == [ssml.Text("very much so", None, 1.0, True)]


def test_marks_sit_where_the_chunks_before_them_end(synth):
    doc = ('<speak><s>Turn left.</s><mark name="a"/><break time="250ms"/><mark name="b"/><s>Then right.</s>'
           '<mark name="end"/></speak>')
    u = synth.start(doc, "casual_male", seed=0)  # the random model ends each piece at its runaway guard
    boundaries, total, silences = {0}, 0, []
    for chunk in synth.chunks(u):
        if len(chunk) and not np.any(chunk):
            silences.append((total, len(chunk)))
        total += len(chunk)
        boundaries.add(total)
    marks = {e.name: e.sample for e in u.events if e.kind == "mark"}
    sentences = [e.sample for e in u.events if e.kind == "sentence"]
    assert set(marks.values()) | set(sentences) <= boundaries  # each one is the sum of the chunks before it
    assert sentences[0] == 0 and marks["end"] == total
    assert marks["b"] - marks["a"] == 250 * 24 and silences == [(marks["a"], 250 * 24)]  # exact silence
    assert (marks["a"] - sentences[0]) % 1920 == 0 and (marks["end"] - marks["b"]) % 1920 == 0  # whole frames


@pytest.mark.parametrize("rate, speed", [(24000, 1.0), (16000, 1.0), (48000, 1.5), (8000, 0.8)])
def test_timings_apply_the_rate_and_speed(synth, rate, speed):
    doc = '<speak><s>One.</s><mark name="m"/><break time="400ms"/><s>Two.</s></speak>'
    speech = Speech(synth, doc, "casual_male", Output(rate, speed=speed, format="pcm"), seed=0)
    pcm = np.frombuffer(b"".join(speech), "<i2")
    model = {e.name: e.sample for e in speech.utterance.events if e.kind == "mark"}
    m = next(t for t in speech.timings if t.kind == "mark")
    assert m.sample == round(model["m"] / speed * rate / 24000) and m.time_s == pytest.approx(m.sample / rate)
    edge = rate // 20  # WSOLA's frame and search (50 ms) may carry sound that far into the silence
    gap = pcm[m.sample + edge:m.sample + int(0.4 / speed * rate) - edge]  # the break, inside its edges
    assert len(gap) and np.abs(gap).max() <= 2  # silence at the mark's place in the output
    if speed == 1 and rate == 24000:
        assert m.sample == model["m"]


def test_lexicon_respells_before_normalization(synth, tmp_path):
    path = tmp_path / "lexicon.toml"
    path.write_text('[en]\n"Kilda" = "Kill-dah"\n[en.regex]\n\'\\bSt\\.\\s+(?=K)\' = "Saint "\n', encoding="utf-8")
    lexicon = Lexicon.load(path)
    spoken = synth.spoken_text("Turn onto St. Kilda Road in 200 m.", "casual_male", lexicon=lexicon)
    assert spoken == "Turn onto Saint Kill-dah Road in two hundred metres."
    result = synth.synthesize("St. Kilda.", "casual_male", seed=0, max_frames=5, lexicon=lexicon)
    assert result.spoken_text == "Saint Kill-dah."


def test_a_bad_lexicon_names_the_file_and_entry(tmp_path):
    path = tmp_path / "lexicon.toml"
    path.write_text("[xx]\n'a' = 'b'\n", encoding="utf-8")
    with pytest.raises(UsageError, match=r"lexicon.toml: table \[xx\]: expected a language"):
        Lexicon.load(path)
    path.write_text("[en.regex]\n'(' = 'b'\n", encoding="utf-8")
    with pytest.raises(UsageError, match=r"\[en.regex\] '\(': not a regular expression"):
        Lexicon.load(path)


def test_say_writes_the_rate_format_and_marks_asked(capsys, tiny_bundle_dirs, tmp_path):
    import io

    import soundfile

    from voxtral_edge.cli import main

    bundle = str(tiny_bundle_dirs[0])
    doc = '<speak><s>Turn left.</s><mark name="m"/><break time="200ms"/><s>Then right.</s></speak>'
    common = [doc, "--bundle", bundle, "--voice", "casual_male", "--seed", "0", "--max-frames", "300"]
    assert main(["say", *common, "-o", str(tmp_path / "a.flac"), "--sample-rate", "16000", "--speed", "0.8",
                 "--marks", str(tmp_path / "m.json")]) == 0
    audio, rate = soundfile.read(io.BytesIO((tmp_path / "a.flac").read_bytes()), dtype="int16")
    marks = json.loads((tmp_path / "m.json").read_text())
    assert rate == 16000 and [m["kind"] for m in marks] == ["sentence", "mark", "sentence"]
    here, then = marks[1]["sample"], marks[2]["sample"]
    edge = 800  # WSOLA's frame and search (50 ms) may carry sound that far into the silence
    assert then - here == round(0.2 / 0.8 * 16000) and not np.any(audio[here + edge:then - edge])
    f32 = subprocess.run([sys.executable, "-m", "voxtral_edge.cli", "say", *common, "-o", "-", "--sample-rate",
                          "16000", "--speed", "0.8", "--format", "f32"], capture_output=True, check=True).stdout
    f32 = np.frombuffer(f32, "<f4")
    assert len(f32) == len(audio) and np.abs(np.round(f32 * 32767) - audio).max() <= 1  # the same audio, as floats


def test_a_voice_loudness_is_measured_once_and_kept(synth, tmp_path, monkeypatch):
    from voxtral_edge.chain.loudness import integrated_loudness, voice_loudness

    store = tmp_path / "loudness.json"
    first = voice_loudness(synth, "casual_male", store)
    reference = synth.synthesize("Turn left in two hundred metres, then keep right at the fork.", "casual_male",
                                 seed=0)
    assert first == pytest.approx(integrated_loudness(reference.audio, reference.sample_rate), abs=1e-6)
    monkeypatch.setattr(type(synth), "synthesize", lambda *a, **k: pytest.fail("measured again"))
    assert voice_loudness(synth, "casual_male", store) == first
    assert json.loads(store.read_text()) == {"casual_male": first}
