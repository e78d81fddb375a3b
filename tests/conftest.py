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


# A prompt catalog of 30 items in 3 languages and voices, some with their own seed, steps or cfg, some with
# numbers for the text front-end to spell.
RENDER_MAX_FRAMES = 6
_PHRASES = {
    ("en", "casual_male"): ["Turn left in 200 m.", "Traffic ahead.", "Your destination is on the right.",
                            "Low fuel.", "Recalculating the route.", "Keep right at the fork.",
                            "Speed camera ahead.", "Take the second exit.", "You have arrived.", "Door open."],
    ("fr", "fr_female"): ["Tournez à gauche dans 200 m.", "Bouchon devant.", "Vous êtes arrivé.",
                          "Carburant faible.", "Nouveau calcul de l'itinéraire.", "Serrez à droite.",
                          "Radar devant.", "Prenez la deuxième sortie.", "Porte ouverte.", "Ceinture !"],
    ("es", "neutral_female"): ["Gire a la izquierda.", "Tráfico adelante.", "Ha llegado a su destino.",
                               "Combustible bajo.", "Recalculando la ruta.", "Manténgase a la derecha.",
                               "Radar adelante.", "Tome la 2.ª salida.", "Puerta abierta.", "¡Cinturón!"],
}


@pytest.fixture(scope="session")
def render_rows():
    """The catalog's rows as dicts (absent optional values left out)."""
    rows = []
    for (lang, voice), phrases in _PHRASES.items():
        for i, text in enumerate(phrases):
            row = {"id": f"{lang}_{i:02d}", "text": text, "voice": voice, "lang": lang}
            if i % 3 == 0:
                row["seed"] = 1000 + i
            if i == 4:
                row["steps"] = 3
            if i == 5:
                row["cfg"] = 1.0
            rows.append(row)
    return rows


def write_csv_catalog(path, rows):
    import csv

    with open(path, "w", encoding="utf-8", newline="") as f:
        writer = csv.DictWriter(f, ["id", "text", "voice", "lang", "seed", "steps", "cfg"])
        writer.writeheader()
        writer.writerows(rows)
    return path


@pytest.fixture(scope="session")
def rendered_catalog(render_rows, tiny_bundle_dirs, tmp_path_factory):
    """(catalog.csv, the folder one local worker rendered it to)."""
    from voxtral_edge.render import Settings, render

    root = tmp_path_factory.mktemp("render")
    catalog = write_csv_catalog(root / "catalog.csv", render_rows)
    summary = render(catalog, tiny_bundle_dirs[0], root / "one", settings=Settings(max_frames=RENDER_MAX_FRAMES),
                     workers=1, progress=False)
    assert summary.rendered == len(render_rows) and summary.failed == 0
    return catalog, root / "one"
