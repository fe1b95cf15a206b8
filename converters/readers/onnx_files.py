"""[onnx] reader: initializers and Constant-node tensors of an ONNX ModelProto, lazily.

`onnx.load` parses every weight into Python objects; a 1 GB model would be read whole. This reader
walks the protobuf wire format instead (see `_protowire`) and remembers *where* each tensor's data
lies: `raw_data` and packed `float_data`/`double_data` become memory-map views, varint fields
(`int32_data`, `int64_data`, `uint64_data`) are decoded only when `.numpy()` is called, and
external data files are memory-mapped. The dtype table is converters/dtypes.py's: the `onnx`
package is not needed to read.

This module's field-by-field walk (`_walk`) is the reference; `_onnx_fast` opens the common case
(no subgraphs, no errors) with a few numpy passes over all nodes and tensors at once and leaves
roles, layouts and layers to this walk on first access. Files over MAP_WALK_MAX are walked with
pread (`_protowire.PreadBuffer`) so opening them makes no file pages resident.

Field numbers (onnx/onnx.proto, checked against onnx 1.23):
    ModelProto    ir_version=1 producer_name=2 producer_version=3 domain=4 model_version=5
                  doc_string=6 graph=7 opset_import=8 metadata_props=14
    GraphProto    node=1 name=2 initializer=5 input=11 output=12 value_info=13 sparse_initializer=15
    NodeProto     input=1 output=2 name=3 op_type=4 attribute=5 domain=7
    AttributeProto name=1 f=2 i=3 s=4 t=5 g=6 floats=7 ints=8 strings=9 tensors=10 graphs=11 type=20
                  sparse_tensor=22
    TensorProto   dims=1 data_type=2 float_data=4 int32_data=5 string_data=6 int64_data=7 name=8
                  raw_data=9 double_data=10 uint64_data=11 external_data=13 data_location=14
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from functools import partial

import numpy as np

from ..arrays import ArrayFile, ArrayHandle, Layer, role_from_name
from ..dtypes import ONNX
from ..errors import FormatError, MissingDependencyError, TruncatedError, UnsupportedError
from . import _protowire as pw
from ._binary import FileView
from ._limits import element_count, parser_errors

NAME = "onnx"
OPTIONS = {"allow_outside": bool, "subgraphs": bool}
"""Reader options (`--option KEY=VALUE`) and their types; readers/__init__ validates against it."""

FAST = True
"""Open with the vectorized walk (`_open_fast`) where it applies; False: always the field-by-field
walk, which is the reference the tests compare the fast one against."""
MAP_WALK_MAX = 8 << 20
"""Files up to this size have their headers walked through the memory map; bigger ones with pread
(`_protowire.PreadBuffer`), so opening them does not make file pages resident."""

# TensorProto field numbers
T_DIMS, T_DATA_TYPE, T_FLOAT, T_INT32, T_STRING, T_INT64, T_NAME, T_RAW, T_DOUBLE, T_UINT64 = (
    1, 2, 4, 5, 6, 7, 8, 9, 10, 11)
T_EXTERNAL, T_LOCATION = 13, 14
_STRING, _SUBBYTE = 8, {21, 22, 23, 25, 26, 27, 28}  # STRING; (u)int4, float4, (u)int2, float6


# --------------------------------------------------------------------------- sniffing

def sniff(path, head: bytes) -> bool:
    if str(path).lower().endswith(".onnx"):
        return True
    return _looks_like_model(head)


def _looks_like_model(head: bytes) -> bool:
    """ModelProto writers put ir_version (field 1, varint 1..15) first, then the graph (7),
    opset_import (8) or a short text field (producer_name 2, producer_version 3, domain 4).
    Other protobufs starting with `08 01` (a TF SavedModel's schema version) fail the text test:
    their field 2 is a large message."""
    if len(head) < 4 or head[0] != 0x08 or not 1 <= head[1] <= 15:
        return False
    key = head[2]
    field, wire = key >> 3, key & 7
    if wire != pw.LEN:
        return False
    if field in (7, 8):
        return True
    if field in (2, 3, 4):
        n = head[3]
        text = head[4:4 + n]
        if n >= 0x80 or len(text) != n:
            return False
        try:
            return text.decode("utf-8").isprintable()
        except UnicodeDecodeError:
            return False
    return False


# --------------------------------------------------------------------------- dtypes

def _np_dtype(data_type: int, path, name, offset) -> np.dtype:
    if data_type in _SUBBYTE:
        raise UnsupportedError(f"packed sub-byte data_type {data_type} is not supported", file=path,
                               array=name, offset=offset)
    dtype = ONNX.get(data_type)
    if dtype is None:
        raise UnsupportedError(f"unknown ONNX data_type {data_type}", file=path, array=name, offset=offset,
                               hint="the file is corrupt or uses a type newer than converters/dtypes.py knows")
    return dtype


# --------------------------------------------------------------------------- tensors

@dataclass
class _Tensor:
    """Where one TensorProto's pieces are; nothing decoded yet."""

    name: str
    offset: int
    dims: list = field(default_factory=list)
    data_type: int = 0
    data: dict = field(default_factory=dict)  # field number -> [(wire, value, offset), ...]
    external: dict = field(default_factory=dict)
    location: int = 0


def _parse_tensor(buf, start, length, path) -> _Tensor:
    t = _Tensor(name="", offset=start)
    dims_entries = []
    for f, w, v, off in pw.iter_fields(buf, start, start + length, path):
        if f == T_DIMS:
            dims_entries.append((w, v, off))
        elif f == T_DATA_TYPE and w == pw.VARINT:
            t.data_type = v
        elif f == T_NAME and w == pw.LEN:
            t.name = pw.text(buf, v)
        elif f == T_LOCATION and w == pw.VARINT:
            t.location = v
        elif f == T_EXTERNAL and w == pw.LEN:
            entry = pw.fields(buf, v[0], v[0] + v[1], path)
            key = pw.text(buf, entry[1][0][1]) if 1 in entry else ""
            t.external[key] = pw.text(buf, entry[2][0][1]) if 2 in entry else ""
        elif f in (T_FLOAT, T_INT32, T_STRING, T_INT64, T_RAW, T_DOUBLE, T_UINT64):
            t.data.setdefault(f, []).append((w, v, off))
    t.dims = pw.ints(dims_entries, buf, path)
    return t


class _Reader:
    """One open ONNX file: the model's FileView plus any external data files."""

    def __init__(self, path, allow_outside: bool = False):
        self.path = os.fspath(path)
        self.view = FileView(self.path)
        self.base = os.path.dirname(os.path.abspath(self.path))
        self.allow_outside = allow_outside
        self.external: dict[str, FileView] = {}
        self.closed = False
        # Headers are read from `src`: the map itself for small files, pread blocks for big ones
        # (walking a big file's headers through the map would make its pages resident).
        try:
            self.src = self.view.buf if self.view.size <= MAP_WALK_MAX else pw.PreadBuffer(self.path, self.view.size)
        except OSError as e:
            self.view.close()
            raise FormatError(f"cannot open: {e.strerror or e}", file=self.path) from None

    def gather(self):
        """positions -> uint8 bytes of the file, for pw.scan."""
        if isinstance(self.src, pw.PreadBuffer):
            return self.src.gather
        return np.frombuffer(self.src, np.uint8).__getitem__  # drop it after the walk: it pins the map

    def close(self) -> None:
        self.closed = True
        for v in self.external.values():
            v.close()
        if isinstance(self.src, pw.PreadBuffer):
            self.src.close()
        self.view.close()

    # ----- turning a parsed TensorProto into a lazy handle

    def handle(self, t: _Tensor, name: str, meta: dict) -> ArrayHandle:
        dtype = _np_dtype(t.data_type, self.path, name, t.offset)
        if any(d < 0 for d in t.dims):
            raise FormatError(f"negative dimension in {t.dims}", file=self.path, array=name, offset=t.offset)
        shape = tuple(t.dims)
        count = element_count(shape, dtype.itemsize)
        if count is None:
            raise FormatError(f"dims {list(shape)} cannot be an array", file=self.path, array=name, offset=t.offset)
        # .numpy() reads with pread, never through the map: a file cut short while open is a TruncatedError
        if t.location == 1 or t.external:
            ext, start = self._external_start(t, name, dtype, shape, count)
            return ext.handle(name, start, dtype, shape, {**meta, "storage": "external"})
        if T_RAW in t.data:
            return self.view.handle(name, self._raw_start(t, name, dtype, shape, count), dtype, shape, meta)
        return ArrayHandle(name, shape, dtype, self._typed_loader(t, name, dtype, shape, count), meta)

    def _raw_start(self, t, name, dtype, shape, count) -> int:
        if dtype.hasobject:
            raise FormatError("STRING tensor stored in raw_data", file=self.path, array=name, offset=t.offset)
        _w, (start, length), off = t.data[T_RAW][-1]
        need = count * dtype.itemsize
        if length != need:
            raise FormatError(f"raw_data holds {length} bytes but {dtype}{list(shape)} needs {need}",
                              file=self.path, array=name, offset=off)
        return start

    def _external_start(self, t, name, dtype, shape, count) -> tuple[FileView, int]:
        location = t.external.get("location")
        if not location:
            raise FormatError("external data without a 'location' key", file=self.path, array=name,
                              offset=t.offset)
        ext = self._external_view(location, name, t.offset)
        try:
            start = int(t.external.get("offset", "0") or 0)
            length = int(t.external["length"]) if t.external.get("length") else None
        except ValueError:
            raise FormatError(f"external data offset/length are not integers: {t.external}", file=self.path,
                              array=name, offset=t.offset) from None
        need = count * dtype.itemsize
        if length is not None and length != need:
            raise FormatError(f"external data length {length} but {dtype}{list(shape)} needs {need}",
                              file=self.path, array=name, offset=t.offset)
        ext.require(start, need, f"external data in {location}", name)
        return ext, start

    def _external_view(self, location, name, offset) -> FileView:
        if location in self.external:
            return self.external[location]
        if not isinstance(location, str) or "\0" in location:
            raise FormatError(f"external data location {location!r} is not a file name", file=self.path,
                              array=name, offset=offset)
        if os.path.isabs(location):
            raise FormatError(f"external data location {location!r} is an absolute path", file=self.path,
                              array=name, offset=offset, hint="ONNX external data paths are relative to the model")
        target = os.path.realpath(os.path.join(self.base, location))
        base = os.path.realpath(self.base)
        if not self.allow_outside and os.path.commonpath([target, base]) != base:
            raise FormatError(f"external data location {location!r} points outside the model's directory",
                              file=self.path, array=name, offset=offset,
                              hint="refused for safety; pass allow_outside=True for files you trust")
        if not os.path.isfile(target):
            raise FormatError(f"external data file {target} is missing", file=self.path, array=name, offset=offset,
                              hint=f"copy {location!r} next to the model")
        self.external[location] = FileView(target)
        return self.external[location]

    def _typed_loader(self, t, name, dtype, shape, count):
        fields_present = [f for f in t.data if f != T_RAW]
        if not fields_present:
            if count == 0:
                return lambda: np.zeros(shape, dtype)
            raise FormatError(f"no data for {dtype}{list(shape)} (no raw_data, typed field or external data)",
                              file=self.path, array=name, offset=t.offset)
        if len(fields_present) > 1:
            raise FormatError(f"several data fields {fields_present} are set", file=self.path, array=name,
                              offset=t.offset)
        f = fields_present[0]
        entries = t.data[f]
        _check_field_fits(f, dtype, self.path, name, entries[0][2])
        if f in (T_FLOAT, T_DOUBLE):
            width = 4 if f == T_FLOAT else 8
            packed = sum(v[1] for w, v, _ in entries if w == pw.LEN) + width * sum(
                1 for w, *_ in entries if w != pw.LEN)
            need = count * dtype.itemsize
            if packed != need:
                raise FormatError(f"{_FIELD_NAMES[f]} holds {packed // width} values but {dtype}{list(shape)} "
                                  f"needs {need // width}", file=self.path, array=name, offset=entries[0][2])
        return partial(decode_typed, self.view, f, entries, dtype, shape, count, name)


_FIELD_NAMES = {T_FLOAT: "float_data", T_INT32: "int32_data", T_STRING: "string_data", T_INT64: "int64_data",
                T_DOUBLE: "double_data", T_UINT64: "uint64_data"}


def _check_field_fits(f, dtype, path, name, offset):
    """The ONNX rules for which typed field may hold which data_type."""
    kind = dtype.kind
    ok = {
        T_FLOAT: dtype in (np.float32, np.complex64),
        T_DOUBLE: dtype in (np.float64, np.complex128),
        T_INT64: dtype == np.int64,
        T_UINT64: dtype in (np.uint32, np.uint64),
        T_STRING: dtype.hasobject,
        T_INT32: dtype.itemsize <= 4 and not dtype.hasobject and dtype not in (np.float32, np.uint32),
    }[f]
    if not ok:
        raise FormatError(f"{_FIELD_NAMES[f]} cannot hold data_type {dtype} ({kind})", file=path, array=name,
                          offset=offset)


def decode_typed(view: FileView, f, entries, dtype, shape, count, name) -> np.ndarray:
    """The array in typed field `f` (float_data, int64_data, ...: `entries` from the walk), its bytes
    read with pread (a file cut short since it was opened is a TruncatedError, not a SIGBUS)."""
    spans = [v for w, v, _ in entries if w == pw.LEN]
    if not spans:
        return _decode_typed(b"", f, entries, dtype, shape, count, view.path, name)
    low, high = min(s for s, _ in spans), max(s + n for s, n in spans)
    data = view.pread(low, high - low, f"{_FIELD_NAMES[f]} data", name)
    moved = [(w, (v[0] - low, v[1]) if w == pw.LEN else v, off) for w, v, off in entries]
    return _decode_typed(data, f, moved, dtype, shape, count, view.path, name)


def _decode_typed(buf, f, entries, dtype, shape, count, path, name) -> np.ndarray:
    if f == T_STRING:
        values = [_utf8_or_bytes(bytes(buf[s:s + n])) for _w, (s, n), _ in entries]
        arr = np.empty(len(values), dtype=object)
        arr[:] = values
    elif f in (T_FLOAT, T_DOUBLE):
        width = "<f4" if f == T_FLOAT else "<f8"
        if len(entries) == 1 and entries[0][0] == pw.LEN:  # the usual case: one packed run, map it
            s, n = entries[0][1]
            arr = np.frombuffer(buf, dtype=np.dtype(dtype).newbyteorder("<"), count=count, offset=s) if count else \
                np.zeros(0, dtype)
        else:
            parts = []
            for w, v, _ in entries:
                if w == pw.LEN:
                    parts.append(np.frombuffer(buf, dtype=width, count=v[1] // np.dtype(width).itemsize, offset=v[0]))
                else:
                    parts.append(np.array([v], dtype=np.uint32 if f == T_FLOAT else np.uint64).view(width))
            arr = np.concatenate(parts).view(dtype) if parts else np.zeros(0, dtype)
    else:
        raw = _varints(buf, entries, path, name)  # uint64 bit patterns
        if f == T_INT64:
            arr = raw.view(np.int64)
        elif f == T_UINT64:
            arr = raw.astype(dtype)
        else:  # int32_data: signed int32 values or the bit patterns of 16/8-bit types
            vals = raw.view(np.int64)
            if dtype.kind not in "iub":  # float16, bfloat16, float8: stored as bit patterns
                bits = np.dtype(f"<u{dtype.itemsize}")
                arr = vals.astype(bits).view(dtype)
            else:
                arr = vals.astype(dtype)
    if arr.size != count:
        raise FormatError(f"{_FIELD_NAMES[f]} holds {arr.size} values but shape {list(shape)} needs {count}",
                          file=path, array=name, offset=entries[0][2])
    return arr.reshape(shape)


def _utf8_or_bytes(raw: bytes):
    """string_data is UTF-8 by the spec (onnx decodes it to str); keep bytes that are not."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw


def _varints(buf, entries, path, name) -> np.ndarray:
    """All varints of a repeated integer field as uint64, decoded with numpy (no Python loop per value)."""
    chunks = []
    for w, v, off in entries:
        if w == pw.VARINT:
            chunks.append(np.array([v], dtype=np.uint64))
            continue
        s, n = v
        if 0 < n <= 64 and buf[s + n - 1] < 0x80:  # a few values (a Reshape's shape): a Python loop is quicker
            try:
                chunks.append(np.array([x & 0xFFFFFFFFFFFFFFFF for x in pw.packed_varints(buf, v, path)], np.uint64))
                continue
            except FormatError:  # a varint past ten bytes: the numpy decoding below names it
                pass
        data = np.frombuffer(buf, dtype=np.uint8, count=n, offset=s) if n else np.zeros(0, np.uint8)
        ends = np.flatnonzero(data < 0x80)
        if n and (ends.size == 0 or ends[-1] != n - 1):
            raise FormatError("packed varints end in the middle of a value", file=path, array=name, offset=off)
        starts = np.concatenate(([0], ends[:-1] + 1)) if ends.size else np.zeros(0, np.int64)
        if ends.size and int((ends - starts).max()) > 9:
            raise FormatError("varint longer than 10 bytes", file=path, array=name, offset=off)
        pos = np.arange(n) - np.repeat(starts, ends - starts + 1)
        parts = (data & 0x7F).astype(np.uint64) << (7 * pos).astype(np.uint64)
        chunks.append(np.add.reduceat(parts, starts) if ends.size else np.zeros(0, np.uint64))
    return np.concatenate(chunks) if chunks else np.zeros(0, np.uint64)


# --------------------------------------------------------------------------- graph walking

@dataclass
class _Node:
    name: str
    op_type: str
    domain: str
    inputs: list
    outputs: list
    attrs: dict
    constant: _Tensor | None = None  # the `value` of a Constant node
    constant_value: np.ndarray | None = None  # value_float(s) / value_int(s)
    subgraphs: list = field(default_factory=list)  # (attribute name, graph span)


def _value_info(buf, span, path) -> dict:
    """name, elem_type and shape of a ValueInfoProto (only tensor types are described)."""
    fs = pw.fields(buf, span[0], span[0] + span[1], path)
    out = {"name": pw.text(buf, fs[1][0][1]) if 1 in fs else ""}
    if 2 not in fs:
        return out
    tp = pw.fields(buf, *_end(fs[2][0][1]), path)
    if 1 not in tp:  # not a tensor type (sequence, map, ...)
        return out
    tt = pw.fields(buf, *_end(tp[1][0][1]), path)
    if 1 in tt:
        out["elem_type"] = tt[1][0][1]
    if 2 in tt:
        shape = []
        for _w, dspan, _o in pw.fields(buf, *_end(tt[2][0][1]), path).get(1, []):
            d = pw.fields(buf, *_end(dspan), path)
            if 1 in d:
                v = d[1][0][1]
                shape.append(v - (1 << 64) if v >= 1 << 63 else v)
            elif 2 in d:
                shape.append(pw.text(buf, d[2][0][1]))
            else:
                shape.append(None)
        out["shape"] = shape
    return out


def _end(span):
    return span[0], span[0] + span[1]


def _short_float(x) -> float:
    """A float32 attribute as the Python float that prints like it (epsilon 1e-05, not 9.99999974e-06);
    it converts back to the same float32."""
    return float(str(np.float32(x)))


def _parse_attribute(buf, span, path):
    """(name, python value, tensor, graphs): scalar/list values decoded, tensors and graphs located."""
    name, value, tensor, graphs = "", None, None, []
    a = pw.fields(buf, *_end(span), path)
    if 1 in a:
        name = pw.text(buf, a[1][0][1])
    if 2 in a:
        value = _short_float(pw.f32(a[2][-1][1]))
    if 3 in a:
        v = a[3][-1][1]
        value = v - (1 << 64) if v >= 1 << 63 else v
    if 4 in a:
        raw = bytes(buf[a[4][-1][1][0]:sum(a[4][-1][1])])
        try:
            value = raw.decode("utf-8")
        except UnicodeDecodeError:
            value = raw
    if 5 in a:
        tensor = _parse_tensor(buf, *a[5][-1][1], path)
        value = f"<tensor {tensor.name or name}>"
    if 6 in a:
        graphs.append(a[6][-1][1])
        value = "<graph>"
    if 7 in a:
        vals = []
        for w, v, _o in a[7]:
            if w == pw.LEN:
                vals.extend(np.frombuffer(buf[v[0]:v[0] + v[1] // 4 * 4], "<f4"))
            else:
                vals.append(pw.f32(v))
        value = [_short_float(x) for x in vals]
    if 8 in a:
        value = pw.ints(a[8], buf, path)
    if 9 in a:
        value = [pw.text(buf, v) for _w, v, _o in a[9]]
    if 10 in a:
        value = [f"<tensor {i}>" for i in range(len(a[10]))]
    if 11 in a:
        graphs.extend(v for _w, v, _o in a[11])
        value = [f"<graph {i}>" for i in range(len(a[11]))]
    if 22 in a:
        value = "<sparse tensor>"
    return name, value, tensor, graphs


def _parse_node(buf, span, path) -> _Node:
    node = _Node("", "", "", [], [], {})
    for f, w, v, _off in pw.iter_fields(buf, *_end(span), path):
        if f == 1 and w == pw.LEN:
            node.inputs.append(pw.text(buf, v))
        elif f == 2 and w == pw.LEN:
            node.outputs.append(pw.text(buf, v))
        elif f == 3 and w == pw.LEN:
            node.name = pw.text(buf, v)
        elif f == 4 and w == pw.LEN:
            node.op_type = pw.text(buf, v)
        elif f == 7 and w == pw.LEN:
            node.domain = pw.text(buf, v)
        elif f == 5 and w == pw.LEN:
            aname, value, tensor, graphs = _parse_attribute(buf, v, path)
            node.attrs[aname] = value
            node.subgraphs.extend((aname, g) for g in graphs)
            if tensor is not None and aname == "value":
                node.constant = tensor
            elif aname in ("value_float", "value_floats"):
                node.constant_value = np.asarray(value, dtype=np.float32)
            elif aname in ("value_int", "value_ints"):
                node.constant_value = np.asarray(value, dtype=np.int64)
            elif aname == "sparse_value":
                node.constant_value = "sparse"
    return node


@dataclass
class _Graph:
    name: str = ""
    nodes: list = field(default_factory=list)
    initializers: list = field(default_factory=list)  # (_Tensor)
    inputs: list = field(default_factory=list)
    outputs: list = field(default_factory=list)
    sparse: list = field(default_factory=list)


def _parse_graph(buf, span, path) -> _Graph:
    g = _Graph()
    for f, w, v, off in pw.iter_fields(buf, *_end(span), path):
        if w != pw.LEN:
            continue
        if f == 1:
            g.nodes.append(_parse_node(buf, v, path))
        elif f == 2:
            g.name = pw.text(buf, v)
        elif f == 5:
            g.initializers.append(_parse_tensor(buf, v[0], v[1], path))
        elif f == 11:
            g.inputs.append(_value_info(buf, v, path))
        elif f == 12:
            g.outputs.append(_value_info(buf, v, path))
        elif f == 15:
            g.sparse.append(off)
    return g


# --------------------------------------------------------------------------- roles and layouts

# op_type -> {input index: role}
_INPUT_ROLES = {
    "Conv": {1: "weight", 2: "bias"},
    "ConvTranspose": {1: "weight", 2: "bias"},
    "Gemm": {1: "weight", 2: "bias"},
    "MatMul": {1: "weight"},
    "BatchNormalization": {1: "weight", 2: "bias", 3: "running_mean", 4: "running_var"},
    "InstanceNormalization": {1: "weight", 2: "bias"},
    "LayerNormalization": {1: "weight", 2: "bias"},
    "GroupNormalization": {1: "weight", 2: "bias"},
    "PRelu": {1: "weight"},
    "LSTM": {1: "weight", 2: "weight", 3: "bias"},
    "GRU": {1: "weight", 2: "weight", 3: "bias"},
    "RNN": {1: "weight", 2: "weight", 3: "bias"},
}
# Paddle2ONNX and similar converters name parameters <layer>_<suffix>
_SUFFIX_ROLES = (("_weights", "weight"), ("_offset", "bias"), ("_bias", "bias"), ("_scale", "weight"),
                 ("_mean", "running_mean"), ("_variance", "running_var"))


def _layout(op_type: str, index: int, ndim: int, attrs: dict) -> str | None:
    spatial = {1: "W", 2: "HW", 3: "DHW"}.get(ndim - 2, "")
    if op_type == "Conv" and index == 1 and ndim >= 3 and spatial:
        return "OI" + spatial
    if op_type == "ConvTranspose" and index == 1 and ndim >= 3 and spatial:
        return "IO" + spatial
    if op_type == "Gemm" and index == 1 and ndim == 2:
        return "OI" if attrs.get("transB", 0) == 1 else "IO"
    if op_type == "MatMul" and index == 1 and ndim == 2:
        return "IO"
    return None


def _guess_role(name: str, dtype: np.dtype, ndim: int) -> str:
    role = role_from_name(name)
    if role:
        return role
    low = name.lower()
    for suffix, r in _SUFFIX_ROLES:
        if low.endswith(suffix):
            return r
    if dtype.kind != "f" or ndim == 0:
        return "constant"
    return "other"


# --------------------------------------------------------------------------- open

def open(path, allow_outside: bool = False, subgraphs: bool = True, **options) -> ArrayFile:
    """Open an ONNX model. allow_outside: follow external-data paths that leave the model's folder;
    subgraphs: also expose initializers/constants of If/Loop/Scan bodies."""
    with parser_errors(path, "ONNX model"):  # fields of an unexpected wire type, bad numbers, ...
        reader = _Reader(path, allow_outside)
        try:
            return _open(reader, subgraphs)
        except BaseException:
            reader.close()
            raise


def _open(reader: _Reader, want_subgraphs: bool) -> ArrayFile:
    try:
        meta, graph_span = _model_fields(reader)
        if FAST:
            found = _open_fast(reader, meta, graph_span)
            if found is not None:
                return found
        arrays, layers, graph = _walk(reader, graph_span, want_subgraphs)
        _graph_meta(meta, graph.name, graph.inputs, graph.outputs, {t.name for t in graph.initializers})
        return ArrayFile(reader.path, NAME, arrays, meta=meta, layers=layers, closer=reader.close)
    finally:
        if isinstance(reader.src, pw.PreadBuffer):
            reader.src.forget()  # the headers read for the walk: not kept while the file is open


def _model_fields(reader: _Reader) -> tuple[dict, tuple]:
    """ModelProto's own fields (file meta) and where its graph is."""
    buf, path = reader.src, reader.path
    if reader.view.size == 0:
        raise FormatError("empty file", file=path, offset=0, hint="not an ONNX model")
    meta = {"format": "onnx", "opset_import": {}, "metadata_props": {}}
    graph_span = None
    try:
        for f, w, v, _off in pw.iter_fields(buf, 0, reader.view.size, path):
            if f == 1 and w == pw.VARINT:
                meta["ir_version"] = meta["version"] = v
            elif f in (2, 3, 4, 6) and w == pw.LEN:
                meta[{2: "producer_name", 3: "producer_version", 4: "domain", 6: "doc_string"}[f]] = pw.text(buf, v)
            elif f == 5 and w == pw.VARINT:
                meta["model_version"] = v
            elif f == 7 and w == pw.LEN:
                graph_span = v
            elif f == 8 and w == pw.LEN:
                op = pw.fields(buf, *_end(v), path)
                domain = pw.text(buf, op[1][0][1]) if 1 in op else ""
                meta["opset_import"][domain or "ai.onnx"] = op[2][0][1] if 2 in op else None
            elif f == 14 and w == pw.LEN:
                kv = pw.fields(buf, *_end(v), path)
                key = pw.text(buf, kv[1][0][1]) if 1 in kv else ""
                meta["metadata_props"][key] = pw.text(buf, kv[2][0][1]) if 2 in kv else ""
    except FormatError as e:
        if isinstance(e, TruncatedError) and e.hint is None:
            e.hint = "the ONNX file is truncated (an interrupted download or copy?)"
        if "ir_version" not in meta and not isinstance(e, TruncatedError):
            raise FormatError(f"not an ONNX model ({e.message})", file=path, offset=e.offset,
                              hint="the file is not an ONNX ModelProto") from None
        raise
    if "ir_version" not in meta or graph_span is None:
        missing = "ir_version" if "ir_version" not in meta else "graph"
        raise FormatError(f"not an ONNX model: no {missing} field", file=path, offset=0,
                          hint="the file is not an ONNX ModelProto, or it is truncated")
    return meta, graph_span


def _walk(reader: _Reader, graph_span, want_subgraphs: bool, make=None):
    """The field-by-field open: every node and tensor parsed, handles with their meta, layers."""
    graph = _parse_graph(reader.src, graph_span, reader.path)
    arrays, layers = [], {}
    _collect(reader, graph, arrays, layers, want_subgraphs, owner=None, make=make)
    return arrays, layers, graph


def _graph_meta(meta: dict, name: str, inputs: list, outputs: list, init_names: set) -> None:
    """meta["graph"]: the graph's name, its real inputs (not initializers) and outputs."""
    meta["graph"] = {
        "name": name,
        "inputs": [_describe(vi) for vi in inputs if vi.get("name") not in init_names],
        "outputs": [_describe(vi) for vi in outputs],
    }


def _open_fast(reader: _Reader, meta: dict, graph_span) -> ArrayFile | None:
    from . import _onnx_fast  # it builds on this module's parsers: imported here, not at the top (a cycle)

    return _onnx_fast.open_fast(reader, meta, graph_span)


def _describe(vi: dict) -> dict:
    out = {"name": vi.get("name", "")}
    if "elem_type" in vi:
        try:
            out["dtype"] = str(_np_dtype(vi["elem_type"], None, None, None))
        except (UnsupportedError, MissingDependencyError):
            out["dtype"] = f"data_type {vi['elem_type']}"
    if "shape" in vi:
        out["shape"] = vi["shape"]
    return out


def _collect(reader, graph: _Graph, arrays: list, layers: dict, want_subgraphs: bool, owner: str | None,
             make=None):
    """Add graph's initializers and Constant tensors (and its nodes as layers), then its subgraphs.
    make(shown name) -> a stand-in whose .meta gets filled, in place of making each handle (the
    fast open's handles exist already: only their meta is wanted)."""
    path, buf = reader.path, reader.src
    if graph.sparse:
        raise UnsupportedError("sparse_initializer is not supported", file=path, offset=graph.sparse[0])
    node_keys = _node_keys(graph.nodes, layers)
    consumers: dict[str, list] = {}
    producers: dict[str, _Node] = {}
    for node, key in zip(graph.nodes, node_keys):
        for i, inp in enumerate(node.inputs):
            if inp:
                consumers.setdefault(inp, []).append((node, key, i))
        for out in node.outputs:
            producers[out] = node
    taken = {a.name for a in arrays}

    def add(name, make_handle, source, dtype_hint_ndim=None):
        shown = name if name not in taken or not owner else f"{owner}/{name}"  # subgraph name clash
        if shown in taken:
            raise FormatError("array name appears twice", file=path, array=shown)
        taken.add(shown)
        handle = make_handle(shown) if make is None else make(shown)
        handle.meta.update(_array_meta(name, handle, source, consumers.get(name, []), producers, owner))
        arrays.append(handle)
        return shown

    for t in graph.initializers:
        add(t.name, lambda shown, t=t: reader.handle(t, shown, {}), "initializer")
    for node, key in zip(graph.nodes, node_keys):
        node_arrays = []
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx") and node.outputs:
            out = node.outputs[0]
            if node.constant is not None:
                node_arrays.append(add(out, lambda shown, t=node.constant: reader.handle(t, shown, {}), "constant"))
            elif isinstance(node.constant_value, np.ndarray):
                value = node.constant_value
                node_arrays.append(add(out, lambda shown, v=value: ArrayHandle(shown, v.shape, v.dtype, lambda: v),
                                       "constant"))
            elif node.constant_value == "sparse":
                raise UnsupportedError("Constant with sparse_value is not supported", file=path, array=out)
        params = dict(node.attrs)
        if node.constant is not None and node.op_type != "Constant" and int(np.prod(node.constant.dims or [1])) <= 64:
            params["value"] = reader.handle(node.constant, f"{key}/value", {}).numpy()  # ConstantOfShape's fill
        layers[key] = Layer(name=key, type=node.op_type, params=params, inputs=list(node.inputs),
                            outputs=list(node.outputs), arrays=node_arrays)
    # arrays consumed by a node are listed on that layer too
    by_name = {a.name: a for a in arrays}
    for node, key in zip(graph.nodes, node_keys):
        layers[key].arrays.extend(i for i in node.inputs if i in by_name and i not in layers[key].arrays)
    if not want_subgraphs:
        return
    for node, key in zip(graph.nodes, node_keys):
        for _aname, span in node.subgraphs:
            _collect(reader, _parse_graph(buf, span, path), arrays, layers, want_subgraphs, owner=key, make=make)


def _node_keys(nodes, layers) -> list[str]:
    """Unique layer keys: the node name, else its first output, de-duplicated with #n."""
    keys, seen = [], set(layers)
    for i, n in enumerate(nodes):
        key = n.name or (f"{n.op_type}:{n.outputs[0]}" if n.outputs else f"{n.op_type}#{i}")
        if key in seen:
            key = f"{key}#{i}"
        seen.add(key)
        keys.append(key)
    return keys


def _array_meta(name, handle, source, uses, producers, owner) -> dict:
    meta = {"source": source}
    if owner:
        meta["subgraph_of"] = owner
    role = layout = None
    if uses:
        node, key, index = uses[0]
        meta["layer"] = key
        meta["layer_type"] = node.op_type
        meta["index"] = index
        role = _INPUT_ROLES.get(node.op_type, {}).get(index)
        if node.op_type == "Add" and role is None and handle.ndim == 1 and handle.dtype.kind == "f":
            other = node.inputs[1 - index] if len(node.inputs) == 2 else None
            if other in producers and producers[other].op_type in ("MatMul", "Gemm"):
                role = "bias"  # MatMul + Add: a Linear layer split in two
        layout = _layout(node.op_type, index, handle.ndim, node.attrs)
        if len(uses) > 1:
            meta["consumers"] = [k for _n, k, _i in uses]
    meta["role"] = role or _guess_role(name, handle.dtype, handle.ndim)
    if layout:
        meta["layout"] = layout
    return meta

