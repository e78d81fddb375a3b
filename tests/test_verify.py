"""The verified stamp: a bundle is hashed once, later opens re-hash only what changed, damage is still refused."""

from __future__ import annotations

import json
import os
import shutil

import pytest

from voxtral_edge import manifest as manifest_module
from voxtral_edge.cli import main
from voxtral_edge.errors import BundleError
from voxtral_edge.manifest import MANIFEST, Manifest, verified_stamp_path, verify_bundle


@pytest.fixture
def bundle(tiny_bundle_dirs, tmp_path):
    copy = tmp_path / "bundle"
    shutil.copytree(tiny_bundle_dirs[0], copy)
    return copy


@pytest.fixture
def hashed(monkeypatch):
    """The names of the files hashed, in order."""
    names = []
    real = manifest_module.sha256_file

    def counting(path, *args, **kwargs):
        names.append(os.path.relpath(path, path.parent.parent if path.parent.name == "voices" else path.parent))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(manifest_module, "sha256_file", counting)
    return names


def _listed(bundle):
    return set(json.loads((bundle / MANIFEST).read_text())["files"])


def _flip_byte(path, keep_mtime=False):
    """Alter one byte, same size; optionally put the old mtime back (as `touch -r` would)."""
    st = os.stat(path)
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    path.write_bytes(bytes(raw))
    if keep_mtime:
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert os.stat(path).st_size == st.st_size


def test_first_open_hashes_everything_the_second_nothing(bundle, hashed):
    Manifest.load(bundle)
    assert set(hashed) == _listed(bundle)
    stamp = json.loads(verified_stamp_path(bundle).read_text())
    assert stamp["bundle"] == str(bundle.resolve()) and set(stamp["files"]) == _listed(bundle)
    hashed.clear()
    Manifest.load(bundle)
    assert hashed == []


def test_a_touched_file_is_rehashed_alone_and_accepted(bundle, hashed):
    Manifest.load(bundle)
    hashed.clear()
    tokenizer = bundle / "tokenizer.json"
    os.utime(tokenizer, ns=(0, os.stat(tokenizer).st_mtime_ns + 10**9))
    Manifest.load(bundle)
    assert hashed == ["tokenizer.json"]
    hashed.clear()
    Manifest.load(bundle)  # the stamp was renewed
    assert hashed == []


@pytest.mark.parametrize("keep_mtime", [False, True])
def test_altered_file_after_the_stamp_is_refused(bundle, hashed, keep_mtime):
    Manifest.load(bundle)
    # same size; with keep_mtime the old mtime is put back, which sets the ctime: still seen
    _flip_byte(bundle / "flow_head.onnx.data", keep_mtime)
    for _ in range(2):  # a refused file is never stamped
        with pytest.raises(BundleError, match=r"flow_head.onnx.data: sha256 differs from the manifest's"):
            Manifest.load(bundle)


def test_replaced_file_is_refused(bundle):
    Manifest.load(bundle)
    data = bundle / "codec_decoder.onnx.data"
    raw = bytearray(data.read_bytes())
    raw[0] ^= 1
    replacement = bundle / "replacement"
    replacement.write_bytes(bytes(raw))
    os.utime(replacement, ns=(os.stat(data).st_atime_ns, os.stat(data).st_mtime_ns))
    os.replace(replacement, data)  # same size and mtime, new inode
    with pytest.raises(BundleError, match=r"codec_decoder.onnx.data: sha256 differs"):
        Manifest.load(bundle)


def test_size_change_and_missing_file_are_refused_with_a_stamp(bundle):
    Manifest.load(bundle)
    voice = bundle / "voices" / "fr_female.npy"
    voice.write_bytes(voice.read_bytes()[:-4])
    with pytest.raises(BundleError, match=r"fr_female.npy: \d+ bytes, the manifest says"):
        Manifest.load(bundle)
    voice.unlink()
    with pytest.raises(BundleError, match=r"fr_female.npy: missing from the bundle"):
        Manifest.load(bundle)


@pytest.mark.parametrize("tamper", [
    lambda s: "not json {",
    lambda s: json.dumps({**s, "manifest_sha256": "0" * 64}),
    lambda s: json.dumps({**s, "bundle": "/somewhere/else"}),
    lambda s: json.dumps({**s, "files": {n: {**f, "sha256": "0" * 64} for n, f in s["files"].items()}}),
    lambda s: json.dumps({**s, "files": {n: {**f, "stat": [0, 0, 0, 0, 0]} for n, f in s["files"].items()}}),
    lambda s: json.dumps({**s, "files": [1, 2]}),
])
def test_a_tampered_stamp_vouches_for_nothing(bundle, hashed, tamper):
    Manifest.load(bundle)
    path = verified_stamp_path(bundle)
    path.write_text(tamper(json.loads(path.read_text())))
    _flip_byte(bundle / "audio_embeddings.npy")
    hashed.clear()
    with pytest.raises(BundleError, match=r"audio_embeddings.npy: sha256 differs"):
        Manifest.load(bundle)
    assert "audio_embeddings.npy" in hashed


def test_an_edited_manifest_voids_the_stamp(bundle, hashed):
    Manifest.load(bundle)
    manifest = json.loads((bundle / MANIFEST).read_text())
    manifest["files"]["tokenizer.json"]["sha256"] = "0" * 64  # a manifest that no longer matches its files
    (bundle / MANIFEST).write_text(json.dumps(manifest))
    hashed.clear()
    with pytest.raises(BundleError, match=r"tokenizer.json: sha256 differs"):
        Manifest.load(bundle)


def test_the_accepted_limit_and_the_full_check(bundle, hashed):
    """A change that keeps size, mtime, ctime and inode (simulated by re-recording the stamp over it) passes
    an ordinary open; `verify` hashes every file and finds it."""
    Manifest.load(bundle)
    path = verified_stamp_path(bundle)
    _flip_byte(bundle / "backbone_step.onnx.data")
    stamp = json.loads(path.read_text())
    st = os.stat(bundle / "backbone_step.onnx.data")
    stamp["files"]["backbone_step.onnx.data"]["stat"] = [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino,
                                                         st.st_dev]
    path.write_text(json.dumps(stamp))
    Manifest.load(bundle)  # not seen: the documented limit
    with pytest.raises(BundleError, match=r"backbone_step.onnx.data: sha256 differs"):
        verify_bundle(bundle)
    assert main(["verify", str(bundle)]) == 1


def test_verify_hashes_every_file_whatever_the_stamp(bundle, hashed, capsys):
    Manifest.load(bundle)
    hashed.clear()
    assert main(["verify", str(bundle)]) == 0
    assert set(hashed) == _listed(bundle)
    assert f"all {len(_listed(bundle))} files match the manifest" in capsys.readouterr().out


def test_without_a_writable_cache_every_open_hashes(bundle, hashed, monkeypatch, tmp_path):
    blocked = tmp_path / "not-a-folder"
    blocked.write_text("")  # the cache path runs through a file: nothing can be written there
    monkeypatch.setenv("VOXTRAL_EDGE_CACHE", str(blocked))
    with pytest.warns(UserWarning, match="cannot record that .* was verified"):
        Manifest.load(bundle)
    hashed.clear()
    with pytest.warns(UserWarning):
        Manifest.load(bundle)
    assert set(hashed) == _listed(bundle)


def test_a_read_only_bundle_is_stamped_in_the_user_cache(bundle, hashed):
    for path in [bundle, *bundle.rglob("*")]:
        path.chmod(0o555 if path.is_dir() else 0o444)
    try:
        Manifest.load(bundle)
        hashed.clear()
        Manifest.load(bundle)
        assert hashed == []
    finally:
        for path in [bundle, *bundle.rglob("*")]:
            path.chmod(0o755 if path.is_dir() else 0o644)
