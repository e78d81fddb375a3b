"""Graphs optimized for this machine and saved with their packed weights, so that a start neither
optimizes a graph again nor copies its weights into the heap.

When onnxruntime creates a session it rewrites the graph (fusions, layouts) and copies every quantized
weight into the layout its kernels read (MatMulNBits, DynamicQuantizeMatMul), on the heap. Asked to, it
also writes the optimized graph with those packed weights in its external data file; that file, opened
with graph optimizations off, is memory-mapped: the weights become clean file pages instead of private
heap, and the optimizer does not run.

The saved graph suits one machine (packed layouts and NCHWc blocks follow the CPU's instruction sets;
onnxruntime warns that it "may contain hardware specific optimizations") and one onnxruntime version,
so it is a cache, never part of the bundle, made on the target by `voxtral-edge optimize BUNDLE`
(`voxtral_edge.sessions.optimize_bundle`) or `Synthesizer.open(..., saved_graphs=True)`; once made, opens
use it (this module keeps the files and their records; `voxtral_edge.sessions` makes the sessions):

    BUNDLE/optimized/<machine key>/<graph>.onnx, <graph>.onnx.data, <graph>.json
    (USER_CACHE/optimized/<bundle key>/<machine key>/ when the bundle folder cannot be written)

The machine key hashes the onnxruntime version, the CPU architecture and its feature flags. <graph>.json,
written last, records that fingerprint, the sha256 of the bundle files the graph was made from, and the
sha256 and stat of each file written. A saved graph is used only when its record matches the machine,
the bundle's manifest and its files (a file whose stat changed is hashed again); otherwise, or when
onnxruntime refuses it (1.32 packs each saved weight again at load and compares), it is made again.

The saved data file holds the original weights beside the packed ones (about 2.2x the bundle's file
for the int4 backbone), and they cannot be left out: at every load onnxruntime 1.32 packs each original
again and looks its saved blob up by a hash of that packing. A saved blob that differs from the packing
is refused (an error, handled below); an original that differs finds no blob, and onnxruntime then
computes with its own packing of that original without a word (measured: originals zeroed in the data
file gave other outputs, no error, no log line). Because of that check the packing is paid at every
load anyway: measured on the full-size int4 bundle (benchmarks/README.md, "Footprint"), opening from the
saved graphs is no faster, the peak resident memory is the same, and the packed weights move from
private heap to clean file pages. Hence opt-in.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import time
from pathlib import Path

import onnxruntime as ort

from .cache import bundle_key, file_stat, read_json, user_cache_dir, write_json_atomic
from .machine import cpu_flags
from .manifest import Manifest, sha256_file
from .onnxfile import MalformedOnnx, external_locations

RECORD_FORMAT = "voxtral-edge-optimized-graph"
MIN_EXTERNAL_BYTES = 1024  # smaller initializers stay inside the .onnx file


def machine_fingerprint() -> dict:
    """What a saved graph depends on besides the bundle: onnxruntime's version, the CPU and its features."""
    flags = " ".join(cpu_flags())
    return {"onnxruntime": ort.__version__, "machine": platform.machine(), "system": platform.system(),
            "cpu_flags": flags or platform.processor()}


def machine_key() -> str:
    return hashlib.sha256(json.dumps(machine_fingerprint(), sort_keys=True).encode()).hexdigest()[:16]


def cache_folders(bundle: Path) -> list[Path]:
    """Where this machine's saved graphs of a bundle may live, in the order they are tried."""
    key = machine_key()
    return [Path(bundle) / "optimized" / key, user_cache_dir() / "optimized" / bundle_key(bundle) / key]


def _sources(manifest: Manifest, name: str) -> dict[str, str]:
    graph = manifest["graphs"][name]
    files = [graph["file"]] + ([graph["data"]] if graph.get("data") else [])
    return {f: manifest["files"][f]["sha256"] for f in files}


def saved_graph(manifest: Manifest, name: str, folder: Path) -> Path | None:
    """The saved graph in `folder` if its record matches this machine, the bundle and its own files."""
    record = read_json(folder / f"{name}.json")
    if (record is None or record.get("format") != RECORD_FORMAT or record.get("machine") != machine_fingerprint()
            or record.get("sources") != _sources(manifest, name) or not isinstance(record.get("files"), dict)
            or f"{name}.onnx" not in record["files"]):
        return None
    restamped = False
    for file, entry in record["files"].items():
        path = folder / file
        if not isinstance(entry, dict) or path.parent != folder:
            return None
        try:
            stat = file_stat(path)
            if stat != entry.get("stat"):
                if sha256_file(path) != entry.get("sha256"):
                    return None
                entry["stat"], restamped = stat, True  # e.g. copied with the bundle: the same bytes
        except OSError:
            return None
    try:  # like the bundle's graphs, a saved graph may read no file but its own data file
        if set(external_locations(folder / f"{name}.onnx")) - set(record["files"]):
            return None
    except (MalformedOnnx, UnicodeDecodeError, OSError):
        return None
    if restamped:
        try:
            write_json_atomic(folder / f"{name}.json", record)
        except OSError:
            pass  # hashed again next time
    return folder / f"{name}.onnx"


def saving_options(options: ort.SessionOptions, name: str, folder: Path) -> ort.SessionOptions:
    """`options`, set so that creating the session writes the optimized graph and its packed weights into
    `folder` (as NAME.onnx and NAME.onnx.data)."""
    options.log_severity_level = 3  # its warning that the saved graph suits this machine only: that is the point
    options.optimized_model_filepath = str(folder / f"{name}.onnx")
    options.add_session_config_entry("session.optimized_model_external_initializers_file_name", f"{name}.onnx.data")
    options.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes",
                                     str(MIN_EXTERNAL_BYTES))
    options.add_session_config_entry("session.save_external_prepacked_constant_initializers", "1")
    return options


def keep_saved(manifest: Manifest, name: str, written: Path, folder: Path) -> None:
    """Move what onnxruntime wrote into `written` (a scratch folder) into `folder`, then record it: the
    record, written last, is what makes the saved graph trusted (raises OSError)."""
    files = sorted(p.name for p in written.iterdir())
    if f"{name}.onnx" not in files:
        raise OSError(f"onnxruntime wrote no optimized graph to {written}")
    record = {file: {"sha256": sha256_file(written / file)} for file in files}
    (folder / f"{name}.json").unlink(missing_ok=True)  # not valid while its files are replaced
    for file in sorted(files, key=lambda f: f == f"{name}.onnx"):  # the graph last
        os.replace(written / file, folder / file)
        record[file]["stat"] = file_stat(folder / file)
    write_json_atomic(folder / f"{name}.json", {
        "format": RECORD_FORMAT, "graph": name, "machine": machine_fingerprint(),
        "sources": _sources(manifest, name), "created": time.strftime("%Y-%m-%d %H:%M:%S"), "files": record})


def forget_saved(name: str, folder: Path) -> None:
    """Drop the record of a saved graph (onnxruntime refused it): it is made again."""
    try:
        (folder / f"{name}.json").unlink(missing_ok=True)
    except OSError:
        pass


def opted_in(manifest: Manifest, name: str) -> bool:
    """Whether saved graphs were made for this bundle on this machine (a record, valid or not, is there)."""
    return any((folder / f"{name}.json").exists() or (folder / f"{name}.onnx").exists()
               for folder in cache_folders(manifest.bundle))
