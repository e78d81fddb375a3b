"""A small ONNX graph builder that streams weights to an external data file as they are added.

The graph proto holds names and shapes only; every large initializer goes straight to
`<graph>.onnx.data` (page-aligned, so onnxruntime can map it), which is how a 13 GB fp32 backbone is
exported on a machine that could not hold it twice. Node outputs get readable, unique names from the
scope they are built in (`layers.3/attention/...`), so a graph can be followed by grep.
"""

from __future__ import annotations

import hashlib
import os
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

OPSET = 23  # RMSNormalization
MS_DOMAIN = "com.microsoft"
ALIGNMENT = 65536  # big external tensors start on a boundary every platform can map
SMALL_ALIGNMENT = 64  # small ones are read, not mapped: keep tiny graphs tiny
INLINE_BYTES = 1024  # smaller constants stay inside the graph proto

ONNX_TYPES = {np.dtype(np.float32): TensorProto.FLOAT, np.dtype(np.float16): TensorProto.FLOAT16,
              np.dtype(np.int64): TensorProto.INT64, np.dtype(np.int32): TensorProto.INT32,
              np.dtype(np.uint8): TensorProto.UINT8, np.dtype(np.int8): TensorProto.INT8,
              np.dtype(np.bool_): TensorProto.BOOL}


class GraphBuilder:
    """Collects nodes, inputs and outputs; `weight()` writes an initializer's bytes immediately."""

    def __init__(self, name: str, path: str | Path):
        self.name = name
        self.path = Path(path)
        self.data_name = self.path.name + ".data"
        self.nodes: list[onnx.NodeProto] = []
        self.inputs: list[onnx.ValueInfoProto] = []
        self.outputs: list[onnx.ValueInfoProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self._names: set[str] = set()
        self._scope: list[str] = []
        self._data = open(self.path.with_name(self.data_name + ".partial"), "wb")
        self._data_hash = hashlib.sha256()
        self.data_bytes = 0

    # -- naming -----------------------------------------------------------------------------------
    @contextmanager
    def scope(self, name: str):
        self._scope.append(name)
        try:
            yield
        finally:
            self._scope.pop()

    def unique(self, name: str) -> str:
        base = "/".join(self._scope + [name])
        candidate, n = base, 1
        while candidate in self._names:
            n += 1
            candidate = f"{base}_{n}"
        self._names.add(candidate)
        return candidate

    @contextmanager
    def subgraph(self):
        """Collect the nodes added inside into a list of their own (the body of a Loop); names stay unique
        over the whole model and weights still go to the main graph, which the body reads from."""
        saved, self.nodes = self.nodes, []
        try:
            yield self.nodes
        finally:
            self.nodes = saved

    # -- graph interface ----------------------------------------------------------------------
    def input(self, name: str, elem_type: int, shape: list) -> str:
        self._names.add(name)
        self.inputs.append(helper.make_tensor_value_info(name, elem_type, shape))
        return name

    def output(self, name: str, elem_type: int, shape: list) -> str:
        """Declare a graph output; the node that makes it names it with `op(..., outputs=[name])`.
        (No Identity in between: an output bound to a caller's buffer must be written by its producer.)"""
        self.outputs.append(helper.make_tensor_value_info(name, elem_type, shape))
        return name

    def weight(self, name: str, array: np.ndarray, exact_name: bool = False) -> str:
        """An initializer; large ones are appended to the external data file right away. With
        `exact_name` the name is kept as given (copying a graph), else made unique in the scope."""
        array = np.asarray(array, order="C")  # (not ascontiguousarray: it turns 0-d scalars into 1-d)
        name = name if exact_name else self.unique(name)
        if array.nbytes <= INLINE_BYTES:
            self.initializers.append(helper.make_tensor(name, ONNX_TYPES[array.dtype], array.shape,
                                                        array.tobytes(), raw=True))
            return name
        padding = -self.data_bytes % (ALIGNMENT if array.nbytes >= ALIGNMENT else SMALL_ALIGNMENT)
        self._write(b"\0" * padding)
        offset = self.data_bytes
        self._write(array.tobytes())
        tensor = TensorProto(name=name, data_type=ONNX_TYPES[array.dtype], dims=array.shape,
                             data_location=TensorProto.EXTERNAL)
        for key, value in (("location", self.data_name), ("offset", str(offset)), ("length", str(array.nbytes))):
            entry = tensor.external_data.add()
            entry.key, entry.value = key, value
        self.initializers.append(tensor)
        return name

    def _write(self, raw: bytes) -> None:
        self._data.write(raw)
        self._data_hash.update(raw)
        self.data_bytes += len(raw)

    def const(self, value, dtype=np.float32, name: str = "const") -> str:
        return self.weight(name, np.asarray(value, dtype=dtype))

    def op(self, op_type: str, inputs: list[str], n_outputs: int = 1, domain: str = "", name: str | None = None,
           outputs: list[str] | None = None, **attrs) -> str | list[str]:
        """Add a node; returns its output name (or names when n_outputs > 1). `outputs` names them
        explicitly (graph outputs)."""
        base = self.unique(name or op_type)
        if outputs is None:
            outputs = [base] + [self.unique(f"{name or op_type}_out{i}") for i in range(1, n_outputs)]
        else:
            self._names.update(outputs)
        self.nodes.append(helper.make_node(op_type, inputs, outputs, name=base, domain=domain or None, **attrs))
        return outputs[0] if len(outputs) == 1 else outputs

    # -- saving ---------------------------------------------------------------------------------
    def save(self) -> dict[str, str]:
        """Write `<name>.onnx` and its data file; returns {file name: sha256} of what was written."""
        self._data.close()
        graph = helper.make_graph(self.nodes, self.name, self.inputs, self.outputs, self.initializers)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET),
                                                        helper.make_opsetid(MS_DOMAIN, 1)],
                                  producer_name="voxtral-edge")
        raw = model.SerializeToString()
        partial = self.path.with_name(self.path.name + ".partial")
        partial.write_bytes(raw)
        hashes = {self.path.name: hashlib.sha256(raw).hexdigest()}
        data_partial = self.path.with_name(self.data_name + ".partial")
        if self.data_bytes:
            os.replace(data_partial, self.path.with_name(self.data_name))
            hashes[self.data_name] = self._data_hash.hexdigest()
        else:
            data_partial.unlink()
        os.replace(partial, self.path)
        return hashes

    def abort(self) -> None:
        self._data.close()
        for p in (self.path.with_name(self.data_name + ".partial"), self.path.with_name(self.path.name + ".partial")):
            p.unlink(missing_ok=True)
