"""Frozen TensorFlow GraphDef (`.pb`): every `Const` node's TensorProto becomes a lazy array.

GraphDef: node=1 (NodeDef: name=1, op=2, input=3, device=4, attr=5 map<string, AttrValue>),
library=2, versions=4. TensorProto: dtype=1, tensor_shape=2, tensor_content=4 (raw little-endian
bytes: mapped in place), or one typed value field (float_val=5, double_val=6, int_val=7,
int64_val=10, bool_val=11, scomplex_val=9, dcomplex_val=12, half_val=13 (float16 and bfloat16 bit
patterns in int32s), uint32_val=16, uint64_val=17, float8_val=18). A typed field with fewer values
than elements repeats its last value (no values: zeros), as tensorflow.make_ndarray does.

Each constant is attributed to the op that consumes it (through Identity chains), which gives
its layer, role and layout: Conv2D filter HWIO, DepthwiseConv2dNative filter HWCM, MatMul right
operand IO (OI with transpose_b), BiasAdd bias, FusedBatchNorm scale/offset/mean/variance.
"""
from __future__ import annotations

import re
import struct

import numpy as np

from ..arrays import ArrayFile, ArrayHandle, Layer, role_from_name
from ..errors import FormatError, UnsupportedError
from ._binary import FileView
from ._protowire import FIXED32, FIXED64, LEN, VARINT, iter_fields, packed_varints, read_varint, text
from ._tf_types import DT_STRING, DTYPES, dtype_name, tensor_shape

_NODE_NAME = re.compile(rb"^[A-Za-z0-9.][A-Za-z0-9_.\-/>]*$")
_OP_NAME = re.compile(rb"^[A-Za-z_>][A-Za-z0-9_>]*$")
_CONST_OPS = ("Const", "HostConst")
_MAX_EXPANDED = 1 << 30  # bytes a constant stored as typed values (not tensor_content) may expand to

# dtype -> (typed value field, how its entries are encoded)
_VALUE_FIELD = {1: (5, "f4"), 2: (6, "f8"), 8: (9, "f4"), 18: (12, "f8"), 9: (10, "varint"), 10: (11, "varint"),
                19: (13, "varint"), 14: (13, "varint"), 22: (16, "varint"), 23: (17, "varint"), 24: (18, "bytes"),
                25: (18, "bytes")}
for _dt in (3, 4, 5, 6, 11, 12, 13, 15, 16, 17):
    _VALUE_FIELD[_dt] = (7, "varint")

# consumer op -> {input index: (role, layout or None)}
_CONSUMERS = {
    "Conv2D": {1: ("weight", "HWIO")}, "Conv3D": {1: ("weight", "DHWIO")},
    "DepthwiseConv2dNative": {1: ("weight", "HWCM")}, "MatMul": {1: ("weight", "IO")},
    "BiasAdd": {1: ("bias", None)}, "BiasAddV1": {1: ("bias", None)},
}
for _bn in ("FusedBatchNorm", "FusedBatchNormV2", "FusedBatchNormV3"):
    _CONSUMERS[_bn] = {1: ("weight", None), 2: ("bias", None), 3: ("running_mean", None), 4: ("running_var", None)}


def is_graphdef(path, head: bytes) -> bool:
    """Structural check: the file starts with GraphDef.node whose NodeDef begins name=1, op=2."""
    if not head or head[0] != 0x0A:
        return False
    try:
        with open(path, "rb") as fh:
            buf = fh.read(4096)
        _n, pos = read_varint(buf, 1, len(buf))
        found = {}
        for f, w, v, _off in iter_fields(buf, pos, len(buf)):
            if f not in (1, 2) or w != LEN:
                break
            found[f] = bytes(buf[v[0]:v[0] + v[1]])
            if f == 2:
                break
    except Exception:  # any parse failure on a file that is not ours means "not a GraphDef"
        return False
    return bool(found.get(1) and _NODE_NAME.match(found[1]) and found.get(2) and _OP_NAME.match(found[2]))


def open_graphdef(path, framework: str) -> ArrayFile:
    view = FileView(path)
    try:
        return _read_graphdef(view, framework)
    except BaseException:
        view.close()
        raise


def _read_graphdef(view: FileView, framework: str) -> ArrayFile:
    buf = view.walk_view("the graph's nodes").buf
    file = view.path
    nodes, functions, versions = [], 0, {}
    for f, w, v, off in iter_fields(buf, 0, view.size, file):
        if f == 1 and w == LEN:
            nodes.append(_node_def(buf, v, file, off))
        elif f == 2 and w == LEN:
            functions = sum(1 for f2, *_ in iter_fields(buf, v[0], v[0] + v[1], file) if f2 == 1)
        elif f == 4 and w == LEN:
            vf = {f2: v2 for f2, w2, v2, _o in iter_fields(buf, v[0], v[0] + v[1], file) if w2 == VARINT}
            versions = {"producer": vf.get(1, 0), "min_consumer": vf.get(2, 0)}
    if not nodes:
        raise FormatError("GraphDef has no nodes", file=file, offset=0)
    consumers = _consumers(nodes)
    layers, handles, strings = {}, [], {}
    for node in nodes:
        tensor = node["attrs"].pop("value", None) if node["op"] in _CONST_OPS else None
        arrays = []
        if isinstance(tensor, _Tensor):
            if tensor.dtype == DT_STRING:
                strings[node["name"]] = tensor.shape
            else:
                handles.append(_const_handle(view, node["name"], tensor, consumers.get(node["name"])))
                arrays.append(node["name"])
        params = {k: v for k, v in node["attrs"].items() if not isinstance(v, _Tensor)}
        if node["device"]:
            params["device"] = node["device"]
        layers[node["name"]] = Layer(node["name"], node["op"], params, node["inputs"], [node["name"]], arrays)
    meta = {"format": "graphdef", "version": versions,
            "graph": {"nodes": len(nodes), "consts": len(handles), "functions": functions}}
    if strings:
        meta["string_tensors"] = strings
    return ArrayFile(file, framework, handles, meta=meta, layers=layers, closer=view.close)


class _Tensor:
    """Where a TensorProto's parts lie in the file."""

    __slots__ = ("dtype", "shape", "content", "values", "at")

    def __init__(self, at):
        self.dtype, self.shape, self.content, self.values, self.at = 0, (), None, [], at


def _node_def(buf, span, file, at) -> dict:
    node = {"name": "", "op": "", "inputs": [], "device": "", "attrs": {}, "at": at}
    for f, w, v, _off in iter_fields(buf, span[0], span[0] + span[1], file):
        if w != LEN:
            continue
        if f == 1:
            node["name"] = text(buf, v)
        elif f == 2:
            node["op"] = text(buf, v)
        elif f == 3:
            node["inputs"].append(text(buf, v))
        elif f == 4:
            node["device"] = text(buf, v)
        elif f == 5:
            key, value = "", None
            for f2, w2, v2, off2 in iter_fields(buf, v[0], v[0] + v[1], file):
                if f2 == 1 and w2 == LEN:
                    key = text(buf, v2)
                elif f2 == 2 and w2 == LEN:
                    value = (v2, off2)
            if value is not None:
                node["attrs"][key] = _attr_value(buf, value[0], file, node["name"], value[1])
    return node


def _attr_value(buf, span, file, name, at):
    """AttrValue: list=1 s=2 i=3 f=4 b=5 type=6 shape=7 tensor=8 placeholder=9 func=10."""
    value = None
    for f, w, v, off in iter_fields(buf, span[0], span[0] + span[1], file):
        if f == 1 and w == LEN:
            value = _attr_list(buf, v, file, name)
        elif f in (2, 9) and w == LEN:
            value = bytes(buf[v[0]:v[0] + v[1]]).decode("utf-8", errors="replace")
        elif f == 3 and w == VARINT:
            value = v - (1 << 64) if v >= 1 << 63 else v
        elif f == 4 and w == FIXED32:
            value = struct.unpack("<f", struct.pack("<I", v))[0]
        elif f == 5 and w == VARINT:
            value = bool(v)
        elif f == 6 and w == VARINT:
            value = dtype_name(v)
        elif f == 7 and w == LEN:
            shape = tensor_shape(buf, v, file, name, off, allow_unknown=True)
            value = None if shape is None else list(shape)  # None: unknown rank
        elif f == 8 and w == LEN:
            value = _tensor_proto(buf, v, file, name, off)
        elif f == 10 and w == LEN:
            value = {"func": next((text(buf, v2) for f2, w2, v2, _o in iter_fields(buf, v[0], v[0] + v[1], file)
                                   if f2 == 1 and w2 == LEN), "")}
    return value


def _attr_list(buf, span, file, name) -> list:
    """AttrValue.ListValue: s=2 i=3 (packed) f=4 (packed) b=5 type=6 shape=7; tensors are left out."""
    out = []
    for f, w, v, off in iter_fields(buf, span[0], span[0] + span[1], file):
        if f == 2 and w == LEN:
            out.append(text(buf, v))
        elif f in (3, 5, 6):
            vals = packed_varints(buf, v, file) if w == LEN else [v]
            if f == 3:
                out.extend(x - (1 << 64) if x >= 1 << 63 else x for x in vals)
            elif f == 5:
                out.extend(bool(x) for x in vals)
            else:
                out.extend(dtype_name(x) for x in vals)
        elif f == 4:
            if w == LEN:
                out.extend(np.frombuffer(buf, "<f4", v[1] // 4, v[0]).tolist())
            elif w == FIXED32:
                out.append(struct.unpack("<f", struct.pack("<I", v))[0])
        elif f == 7 and w == LEN:
            shape = tensor_shape(buf, v, file, name, off, allow_unknown=True)
            out.append(None if shape is None else list(shape))  # None: unknown rank
    return out


def _tensor_proto(buf, span, file, name, at) -> _Tensor:
    t = _Tensor(at)
    for f, w, v, off in iter_fields(buf, span[0], span[0] + span[1], file):
        if f == 1 and w == VARINT:
            t.dtype = v
        elif f == 2 and w == LEN:
            t.shape = tensor_shape(buf, v, file, name, off)
        elif f == 4 and w == LEN:
            t.content = v
        elif f in (5, 6, 7, 9, 10, 11, 12, 13, 16, 17, 18):
            t.values.append((f, w, v, off))
    return t


def _consumers(nodes) -> dict[str, tuple]:
    """const name -> (consumer name, consumer op, role, layout) for constants feeding a known op."""
    readers: dict[str, list] = {}
    for n in nodes:
        for i, inp in enumerate(n["inputs"]):
            if not inp.startswith("^"):
                readers.setdefault(inp.split(":")[0], []).append((n, i))
    out = {}
    for n in nodes:
        if n["op"] not in _CONST_OPS:
            continue
        src, seen = n["name"], 0
        while seen < 16:  # follow Identity chains (ReadVariableOp left behind by freezing)
            users = readers.get(src, [])
            if len(users) == 1 and users[0][0]["op"] in ("Identity", "ReadVariableOp"):
                src, seen = users[0][0]["name"], seen + 1
                continue
            break
        for user, i in readers.get(src, []):
            slot = _CONSUMERS.get(user["op"], {}).get(i)
            if slot:
                role, layout = slot
                if user["op"] == "MatMul" and user["attrs"].get("transpose_b"):
                    layout = "OI"
                out[n["name"]] = (user["name"], user["op"], role, layout)
                break
    return out


def _const_handle(view: FileView, name: str, t: _Tensor, consumer) -> ArrayHandle:
    if t.dtype not in DTYPES:
        raise UnsupportedError(f"constant of dtype {dtype_name(t.dtype)} is not supported", file=view.path,
                               array=name, offset=t.at)
    dtype, shape = np.dtype(DTYPES[t.dtype]), t.shape
    count = 1
    for d in shape:
        count *= d
    if consumer:
        layer, layer_type, role, layout = consumer
        meta = {"layer": layer, "layer_type": layer_type, "role": role, "layout": layout}
    else:
        meta = {"layer": name, "layer_type": "Const", "role": role_from_name(name) or "constant"}
    if t.content is not None:
        start, length = t.content
        if length != count * dtype.itemsize:
            raise FormatError(f"tensor_content holds {length} bytes but {dtype_name(t.dtype)}{list(shape)} needs "
                              f"{count * dtype.itemsize}", file=view.path, array=name, offset=start)
        meta["offset"] = start
        return view.handle(name, start, dtype, shape, meta)
    if count * dtype.itemsize > _MAX_EXPANDED:  # a few stored values must not expand into gigabytes
        raise UnsupportedError(f"{dtype_name(t.dtype)}{list(shape)} constant given by typed values would expand to "
                               f"{count * dtype.itemsize} bytes", file=view.path, array=name, offset=t.at)
    return ArrayHandle(name, shape, dtype, lambda: _typed_values(view, name, t, dtype, count), meta, fresh=True)


def _typed_values(view: FileView, name: str, t: _Tensor, dtype, count: int) -> np.ndarray:
    """Decode the typed value field; fewer values than elements repeat the last one. Its bytes
    come from one pread (a file cut short since it was opened is a TruncatedError, not a SIGBUS)."""
    field, kind = _VALUE_FIELD.get(t.dtype, (None, None))
    entries = [e for e in t.values if e[0] == field]
    spans = [v for _f, w, v, _o in entries if w == LEN]
    low = min(s for s, _ in spans) if spans else 0
    buf = view.pread(low, max(s + n for s, n in spans) - low, "typed values", name) if spans else b""
    entries = [(f, w, (v[0] - low, v[1]) if w == LEN else v, o) for f, w, v, o in entries]
    try:
        vals = _decode_values(buf, entries, kind, t.dtype, dtype, view.path)
    except FormatError as e:  # (offsets in `buf`: the file's)
        if e.offset is not None:
            e.offset += low
        raise
    n = len(vals)
    if n > count:
        raise FormatError(f"typed value field holds {n} values for {count} elements", file=view.path, array=name,
                          offset=t.at)
    if n == count:
        return vals.reshape(t.shape)
    out = np.empty(count, dtype)
    out[:n] = vals
    out[n:] = vals[-1] if n else np.zeros((), dtype)
    return out.reshape(t.shape)


def _decode_values(buf, entries, kind: str, tf_dtype: int, dtype, path) -> np.ndarray:
    """The values of typed value `entries` (LEN spans in `buf`) of the `kind` _VALUE_FIELD names."""
    if kind in ("f4", "f8"):
        raw = _fixed_values(buf, entries, kind)
        return raw.view(np.complex64 if tf_dtype == 8 else np.complex128) if tf_dtype in (8, 18) else raw
    if kind == "bytes":
        return np.frombuffer(b"".join(bytes(buf[v[0]:v[0] + v[1]]) for _f, w, v, _o in entries if w == LEN),
                             np.uint8).view(dtype)
    ints = []
    for _f, w, v, _o in entries:
        ints.extend(packed_varints(buf, v, path) if w == LEN else [v])
    if tf_dtype in (19, 14):
        return np.array(ints, np.uint64).astype(np.uint16).view(dtype)
    if tf_dtype in (23, 22):
        return np.array(ints, np.uint64).astype(dtype)
    return np.array(ints, np.uint64).view(np.int64).astype(dtype)  # two's complement; narrow types wrap as TF's casts


def _fixed_values(buf, entries, kind) -> np.ndarray:
    size = 4 if kind == "f4" else 8
    parts = []
    for _f, w, v, _off in entries:
        if w == LEN:
            parts.append(np.frombuffer(buf, "<" + kind, v[1] // size, v[0]))
        elif w in (FIXED32, FIXED64):
            fmt = "<I" if w == FIXED32 else "<Q"
            parts.append(np.frombuffer(struct.pack(fmt, v), "<" + kind))
    return np.concatenate(parts) if parts else np.zeros(0, "<" + kind)
