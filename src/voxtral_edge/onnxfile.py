"""Where an ONNX file's tensors keep their data, read without the onnx package.

A tensor stored outside the model names its file in `external_data` ("location"); onnxruntime opens
that path relative to the model. A hostile or damaged bundle could point it anywhere (an absolute path,
`../..`). `external_locations` walks the protobuf wire format (ModelProto -> GraphProto -> initializers
and the tensors and subgraphs of node attributes) and returns every location it finds, so the runtime
can refuse any that is not the data file its manifest lists. `ep_context_files` does the same for the
context binaries an EP context model (a graph compiled for the NPU: one com.microsoft EPContext node whose
`ep_cache_context` names a file when `embed_mode` is 0) makes the QNN execution provider open.
"""

from __future__ import annotations

from pathlib import Path

# Field numbers from onnx.proto.
MODEL_GRAPH = 7
GRAPH_NODE, GRAPH_INITIALIZER, GRAPH_SPARSE_INITIALIZER = 1, 5, 15
NODE_OP_TYPE, NODE_ATTRIBUTE = 4, 5
ATTRIBUTE_NAME, ATTRIBUTE_I, ATTRIBUTE_S = 1, 3, 4
ATTRIBUTE_T, ATTRIBUTE_G, ATTRIBUTE_TENSORS, ATTRIBUTE_GRAPHS = 5, 6, 10, 11
SPARSE_VALUES, SPARSE_INDICES = 1, 2
TENSOR_EXTERNAL_DATA = 13
ENTRY_KEY, ENTRY_VALUE = 1, 2


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


def _fields(data: bytes):
    """(field number, value) for each field; a length-delimited value is its bytes, others are skipped."""
    pos = 0
    while pos < len(data):
        key, pos = _varint(data, pos)
        field, wire = key >> 3, key & 7
        if wire == 0:
            _, pos = _varint(data, pos)
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


def _all_fields(data: bytes):
    """(field number, value) for each field: an int for varints, bytes for length-delimited ones."""
    pos = 0
    while pos < len(data):
        key, pos = _varint(data, pos)
        field, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(data, pos)
            yield field, value
        elif wire in (1, 5):
            pos += 8 if wire == 1 else 4
        elif wire == 2:
            length, pos = _varint(data, pos)
            if pos + length > len(data):
                raise MalformedOnnx("a field runs past the end of its message")
            yield field, data[pos:pos + length]
            pos += length
        else:
            raise MalformedOnnx(f"unsupported wire type {wire}")


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
            fields = list(_all_fields(node))
            if not any(f == NODE_OP_TYPE and v == b"EPContext" for f, v in fields):
                continue
            attributes: dict[str, int | str] = {}
            for f, attribute in fields:
                if f != NODE_ATTRIBUTE:
                    continue
                values = dict(_all_fields(attribute))
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
