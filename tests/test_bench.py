"""The bench report's rows and formats (the timings themselves are measurements, never asserted)."""

from __future__ import annotations

import json

from voxtral_edge import bench


def test_bench_rows_markdown_and_json(tiny_bundle_dirs, tmp_path):
    info, rows = bench.run_bench(tiny_bundle_dirs[0], frames=3, repeats=2, steps=2, verify=False)
    assert [r.test.split(" pp")[0] for r in rows] == ["load", "load: verify", "load: CPU", "prefill", "backbone",
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
    # what `voxtral-edge estimate` reads back: each graph's size as the manifest lists its files, its plan's
    # bytes per weight (fp32 here), the KV bytes a position and the instruction set
    from voxtral_edge.manifest import Manifest
    from voxtral_edge.profiles import ISAS

    m = Manifest.load(tiny_bundle_dirs[0], verify=False)
    for graph, entry in info["graphs"].items():
        files = [m["graphs"][graph]["file"], m["graphs"][graph].get("data")]
        assert entry == {"bytes": sum(m["files"][f]["size"] for f in files if f), "bytes_per_weight": 4.0}
    b = m["model"]["backbone"]
    assert info["kv_bytes_per_position"] == 2 * b["n_layers"] * b["n_kv_heads"] * b["head_dim"] * 4
    assert info["isa"] in ISAS
    path = tmp_path / "run.jsonl"
    path.write_text(bench.to_json_lines(info, rows) + "\n")
    (run,) = bench.read_runs(path)
    assert (run.plan, run.steps, run.graphs) == ("fp32", 2, info["graphs"])
    assert run.graph_ms()["flow_head"] == by_test["flow head step"]
    # and `estimate` (what `bench --estimate` prints) takes the work from those sizes
    from voxtral_edge.estimate import estimate_all, graph_work
    from voxtral_edge.profiles import load_profile

    work = graph_work(run)
    assert work["flow_head"].weights == info["graphs"]["flow_head"]["bytes"] / 4.0
    (e,) = estimate_all(run, [load_profile("raspberry-pi-5")])
    assert (e.plan, e.steps) == ("fp32", 2) and 0 < e.low_ms <= e.mid_ms <= e.high_ms
