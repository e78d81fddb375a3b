"""`voxtral-edge bench`: llama-bench-style rows, the same columns every time, with provenance.

One run = open the bundle, then `repeats` times: synthesize `frames` frames of a fixed sentence with a
fixed seed (the model never stops early on random weights; on real weights it may, and the rows then
divide by the frames made). Rows:

    load          s        opening the bundle: manifest check (sha256 of the files the verified stamp does not
                           vouch for, unless --no-verify) and sessions, once
    load: verify  s        the manifest check alone (part of load)
    load: CPU     s        the CPU time of the whole load, every thread (less sensitive to a busy machine)
    prefill       tok/s    a whole prompt (voice + text) from position 0 / its time, like llama.cpp's pp test
    backbone      ms/frame one backbone step
    flow head     ms/frame all Euler steps of a frame (and ms/step)
    codec         ms/frame streamed in chunks of `chunk_frames`
    first audio   ms       streamed: from the call to the first chunk of audio (voice prefix cached, 1 frame)
    frame         ms/frame wall time per frame past the prefill (with --codec-pipeline the codec runs beside)
    rtf           x        total time / audio duration (< 1 is faster than real time)
    frames/s (aggregate)   frames/s  B utterances of the sentence (seeds 0..B-1, `--batch B`, 1 by default)
                           made together (`Synthesizer.run_many`): their frames after the first step (which
                           prefills every row) / the time since: the rate of continuous decoding (a prompt's
                           cost is the prefill row's)
    frame, one row of B    ms/frame  the same run: the time between two frames of one utterance (each step makes
                           a frame of every row; 80 ms is real time)
    rtf (aggregate)        x        the same run, prefills included: wall time / the audio of all B utterances
    peak RSS      MB       the process's peak resident memory
    RSS anonymous MB       at the end: private heap (onnxruntime's packed weights, KV cache, buffers)
    RSS file      MB       at the end: file pages mapped and resident (weights read in place, embeddings);
                           clean, so the kernel can drop them under pressure and read them again

Each row gives the median and the spread (min..max) over the repeats. The provenance also carries
`codes_sha256`, a hash of the last run's codes: two runs that made the same codes show the same hash.
"""

from __future__ import annotations

import hashlib
import json
import statistics
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from . import __version__, defaults
from .errors import UsageError
from .machine import cpu_flags, cpu_model, peak_rss_bytes, resident_memory, usable_cores
from .manifest import GRAPHS

BENCH_TEXT = "Turn left in two hundred metres, then keep right at the roundabout."


@dataclass
class Row:
    test: str
    unit: str
    median: float
    low: float
    high: float


def summarize(test: str, unit: str, values: list[float]) -> Row:
    return Row(test, unit, statistics.median(values), min(values), max(values))


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def isa_family() -> str:
    """This CPU's instruction set family, as device profiles name it (voxtral_edge.profiles.ISAS); "" if none."""
    import platform

    flags = set(cpu_flags())
    if platform.machine().lower() in ("x86_64", "amd64"):
        if "avx512_vnni" in flags or "avx512vnni" in flags:
            return "x86-avx512vnni"
        if "avx_vnni" in flags:
            return "x86-avxvnni"
        return "x86-avx2" if "avx2" in flags else ""
    if platform.machine().lower() in ("aarch64", "arm64"):
        if "i8mm" in flags:
            return "arm-i8mm"
        return "arm-dotprod" if "asimddp" in flags else "arm-v8.0"
    return ""


def graph_sizes(manifest) -> dict:
    """{graph: {"bytes", "bytes_per_weight"}}: what voxtral_edge.estimate needs of a bundle's graphs."""
    out = {}
    for g in GRAPHS:
        entry = manifest["graphs"][g]
        size = sum(manifest["files"][f]["size"] for f in (entry["file"], entry.get("data")) if f)
        q = manifest["quantization"]["graphs"].get(g) or {}
        if entry["precision"] != "fp32" and q.get("method") == "dynamic-int8":
            per_weight = 1.0
        elif entry["precision"] != "fp32" and q.get("method") == "nbits":
            zero_points = 0 if q.get("symmetric", True) else q["bits"] / 8 / q["block_size"]
            per_weight = q["bits"] / 8 + 4 / q["block_size"] + zero_points  # fp32 scale a block
        else:
            per_weight = 4.0
        out[g] = {"bytes": size, "bytes_per_weight": per_weight}
    return out


def provenance(synth, threads: int | None) -> dict:
    import onnxruntime

    m = synth.manifest
    b = m["model"]["backbone"]
    return {"cpu": cpu_model(), "cores": usable_cores(), "threads": threads or "ort-default", "isa": isa_family(),
            "onnxruntime": onnxruntime.__version__, "voxtral_edge": __version__, "commit": git_commit(),
            "bundle": str(m.bundle), "plan": m["quantization"]["plan"],
            "size_gb": round(sum(f["size"] for f in m["files"].values()) / 1e9, 3), "graphs": graph_sizes(m),
            "kv_bytes_per_position": 2 * b["n_layers"] * b["n_kv_heads"] * b["head_dim"] * 4,
            "date": time.strftime("%Y-%m-%d %H:%M:%S")}


def run_bench(bundle: str | Path, *, threads: int | None = None, steps: int | None = None,
              cfg_alpha: float = defaults.CFG_ALPHA, frames: int = 25, repeats: int = 3,
              chunk_frames: int = defaults.CHUNK_FRAMES, voice: str | None = None,
              max_context: int | None = None, text: str = BENCH_TEXT, verify: bool = True,
              saved_graphs: bool | None = None, codec_threads: int | None = None,
              codec_pipeline: bool = False, providers: tuple[str, ...] = ("cpu",), allow_fallback: bool = False,
              soc: str | None = None, release_mapped: bool = True, parallel_open: bool = False,
              batch: int = 1, memory_arena: bool = True) -> tuple[dict, list[Row]]:
    """Measure a bundle; returns (provenance, rows). On the NPU (`providers` qnn...) the provenance counts the
    nodes each graph runs on the CPU (none unless allow_fallback)."""
    from .manifest import Manifest
    from .prompt import voice_positions
    from .runtime import Synthesizer
    from .sessions import nodes_on_cpu, npu_graphs

    start, start_cpu = time.perf_counter(), time.process_time()
    manifest = Manifest.load(bundle, verify=verify)
    verify_s = time.perf_counter() - start
    synth = Synthesizer(manifest, threads=threads, max_context=max_context, saved_graphs=saved_graphs,
                        codec_threads=codec_threads, codec_pipeline=codec_pipeline, providers=providers,
                        allow_fallback=allow_fallback, soc=soc, release_mapped=release_mapped,
                        parallel_open=parallel_open, batch=batch, memory_arena=memory_arena)
    load_s, load_cpu = time.perf_counter() - start, time.process_time() - start_cpu
    voice = voice or sorted(synth.voices)[0]
    steps = synth.manifest["model"]["flow_head"]["n_decoding_steps"] if steps is None else steps
    synth.synthesize(text, voice, seed=0, steps=steps, cfg_alpha=cfg_alpha, max_frames=2)  # warm-up, voice cached
    prompt = synth.prompt(text, voice)  # a whole prompt from position 0, as llama.cpp's pp test does
    x = synth.prompt_embeddings(prompt, voice)
    prefill = []
    for _ in range(repeats):  # (the voice's cached prefix is a copy: utterances still copy it in)
        t0 = time.perf_counter()
        synth.backbone(x, 0)
        prefill.append(len(prompt) / (time.perf_counter() - t0))
    runs, first_audio = [], []
    for _ in range(repeats):  # streamed, as a head unit would speak it
        start = time.perf_counter()
        for i, _chunk in enumerate(synth.stream(text, voice, chunk_frames=chunk_frames, seed=0, steps=steps,
                                                cfg_alpha=cfg_alpha, max_frames=frames)):
            if i == 0:
                first_audio.append(1e3 * (time.perf_counter() - start))
        runs.append(synth.last_result)
    per = {k: [] for k in ("prefill", "backbone", "flow", "flow_step", "codec", "frame", "first", "rtf")}
    per["first"], per["prefill"] = first_audio, prefill
    for r in runs:
        t, n = r.timings, max(len(r.codes), 1)
        backbone = t["backbone_ms"] / max(n - 1, 1)  # the last frame needs no step
        flow, codec = t["flow_ms"] / n, t["codec_ms"] / n
        per["backbone"].append(backbone)
        per["flow"].append(flow)
        per["flow_step"].append(flow / max(steps, 1))
        per["codec"].append(codec)
        per["frame"].append((t["total_ms"] - t["prefill_ms"] - t["tokenize_ms"]) / n)
        per["rtf"].append(t["total_ms"] / 1e3 / max(r.duration, 1e-9))
    for _ in range(repeats):  # B utterances together
        utterances = [synth.start(text, voice, chunk_frames=chunk_frames, first_chunk_frames=1, seed=b, steps=steps,
                                  cfg_alpha=cfg_alpha, max_frames=frames) for b in range(batch)]
        start, first = time.perf_counter(), None
        for _u, _chunk in synth.run_many(utterances):
            first = first or time.perf_counter()  # the first step is over: every row prefilled, one frame each
        end = time.perf_counter()
        results = [synth.close(u) for u in utterances]
        steady = sum(len(r.codes) for r in results) - batch  # every row makes a frame at each step past the first
        per.setdefault("aggregate", []).append(steady / max(end - first, 1e-9))
        per.setdefault("row", []).append(1e3 * (end - first) / max(frames - 1, 1))
        per.setdefault("rtf_aggregate", []).append((end - start) / max(sum(r.duration for r in results), 1e-9))
    rows = [Row("load", "s", load_s, load_s, load_s), Row("load: verify", "s", verify_s, verify_s, verify_s),
            Row("load: CPU", "s", load_cpu, load_cpu, load_cpu),
            summarize(f"prefill pp{len(prompt)}", "tok/s", per["prefill"]),
            summarize("backbone", "ms/frame", per["backbone"]),
            summarize(f"flow head ({steps} steps)", "ms/frame", per["flow"]),
            summarize("flow head step", "ms/step", per["flow_step"]),
            summarize("codec", "ms/frame", per["codec"]),
            summarize("frame", "ms/frame", per["frame"]),
            summarize("first audio", "ms", per["first"]),
            summarize("rtf", "x", per["rtf"]),
            summarize("frames/s (aggregate)", "frames/s", per["aggregate"]),
            summarize(f"frame, one row of {batch}", "ms/frame", per["row"]),
            summarize("rtf (aggregate)", "x", per["rtf_aggregate"])]
    rss = peak_rss_bytes() / 1e6
    resident = resident_memory()
    rows.append(Row("peak RSS", "MB", rss, rss, rss))
    rows += [Row(f"RSS {kind}", "MB", mb, mb, mb) for kind, mb in resident.items()]
    info = provenance(synth, threads)
    info.update(steps=steps, cfg=cfg_alpha, frames=frames, repeats=repeats, voice=voice, chunk_frames=chunk_frames,
                first_audio_tokens=len(prompt) - voice_positions(prompt, synth.ids).stop - 1,
                codec_threads=codec_threads or threads or "ort-default", codec_pipeline=codec_pipeline, batch=batch,
                providers=list(providers), nodes_on_cpu={g: len(nodes_on_cpu(s)) for g, s in synth.sessions.items()
                                                         if g in npu_graphs(providers)},
                parallel_open=parallel_open, release_mapped=release_mapped, memory_arena=memory_arena,
                codes_sha256=hashlib.sha256(np.ascontiguousarray(runs[-1].codes, dtype=np.int64)).hexdigest()[:16])
    return info, rows


def to_markdown(info: dict, rows: list[Row]) -> str:
    head = (f"{info['cpu']}, {info['cores']} cores, threads {info['threads']}, onnxruntime {info['onnxruntime']}, "
            f"voxtral-edge {info['voxtral_edge']} ({info['commit']}), {info['date']}")
    if info.get("providers", ["cpu"]) != ["cpu"]:  # on the NPU: where, and what did not run there
        head += (f"; providers {', '.join(info['providers'])}, nodes on the CPU: "
                 + (", ".join(f"{g} {n}" for g, n in info["nodes_on_cpu"].items()) or "none"))
    lines = [head, "", "| bundle | plan | size GB | steps | test | median | min | max | unit |",
             "| --- | --- | ---: | ---: | --- | ---: | ---: | ---: | --- |"]
    name = Path(info["bundle"]).name
    for r in rows:
        lines.append(f"| {name} | {info['plan']} | {info['size_gb']:.2f} | {info['steps']} | {r.test} | "
                     f"{r.median:.2f} | {r.low:.2f} | {r.high:.2f} | {r.unit} |")
    return "\n".join(lines)


def to_json_lines(info: dict, rows: list[Row]) -> str:
    return "\n".join(json.dumps({**info, **asdict(r)}) for r in rows)


def plot(info: dict, rows: list[Row], path: str | Path) -> Path:
    """Where a frame's time goes, as a horizontal stacked bar (needs matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        from .errors import VoxtralEdgeError

        raise VoxtralEdgeError("--plot needs matplotlib: pip install matplotlib") from None
    parts = {r.test.split(" (")[0]: r.median for r in rows if r.unit == "ms/frame" and not r.test.startswith("frame")}
    fig, ax = plt.subplots(figsize=(8, 2.2))
    left = 0.0
    for label, value in parts.items():
        ax.barh([0], [value], left=left, label=f"{label} {value:.1f} ms")
        left += value
    ax.axvline(1000 / 12.5, color="k", linestyle="--", label="real time (80 ms)")
    ax.set_yticks([])
    ax.set_xlabel("ms per frame")
    ax.set_title(f"{Path(info['bundle']).name} ({info['plan']}), {info['threads']} threads, {info['steps']} steps")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.45), ncol=4, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)


@dataclass
class BenchRun:
    """One bundle's `bench --json` lines read back: its provenance and {test: row}. Runs saved before
    issue 24 (the plan under "precision", no graph sizes) read the same."""

    info: dict
    rows: dict
    source: str

    @property
    def plan(self) -> str:
        return self.info.get("plan") or self.info.get("precision") or ""

    @property
    def steps(self) -> int:
        return int(self.info["steps"])

    @property
    def chunk_frames(self) -> int:
        return int(self.info.get("chunk_frames") or defaults.CHUNK_FRAMES)

    @property
    def size_gb(self) -> float | None:
        return self.info.get("size_gb")

    @property
    def graphs(self) -> dict | None:
        return self.info.get("graphs")

    @property
    def kv_bytes_per_position(self) -> float:
        return float(self.info.get("kv_bytes_per_position") or 0)

    @property
    def isa(self) -> str:
        return self.info.get("isa") or ""

    def median(self, test: str) -> float:
        for name, row in self.rows.items():
            if name == test or name.split(" (")[0].split(" pp")[0] == test:
                return float(row["median"])
        raise UsageError(f"{self.source}: the run has no '{test}' row (found: {', '.join(self.rows)})")

    def graph_ms(self) -> dict[str, float]:
        """Measured ms per call: a backbone step, a flow-head Euler step, a codec call (chunk_frames frames)."""
        return {"backbone_step": self.median("backbone"), "flow_head": self.median("flow head step"),
                "codec_decoder": self.median("codec") * self.chunk_frames}


_RUN_KEYS = ("bundle", "steps", "date")


def read_runs(path: str | Path) -> list[BenchRun]:
    """Every run in a file of `bench --json` lines (several runs may follow one another), in file order."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(f"{path}: cannot read the bench run ({e})") from None
    runs: dict[tuple, BenchRun] = {}
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise UsageError(f"{path}:{n}: not a JSON line of `voxtral-edge bench --json` ({e.msg})") from None
        missing = [k for k in ("test", "median", *_RUN_KEYS) if k not in record]
        if not isinstance(record, dict) or missing or not ("plan" in record or "precision" in record):
            raise UsageError(f"{path}:{n}: not a row of `voxtral-edge bench --json` (missing "
                             f"{', '.join(missing) or 'plan'})")
        key = tuple(record[k] for k in _RUN_KEYS)
        row = {k: record.pop(k) for k in ("test", "unit", "median", "low", "high") if k in record}
        run = runs.setdefault(key, BenchRun(info=record, rows={}, source=f"{path.name}"))
        run.rows[row["test"]] = row
    if not runs:
        raise UsageError(f"{path}: no bench rows in the file")
    return list(runs.values())
