"""The footprint options (issue 23): the same codes with and without each, and what they do to pages.

Oracles: the numpy reference (`voxtral_edge.export.reference`) for the fp32 bundle's codes; the bundle opened
with every option off for the int4 bundle (whose packed weights and mapped scales the options are about);
the file's own bytes and the kernel's per-mapping counts (/proc/self/smaps) for what a release does.
"""

from __future__ import annotations

import itertools
import mmap
import shutil
import sys
import threading

import numpy as np
import onnxruntime
import pytest

from voxtral_edge import machine, sessions
from voxtral_edge.export.bundle import export_bundle
from voxtral_edge.export.checkpoint import Checkpoint
from voxtral_edge.export.reference import Reference
from voxtral_edge.runtime import Synthesizer

TEXT = "Turn left in two hundred metres."
VOICE = "neutral_female"
OPTIONS = [dict(release_mapped=r, parallel_open=p) for r, p in itertools.product((False, True), repeat=2)]
linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="pages are released on Linux only")


@pytest.fixture(scope="module")
def int4_bundle(tiny_checkpoint_dirs, tmp_path_factory):
    """A quantized tiny bundle: MatMulNBits (backbone, with scales it keeps mapped) and DynamicQuantizeMatMul."""
    return export_bundle(tiny_checkpoint_dirs[0], tmp_path_factory.mktemp("int4") / "int4", max_context=256,
                         plan="int4", progress=False)


def _noise(n=20):
    return np.random.default_rng(3).standard_normal((n, 5)).astype(np.float32)


def _speak(bundle, **options):
    result = Synthesizer.open(bundle, **options).synthesize(TEXT, VOICE, noise=_noise(), steps=4, cfg_alpha=1.2)
    return result.codes, result.audio


@pytest.mark.parametrize("options", OPTIONS, ids=lambda o: "-".join(k for k, v in o.items() if v) or "none")
def test_every_footprint_option_gives_the_reference_codes(tiny_checkpoint_dirs, tiny_bundle_dirs, options):
    want_codes, want_audio = Reference(Checkpoint(tiny_checkpoint_dirs[0])).synthesize(
        TEXT, VOICE, _noise(), steps=4, cfg_alpha=1.2)
    codes, audio = _speak(tiny_bundle_dirs[0], **options)
    np.testing.assert_array_equal(codes, want_codes)
    assert np.abs(audio - want_audio).max() <= 1e-3


def test_every_footprint_option_gives_the_same_int4_codes_and_audio(int4_bundle):
    plain_codes, plain_audio = _speak(int4_bundle, release_mapped=False, parallel_open=False)
    for options in OPTIONS[1:]:
        codes, audio = _speak(int4_bundle, **options)
        np.testing.assert_array_equal(codes, plain_codes)
        np.testing.assert_array_equal(audio, plain_audio)


def test_released_saved_graphs_give_the_same_codes(int4_bundle, tmp_path):
    bundle = tmp_path / "int4"
    shutil.copytree(int4_bundle, bundle, ignore=shutil.ignore_patterns("optimized"))
    plain = _speak(bundle, saved_graphs=False, release_mapped=False)
    _speak(bundle, saved_graphs=True)  # makes them
    saved = _speak(bundle, saved_graphs=True, release_mapped=True)  # from them, their data file's pages released
    np.testing.assert_array_equal(saved[0], plain[0])
    np.testing.assert_array_equal(saved[1], plain[1])


def test_sessions_are_made_in_open_order_and_the_codec_beside_with_parallel_open(int4_bundle, monkeypatch):
    made = []
    real = onnxruntime.InferenceSession

    def recording(path, *args, **kwargs):
        made.append((str(path).rsplit("/", 1)[-1], threading.get_ident()))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(onnxruntime, "InferenceSession", recording)
    synth = Synthesizer.open(int4_bundle, saved_graphs=False)
    assert [name for name, _ in made] == [f"{g}.onnx" for g in sessions.OPEN_ORDER]
    assert list(synth.sessions) == list(synth.manifest["graphs"])  # handed back in the manifest's order
    made.clear()
    Synthesizer.open(int4_bundle, saved_graphs=False, parallel_open=True)
    threads = dict(made)
    assert set(threads) == {f"{g}.onnx" for g in sessions.OPEN_ORDER}
    assert threads["codec_decoder.onnx"] != threads["backbone_step.onnx"] == threads["flow_head.onnx"]


def _rss_of(ranges):
    """Resident bytes of these mappings, from smaps (the kernel's own count)."""
    resident, current = {}, None
    with open("/proc/self/smaps") as f:
        for line in f:
            if (match := machine._MAPPING.match(line)) is not None:
                current = (int(match.group(1), 16), int(match.group(2), 16))
            elif line.startswith("Rss:") and current in ranges:
                resident[current] = int(line.split()[1]) * 1024
    return resident


@linux_only
def test_release_drops_clean_file_pages_and_a_read_brings_them_back(tmp_path):
    path = tmp_path / "weights.bin"
    data = np.random.default_rng(0).integers(0, 256, 1 << 20, dtype=np.uint8).tobytes()
    path.write_bytes(data)
    with open(path, "rb") as f:
        view = mmap.mmap(f.fileno(), 0, flags=mmap.MAP_PRIVATE, prot=mmap.PROT_READ)
    assert view[:] == data  # every page read: resident
    ranges = machine.file_mappings([path])
    assert len(ranges) == 1 and sum(_rss_of(ranges).values()) == len(data)
    assert machine.release_file_pages([path]) == len(data)
    assert sum(_rss_of(ranges).values()) == 0
    assert view[:] == data  # read again: the same bytes, from the page cache
    view.close()


@linux_only
def test_release_leaves_a_mapping_with_written_pages_and_those_kept(tmp_path):
    path = tmp_path / "weights.bin"
    path.write_bytes(bytes(1 << 16))
    with open(path, "r+b") as f:
        written = mmap.mmap(f.fileno(), 0, flags=mmap.MAP_PRIVATE)  # copy on write: the file is not changed
        kept = mmap.mmap(f.fileno(), 0, flags=mmap.MAP_PRIVATE, prot=mmap.PROT_READ)
    written[100] = 7
    assert kept[:] == bytes(1 << 16)
    before = machine.file_mappings([path])
    assert len(before) == 2 and sorted(before.values())[-1] > 0  # the written one holds a page of its own
    fresh = open(path, "rb")
    late = mmap.mmap(fresh.fileno(), 0, flags=mmap.MAP_PRIVATE, prot=mmap.PROT_READ)
    assert late[:] == bytes(1 << 16)
    keep = [r for r in before if before[r] == 0]
    assert machine.release_file_pages([path], keep=keep) == len(late)  # only the mapping made since
    assert written[100] == 7 and sum(_rss_of(keep).values()) == 1 << 16
    assert path.read_bytes() == bytes(1 << 16)
    for m in (written, kept, late):
        m.close()
    fresh.close()
