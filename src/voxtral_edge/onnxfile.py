"""ONNX files read and written without the onnx package (the runtime does not depend on it).

A tensor stored outside the model names its file in `external_data` ("location"); onnxruntime opens
that path relative to the model. A hostile or damaged bundle could point it anywhere (an absolute path,
`../..`). `external_locations` walks the protobuf wire format (ModelProto -> GraphProto -> initializers
and the tensors and subgraphs of node attributes) and returns every location it finds, so the runtime
can refuse any that is not the data file its manifest lists.

`ep_context_files` does the same for the context binaries an EP context model (a graph compiled for the
NPU: one com.microsoft EPContext node whose `ep_cache_context` names a file when `embed_mode` is 0) makes
the QNN execution provider open; `ep_context_nodes` reads those nodes' attributes.

`graph_nodes` lists a model's nodes (op type, domain, inputs, integer attributes), subgraphs included;
`model_bytes` writes a small model (nodes, initializers, typed inputs and outputs) that onnxruntime can
load from memory: the kernel self-test's one-node graphs (`voxtral_edge.kernelcheck`).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# Field numbers from onnx.proto.
MODEL_IR_VERSION, MODEL_PRODUCER_NAME, MODEL_GRAPH, MODEL_OPSET_IMPORT = 1, 2, 7, 8
OPSET_DOMAIN, OPSET_VERSION = 1, 2
GRAPH_NODE, GRAPH_NAME, GRAPH_INITIALIZER, GRAPH_INPUT, GRAPH_OUTPUT, GRAPH_SPARSE_INITIALIZER = 1, 2, 5, 11, 12, 15
NODE_INPUT, NODE_OUTPUT, NODE_NAME, NODE_OP_TYPE, NODE_ATTRIBUTE, NODE_DOMAIN = 1, 2, 3, 4, 5, 7
ATTRIBUTE_NAME, ATTRIBUTE_F, ATTRIBUTE_I, ATTRIBUTE_T, ATTRIBUTE_G, ATTRIBUTE_TENSORS, ATTRIBUTE_GRAPHS = 1, 2, 3, 5, 6, 10, 11
ATTRIBUTE_TYPE, ATTRIBUTE_TYPE_FLOAT, ATTRIBUTE_TYPE_INT = 20, 1, 2
ATTRIBUTE_S = 4
SPARSE_VALUES, SPARSE_INDICES = 1, 2
TENSOR_DIMS, TENSOR_DATA_TYPE, TENSOR_NAME, TENSOR_RAW_DATA, TENSOR_EXTERNAL_DATA = 1, 2, 8, 9, 13
ENTRY_KEY, ENTRY_VALUE = 1, 2
VALUE_INFO_NAME, VALUE_INFO_TYPE, TYPE_TENSOR, TYPE_TENSOR_ELEM_TYPE, TYPE_TENSOR_SHAPE = 1, 2, 1, 1, 2
SHAPE_DIM, DIM_VALUE, DIM_PARAM = 1, 1, 2
# TensorProto.DataType
ELEM_TYPES = {np.dtype(np.float32): 1, np.dtype(np.uint8): 2, np.dtype(np.int8): 3, np.dtype(np.int64): 7}


class MalformedOnnx(ValueError):
    """The bytes are not a well-formed protobuf message."""


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(data) or shift > 63:
            raise MalformedOnnx("truncated or overlong varint")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7


def _fields(data: bytes, varints: bool = False):
    """(field number, value) for each field; a length-delimited value is its bytes, a varint its int
    (when `varints`), others are skipped."""
    pos = 0
    while pos < len(data):
        key, pos = _varint(data, pos)
        field, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(data, pos)
            if varints:
                yield field, value
        elif wire == 1:
            pos += 8
        elif wire == 5:
            pos += 4
        elif wire == 2:
            length, pos = _varint(data, pos)
            if pos + length > len(data):
                raise MalformedOnnx("a field runs past the end of its message")
            yield field, data[pos:pos + length]
            pos += length
        else:
            raise MalformedOnnx(f"unsupported wire type {wire}")
        if pos > len(data):
            raise MalformedOnnx("a field runs past the end of its message")


def _tensor_locations(tensor: bytes) -> list[str]:
    found = []
    for field, entry in _fields(tensor):
        if field == TENSOR_EXTERNAL_DATA:
            pairs = dict(_fields(entry))
            if pairs.get(ENTRY_KEY) == b"location":
                found.append(pairs.get(ENTRY_VALUE, b"").decode("utf-8", "replace"))
    return found


def _graph_locations(graph: bytes, depth: int = 0) -> list[str]:
    if depth > 32:
        raise MalformedOnnx("subgraphs nested too deep")
    found = []
    for field, value in _fields(graph):
        if field == GRAPH_INITIALIZER:
            found += _tensor_locations(value)
        elif field == GRAPH_SPARSE_INITIALIZER:
            for part, tensor in _fields(value):
                if part in (SPARSE_VALUES, SPARSE_INDICES):
                    found += _tensor_locations(tensor)
        elif field == GRAPH_NODE:
            for part, attribute in _fields(value):
                if part != NODE_ATTRIBUTE:
                    continue
                for kind, item in _fields(attribute):
                    if kind in (ATTRIBUTE_T, ATTRIBUTE_TENSORS):
                        found += _tensor_locations(item)
                    elif kind in (ATTRIBUTE_G, ATTRIBUTE_GRAPHS):
                        found += _graph_locations(item, depth + 1)
    return found


def external_locations(path: str | Path) -> list[str]:
    """Every external-data location named in an ONNX file (raises MalformedOnnx on bad bytes)."""
    data = Path(path).read_bytes()
    found = []
    for field, value in _fields(data):
        if field == MODEL_GRAPH:
            found += _graph_locations(value)
    return found


@dataclass(frozen=True)
class Node:
    """One node of a model (or of one of its subgraphs): what the kernel self-test needs of it."""

    op_type: str
    domain: str
    inputs: tuple[str, ...]
    attributes: dict[str, int]  # the integer attributes only


def _graph_nodes(graph: bytes, depth: int = 0) -> list[Node]:
    if depth > 32:
        raise MalformedOnnx("subgraphs nested too deep")
    found = []
    for number, value in _fields(graph):
        if number != GRAPH_NODE:
            continue
        op_type, domain, inputs, attributes = "", "", [], {}
        for part, item in _fields(value):
            if part == NODE_OP_TYPE:
                op_type = item.decode("utf-8", "replace")
            elif part == NODE_DOMAIN:
                domain = item.decode("utf-8", "replace")
            elif part == NODE_INPUT:
                inputs.append(item.decode("utf-8", "replace"))
            elif part == NODE_ATTRIBUTE:
                name, integer = "", None
                for kind, entry in _fields(item, varints=True):
                    if kind == ATTRIBUTE_NAME:
                        name = entry.decode("utf-8", "replace")
                    elif kind == ATTRIBUTE_I:
                        integer = entry - (1 << 64) if entry >= 1 << 63 else entry  # int64, two's complement
                    elif kind in (ATTRIBUTE_G, ATTRIBUTE_GRAPHS):
                        found += _graph_nodes(entry, depth + 1)
                if integer is not None:
                    attributes[name] = integer
        found.append(Node(op_type, domain, tuple(inputs), attributes))
    return found


def graph_nodes(path: str | Path) -> list[Node]:
    """Every node of an ONNX file, the nodes of subgraphs (a Loop's body) included (raises MalformedOnnx)."""
    found = []
    for number, value in _fields(Path(path).read_bytes()):
        if number == MODEL_GRAPH:
            found += _graph_nodes(value)
    return found


def ep_context_nodes(path: str | Path) -> list[dict[str, int | str]]:
    """The attributes of each EPContext node of an ONNX file: ints as ints, strings decoded (the embedded
    binary of embed_mode 1 is left out)."""
    nodes = []
    for field, graph in _fields(Path(path).read_bytes()):
        if field != MODEL_GRAPH:
            continue
        for part, node in _fields(graph):
            if part != GRAPH_NODE:
                continue
            fields = list(_fields(node))
            if not any(f == NODE_OP_TYPE and v == b"EPContext" for f, v in fields):
                continue
            attributes: dict[str, int | str] = {}
            for f, attribute in fields:
                if f != NODE_ATTRIBUTE:
                    continue
                values = dict(_fields(attribute, varints=True))
                name = values.get(ATTRIBUTE_NAME, b"").decode("utf-8", "replace")
                if ATTRIBUTE_I in values:
                    attributes[name] = values[ATTRIBUTE_I]
                elif ATTRIBUTE_S in values and not (name == "ep_cache_context" and len(values[ATTRIBUTE_S]) > 4096):
                    attributes[name] = values[ATTRIBUTE_S].decode("utf-8", "replace")
            nodes.append(attributes)
    return nodes


def ep_context_files(path: str | Path) -> list[str]:
    """The files the EPContext nodes of an ONNX file name (embed_mode 0), in the order found."""
    return [str(n.get("ep_cache_context", "")) for n in ep_context_nodes(path) if n.get("embed_mode", 1) == 0]


# -- writing -----------------------------------------------------------------------------------------
def _key(number: int, wire: int) -> bytes:
    return _encode_varint(number << 3 | wire)


def _encode_varint(value: int) -> bytes:
    value &= (1 << 64) - 1  # negative int64s as ten bytes of two's complement, as protobuf does
    out = bytearray()
    while True:
        low, value = value & 0x7F, value >> 7
        out.append(low | 0x80 if value else low)
        if not value:
            return bytes(out)


def _int_field(number: int, value: int) -> bytes:
    return _key(number, 0) + _encode_varint(value)


def _bytes_field(number: int, value: bytes | str) -> bytes:
    data = value.encode("utf-8") if isinstance(value, str) else value
    return _key(number, 2) + _encode_varint(len(data)) + data


def _tensor(name: str, array: np.ndarray) -> bytes:
    array = np.ascontiguousarray(array)
    return (b"".join(_int_field(TENSOR_DIMS, d) for d in array.shape) + _int_field(TENSOR_DATA_TYPE, ELEM_TYPES[array.dtype])
            + _bytes_field(TENSOR_NAME, name) + _bytes_field(TENSOR_RAW_DATA, array.tobytes()))


def _value_info(name: str, dtype, shape: tuple[int | str, ...]) -> bytes:
    dims = b"".join(_bytes_field(SHAPE_DIM, _int_field(DIM_VALUE, d) if isinstance(d, int) else _bytes_field(DIM_PARAM, d))
                    for d in shape)
    tensor_type = _int_field(TYPE_TENSOR_ELEM_TYPE, ELEM_TYPES[np.dtype(dtype)]) + _bytes_field(TYPE_TENSOR_SHAPE, dims)
    return _bytes_field(VALUE_INFO_NAME, name) + _bytes_field(VALUE_INFO_TYPE, _bytes_field(TYPE_TENSOR, tensor_type))


def _attribute(name: str, value: int | float) -> bytes:
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return _bytes_field(ATTRIBUTE_NAME, name) + _int_field(ATTRIBUTE_I, int(value)) + _int_field(ATTRIBUTE_TYPE, ATTRIBUTE_TYPE_INT)
    if isinstance(value, float):
        return (_bytes_field(ATTRIBUTE_NAME, name) + _key(ATTRIBUTE_F, 5) + struct.pack("<f", value)
                + _int_field(ATTRIBUTE_TYPE, ATTRIBUTE_TYPE_FLOAT))
    raise TypeError(f"attribute {name}: only int and float attributes are written, found {type(value).__name__}")


def model_bytes(nodes: list[tuple[str, str, list[str], list[str], dict]], initializers: dict[str, np.ndarray],
                inputs: list[tuple[str, object, tuple]], outputs: list[tuple[str, object, tuple]],
                opsets: dict[str, int] | None = None) -> bytes:
    """A serialized ModelProto: `nodes` as (op_type, domain, inputs, outputs, attributes), initializers
    stored in the model, inputs and outputs as (name, numpy dtype, shape with ints or symbolic names)."""
    opsets = opsets or {"": 17, "com.microsoft": 1}
    graph = b"".join(
        _bytes_field(GRAPH_NODE, b"".join(_bytes_field(NODE_INPUT, i) for i in node_inputs)
                     + b"".join(_bytes_field(NODE_OUTPUT, o) for o in node_outputs)
                     + _bytes_field(NODE_NAME, f"{op_type}_{n}") + _bytes_field(NODE_OP_TYPE, op_type)
                     + b"".join(_bytes_field(NODE_ATTRIBUTE, _attribute(k, v)) for k, v in attributes.items())
                     + _bytes_field(NODE_DOMAIN, domain))
        for n, (op_type, domain, node_inputs, node_outputs, attributes) in enumerate(nodes))
    graph += _bytes_field(GRAPH_NAME, "voxtral_edge")
    graph += b"".join(_bytes_field(GRAPH_INITIALIZER, _tensor(name, array)) for name, array in initializers.items())
    graph += b"".join(_bytes_field(GRAPH_INPUT, _value_info(*i)) for i in inputs)
    graph += b"".join(_bytes_field(GRAPH_OUTPUT, _value_info(*o)) for o in outputs)
    return (_int_field(MODEL_IR_VERSION, 8) + _bytes_field(MODEL_PRODUCER_NAME, "voxtral-edge")
            + _bytes_field(MODEL_GRAPH, graph)
            + b"".join(_bytes_field(MODEL_OPSET_IMPORT, _bytes_field(OPSET_DOMAIN, d) + _int_field(OPSET_VERSION, v))
                       for d, v in opsets.items()))
