"""The llama.cpp yardstick's pure logic: GGUF shape plan, vocabulary, cache name and report formatting.

Nothing here needs llama-cpp-python, gguf or a big file; timing is measured by the script itself.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import sys
from pathlib import Path

import pytest

_PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "llama_cpp_baseline.py"
_spec = importlib.util.spec_from_file_location("llama_cpp_baseline", _PATH)
baseline = importlib.util.module_from_spec(_spec)
# dataclasses look their module up in sys.modules while the module runs.
sys.modules[_spec.name] = baseline
_spec.loader.exec_module(baseline)


def by_name():
    return {spec.name: spec for spec in baseline.tensor_plan()}


def test_plan_has_the_llama_tensors_of_the_backbone():
    plan = baseline.tensor_plan()
    names = [spec.name for spec in plan]
    assert len(names) == len(set(names)) == 2 + 26 * 9 + 1
    assert names[0] == "token_embd.weight" and names[-1] == "output.weight"
    tensors = by_name()
    assert tensors["token_embd.weight"].shape == (8320, 3072)
    assert tensors["output.weight"].shape == (8320, 3072)
    assert tensors["blk.25.attn_q.weight"].shape == (32 * 128, 3072)
    assert tensors["blk.25.attn_k.weight"].shape == (8 * 128, 3072)
    assert tensors["blk.25.attn_v.weight"].shape == (8 * 128, 3072)
    assert tensors["blk.25.attn_output.weight"].shape == (3072, 32 * 128)
    assert tensors["blk.0.ffn_gate.weight"].shape == (9216, 3072)
    assert tensors["blk.0.ffn_up.weight"].shape == (9216, 3072)
    assert tensors["blk.0.ffn_down.weight"].shape == (3072, 9216)
    assert "blk.26.attn_q.weight" not in tensors


def test_matrices_are_q4_0_and_norms_f32():
    for spec in baseline.tensor_plan():
        if spec.name.endswith("norm.weight"):
            assert not spec.quantized and spec.shape == (3072,) and spec.nbytes == 4 * 3072
        else:
            assert spec.quantized and len(spec.shape) == 2
            assert spec.fan_in % baseline.Q4_0_BLOCK == 0
            assert spec.nbytes == spec.n_elements // 32 * 18


def test_parameter_count_and_size():
    plan = baseline.tensor_plan()
    # llama.cpp's llama_model_n_params reports this count for the written file.
    assert sum(spec.n_elements for spec in plan) == 3_077_471_232
    assert 1.72e9 < sum(spec.nbytes for spec in plan) < 1.74e9


def test_fan_in_is_the_input_dimension():
    tensors = by_name()
    assert tensors["blk.0.attn_output.weight"].fan_in == 4096
    assert tensors["blk.0.ffn_down.weight"].fan_in == 9216
    assert tensors["blk.0.attn_q.weight"].fan_in == 3072


def test_vocab_is_a_minimal_sentencepiece_vocabulary():
    tokens, scores, types = baseline.vocab(8320)
    assert len(tokens) == len(scores) == len(types) == 8320
    assert len(set(tokens)) == 8320
    assert tokens[:3] == ["<unk>", "<s>", "</s>"] and types[:3] == [2, 3, 3]
    # llama.cpp finds the newline as the byte token <0x0A>.
    assert tokens[3 + 0x0A] == "<0x0A>" and types[3 + 0x0A] == 6
    assert set(types[259:]) == {1}
    assert all(isinstance(s, float) for s in scores)
    assert all(isinstance(t, int) for t in types)


def test_cache_name_follows_the_shape():
    name = baseline.gguf_filename()
    assert name == baseline.gguf_filename(baseline.released_backbone())
    assert name.endswith(".gguf")
    assert baseline.gguf_filename(dataclasses.replace(baseline.VOXTRAL_BACKBONE, n_layers=2)) != name


def fake_result() -> dict:
    return {
        "model": "llama 26L 3072d Q4_0 (Voxtral TTS backbone, random)",
        "decode_ms_per_token": 61.25,
        "decode_ms_per_token_min": 59.5,
        "prefill_tokens_per_s": 41.9,
        "prefill_tokens_per_s_best": 42.5,
        "prefill_ms": [4770.0, 4710.0, 4780.0],
        "decode_ms_per_token_samples": [61.25, 59.5, 62.0],
        "prompt_tokens": 200,
        "decode_tokens": 32,
        "repeats": 3,
        "threads": 2,
        "cores": 2,
        "cpu": "AMD EPYC",
        "llama_cpp_version": "0.3.36",
        "load_avg_1min_before": 0.1,
        "n_params": 3_077_471_232,
        "gguf_path": "work/llama-baseline/x.gguf",
        "gguf_bytes": 1_731_850_368,
    }


def test_table_has_a_pp_and_a_tg_row():
    table = baseline.format_table(fake_result())
    lines = table.splitlines()
    header, rule, pp, tg = lines[:4]
    assert [c.strip() for c in header.strip("|").split("|")] == [
        "model", "size GB", "params", "threads", "test", "unit", "median", "best",
    ]
    assert header.count("|") == rule.count("|") == pp.count("|") == tg.count("|")
    pp_cells = [c.strip() for c in pp.strip("|").split("|")]
    tg_cells = [c.strip() for c in tg.strip("|").split("|")]
    assert pp_cells[1:] == ["1.73", "3.08 B", "2", "pp200", "t/s", "41.90", "42.50"]
    assert tg_cells[1:] == ["1.73", "3.08 B", "2", "tg32", "ms/token", "61.25", "59.50"]
    assert "AMD EPYC" in table and "0.3.36" in table and "1731850368 bytes" in table


def test_json_lines_one_object_per_test_with_provenance():
    lines = baseline.json_lines(fake_result()).splitlines()
    assert len(lines) == 2
    pp, tg = (json.loads(line) for line in lines)
    assert (pp["test"], pp["unit"], pp["median"], pp["best"]) == ("pp200", "t/s", 41.9, 42.5)
    assert (tg["test"], tg["unit"], tg["median"], tg["best"]) == ("tg32", "ms/token", 61.25, 59.5)
    assert pp["samples_ms"] == [4770.0, 4710.0, 4780.0]
    assert tg["samples_ms_per_token"] == [61.25, 59.5, 62.0]
    for line in (pp, tg):
        assert line["cpu"] == "AMD EPYC" and line["threads"] == 2 and line["gguf_bytes"] == 1_731_850_368
        assert line["decode_ms_per_token"] == 61.25 and line["prefill_tokens_per_s"] == 41.9


def test_missing_backends_raise_the_install_hint(monkeypatch):
    # A None entry in sys.modules makes the import raise ImportError.
    monkeypatch.setitem(sys.modules, "llama_cpp", None)
    with pytest.raises(ImportError, match="pip install llama-cpp-python gguf"):
        baseline._import_backends()


def test_script_exits_with_a_one_line_hint_when_backends_are_missing(monkeypatch):
    monkeypatch.setitem(sys.modules, "llama_cpp", None)
    with pytest.raises(SystemExit) as exit_info:
        baseline.main([])
    message = str(exit_info.value)
    assert "pip install llama-cpp-python gguf" in message and "\n" not in message
