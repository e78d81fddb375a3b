"""Device profiles: every shipped one loads and says where each hardware figure comes from; every mistake is a
ConfigError naming file and key; profiles of the format before issue 24 still load. No timing."""

from __future__ import annotations

import pytest

from voxtral_edge.errors import ConfigError
from voxtral_edge.manifest import PLAN_NAMES
from voxtral_edge.profiles import ISAS, MEMORY_CLASSES, STATUSES, list_profiles, load_profile, reference_devices
from voxtral_edge.sessions import PROVIDERS

SHIPPED = {"x86-avx2", "x86-avx512", "raspberry-pi-5", "qualcomm-sa8155p", "qualcomm-sa8295p",
           "qualcomm-sa8255p", "renesas-rcar-h3", "nvidia-jetson-orin",
           # issue 24: the users we name
           "qualcomm-sa8775p", "qualcomm-x-elite", "qualcomm-8-elite", "apple-m4-laptop", "intel-core-ultra-laptop",
           "amd-ryzen-ai-laptop"}

GOOD = """\
name = "board"
description = "a test board"
[runtime]
threads = 4
plan = "int4"
steps = 7
cfg = 1.2
max_context = 2048
providers = ["cpu"]
chunk_frames = 4
[hardware]
memory = "LPDDR4X, 32-bit"
memory_bandwidth_gbs = 10.0
memory_class = "arm-soc"
isa = "arm-dotprod"
clusters = [{ count = 4, core = "Cortex-A76", ghz = 2.0, int8_ops_per_cycle = 64, fp32_flops_per_cycle = 16 }]
[[hardware.source]]
status = "assumed"
what = "everything"
title = "a test"
"""
LEGACY = GOOD[:GOOD.index("[hardware]")] + """[hardware]
cores = 4
memory_bandwidth_gbs = 10.0
fp32_gflops = 10.0
int8_gops = 40.0
"""


# -- profiles ----------------------------------------------------------------------------------------

def test_every_shipped_profile_loads():
    profiles = list_profiles()
    assert {p.name for p in profiles} == SHIPPED
    for p in profiles:
        assert p.source.endswith(f"{p.name}.toml") and p.description
        assert p.plan in PLAN_NAMES and p.threads <= p.hardware.cores
        assert set(p.providers) <= set(PROVIDERS) and p.providers[-1] == "cpu"
        assert load_profile(p.name) == p


def test_every_hardware_figure_says_where_it_comes_from():
    devices = [p.hardware for p in list_profiles()] + reference_devices()
    assert len({d.name for d in devices}) == len(devices) >= len(SHIPPED) + 5
    for d in devices:
        assert d.memory_class in MEMORY_CLASSES and d.isa in ISAS and d.clusters and d.memory
        assert d.sources and all(s.status in STATUSES and s.title and s.what for s in d.sources)
        for r in d.llama_cpp:
            assert r.status in STATUSES and r.title and r.test in ("tg", "pp") and r.read_bytes <= 2 * 4.5 * r.params
            assert r.status == "measured" or r.url.startswith("https://")
    # the reference devices exist for their runs: every one has a decode run
    assert all(any(r.test == "tg" for r in d.llama_cpp) for d in reference_devices())


def test_profile_from_a_path(tmp_path):
    path = tmp_path / "board.toml"
    path.write_text(GOOD)
    p = load_profile(path)
    assert (p.name, p.threads, p.cfg, p.providers, p.memory_bandwidth_gbs) == ("board", 4, 1.2, ("cpu",), 10.0)
    assert p.hardware.core_ops() == [2e9 * 64] * 4 and p.hardware.sources[0].status == "assumed"
    assert p.source == str(path) and load_profile(str(path)) == p


def test_a_profile_of_the_old_format_still_loads(tmp_path):
    path = tmp_path / "board.toml"
    path.write_text(LEGACY)
    p = load_profile(path)
    assert (p.threads, p.memory_bandwidth_gbs, p.hardware.clusters) == (4, 10.0, ())
    path.write_text(LEGACY.replace("cores = 4\n", 'cores = 4\nisa = "arm-dotprod"\n'))
    with pytest.raises(ConfigError, match="mixes the old keys"):
        load_profile(path)


def test_codec_thread_keys_are_optional(tmp_path):
    path = tmp_path / "board.toml"
    path.write_text(GOOD)
    assert (load_profile(path).codec_threads, load_profile(path).codec_pipeline) == (None, False)
    path.write_text(GOOD.replace("chunk_frames = 4\n", "chunk_frames = 4\ncodec_threads = 2\n"
                                                               "codec_pipeline = true\n"))
    assert (load_profile(path).codec_threads, load_profile(path).codec_pipeline) == (2, True)
    assert load_profile("qualcomm-sa8295p").codec_pipeline and not load_profile("x86-avx512").codec_pipeline
    for bad, key in (("codec_threads = 0\n", "runtime.codec_threads"),
                     ('codec_pipeline = "yes"\n', "runtime.codec_pipeline"),
                     ("codec_pipeline = 1\n", "runtime.codec_pipeline")):
        path.write_text(GOOD.replace("chunk_frames = 4\n", "chunk_frames = 4\n" + bad))
        with pytest.raises(ConfigError, match=rf"{path}: '{key}'"):
            load_profile(path)


def test_unknown_profile_name_lists_the_shipped_ones():
    with pytest.raises(ConfigError) as e:
        load_profile("pentium-ii")
    assert "pentium-ii" in str(e.value) and all(name in str(e.value) for name in SHIPPED)
    with pytest.raises(ConfigError, match="missing.toml"):
        load_profile("missing.toml")


BAD = [  # (text replaced, replacement, what the message must name)
    ('description = "a test board"\n', 'description = "a test board"\ncolour = "red"\n', "colour"),
    ("steps = 7\n", "steps = 7\nturbo = true\n", "runtime.turbo"),
    ("threads = 4\n", "", "runtime.threads"),
    ("threads = 4\n", 'threads = "four"\n', "runtime.threads"),
    ("threads = 4\n", "threads = 0\n", "runtime.threads"),
    ("threads = 4\n", "threads = true\n", "runtime.threads"),
    ("steps = 7\n", "steps = 7.5\n", "runtime.steps"),
    ("cfg = 1.2\n", "cfg = -1.2\n", "runtime.cfg"),
    ('plan = "int4"\n', 'plan = "int3"\n', "runtime.plan"),
    ('providers = ["cpu"]\n', 'providers = ["tpu", "cpu"]\n', "runtime.providers"),
    ('providers = ["cpu"]\n', "providers = []\n", "runtime.providers"),
    ('providers = ["cpu"]\n', 'providers = "cpu"\n', "runtime.providers"),
    ('plan = "int4"\n', 'precision = "int4"\n', "runtime.precision"),
    ("memory_bandwidth_gbs = 10.0\n", "memory_bandwidth_gbs = -10.0\n", "hardware.memory_bandwidth_gbs"),
    ("memory_bandwidth_gbs = 10.0\n", "memory_bandwidth_gbs = nan\n", "hardware.memory_bandwidth_gbs"),
    ('memory_class = "arm-soc"\n', "", "hardware.memory_class"),
    ('memory_class = "arm-soc"\n', 'memory_class = "mainframe"\n', "hardware.memory_class"),
    ('isa = "arm-dotprod"\n', 'isa = "sse2"\n', "hardware.isa"),
    ("ghz = 2.0", "ghz = 0", "hardware.clusters[0].ghz"),
    ("count = 4, ", "", "hardware.clusters[0].count"),
    ('status = "assumed"\n', 'status = "rumoured"\n', "hardware.source[0].status"),
    ('what = "everything"\n', "", "hardware.source[0].what"),
    ('title = "a test"\n', 'title = "a test"\nlink = "x"\n', "hardware.source[0].link"),
    ('name = "board"\n', 'name = "other-board"\n', "name"),
    ('name = "board"\n', "name = 3\n", "name"),
    ("[hardware]\n", "[hw]\n", "hw"),
    ("cfg = 1.2\n", "cfg = = 1.2\n", "TOML"),
]


@pytest.mark.parametrize("old, new, key", BAD, ids=[f"{i}-{b[2]}" for i, b in enumerate(BAD)])
def test_bad_profiles(tmp_path, old, new, key):
    assert old in GOOD
    path = tmp_path / "board.toml"
    path.write_text(GOOD.replace(old, new, 1))
    with pytest.raises(ConfigError) as e:
        load_profile(path)
    assert str(path) in str(e.value) and key in str(e.value)


def test_error_messages_say_what_is_accepted(tmp_path):
    path = tmp_path / "board.toml"
    path.write_text(GOOD.replace('plan = "int4"', 'plan = "int3"'))
    with pytest.raises(ConfigError, match="fp32, int8, int4, int4-all"):
        load_profile(path)
    path.write_text(GOOD.replace('["cpu"]', '["tpu"]'))
    with pytest.raises(ConfigError, match="a non-empty list of cpu"):
        load_profile(path)
    path.write_text(GOOD.replace("threads = 4", "threads = 0"))
    with pytest.raises(ConfigError, match="positive integer"):
        load_profile(path)
