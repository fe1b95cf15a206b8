"""[caffe] reader: `.caffemodel` (a binary NetParameter protobuf) plus an optional `.prototxt`.

The protobuf is walked with `_protowire` instead of generated caffe_pb2 classes: weights stay in
the memory-mapped file (each blob is a lazy view over its packed floats), no caffe / protobuf
package is needed, and fields a forked caffe.proto added (SSD, Yolo, ...) are skipped by wire
type instead of failing. Field numbers and defaults live in `_caffe_schema`.

Array names are `<layer name>/<blob index>` (`conv1/0`, `conv1/1`); a layer name seen again in
the same file gets `#<k>` appended (`data#1`). See docs/readers/caffe.md.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..arrays import ArrayFile, ArrayHandle, Layer
from ..errors import ConvertersError, FormatError, TruncatedError, UnsupportedError
from . import _caffe_schema as S
from . import _prototxt
from ._binary import FileArray, FileView, new_array
from ._limits import parser_errors
from ._protowire import FIXED32, FIXED64, LEN, VARINT, f32, f64, iter_fields, packed_varints, read_varint, text

NAME = "caffe"
OPTIONS = {"prototxt": (str, bool)}
"""Reader options (`--option KEY=VALUE`) and their types; readers/__init__ validates against it."""
FAST = True
"""Open files without a prototxt with the vectorised walk (`_caffe_fast`) where it applies; False:
always the field-by-field walk here, the reference the tests compare the fast one against."""

# Blob roles and layouts by layer type: index -> role, and the layout of blob 0.
_ROLES = {
    "Convolution": ("weight", "bias"), "Deconvolution": ("weight", "bias"),
    "InnerProduct": ("weight", "bias"), "Embed": ("weight", "bias"),
    "BatchNorm": ("running_mean", "running_var", "running_stat"),
    "Scale": ("weight", "bias"), "Bias": ("bias",), "PReLU": ("weight",), "Normalize": ("weight",),
}
_CONV_LAYOUTS = {3: "OIW", 4: "OIHW", 5: "OIDHW"}
_DECONV_LAYOUTS = {3: "IOW", 4: "IOHW", 5: "IODHW"}
# Types whose missing blobs mean Caffe would fill them randomly: worth a warning in meta.
_TYPES_WITH_BLOBS = set(_ROLES)


@dataclass
class _Blob:
    """Where one BlobProto's numbers are: a list of (offset, count, stride) runs in the file."""
    shape: tuple
    dtype: np.dtype
    runs: list
    offset: int
    shape_source: str  # "shape", "legacy" (num/channels/height/width) or "none"


@dataclass
class _RawLayer:
    name: str = ""
    type: str = ""
    bottoms: list = field(default_factory=list)
    tops: list = field(default_factory=list)
    params: dict = field(default_factory=dict)
    blobs: list = field(default_factory=list)
    offset: int = 0
    unknown_fields: list = field(default_factory=list)


# --------------------------------------------------------------------------------------- sniff

def sniff(path, head: bytes) -> bool:
    """`.caffemodel` by name, or bytes that start like a NetParameter (name string, then layers)."""
    if str(path).lower().endswith(".caffemodel"):
        return True
    return _looks_like_netparameter(head)


def _looks_like_netparameter(head: bytes) -> bool:
    try:
        key, pos = read_varint(head, 0, len(head))
        number, wire = key >> 3, key & 7
        if number not in S.NET_FIELDS or wire != LEN:
            return False
        length, pos = read_varint(head, pos, len(head))
    except FormatError:
        return False
    if number != S.NET_NAME:  # a nameless net starts with its first layer / input
        return (number in (S.NET_LAYER, S.NET_LAYERS_V1, S.NET_INPUT) and length > 0
                and _looks_like_text_field(head, pos))
    name = head[pos:pos + length]
    if length > 256 or not all(32 <= b < 127 for b in name):
        return False
    rest = head[pos + length:]
    if not rest:
        return length == len(head) - pos
    try:
        key, _ = read_varint(rest, 0, len(rest))
    except FormatError:
        return False
    return (key >> 3) in S.NET_FIELDS and (key >> 3) != S.NET_NAME


def _looks_like_text_field(head: bytes, pos: int) -> bool:
    """The message at `pos` starts with a short printable string (a layer name or an input)."""
    try:
        key, p = read_varint(head, pos, len(head))
        length, p = read_varint(head, p, len(head))
    except FormatError:
        return False
    if key & 7 != LEN or length > 256:
        return False
    return all(32 <= b < 127 for b in head[p:min(p + length, len(head))])


# ---------------------------------------------------------------------------------------- open

def open(path, prototxt=None, **options) -> ArrayFile:
    """Open a `.caffemodel`. prototxt: path to the deploy net, None to look for one beside the
    caffemodel (used only when unambiguous), False to never use one."""
    view = FileView(path)
    try:
        with parser_errors(path, "Caffe model"):  # prototxt nesting too deep, bad UTF-8, ...
            return _open(view, prototxt)
    except ConvertersError as e:
        cut = _cut_since_opened(view) if not isinstance(e, TruncatedError) else None
        view.close()
        if cut is not None:
            raise cut from None
        raise
    except BaseException:
        view.close()
        raise


def _cut_since_opened(view: FileView) -> TruncatedError | None:
    """The TruncatedError to raise instead when the file is shorter now than when it was opened: a
    file over WALK_MAP_MAX, walked in pread blocks, cut short meanwhile reads as a malformed one."""
    try:
        view.check_size("the model's layers and blobs")
    except TruncatedError as e:
        return e
    return None


def _open(view: FileView, prototxt) -> ArrayFile:
    headers = _headers(view)
    if FAST and (prototxt is False or (prototxt is None and _choose_prototxt(view.path, None)[0] is None)):
        from . import _caffe_fast  # it builds on this module's walk: imported here, not at the top (a cycle)

        opened = _caffe_fast.open_fast(view, headers)
        if opened is not None:
            return opened
    return _open_walk(view, prototxt, headers)


def _headers(view: FileView) -> FileView:
    """The view to walk the file's messages in (`FileView.walk_view`)."""
    return view.walk_view("the model's layers and blobs")


def _open_walk(view: FileView, prototxt, headers: FileView | None = None) -> ArrayFile:
    """The field-by-field walk: every layer, param message and blob decoded in Python (in
    `headers`, default `_headers(view)`); the arrays read from `view`."""
    net_name, net_inputs, raw_layers, version, unknown_net = _read_net(headers or _headers(view))
    keys = _unique_keys([layer.name for layer in raw_layers])
    meta = {"format": "caffemodel", "version": version, "name": net_name, "input": net_inputs,
            "prototxt": None}
    if unknown_net:
        meta["unknown_net_fields"] = unknown_net
    unknown_layer_fields = sorted({n for layer in raw_layers for n in layer.unknown_fields})
    if unknown_layer_fields:
        meta["unknown_layer_fields"] = unknown_layer_fields

    proto_path, auto = _choose_prototxt(view.path, prototxt)
    arch = None
    if proto_path is not None:
        arch = _read_prototxt(proto_path)
        if auto and not arch[2]:
            meta["prototxt_ignored"] = f"{proto_path}: no layers in it"
            arch = None
    if arch is None:
        layers = {key: Layer(raw.name, raw.type, raw.params, list(raw.bottoms), list(raw.tops))
                  for key, raw in zip(keys, raw_layers)}
        owner = dict(zip(keys, keys))
    else:
        meta["prototxt"] = str(proto_path)
        meta["prototxt_auto"] = auto
        layers, owner = _attach_to_prototxt(arch, raw_layers, keys, meta)

    arrays = []
    for key, raw in zip(keys, raw_layers):
        target = layers.get(owner.get(key)) if owner.get(key) is not None else None
        layer_type = target.type if target is not None else raw.type
        params = target.params if target is not None else raw.params
        names = []
        for index, blob in enumerate(raw.blobs):
            name = f"{key}/{index}"
            array_meta = _blob_meta(raw.name, layer_type, params, index, blob)
            if target is not None and raw.type and raw.type != layer_type:
                array_meta["caffemodel_layer_type"] = raw.type
            arrays.append(_handle(view, blob, name, array_meta))
            names.append(name)
        if target is not None:
            target.arrays = names
    return ArrayFile(view.path, NAME, arrays, meta=meta, layers=layers, closer=view.close)


def _unique_keys(names: list[str]) -> list[str]:
    """Layer names made unique in file order: the second `data` becomes `data#1`."""
    seen: dict[str, int] = {}
    keys = []
    for name in names:
        k = seen.get(name, 0)
        keys.append(name if k == 0 else f"{name}#{k}")
        seen[name] = k + 1
    return keys


# ------------------------------------------------------------------------- NetParameter (wire)

def _read_net(view: FileView, top_fields=None, read_layer=None):
    """(net name, inputs, layers, version, unknown field numbers) of the whole file. top_fields:
    NetParameter's fields if already listed; read_layer(view, span, offset, v1) makes a layer."""
    buf, file = view.headers(), view.path
    read_layer = read_layer or _read_layer
    name, inputs, input_dims, input_shapes = "", [], [], []
    v2, v1, unknown = [], [], set()
    for number, wire, value, offset in (_top_fields(view) if top_fields is None else top_fields):
        if number == S.NET_NAME and wire == LEN:
            name = text(buf, value)
        elif number == S.NET_LAYER and wire == LEN:
            v2.append(read_layer(view, value, offset, v1=False))
        elif number == S.NET_LAYERS_V1 and wire == LEN:
            v1.append(read_layer(view, value, offset, v1=True))
        elif number == S.NET_INPUT and wire == LEN:
            inputs.append(text(buf, value))
        elif number == S.NET_INPUT_DIM:
            input_dims.extend(_ints(buf, wire, value, file))
        elif number == S.NET_INPUT_SHAPE and wire == LEN:
            input_shapes.append(_decode(buf, value, "BlobShape", file)[0]["dim"])
        elif number not in S.NET_FIELDS:
            unknown.add(number)
    if not v2 and not v1:
        raise FormatError("no layers found: not a Caffe NetParameter (.caffemodel)", file=file, offset=0,
                          hint="a .caffemodel holds `layer` (field 100) or `layers` (field 2) messages")
    if v2 and v1:
        version = "mixed: layer (V2) and layers (V1)"
    else:
        version = "V2 (layer)" if v2 else "V1 (layers)"
    return name, _input_shapes(inputs, input_dims, input_shapes), v2 + v1, version, sorted(unknown)


def _top_fields(view: FileView):
    """NetParameter fields; a layer whose length runs past the end names the layer it cut."""
    try:
        yield from iter_fields(view.headers(), 0, view.size, view.path)
    except TruncatedError as e:
        if e.offset is None:
            raise
        layer = _partial_layer_name(view, e.offset)
        if layer is None:
            raise
        raise TruncatedError(f"{e.message}; the file ends inside layer {layer!r}", file=view.path,
                             array=layer, offset=e.offset, hint="the file is truncated or corrupt") from None


def _partial_layer_name(view: FileView, offset: int):
    """Name of the layer message that starts at `offset` even if its end is missing."""
    buf, end = view.headers(), view.size
    try:
        key, pos = read_varint(buf, offset, end)
        if key & 7 != LEN or (key >> 3) not in (S.NET_LAYER, S.NET_LAYERS_V1):
            return None
        _, pos = read_varint(buf, pos, end)
        name_field = S.LAYER_NAME if key >> 3 == S.NET_LAYER else S.V1_NAME
        for number, wire, value, _ in iter_fields(buf, pos, end):
            if number == name_field and wire == LEN:
                return text(buf, value)
    except FormatError:
        return None
    return None


def _input_shapes(names, dims, shapes) -> dict:
    """NetParameter's legacy input / input_dim (4 per input) / input_shape as {name: dims}."""
    out = {}
    for i, name in enumerate(names):
        if i < len(shapes):
            out[name] = list(shapes[i])
        elif len(dims) >= 4 * (i + 1):
            out[name] = list(dims[4 * i:4 * i + 4])
        else:
            out[name] = None
    return out


def _read_layer(view: FileView, span, offset: int, v1: bool) -> _RawLayer:
    buf, file = view.headers(), view.path
    start, length = span
    names = (S.V1_NAME, S.V1_TYPE, S.V1_BOTTOM, S.V1_TOP, S.V1_BLOBS) if v1 else \
        (S.LAYER_NAME, S.LAYER_TYPE, S.LAYER_BOTTOM, S.LAYER_TOP, S.LAYER_BLOBS)
    f_name, f_type, f_bottom, f_top, f_blobs = names
    param_fields = S.V1_PARAMS if v1 else S.LAYER_PARAMS
    other_fields = S.V1_KNOWN_OTHER if v1 else S.LAYER_KNOWN_OTHER
    layer = _RawLayer(offset=offset)
    blob_spans = []
    given: dict = {}  # param name -> (message, fields present); a message seen twice is merged
    for number, wire, value, foff in iter_fields(buf, start, start + length, file):
        if number == f_name and wire == LEN:
            layer.name = text(buf, value)
        elif number == f_type:
            if v1 and wire == VARINT:
                layer.type = S.V1_TYPES.get(value, f"V1_TYPE_{value}")
            elif not v1 and wire == LEN:
                layer.type = text(buf, value)
        elif number == f_bottom and wire == LEN:
            layer.bottoms.append(text(buf, value))
        elif number == f_top and wire == LEN:
            layer.tops.append(text(buf, value))
        elif number == f_blobs and wire == LEN:
            blob_spans.append((value, foff))
        elif number in param_fields and wire == LEN:
            pname, message = param_fields[number]
            present, unknown = _decode_present(buf, value, message, file)
            _merge(given.setdefault(pname, (message, {}))[1], present, message)
            layer.unknown_fields.extend(f"{pname}.{n}" for n in unknown)
        elif v1 and number == S.V1_V0_LAYER and wire == LEN:
            raise UnsupportedError("V0 layer definitions (Caffe before 2014) are not read", file=file,
                                   array=layer.name or None, offset=foff,
                                   hint="upgrade the model with Caffe's upgrade_net_proto_binary tool")
        elif not v1 and number == S.LAYER_PHASE and wire == VARINT:
            layer.params["phase"] = {0: "TRAIN", 1: "TEST"}.get(value, value)
        elif number not in other_fields:
            layer.unknown_fields.append(f"LayerParameter.{number}" if not v1 else f"V1LayerParameter.{number}")
    for pname, (message, present) in given.items():
        layer.params[pname] = _with_defaults(message, present)
    _fill_type_params(layer.type, layer.params)
    layer.blobs = [_read_blob(view, span, boff, f"{layer.name}/{i}") for i, (span, boff) in enumerate(blob_spans)]
    return layer


# ------------------------------------------------------------------------------ BlobProto (wire)

_FLOAT_KEY = bytes([S.BLOB_DATA << 3 | FIXED32])          # 0x2d: one non-packed float
_DOUBLE_KEY = bytes([S.BLOB_DOUBLE_DATA << 3 | FIXED64])  # 0x41: one non-packed double


def _read_blob(view: FileView, span, offset: int, name: str) -> _Blob:
    """Shape and data runs of one BlobProto; diff / double_diff are skipped, never read."""
    buf, file = view.headers(), view.path
    start, length = span
    end = start + length
    dims, legacy = None, {}
    runs = {S.BLOB_DATA: [], S.BLOB_DOUBLE_DATA: []}
    pos = start
    while pos < end:
        field_start = pos
        key, pos = read_varint(buf, pos, end, file)
        number, wire = key >> 3, key & 7
        if number == S.BLOB_DATA and wire == FIXED32:  # old writers: one key per float
            count = _run_length(buf, field_start, end, _FLOAT_KEY, 5, file, name)
            runs[number].append((field_start, count, 5, 1))
            pos = field_start + 5 * count
            continue
        if number == S.BLOB_DOUBLE_DATA and wire == FIXED64:
            count = _run_length(buf, field_start, end, _DOUBLE_KEY, 9, file, name)
            runs[number].append((field_start, count, 9, 1))
            pos = field_start + 9 * count
            continue
        value, pos = _field_value(buf, wire, pos, end, number, field_start, file, name)
        if number in (S.BLOB_DATA, S.BLOB_DOUBLE_DATA) and wire == LEN:
            width = 4 if number == S.BLOB_DATA else 8
            s, n = value
            if n % width:
                raise FormatError(f"packed {'float' if width == 4 else 'double'} data of {n} bytes is not a "
                                  f"multiple of {width}", file=file, array=name, offset=s)
            runs[number].append((s, n // width, width, 0))
        elif number == S.BLOB_SHAPE and wire == LEN:
            dims = _decode(buf, value, "BlobShape", file)[0]["dim"]
        elif number in (S.BLOB_NUM, S.BLOB_CHANNELS, S.BLOB_HEIGHT, S.BLOB_WIDTH) and wire == VARINT:
            legacy[number] = _signed(value)
    if dims is not None:
        shape, source = tuple(dims), "shape"
    elif legacy:
        shape = tuple(legacy.get(n, 0) for n in (S.BLOB_NUM, S.BLOB_CHANNELS, S.BLOB_HEIGHT, S.BLOB_WIDTH))
        source = "legacy"
    else:
        shape, source = None, "none"
    if runs[S.BLOB_DATA] or not runs[S.BLOB_DOUBLE_DATA]:
        data_runs, dtype = runs[S.BLOB_DATA], np.dtype("<f4")
    else:
        data_runs, dtype = runs[S.BLOB_DOUBLE_DATA], np.dtype("<f8")
    count = sum(run[1] for run in data_runs)
    if shape is None:
        shape = (count,)
    if any(d < 0 for d in shape):
        raise FormatError(f"negative dimension in blob shape {list(shape)}", file=file, array=name, offset=offset)
    expected = int(np.prod(shape, dtype=object))
    if expected != count:
        raise FormatError(f"blob shape {list(shape)} needs {expected} values but the blob holds {count}",
                          file=file, array=name, offset=data_runs[0][0] if data_runs else offset,
                          hint="the file is corrupt or was written by a writer that broke the shape")
    return _Blob(shape, dtype, data_runs, data_runs[0][0] if data_runs else offset, source)


def _run_length(buf, pos: int, end: int, key: bytes, stride: int, file, name) -> int:
    """How many non-packed values with one-byte `key` follow each other from `pos`."""
    available = (end - pos) // stride
    if available == 0:
        raise TruncatedError("a non-packed value runs past the end of its blob", file=file, array=name, offset=pos)
    keys = np.frombuffer(buf[pos:pos + available * stride], np.uint8)[::stride]
    mismatch = np.flatnonzero(keys != key[0])
    return int(mismatch[0]) if mismatch.size else available


def _field_value(buf, wire, pos, end, number, field_start, file, name):
    """Decode one field value at `pos` (after its key): (value, next position)."""
    if wire == VARINT:
        return read_varint(buf, pos, end, file)
    if wire == LEN:
        length, pos = read_varint(buf, pos, end, file)
        if pos + length > end:
            raise TruncatedError(f"field {number} claims {length} bytes but its blob ends {end - pos} bytes later",
                                 file=file, array=name, offset=field_start)
        return (pos, length), pos + length
    width = {FIXED32: 4, FIXED64: 8}.get(wire)
    if width is None:
        raise FormatError(f"wire type {wire} for field {number} inside a blob", file=file, array=name,
                          offset=field_start)
    if pos + width > end:
        raise TruncatedError(f"field {number} runs past the end of its blob", file=file, array=name, offset=field_start)
    return None, pos + width


def _handle(view: FileView, blob: _Blob, name: str, meta: dict) -> ArrayHandle:
    """The usual blob (one packed run) reads with pread; several runs or non-packed values
    (one key per number, old writers) are gathered run by run into one new array."""
    runs, dtype, shape = blob.runs, blob.dtype, blob.shape
    if len(runs) == 1 and runs[0][2] == dtype.itemsize:
        return view.handle(name, runs[0][0], dtype, shape, meta)

    def read():  # every run with pread: a file cut short while open is a TruncatedError
        out = new_array((blob_count,), dtype)
        pos = 0
        for run in runs:
            offset, count, stride, key_len = run
            if stride == dtype.itemsize:
                view.read_into(out[pos:pos + count], offset, "packed blob data", name)
            else:
                raw = view.read_into(np.empty(count * stride, np.uint8), offset, "non-packed blob data", name)
                out[pos:pos + count] = np.frombuffer(raw, _keyed(dtype, key_len, stride))["v"]
            pos += count
        return out.reshape(shape)

    def mapped():
        parts = [_run_array(view, run, dtype, name) for run in runs]
        return (np.concatenate(parts) if parts else np.zeros(0, dtype)).reshape(shape)

    blob_count = sum(run[1] for run in runs)
    return FileArray(name, shape, dtype, read, mapped, meta)


def _run_array(view: FileView, run, dtype, name) -> np.ndarray:
    """One run of values: packed (a plain view) or non-packed (a strided view skipping keys)."""
    offset, count, stride, key_len = run
    if stride == dtype.itemsize:
        return view.array(offset, dtype, (count,), name)
    view.require(offset, count * stride, "non-packed blob data", name)
    return np.frombuffer(view.buf, _keyed(dtype, key_len, stride), count=count, offset=offset)["v"]


def _keyed(dtype, key_len: int, stride: int) -> np.dtype:
    """A non-packed value as a record: its key's `key_len` bytes, then the value."""
    return np.dtype({"names": ["v"], "formats": [dtype], "offsets": [key_len], "itemsize": stride})


# --------------------------------------------------------------------- param messages (wire)

def _decode(buf, span, message: str, file) -> tuple[dict, list]:
    """A param message decoded by schema, defaults filled: (values, unknown field numbers)."""
    present, unknown = _decode_present(buf, span, message, file)
    return _with_defaults(message, present), unknown


def _decode_present(buf, span, message: str, file) -> tuple[dict, list]:
    """Only the fields the bytes hold (a repeated field concatenated, a scalar's last value)."""
    by_number = {f[0]: f for f in S.MESSAGES[message]}
    out: dict = {}
    unknown: list = []
    start, length = span
    for number, wire, value, _ in iter_fields(buf, start, start + length, file):
        spec = by_number.get(number)
        decoded = _wire_value(buf, spec, wire, value, file) if spec else None
        if decoded is None:
            unknown.append(number)
            continue
        _, name, _, _, repeated = spec
        if repeated:
            out.setdefault(name, []).extend(decoded)
        else:
            out[name] = decoded[-1]
    return out, unknown


def _merge(into: dict, present: dict, message: str) -> None:
    """Protobuf's rule for an embedded message seen twice: repeated fields append, scalars
    take the later value."""
    repeated = {f[1] for f in S.MESSAGES[message] if f[4]}
    for name, value in present.items():
        if name in repeated:
            into.setdefault(name, []).extend(value)
        else:
            into[name] = value


def _wire_value(buf, spec, wire, value, file):
    """The field's values as a list, or None when the wire type does not fit the schema."""
    kind = spec[2]
    if kind in ("int", "bool") or (isinstance(kind, tuple) and kind[0] == "enum"):
        values = _ints(buf, wire, value, file)
        if values is None:
            return None
        if kind == "bool":
            return [bool(v) for v in values]
        if kind == "int":
            return values
        return [kind[1].get(v, v) for v in values]
    if kind == "float":
        if wire == FIXED32:
            return [f32(value)]
        if wire == LEN:
            s, n = value
            return [float(x) for x in np.frombuffer(buf[s:s + n // 4 * 4], "<f4")]
        return None
    if kind == "double":
        return [f64(value)] if wire == FIXED64 else None
    if kind == "string":
        return [text(buf, value)] if wire == LEN else None
    if kind[0] == "msg" and wire == LEN:
        return [_decode(buf, value, kind[1], file)[0]]
    return None


def _ints(buf, wire, value, file):
    if wire == VARINT:
        return [_signed(value)]
    if wire == LEN:
        return [_signed(v) for v in packed_varints(buf, value, file)]
    return None


def _signed(v: int) -> int:
    return v - (1 << 64) if v >= 1 << 63 else v


def _with_defaults(message: str, values: dict) -> dict:
    out = {}
    for _, name, _kind, default, repeated in S.MESSAGES[message]:
        out[name] = values.get(name, [] if repeated else default)
    return out


def _fill_type_params(layer_type: str, params: dict) -> None:
    """Give a layer its type's param message (defaults) and the derived 2-D geometry."""
    pname = S.TYPE_PARAM.get(layer_type)
    if pname and pname not in params:
        params[pname] = _with_defaults(S.PARAM_MESSAGE[pname], {})
    if layer_type in ("Convolution", "Deconvolution"):
        params.update(_conv_geometry(params["convolution_param"]))
    elif layer_type == "Pooling":
        params.update(_pool_geometry(params["pooling_param"]))


def _conv_geometry(p: dict) -> dict:
    """kernel / stride / pad / dilation per spatial axis, by Caffe's own precedence rules."""
    axes = max(2, len(p["kernel_size"]))

    def per_axis(values, h, w, default):
        if axes == 2 and (h or w):
            return [h, w]
        if not values:
            return [default] * axes
        return list(values) * axes if len(values) == 1 else list(values)

    kernel = per_axis(p["kernel_size"], p["kernel_h"], p["kernel_w"], 0)
    stride = per_axis(p["stride"], p["stride_h"], p["stride_w"], 1)
    pad = per_axis(p["pad"], p["pad_h"], p["pad_w"], 0)
    dilation = per_axis(p["dilation"], 0, 0, 1)
    return {"kernel": kernel, "stride": stride, "pad": pad, "dilation": dilation}


def _pool_geometry(p: dict) -> dict:
    kernel = None if p["global_pooling"] else (
        [p["kernel_h"], p["kernel_w"]] if p["kernel_h"] or p["kernel_w"] else [p["kernel_size"]] * 2)
    stride = [p["stride_h"], p["stride_w"]] if p["stride_h"] or p["stride_w"] else [p["stride"]] * 2
    pad = [p["pad_h"], p["pad_w"]] if p["pad_h"] or p["pad_w"] else [p["pad"]] * 2
    return {"kernel": kernel, "stride": stride, "pad": pad, "ceil_mode": p["round_mode"] == "CEIL"}


# ------------------------------------------------------------------------------ array metadata

def _blob_meta(layer_name, layer_type, params, index, blob: _Blob) -> dict:
    roles = _ROLES.get(layer_type, ())
    role = roles[index] if index < len(roles) else "other"
    layout = None
    if role == "weight" and blob.shape_source != "legacy":
        rank = len(blob.shape)
        if layer_type == "Convolution":
            layout = _CONV_LAYOUTS.get(rank)
        elif layer_type == "Deconvolution":
            layout = _DECONV_LAYOUTS.get(rank)
        elif layer_type == "InnerProduct" and rank == 2:
            layout = "IO" if params.get("inner_product_param", {}).get("transpose") else "OI"
    meta = {"layer": layer_name, "layer_type": layer_type, "index": index, "role": role, "layout": layout,
            "offset": blob.offset}
    if blob.shape_source != "shape":
        meta["shape_source"] = blob.shape_source
    return meta


# ------------------------------------------------------------------------------------ prototxt

def _choose_prototxt(model_path: str, prototxt):
    """(path or None, auto-detected?). Auto: `<stem>.prototxt`, else the folder's only one."""
    if prototxt is False:
        return None, False
    if prototxt is not None:
        path = Path(os.fspath(prototxt))
        if not path.is_file():
            raise FormatError("prototxt not found", file=path)
        return path, False
    model = Path(model_path)
    same_stem = model.with_suffix(".prototxt")
    if same_stem.is_file():
        return same_stem, True
    candidates = sorted(model.parent.glob("*.prototxt"))
    if len(candidates) == 1:
        return candidates[0], True
    return None, False


def _read_prototxt(path):
    """(net name, inputs, layers as dicts) from a text NetParameter."""
    doc = _prototxt.parse_file(path)
    inputs = _input_shapes([str(v) for v in doc.all("input")],
                           [int(v) for v in doc.all("input_dim")],
                           [_text_dims(m, path) for m in doc.all("input_shape")])
    layers = []
    for kind in ("layer", "layers"):
        for msg in doc.all(kind):
            if not isinstance(msg, _prototxt.Message):
                raise FormatError(f"`{kind}` is not a message", file=path, offset=0)
            layers.append(_text_layer(msg, path, v1=kind == "layers"))
    for layer in layers:  # deploy nets written with an Input layer instead of `input:`
        if layer["type"] == "Input":
            for top, shape in zip(layer["tops"], layer["params"]["input_param"]["shape"]):
                inputs[top] = list(shape["dim"])
    return str(doc.get("name", "")), inputs, layers


def _text_dims(msg, path):
    return [int(v) for v in msg.all("dim")] if isinstance(msg, _prototxt.Message) else []


def _text_layer(msg, path, v1: bool) -> dict:
    layer_type = msg.get("type", "")
    if v1:
        layer_type = S.V1_TYPES.get(S.V1_TYPE_NAMES.get(str(layer_type), -1), str(layer_type))
    params: dict = {}
    for name in msg.names():
        if name in ("name", "type", "bottom", "top", "blobs", "param", "blobs_lr", "weight_decay"):
            continue
        values = msg.all(name)
        if name in S.PARAM_MESSAGE:
            params[name] = _text_message(values[-1], S.PARAM_MESSAGE[name], path)
        elif name == "phase":
            params[name] = str(values[-1])
        else:  # params of layer types outside the schema (Normalize, PriorBox, ...): kept as written
            plain = [v.to_dict() if isinstance(v, _prototxt.Message) else _prototxt._plain(v) for v in values]
            params[name] = plain[0] if len(plain) == 1 else plain
    _fill_type_params(str(layer_type), params)
    return {"name": str(msg.get("name", "")), "type": str(layer_type), "params": params,
            "bottoms": [str(v) for v in msg.all("bottom")], "tops": [str(v) for v in msg.all("top")]}


def _text_message(msg, message: str, path) -> dict:
    if not isinstance(msg, _prototxt.Message):
        raise FormatError(f"{message} given as a value, not a message", file=path)
    by_name = {f[1]: f for f in S.MESSAGES[message]}
    out: dict = {}
    for name in msg.names():
        spec = by_name.get(name)
        values = msg.all(name)
        if spec is None:  # a forked proto's extra field: keep it as written
            plain = [v.to_dict() if isinstance(v, _prototxt.Message) else _prototxt._plain(v) for v in values]
            out[name] = plain if len(plain) > 1 else plain[0]
            continue
        converted = [_text_value(v, spec, message, path, msg.offset) for v in values]
        out[name] = converted if spec[4] else converted[-1]
    return {**_with_defaults(message, out), **out}


def _text_value(value, spec, message, path, offset):
    _, name, kind, _, _ = spec
    where = f"{message}.{name}"
    if isinstance(kind, tuple) and kind[0] == "msg":
        return _text_message(value, kind[1], path)
    if isinstance(kind, tuple) and kind[0] == "enum":
        if isinstance(value, int) and not isinstance(value, bool):
            return kind[1].get(value, value)
        if str(value) in kind[1].values():
            return str(value)
    elif kind == "bool":
        if isinstance(value, int):
            return bool(value)
        if str(value) in ("true", "True", "t"):
            return True
        if str(value) in ("false", "False", "f"):
            return False
    elif kind == "int" and isinstance(value, int):
        return value
    elif kind in ("float", "double") and isinstance(value, (int, float)) and not isinstance(value, _prototxt.Ident):
        return float(value)
    elif kind == "string" and isinstance(value, str) and not isinstance(value, _prototxt.Ident):
        return value
    raise FormatError(f"{where}: {value!r} is not a valid {kind if isinstance(kind, str) else kind[0]}",
                      file=path, offset=offset)


def _attach_to_prototxt(arch, raw_layers, keys, meta):
    """Layers in prototxt order; caffemodel layers attach by name. Returns (layers, owner) where
    owner maps a caffemodel layer key to the prototxt layer key that received its blobs."""
    net_name, inputs, proto_layers = arch
    if inputs:
        meta["input"] = inputs
    if net_name and not meta.get("name"):
        meta["name"] = net_name
    by_name: dict[str, list] = {}
    for key, raw in zip(keys, raw_layers):
        by_name.setdefault(raw.name, []).append(key)
    proto_keys = _unique_keys([p["name"] for p in proto_layers])
    layers, owner, missing = {}, {}, []
    for pkey, p in zip(proto_keys, proto_layers):
        layers[pkey] = Layer(p["name"], p["type"], p["params"], p["bottoms"], p["tops"])
        candidates = by_name.get(p["name"])
        if candidates:
            owner[candidates.pop(0)] = pkey
        elif p["type"] in _TYPES_WITH_BLOBS:
            missing.append(pkey)
    raw_by_key = dict(zip(keys, raw_layers))
    meta["layers_not_in_prototxt"] = [
        {"name": raw_by_key[k].name, "type": raw_by_key[k].type, "arrays": len(raw_by_key[k].blobs)}
        for k in keys if k not in owner]
    meta["prototxt_layers_without_blobs"] = missing
    return layers, owner
