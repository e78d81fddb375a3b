"""Shared fixtures: tiny generated checkpoints, made once per test session.

With VOXTRAL_TEST_FIXTURES=DIR they are read from DIR instead, as `write_fixtures(DIR)` made them
elsewhere: where the tests run without the exporter (benchmarks/arm/run.sh, inside an arm64 root).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

PREPARED = os.environ.get("VOXTRAL_TEST_FIXTURES")
SEEDS = (0, 1, 2)


def make_checkpoints(root: Path) -> list[Path]:
    """Tiny checkpoints for seeds 0, 1 and 2 under root."""
    from voxtral_edge.export.make_checkpoint import make_checkpoint

    return [make_checkpoint(root / f"tiny{s}", size="tiny", seed=s, progress=False) for s in SEEDS]


def make_bundles(checkpoints: list[Path], root: Path) -> list[Path]:
    """The checkpoints exported to fp32 bundles with 256 positions of context, under root."""
    from voxtral_edge.export.bundle import export_bundle

    return [export_bundle(ck, root / ck.name, max_context=256, progress=False) for ck in checkpoints]


def write_fixtures(out: Path) -> None:
    """Every fixture below, written under out (checkpoints/, bundles/) for VOXTRAL_TEST_FIXTURES."""
    make_bundles(make_checkpoints(Path(out) / "checkpoints"), Path(out) / "bundles")


@pytest.fixture(scope="session")
def tiny_checkpoint_dirs(tmp_path_factory):
    """Tiny checkpoints for seeds 0, 1 and 2."""
    if PREPARED:
        return [Path(PREPARED, "checkpoints", f"tiny{s}") for s in SEEDS]
    return make_checkpoints(tmp_path_factory.mktemp("ckpts"))


@pytest.fixture(scope="session")
def tiny_checkpoint_dir(tiny_checkpoint_dirs):
    """A tiny checkpoint (seed 0) in the released layout."""
    return tiny_checkpoint_dirs[0]


@pytest.fixture(scope="session")
def tiny_bundle_dirs(tiny_checkpoint_dirs, tmp_path_factory):
    """Bundles exported from the three tiny checkpoints (fp32, 256 positions of context)."""
    if PREPARED:
        return [Path(PREPARED, "bundles", f"tiny{s}") for s in SEEDS]
    return make_bundles(tiny_checkpoint_dirs, tmp_path_factory.mktemp("bundles"))
