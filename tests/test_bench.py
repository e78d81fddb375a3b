"""The bench report's rows and formats (the timings themselves are measurements, never asserted)."""

from __future__ import annotations

import json

from voxtral_edge import bench


def test_bench_rows_markdown_and_json(tiny_bundle_dirs):
    info, rows = bench.run_bench(tiny_bundle_dirs[0], frames=3, repeats=2, steps=2, verify=False)
    assert [r.test.split(" pp")[0] for r in rows] == ["load", "load: verify", "prefill", "backbone",
                                                      "flow head (2 steps)", "flow head step", "codec", "frame",
                                                      "first audio", "rtf", "frames/s (aggregate)",
                                                      "frame, one row of 1", "rtf (aggregate)", "peak RSS",
                                                      "RSS anonymous", "RSS file"]
    by_test = {r.test: r.median for r in rows}
    assert by_test["load: verify"] <= by_test["load"]
    assert by_test["RSS anonymous"] + by_test["RSS file"] <= by_test["peak RSS"] * 1.001
    assert all(r.low <= r.median <= r.high and r.median > 0 for r in rows)
    assert info["plan"] == "fp32" and info["steps"] == 2 and info["frames"] == 3 and info["cores"] >= 1
    lines = bench.to_markdown(info, rows).splitlines()
    assert lines[2].startswith("| bundle | plan | size GB | steps | test | median | min | max | unit |")
    assert len(lines) == 4 + len(rows) and all(line.count("|") == 10 for line in lines[2:])
    records = [json.loads(line) for line in bench.to_json_lines(info, rows).splitlines()]
    assert [r["test"] for r in records] == [r.test for r in rows]
    assert {"cpu", "onnxruntime", "commit", "threads", "median", "unit"} <= set(records[0])
