"""manifest.json: the one contract between the exporter and the runtime.

A bundle is a folder; its manifest lists every file with size and sha256, each graph's file,
inputs and outputs, the model's dimensions, the special token ids, the audio layout, the voices and
the precision of each graph. The runtime reads nothing the manifest does not describe, and refuses a
bundle whose files do not match it before it builds any session.

Verifying costs nothing at start after the first: once every file's sha256 has matched, a verified stamp
records each file's size, mtime, ctime, inode and device and the manifest's own sha256 (in this user's
cache, `voxtral_edge.cache.user_cache_dir()/verified/`). Later opens re-hash only the files whose stat
differs from the stamp, so a file written, replaced, truncated, touched or restored with an old mtime
is hashed again and refused if it no longer matches. The accepted limit: a change that leaves size,
mtime, ctime and inode as they were (bit rot on the disk, a write to the raw device, the clock set
back by root) is not seen until a full check, `voxtral-edge verify BUNDLE` (`verify_bundle`), which
hashes every file. The manifest itself is not signed: the check is against damage and stale copies,
not against someone who can rewrite the bundle.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

from .cache import bundle_key, file_stat, read_json, user_cache_dir, write_json_atomic
from .errors import BundleError, BundlePathError
from .onnxfile import MalformedOnnx, ep_context_files, external_locations
from .progress import Progress

FORMAT = "voxtral-edge-bundle"
SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
GRAPHS = ("backbone_step", "flow_head", "codec_decoder")
# The named precision plans (defined in voxtral_edge.quant.plans; named here so the runtime can check them).
PLAN_NAMES = ("fp32", "int8", "int4", "int4-all", "int4-fast", "int4-all-fast", "w8a16", "w4a16", "int4-w8a16")
REQUIRED = ("format", "schema_version", "files", "graphs", "model", "audio", "special_ids", "embeddings",
            "voices", "tokenizer", "quantization")
STAMP_FORMAT = "voxtral-edge-verified-stamp"


def sha256_file(path: Path, chunk: int = 1 << 22, bar: Progress | None = None) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
            if bar is not None:
                bar.advance(len(block), Path(path).name)
    return digest.hexdigest()


def graph_units(graph: dict) -> list[dict]:
    """The ONNX files a graph entry is made of, each {"file", "data", ...} (and "compiled" once compiled):
    the entry itself, or the parts of a backbone split for the NPU (`htp.parts`, run one after the other)."""
    return graph.get("htp", {}).get("parts") or [graph]


def verified_stamp_path(bundle: Path) -> Path:
    """Where this user's verified stamp of a bundle lives (one per bundle folder)."""
    return user_cache_dir() / "verified" / f"{bundle_key(bundle)}.json"


def read_stamp(path: Path, bundle: Path, manifest_sha256: str) -> dict[str, dict]:
    """The per-file records of a stamp made for this bundle folder and this very manifest, else {}."""
    stamp = read_json(path)
    if (stamp is None or stamp.get("format") != STAMP_FORMAT or stamp.get("bundle") != str(bundle.resolve())
            or stamp.get("manifest_sha256") != manifest_sha256 or not isinstance(stamp.get("files"), dict)):
        return {}
    return stamp["files"]


def verify_bundle(bundle: str | Path, progress: bool = False) -> dict:
    """The full check: every file's sha256 against the manifest, whatever the stamp says (raises
    BundleError on the first mismatch); renews the stamp. Returns {"files", "bytes", "seconds"}."""
    start = time.perf_counter()
    manifest = Manifest.load(bundle, verify=True, rehash=True, progress=progress)
    files = manifest["files"]
    return {"files": len(files), "bytes": sum(f["size"] for f in files.values()),
            "seconds": time.perf_counter() - start}


def file_entry(path: Path, sha256: str | None = None) -> dict:
    """{"size", "sha256"} for a file of the bundle (hashing it unless the digest is given)."""
    return {"size": path.stat().st_size, "sha256": sha256 or sha256_file(path)}


def write_manifest(bundle: Path, manifest: dict) -> None:
    """Write manifest.json atomically (what a reader finds is complete or absent)."""
    tmp = bundle / (MANIFEST + ".partial")
    tmp.write_text(json.dumps(manifest, indent=2, sort_keys=False) + "\n", encoding="utf-8")
    os.replace(tmp, bundle / MANIFEST)


@dataclass(frozen=True)
class Manifest:
    """A bundle's manifest, checked against the files beside it."""

    bundle: Path
    data: dict

    @classmethod
    def load(cls, bundle: str | Path, verify: bool = True, *, rehash: bool = False,
             progress: bool = False) -> "Manifest":
        """Read and check a bundle. Sizes are always checked; with `verify`, every file's sha256 too, except
        the files this user's verified stamp vouches for (unchanged stat since they last matched); with
        `rehash`, every file is hashed whatever the stamp says."""
        bundle = Path(bundle)
        path = bundle / MANIFEST
        if not bundle.is_dir():
            raise BundlePathError(f"{bundle}: not a bundle directory (make one with `voxtral-edge export`)")
        try:
            raw = path.read_bytes()
            data = json.loads(raw.decode("utf-8"))
        except FileNotFoundError:
            raise BundlePathError(f"{path}: missing; {bundle} is not a voxtral-edge bundle") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise BundleError(f"{path}: unreadable ({e})") from None
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise BundleError(f"{path}: not a voxtral-edge bundle manifest (format {data.get('format')!r:.40})"
                              if isinstance(data, dict) else f"{path}: not a JSON object")
        version = data.get("schema_version")
        if not isinstance(version, int) or version > SCHEMA_VERSION:
            raise BundleError(f"{path}: schema version {version!r} was written by a newer voxtral-edge; this "
                              f"runtime reads schema {SCHEMA_VERSION} (upgrade voxtral-edge or re-export)")
        if version < SCHEMA_VERSION:
            raise BundleError(f"{path}: schema version {version} is older than {SCHEMA_VERSION}; re-export it")
        missing = [k for k in REQUIRED if k not in data]
        if missing:
            raise BundleError(f"{path}: missing keys {missing}")
        manifest = cls(bundle, data)
        manifest._check_files()
        if verify:
            manifest._check_hashes(hashlib.sha256(raw).hexdigest(), rehash, progress)
        return manifest

    def _check_files(self) -> None:
        files = self.data["files"]
        units = [u for g in self.data["graphs"].values() for u in graph_units(g)]
        referenced = [u["file"] for u in units] + [u["data"] for u in units if u.get("data")]
        referenced += [u["compiled"]["context"] for u in units if "compiled" in u]
        referenced += [e["file"] for e in self.data["embeddings"].values()]
        referenced += [v["file"] for v in self.data["voices"].values()] + [self.data["tokenizer"]["file"]]
        for name in referenced:
            if name not in files:
                raise BundleError(f"{self.bundle / MANIFEST}: '{name}' is used but not listed under 'files'")
        for graph in GRAPHS:
            if graph not in self.data["graphs"]:
                raise BundleError(f"{self.bundle / MANIFEST}: no '{graph}' graph")
        for name, entry in files.items():
            path = self.path(name)
            if not path.is_file():
                raise BundleError(f"{path}: missing from the bundle (the manifest lists it)")
            size = path.stat().st_size
            if size != entry["size"]:
                raise BundleError(f"{path}: {size} bytes, the manifest says {entry['size']} (damaged or replaced)")
        for graph in [u for g in self.data["graphs"].values() for u in graph_units(g)]:
            # onnxruntime would open whatever path a graph names
            path = self.path(graph["file"])
            try:
                locations = set(external_locations(path))
            except (MalformedOnnx, UnicodeDecodeError) as e:
                raise BundleError(f"{path}: not a valid ONNX file ({e})") from None
            allowed = {graph["data"]} if graph.get("data") else set()
            if locations - allowed:
                raise BundleError(f"{path}: tensor data is read from {sorted(locations - allowed)}, but the only "
                                  f"data file this graph may use is {sorted(allowed) or 'none'}")
            try:  # a graph compiled for the NPU names its context binary; the QNN EP opens it
                contexts = set(ep_context_files(path))
            except (MalformedOnnx, UnicodeDecodeError) as e:
                raise BundleError(f"{path}: not a valid ONNX file ({e})") from None
            binary = {graph["compiled"]["context"]} if "compiled" in graph else set()
            if contexts - binary:
                raise BundleError(f"{path}: names the context binary {sorted(contexts - binary)}, but the only one "
                                  f"this graph may use is {sorted(binary) or 'none'}")

    def _check_hashes(self, manifest_sha256: str, rehash: bool, progress: bool) -> None:
        """Every file's sha256 against the manifest, skipping those the stamp vouches for; then the stamp."""
        stamp_path = verified_stamp_path(self.bundle)
        stamp = {} if rehash else read_stamp(stamp_path, self.bundle, manifest_sha256)
        files = self.data["files"]
        stats = {name: file_stat(self.path(name)) for name in files}
        trusted = {name: stamp[name] for name, entry in files.items()
                   if stamp.get(name) == {"sha256": entry["sha256"], "stat": stats[name]}}
        todo = [name for name in files if name not in trusted]
        bar = Progress(f"verifying {self.bundle.name}", sum(files[n]["size"] for n in todo), unit="B",
                       enabled=progress)
        for name in todo:
            path = self.path(name)
            if sha256_file(path, bar=bar) != files[name]["sha256"]:
                raise BundleError(f"{path}: sha256 differs from the manifest's (the file is damaged or was "
                                  f"altered); re-export the bundle")
            if file_stat(path) != stats[name]:  # written while it was read: not vouched for
                raise BundleError(f"{path}: changed while it was being verified; try again")
        bar.finish()
        if todo:
            record = {"format": STAMP_FORMAT, "bundle": str(self.bundle.resolve()),
                      "manifest_sha256": manifest_sha256, "verified_at": time.strftime("%Y-%m-%d %H:%M:%S"),
                      "files": {name: {"sha256": files[name]["sha256"], "stat": stats[name]} for name in files}}
            try:
                write_json_atomic(stamp_path, record)
            except OSError as e:
                warnings.warn(f"{stamp_path}: cannot record that {self.bundle} was verified ({e.strerror or e}); "
                              f"every start will hash it again (set VOXTRAL_EDGE_CACHE to a writable folder)",
                              stacklevel=4)

    def path(self, name: str) -> Path:
        """A bundle file's path; names may not leave the bundle directory."""
        path = (self.bundle / name).resolve()
        if self.bundle.resolve() not in path.parents:
            raise BundleError(f"{self.bundle / MANIFEST}: file name '{name}' points outside the bundle")
        return path

    def __getitem__(self, key: str):
        return self.data[key]
