"""The documents against the code they describe: the README's layout, the bundle format's example."""

from __future__ import annotations

import json
import re
import textwrap
from pathlib import Path

from voxtral_edge.quant.plans import load_plan

ROOT = Path(__file__).resolve().parents[1]


def test_every_path_of_the_readme_layout_exists_and_imports():
    import importlib

    section = (ROOT / "README.md").read_text(encoding="utf-8").split("## Layout\n")[1].split("\n## ")[0]
    rows = re.findall(r"^\| `([^`]+)` \| (?:`([^`]+)`)? *\|", section, re.M)
    assert len(rows) >= 10
    for path, module in rows:
        assert (ROOT / path).is_dir(), path
        if module:
            assert Path(importlib.import_module(module).__file__).parent == (ROOT / path).resolve(), module
    listed = {path for path, _ in rows}
    packages = {f"src/{p.parent.relative_to(ROOT / 'src').as_posix()}/" for p in (ROOT / "src").rglob("__init__.py")}
    assert packages <= listed, packages - listed  # every package of the tree has its row


def test_the_bundle_format_shows_the_int4_plan_as_it_is_written():
    text = (ROOT / "docs" / "bundle-format.md").read_text(encoding="utf-8")
    block = text.split("`quantization`:\n\n")[1].split("\n\n")[0]
    shown = json.loads(textwrap.dedent(block))
    written = load_plan("int4").describe()
    assert shown["plan"] == written["plan"] == "int4"
    for graph, entry in shown["graphs"].items():
        assert {k: v for k, v in entry.items() if k != "quantized_weights"} == written["graphs"][graph], graph
