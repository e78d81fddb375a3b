"""manifest.json: the one contract between the exporter and the runtime.

A bundle is a folder; its manifest lists every file with size and sha256, each graph's file,
inputs and outputs, the model's dimensions, the special token ids, the audio layout, the voices and
the precision of each graph. The runtime reads nothing the manifest does not describe, and refuses a
bundle whose files do not match it before it builds any session.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from .errors import BundleError, BundlePathError
from .onnxfile import MalformedOnnx, external_locations

FORMAT = "voxtral-edge-bundle"
SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
GRAPHS = ("backbone_step", "flow_head", "codec_decoder")
# The named precision plans (defined in voxtral_edge.quant.plans; named here so the runtime can check them).
PLAN_NAMES = ("fp32", "int8", "int4", "int4-all", "int4-fast", "int4-all-fast")
REQUIRED = ("format", "schema_version", "files", "graphs", "model", "audio", "special_ids", "embeddings",
            "voices", "tokenizer", "quantization")


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


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
    def load(cls, bundle: str | Path, verify: bool = True) -> "Manifest":
        """Read and check a bundle. Sizes are always checked; with `verify`, every sha256 too."""
        bundle = Path(bundle)
        path = bundle / MANIFEST
        if not bundle.is_dir():
            raise BundlePathError(f"{bundle}: not a bundle directory (make one with `voxtral-edge export`)")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
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
        manifest._check_files(verify)
        return manifest

    def _check_files(self, verify: bool) -> None:
        files = self.data["files"]
        referenced = [g["file"] for g in self.data["graphs"].values()]
        referenced += [g["data"] for g in self.data["graphs"].values() if g.get("data")]
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
            if verify and sha256_file(path) != entry["sha256"]:
                raise BundleError(f"{path}: sha256 differs from the manifest's (the file is damaged or was "
                                  f"altered); re-export the bundle")
        for name, graph in self.data["graphs"].items():  # onnxruntime would open whatever path a graph names
            path = self.path(graph["file"])
            try:
                locations = set(external_locations(path))
            except (MalformedOnnx, UnicodeDecodeError) as e:
                raise BundleError(f"{path}: not a valid ONNX file ({e})") from None
            allowed = {graph["data"]} if graph.get("data") else set()
            if locations - allowed:
                raise BundleError(f"{path}: tensor data is read from {sorted(locations - allowed)}, but the only "
                                  f"data file this graph may use is {sorted(allowed) or 'none'}")

    def path(self, name: str) -> Path:
        """A bundle file's path; names may not leave the bundle directory."""
        path = (self.bundle / name).resolve()
        if self.bundle.resolve() not in path.parents:
            raise BundleError(f"{self.bundle / MANIFEST}: file name '{name}' points outside the bundle")
        return path

    def __getitem__(self, key: str):
        return self.data[key]
