"""tekken.json reading, the Hugging Face conversion and the speech prompt, checked against mistral-common."""

from __future__ import annotations

import base64
import functools
import importlib.resources
import json
from pathlib import Path
from types import SimpleNamespace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from mistral_common.protocol.speech.request import SpeechRequest
from mistral_common.tokens.tokenizers.mistral import MistralTokenizer
from mistral_common.tokens.tokenizers.tekken import Tekkenizer
from tokenizers import Tokenizer

from voxtral_edge.errors import TokenizerError
from voxtral_edge.export.config import RELEASED_VOICES
from voxtral_edge.export.tekken_gen import NAMED_SPECIAL_IDS, write_tekken
from voxtral_edge.prompt import SpeechSpecialIds, speech_prompt, tekken_speech_prompt, voice_positions
from voxtral_edge.tekken import Tekken, byte_level

SHIPPED_DIR = Path(str(importlib.resources.files("mistral_common") / "data"))
TINY = dict(n_special=100, vocab_size=2100, num_vocab_tokens=2400,
            voices={"neutral_female": 7, "fr_male": 3, "ar_male": 1, "hi_female": 12})
FULL = dict(n_special=1000, vocab_size=131072, num_vocab_tokens=150000, voices=RELEASED_VOICES)

SENTENCES = {
    "en": ["The quick brown fox jumps over the lazy dog while the children laugh in the garden.",
           "Could you remind me to call the dentist at half past four on Thursday?"],
    "fr": ["Je voudrais réserver une table pour deux personnes ce soir, près de la fenêtre.",
           "L'été dernier, nous sommes allés en Bretagne et il a plu presque tous les jours."],
    "es": ["¿Puedes decirme cuánto cuesta el billete de ida y vuelta a Sevilla?",
           "Los niños aprendieron a nadar en el lago durante las vacaciones de verano."],
    "pt": ["Não se esqueça de levar o guarda-chuva, a previsão diz que vai chover à tarde.",
           "O João comprou pão fresco na padaria e voltou para casa às oito horas."],
    "it": ["Potresti abbassare il volume della radio? Sto cercando di concentrarmi sulla guida.",
           "Perché non andiamo a mangiare una pizza stasera in quel ristorante vicino al duomo?"],
    "nl": ["Het museum is op maandag gesloten, maar je kunt dinsdag zonder reservering binnenlopen.",
           "Mijn buurman heeft een nieuwe fiets gekocht en rijdt er elke ochtend mee naar zijn werk."],
    "de": ["Könnten Sie mir bitte sagen, wie ich am schnellsten zum Hauptbahnhof komme?",
           "Die Straßenbahn fährt über die Brücke, während die Möwen über dem Fluss kreisen."],
    "hi": ["क्या आप मुझे बता सकते हैं कि सबसे नज़दीकी पेट्रोल पंप कहाँ है?",
           "बच्चों ने स्कूल की छुट्टियों में दादी के गाँव जाकर बहुत मज़े किए।"],
    "ar": ["هل يمكنك أن تخبرني كم الساعة الآن من فضلك؟",
           "سافرنا بالسيارة إلى الشاطئ وتناولنا الغداء في مطعم صغير قرب البحر."],
}
SPECIAL_LITERALS = "[AUDIO][BEGIN_AUDIO] <s> </s> [INST] hi [/INST] <unk> <SPECIAL_20> [REPEAT_AUDIO_TEXT]"
TEXTS = [s for pair in SENTENCES.values() for s in pair] + [
    "Good morning ☀️! 👩‍💻 codes, 👨‍👩‍👧‍👦 stay home, 🏳️‍🌈 🇧🇷 🇮🇳 🇸🇦 🇳🇱 🇩🇪 flags 🤖🎉 👍🏽👋🏿 ❤️‍🔥",
    "Call 0800 123 456 before 23:59 on 31/12/2025; total €1,234.56 (≈ $1,337.00), 3.14159e-10, 1st 2nd 100000000000.",
    "١٢٣٤٥ ٦٧٨٩٠ and ०१२३४५६७८९ and ①②③ ½ Ⅻ",
    "Meeting at 10h with Jürgen, María, Zoë and अनिल — then مرحبا 😀 to 王小明, Ελένη and Дмитрий.",
    "line one\nline two\r\n\r\nindented\n\tTabbed\t\tcolumns   multiple    spaces  \n\n\n   trailing   ",
    "  leading spaces", "\n", " ", "\t \t", "", "a", "ALL CAPS and CamelCaseWords mixedCASE iPhone McDonald's",
    "https://example.com/path?q=1&x=2 def f(x): return x**2  # comment",
    SPECIAL_LITERALS,
]
LONG = ("".join(TEXTS) * 20)[:20000]
STRESS = " " * 3000 + "x" + "!" * 3000 + "ab" * 1500 + "\n" * 500 + "9" * 1000


def released_like(src: Path, dst: Path) -> Path:
    """The shipped 240911 vocabulary in the released Voxtral TTS layout (v7, named specials, 20 voices)."""
    data = json.loads(src.read_text(encoding="utf-8"))
    data.pop("image")
    data["config"]["version"] = "v7"
    names = {i: n for n, i in NAMED_SPECIAL_IDS.items()}
    data["special_tokens"] = [{"rank": i, "token_str": names.get(i, f"<SPECIAL_{i}>"), "is_control": True}
                              for i in range(1000)]
    data["audio"] = {"sampling_rate": 24000, "frame_rate": 12.5, "chunk_length_s": 30.0,
                     "audio_encoding_config": {"num_mel_bins": 128, "hop_length": 160, "window_size": 400},
                     "voice_num_audio_tokens": RELEASED_VOICES}
    dst.write_text(json.dumps(data), encoding="utf-8")
    return dst


@pytest.fixture(scope="module")
def paths(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tekken")
    (root / "released").mkdir()
    return {
        "tekken_240718": SHIPPED_DIR / "tekken_240718.json",
        "tekken_240911": SHIPPED_DIR / "tekken_240911.json",
        "tiny": write_tekken(root / "tiny" / "tekken.json", **TINY),
        "full": write_tekken(root / "full" / "tekken.json", **FULL),
        "released": released_like(SHIPPED_DIR / "tekken_240911.json", root / "released" / "tekken.json"),
    }


@pytest.fixture(scope="module")
def load(paths, tmp_path_factory):
    """load(name): the file's Tekken, its HF tokenizer (in memory and reloaded) and the oracle; built once."""
    out = tmp_path_factory.mktemp("hf")

    @functools.cache
    def _load(name: str) -> SimpleNamespace:
        tekken = Tekken.from_file(paths[name])
        hf = tekken.to_hf_tokenizer()
        saved = tekken.save_hf_tokenizer(out / f"{name}.tokenizer.json")
        return SimpleNamespace(path=paths[name], tekken=tekken, hf=hf, reloaded=Tokenizer.from_file(str(saved)),
                               mc=Tekkenizer.from_file(paths[name]))

    return _load


def hf_ids(tok: Tokenizer, text: str) -> list[int]:
    return tok.encode(text, add_special_tokens=False).ids


@pytest.mark.parametrize("name", ["tekken_240718", "tekken_240911", "tiny", "full"])
def test_text_parity_with_mistral_common(load, name):
    t = load(name)
    n_ids = n_bytes = 0
    for text in [*TEXTS, LONG, STRESS]:
        expected = t.mc.encode(text, bos=False, eos=False)
        assert t.tekken.encode(text) == expected, text
        assert hf_ids(t.hf, text) == expected, text
        assert hf_ids(t.reloaded, text) == expected, text
        assert t.hf.decode(expected) == text
        n_ids, n_bytes = n_ids + len(expected), n_bytes + len(text.encode())
    assert n_ids < 0.8 * n_bytes  # real merges happened, not byte-by-byte encoding


@pytest.mark.parametrize("name", ["tekken_240911", "tiny"])
def test_special_token_strings_are_plain_text(load, name):
    t = load(name)
    ids = t.tekken.encode(SPECIAL_LITERALS)
    assert ids == t.mc.encode(SPECIAL_LITERALS, bos=False, eos=False)
    assert min(ids) >= t.tekken.n_special
    assert t.hf.get_added_tokens_decoder() == {}


@pytest.mark.parametrize("name", ["tekken_240911", "tiny"])
def test_hf_ids_are_offset_by_n_special(load, name):
    t = load(name)
    n, vocab = t.tekken.n_special, t.reloaded.get_vocab()
    assert len(vocab) == t.tekken.vocab_size - n
    assert sorted(vocab.values()) == list(range(n, t.tekken.vocab_size))
    assert [vocab[byte_level(bytes([b]))] for b in range(256)] == [n + b for b in range(256)]
    assert t.mc.encode("A", bos=False, eos=False) == [n + ord("A")] == hf_ids(t.reloaded, "A")


def test_lone_surrogate_is_replaced_like_tiktoken(load):
    t = load("tekken_240911")
    assert t.tekken.encode("a\ud800b") == t.mc.encode("a\ud800b", bos=False, eos=False)


@pytest.mark.parametrize("name", ["tekken_240911", "full"])
@settings(max_examples=200, deadline=None)
@given(text=st.text(st.characters(exclude_categories=("Cs",)), max_size=300))
def test_arbitrary_text_parity(load, name, text):
    t = load(name)
    expected = t.mc.encode(text, bos=False, eos=False)
    assert t.tekken.encode(text) == expected
    assert hf_ids(t.reloaded, text) == expected


@pytest.mark.parametrize("name,spec", [("tiny", TINY), ("full", FULL)])
def test_generated_file_has_released_layout(paths, name, spec):
    data = json.loads(paths[name].read_text(encoding="utf-8"))
    n_special, n_regular = spec["n_special"], spec["vocab_size"] - spec["n_special"]
    assert data["config"] == {"pattern": json.loads((SHIPPED_DIR / "tekken_240911.json").read_text())
                              ["config"]["pattern"], "num_vocab_tokens": spec["num_vocab_tokens"],
                              "default_vocab_size": spec["vocab_size"], "default_num_special_tokens": n_special,
                              "version": "v7"}
    assert len(data["vocab"]) == spec["num_vocab_tokens"] > n_regular
    tokens = [base64.b64decode(e["token_bytes"]) for e in data["vocab"]]
    assert [e["rank"] for e in data["vocab"]] == list(range(len(tokens)))
    assert tokens[:256] == [bytes([b]) for b in range(256)]
    assert len(set(tokens)) == len(tokens)
    for entry, token in zip(data["vocab"], tokens):
        assert entry.keys() == {"rank", "token_bytes", "token_str"}
        try:
            assert entry["token_str"] == token.decode("utf-8")
        except UnicodeDecodeError:
            assert entry["token_str"] is None
    rank = {t: i for i, t in enumerate(tokens)}
    for i, token in enumerate(tokens[256:], 256):  # every token is a merge of two earlier tokens
        assert any(rank.get(token[:k], i) < i and rank.get(token[k:], i) < i for k in range(1, len(token)))
    specials = data["special_tokens"]
    assert [s["rank"] for s in specials] == list(range(n_special))
    assert {s["token_str"]: s["rank"] for s in specials if s["token_str"] in NAMED_SPECIAL_IDS} == NAMED_SPECIAL_IDS
    assert data["audio"] == {"sampling_rate": 24000, "frame_rate": 12.5, "chunk_length_s": 30.0,
                             "audio_encoding_config": {"num_mel_bins": 128, "hop_length": 160, "window_size": 400},
                             "voice_num_audio_tokens": spec["voices"]}


def test_generated_vocab_is_learned_and_seeded(tmp_path, load):
    a = write_tekken(tmp_path / "a.json", **TINY)
    b = write_tekken(tmp_path / "b.json", **TINY)
    c = write_tekken(tmp_path / "c.json", **TINY, seed=1)
    assert a.read_bytes() == b.read_bytes()
    va, vc = (json.loads(p.read_text())["vocab"] for p in (a, c))
    assert va[:1000] == vc[:1000] and va != vc  # learned merges are fixed, the seed picks the filler tokens
    tiny = load("tiny").tekken
    for word in [" Bauarbeiten", " vélo", " الحديقة", " पार्क"]:  # corpus words: one token each
        assert len(tiny.encode(word)) == 1, word


@pytest.mark.parametrize("name", ["tiny", "full"])
def test_speech_prompt_parity_with_mistral_common(load, name):
    t = load(name)
    oracle = MistralTokenizer.from_file(str(t.path))
    voices = list(t.tekken.voice_num_audio_tokens)
    for i, text in enumerate([*TEXTS, LONG]):
        for voice in (voices[i % len(voices)], voices[(3 * i + 1) % len(voices)]):
            expected = oracle.encode_speech_request(SpeechRequest(input=text, voice=voice)).tokens
            assert tekken_speech_prompt(t.tekken, text, voice) == expected, (text, voice)


@pytest.mark.parametrize("name", ["tiny", "full"])
def test_speech_prompt_structure_follows_the_file(load, name):
    t = load(name)
    data = json.loads(t.path.read_text(encoding="utf-8"))
    by_name = {s["token_str"]: s["rank"] for s in data["special_tokens"]}
    ids = SpeechSpecialIds.from_tekken(t.tekken)
    assert ids == SpeechSpecialIds(bos=by_name["<s>"], audio=by_name["[AUDIO]"],
                                   begin_audio=by_name["[BEGIN_AUDIO]"],
                                   next_audio_text=by_name["[NEXT_AUDIO_TEXT]"],
                                   repeat_audio_text=by_name["[REPEAT_AUDIO_TEXT]"])
    for voice, count in data["audio"]["voice_num_audio_tokens"].items():
        text = SENTENCES["de"][0]
        prompt = tekken_speech_prompt(t.tekken, text, voice)
        run = voice_positions(prompt, ids)
        assert (run.start, run.stop - run.start) == (2, count)
        assert set(prompt[run]) == {by_name["[AUDIO]"]}
        assert prompt[:2] == [by_name["<s>"], by_name["[BEGIN_AUDIO]"]]
        assert prompt[run.stop] == by_name["[NEXT_AUDIO_TEXT]"]
        assert prompt[run.stop + 1:-2] == t.mc.encode(text, bos=False, eos=False)
        assert prompt[-2:] == [by_name["[REPEAT_AUDIO_TEXT]"], by_name["[BEGIN_AUDIO]"]]


def test_released_layout_hello_example(paths):
    tekken = Tekken.from_file(paths["released"])
    expected = [1, 25, *[24] * 67, 36, 22177, 1046, 35, 25]
    assert tekken_speech_prompt(tekken, "Hello.", "ar_male") == expected
    oracle = MistralTokenizer.from_file(str(paths["released"]))
    assert oracle.encode_speech_request(SpeechRequest(input="Hello.", voice="ar_male")).tokens == expected
    assert tekken.vocab_size == 131072 and tekken.n_special == 1000
    assert (tekken.sampling_rate, tekken.frame_rate) == (24000, 12.5)


def test_speech_prompt_helpers(load):
    ids = SpeechSpecialIds.from_tekken(load("tiny").tekken)
    assert SpeechSpecialIds.from_dict(json.loads(json.dumps(ids.to_dict()))) == ids
    assert ids.to_dict() == {"bos": 1, "audio": 24, "begin_audio": 25, "next_audio_text": 36,
                             "repeat_audio_text": 35}
    with pytest.raises(TokenizerError, match="begin_audio"):
        SpeechSpecialIds.from_dict({k: v for k, v in ids.to_dict().items() if k != "begin_audio"})
    assert speech_prompt([500, 501], 0, ids) == [1, 25, 36, 500, 501, 35, 25]
    assert voice_positions(speech_prompt([], 4, ids), ids) == slice(2, 6)
    with pytest.raises(ValueError):
        voice_positions([1, 24, 24, 36], ids)
    with pytest.raises(ValueError):
        speech_prompt([], -1, ids)


def _missing_pattern(d):
    del d["config"]["pattern"]


def _rank_out_of_order(d):
    d["vocab"][300]["rank"], d["vocab"][301]["rank"] = 301, 300


def _duplicate_token(d):
    d["vocab"][400]["token_bytes"] = d["vocab"][300]["token_bytes"]


def _not_single_bytes(d):
    d["vocab"][65]["token_bytes"] = base64.b64encode(b"B").decode()


def _special_rank_too_big(d):
    d["special_tokens"][5]["rank"] = 100


def _special_rank_repeated(d):
    d["special_tokens"][5]["rank"] = 4


def _vocab_size_too_big(d):
    d["config"]["default_vocab_size"] = 2600


def _no_begin_audio(d):
    d["special_tokens"][25]["token_str"] = "[SOMETHING_ELSE]"


def _no_audio(d):
    del d["audio"]


# oracle_rejects: mistral-common refuses the file too (it does not check special token ranks).
@pytest.mark.parametrize("mutate,problem,voice,oracle_rejects", [
    (_missing_pattern, "'config.pattern' is missing", "fr_male", True),
    (_rank_out_of_order, "vocab entry 300 has rank 301", "fr_male", True),
    (_duplicate_token, "vocab entry 400 repeats the token bytes", "fr_male", True),
    (_not_single_bytes, "first 256 tokens must be the single bytes", "fr_male", True),
    (_vocab_size_too_big, "default_vocab_size 2600 > 2400 vocab entries + 100 special tokens", "fr_male", True),
    (_special_rank_too_big, "'rank' in 0..99", "fr_male", False),
    (_special_rank_repeated, "repeats a name or a rank", "fr_male", False),
    (_no_begin_audio, "special token '[BEGIN_AUDIO]' is not defined", "fr_male", False),
    (_no_audio, "no 'audio' section", "fr_male", False),
    (lambda d: None, "unknown voice 'nobody'; known voices: neutral_female, fr_male, ar_male, hi_female", "nobody",
     False),
])
def test_errors_name_the_file_and_the_problem(paths, tmp_path, mutate, problem, voice, oracle_rejects):
    data = json.loads(paths["tiny"].read_text(encoding="utf-8"))
    mutate(data)
    path = tmp_path / "tekken.json"
    path.write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(TokenizerError) as err:
        tekken_speech_prompt(Tekken.from_file(path), "Hallo Welt.", voice)
    assert str(err.value).startswith(f"{path}: ")
    assert problem in str(err.value)
    if oracle_rejects:
        with pytest.raises((AssertionError, KeyError)):
            Tekkenizer.from_file(path)
