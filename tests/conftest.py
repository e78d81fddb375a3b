"""Shared fixtures: tiny generated checkpoints, made once per test session."""

from __future__ import annotations

import os

import pytest

from voxtral_edge.export.make_checkpoint import make_checkpoint


@pytest.fixture(scope="session", autouse=True)
def user_cache(tmp_path_factory):
    """The runtime's per-user cache (verified stamps, optimized graphs) in a temporary folder, not ~/.cache."""
    path = tmp_path_factory.mktemp("user-cache")
    previous = os.environ.get("VOXTRAL_EDGE_CACHE")
    os.environ["VOXTRAL_EDGE_CACHE"] = str(path)
    yield path
    if previous is None:
        os.environ.pop("VOXTRAL_EDGE_CACHE", None)
    else:
        os.environ["VOXTRAL_EDGE_CACHE"] = previous


@pytest.fixture(scope="session")
def tiny_checkpoint_dir(tmp_path_factory):
    """A tiny checkpoint (seed 0) in the released layout."""
    return make_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny", size="tiny", seed=0, progress=False)


@pytest.fixture(scope="session")
def tiny_checkpoint_dirs(tmp_path_factory):
    """Tiny checkpoints for seeds 0, 1 and 2."""
    root = tmp_path_factory.mktemp("ckpts")
    return [make_checkpoint(root / f"tiny{s}", size="tiny", seed=s, progress=False) for s in range(3)]


@pytest.fixture(scope="session")
def tiny_bundle_dirs(tiny_checkpoint_dirs, tmp_path_factory):
    """Bundles exported from the three tiny checkpoints (fp32, 256 positions of context)."""
    from voxtral_edge.export.bundle import export_bundle

    root = tmp_path_factory.mktemp("bundles")
    return [export_bundle(ck, root / ck.name, max_context=256, progress=False) for ck in tiny_checkpoint_dirs]
