"""[mxnet] and [gluon] reader: MXNet NDArray-list files (`.params`, `mx.nd.save`), read directly.

File layout (little-endian, as mxnet's NDArray::Save / dmlc streams write it):

    uint64 0x112 (list magic), uint64 reserved, uint64 count, count x NDArray,
    uint64 name count (0 for a saved list), name count x (uint64 length, bytes)

Each NDArray is one of four encodings, told apart by its first uint32:

    0xF993FAC9  V2: int32 storage type (0 dense, 1 row_sparse, 2 csr), shape = int32 ndim +
                int64 dims (ndim 0: a "none" array, nothing follows)
    0xF993FACA  V3 (numpy-shape semantics, mx.util.np_shape / npx.save): as V2, dense only;
                ndim 0 is a 0-d scalar, ndim -1 the "none" array
    0xF993FAC8  V1: shape (int32 ndim + int64 dims) directly, no storage type
    otherwise   legacy (mxnet < 0.9): that uint32 is ndim, then uint32 dims

then int32 dev_type, int32 dev_id (context), int32 mshadow type flag, and the raw data.
mxnet is never imported. Nothing is read until `.numpy()` but the headers: the common array's by a
fast walk (`_dense_header`), anything else and every error by the field-by-field one (`_parse_ndarray`).
"""
from __future__ import annotations

import builtins
import math
import os
import re
import struct
import zlib
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np

from ..arrays import SUFFIX_ROLES, ArrayFile, ArrayHandle, role_from_name, split_role_suffix
from ..dtypes import MXNET as TYPE_FLAGS
from ..errors import FormatError, UnsupportedError
from . import _gc
from ._binary import WALK_MAP_MAX, FileView, SmallReads
from ._limits import parser_errors
from ._mxnet_symbol import build_layers, load_symbol, weight_layout

NAME = "mxnet"
OPTIONS = {"symbol": (str, bool), "strip_prefix": bool}
"""Reader options (`--option KEY=VALUE`) and their types; readers/__init__ validates against it."""
LIST_MAGIC = 0x112
V1_MAGIC, V2_MAGIC, V3_MAGIC = 0xF993FAC8, 0xF993FAC9, 0xF993FACA
_ENCODINGS = {V1_MAGIC: "V1", V2_MAGIC: "V2", V3_MAGIC: "V3"}

# TYPE_FLAGS: mshadow TypeFlag (converters/dtypes.py); 8-11 exist from mxnet 1.9's headers on but its
# Python side cannot create them, so only 0-7 and 12 are tested against mxnet itself.
_STORAGE = {0: "default", 1: "row_sparse", 2: "csr"}
_AUX_COUNT = {1: 1, 2: 2}  # row_sparse: indices; csr: indptr, indices
_DEVICES = {1: "cpu", 2: "gpu", 3: "cpu_pinned", 5: "cpu_shared"}
_MIN_NDARRAY_BYTES = 4  # a legacy "none" array is just its uint32 ndim
_PREFIXES = ("arg", "aux")

_SUFFIX_ROLES = SUFFIX_ROLES  # MXNet symbol names are `conv0_weight`; the longest suffix wins
# Op -> role of its k-th stored array, for names without a conventional suffix.
_OP_ROLES = {"Convolution": ("weight", "bias"), "Deconvolution": ("weight", "bias"),
             "FullyConnected": ("weight", "bias"), "Embedding": ("weight",), "LeakyReLU": ("weight",),
             "BatchNorm": ("weight", "bias", "running_mean", "running_var"),
             "InstanceNorm": ("weight", "bias"), "LayerNorm": ("weight", "bias"), "GroupNorm": ("weight", "bias")}


@dataclass(slots=True)
class _Record:
    """Where one NDArray of the list is and what it holds (no data read). `checked`: a dense
    array of ndim >= 1, no zero dimension, data inside the file (the fast walk's; no more checks)."""

    index: int
    offset: int
    encoding: str
    storage: int
    shape: tuple
    dtype: np.dtype | None
    context: str | None
    data_offset: int
    none: bool = False
    checked: bool = False


def sniff(path, head: bytes) -> bool:
    if len(head) >= 8 and int.from_bytes(head[:8], "little") == LIST_MAGIC:
        return True
    # a lone symbol file: claim it so open() can say which file to pass instead
    return str(path).endswith("-symbol.json") and head.lstrip()[:1] == b"{"


def detect_name(path) -> str:
    """`mxnet` when the names carry arg:/aux: prefixes (Module / export), `gluon` otherwise."""
    try:
        view = FileView(path, pread_headers=True)
    except (OSError, FormatError):
        return NAME  # open() will report the problem
    try:
        with _gc.paused():  # thousands of records, none of them garbage
            walk = _parse(view)
        identity = _identity(view) if len(walk[0]) * _CACHE_MAX_BYTES_PER_ARRAY >= view.size else None
    except FormatError:
        return NAME
    finally:
        view.close()
    _LAST_WALK.clear()  # the names are at the end of the file: open() reuses this walk, once
    if identity is not None:
        _LAST_WALK[identity] = walk
    names = walk[1]
    if names and not any(_split_prefix(n)[0] for n in names):
        return "gluon"
    return NAME


_LAST_WALK: dict = {}
"""detect_name's walk of the file `converters.read` opens next (as long as opening a file of
thousands of arrays), taken by the next open() of the same unchanged file. Small files of small
arrays only: their identity includes a CRC of their bytes (0.7 ms for 3.5 MB, where walking 5,000
headers takes ~8 ms; mtimes tick only every few ms)."""
_CACHE_MAX_BYTES_PER_ARRAY = 4096  # above this average the CRC would cost more than the walk


def _identity(view: FileView):
    """The file as it is now (path, inode, size, times, CRC of the content), or None: not cached."""
    if not 0 < view.size <= WALK_MAP_MAX:
        return None
    try:
        st = os.stat(view.path)
        crc = zlib.crc32(view.buf)
    except (OSError, ValueError):  # gone; the map closed
        return None
    return view.path, st.st_dev, st.st_ino, view.size, st.st_size, st.st_mtime_ns, st.st_ctime_ns, crc


def open(path, framework: str = NAME, symbol=None, strip_prefix: bool = True, **options) -> ArrayFile:
    """Open an NDArray-list file as named lazy arrays.

    symbol: path of the `-symbol.json` graph; None looks for `<stem>-symbol.json` beside a
            `<stem>-NNNN.params` file; False ignores any graph.
    strip_prefix: key arrays without their `arg:`/`aux:` prefix (kept when stripping collides).
    """
    path = os.fspath(path)
    _refuse_symbol_file(path)
    view = FileView(path, pread_headers=True)
    try:
        with parser_errors(path, "MXNet parameters"), _gc.paused():  # symbol JSON nested too deep, ...
            return _open(view, framework, symbol, strip_prefix)
    except BaseException:
        view.close()
        raise


def _refuse_symbol_file(path: str) -> None:
    if not os.path.isfile(path):
        raise FormatError("no such file", file=path)
    with builtins.open(path, "rb") as fh:
        head = fh.read(64)
    if path.endswith(".json") or head.lstrip()[:1] == b"{":
        stem = re.sub(r"-symbol\.json$", "", os.path.basename(path))
        found = sorted(p.name for p in Path(path).parent.glob(f"{glob_escape(stem)}-*.params"))
        hint = (f"pass the weights file ({', '.join(found)}); the graph next to it is read automatically"
                if found else "pass the `.params` weights file; give the graph with symbol=<this file>")
        raise FormatError("this is an MXNet symbol (graph) file, not a weights file", file=path, offset=0,
                          hint=hint)


def glob_escape(text: str) -> str:
    return re.sub(r"([*?\[])", r"[\1]", text)


def _open(view: FileView, framework: str, symbol, strip_prefix: bool) -> ArrayFile:
    walk = _LAST_WALK.pop(_identity(view), None) if _LAST_WALK else None  # (None is never a key)
    _LAST_WALK.clear()
    records, names, encodings = walk or _parse(view)
    keyed = _keys(view, records, names, strip_prefix)
    for rec, stored, _ in keyed:
        if rec.storage != 0:
            raise UnsupportedError(f"{_STORAGE[rec.storage]} (sparse) storage is not supported",
                                   file=view.path, array=stored, offset=rec.offset,
                                   hint="save it dense first: arr.tostype('default')")
    meta = {"format": "mxnet-ndarray-list", "version": encodings[0] if len(encodings) == 1 else encodings,
            "named": bool(names)}
    layers, owner = {}, {}
    symbol_path = _find_symbol(view.path) if symbol is None else (symbol or None)
    if symbol_path is not None:
        graph = load_symbol(symbol_path)
        key_by_node = _graph_keys(keyed)
        layers, owner = build_layers(graph, key_by_node.get)
        meta.update(symbol=os.fspath(symbol_path), symbol_form=graph.form, mxnet_version=graph.mxnet_version,
                    graph=graph.nodes, graph_heads=graph.heads,
                    graph_inputs=[n["name"] for n in graph.nodes
                                  if n["op"] == "null" and n["name"] not in key_by_node])
    handles = _handles(view, keyed, owner)
    return ArrayFile(view.path, framework, handles, meta=meta, layers=layers, closer=view.close)


# --- the binary list --------------------------------------------------------------------------

def _parse(view: FileView) -> tuple[list[_Record], list[str], list[str]]:
    """Walk the whole list (headers only) and return the records, the names and the encodings."""
    magic, _reserved, count = view.unpack("<QQQ", 0, "NDArray list header")
    if magic != LIST_MAGIC:
        raise FormatError(f"list magic is {magic:#x}, expected {LIST_MAGIC:#x}", file=view.path, offset=0,
                          hint="not an MXNet NDArray file (mxnet 2's npx.save writes .npz: use --from numpy)")
    view.require(24, count * _MIN_NDARRAY_BYTES + 8, f"{count} arrays and the name count")
    records, pos, size = [], 24, view.size
    mapped = view.headers() if size <= WALK_MAP_MAX else None  # a small file's headers: in the map
    for i in range(count):
        if mapped is not None:
            head = _dense_header(mapped, pos)
        else:  # a big file's: one pread per array (its headers are spread through the file)
            head = _dense_header(view.bytes(pos, min(_HEAD_MAX, size - pos), "NDArray header", f"#{i}"), 0)
        if head is not None:
            encoding, shape, dtype, context, data = head
            data += pos
            end = data + math.prod(shape) * dtype.itemsize
            if end <= size:
                records.append(_Record(i, pos, encoding, 0, shape, dtype, context, data, checked=True))
                pos = end
                continue
        rec, pos = _parse_ndarray(view, pos, i)  # anything else, and every error: the careful walk
        records.append(rec)
    names, pos = _parse_names(view, pos)
    if names and len(names) != count:
        raise FormatError(f"{count} arrays but {len(names)} names", file=view.path, offset=pos,
                          hint="the file is corrupt: mxnet writes one name per array or none")
    encodings = sorted({r.encoding for r in records}) or ["V2"]
    return records, names, encodings


_MAX_FAST_NDIM = 8
_HEAD_MAX = 8 + 4 + 8 * _MAX_FAST_NDIM + 12
_MAGIC_STORAGE, _NDIM, _CONTEXT = struct.Struct("<Ii"), struct.Struct("<i"), struct.Struct("<iii")
_DIMS = [struct.Struct(f"<{n}q") for n in range(_MAX_FAST_NDIM + 1)]
_FAST_ENCODINGS = {V1_MAGIC: ("V1", 4), V2_MAGIC: ("V2", 8), V3_MAGIC: ("V3", 8)}
_FLAG_DTYPES: dict = {}  # TYPE_FLAGS resolved, per flag met
_U64 = struct.Struct("<Q")
_NAMES_READ_MAX = 64 << 20


def _dense_header(buf, o: int):
    """(encoding, shape, dtype, context, header length) of the common array at buf[o:]: dense
    V1/V2/V3, 1 to 8 dimensions none of them 0, a known context and type flag. None for anything
    else (legacy, sparse, none, scalars, corrupt fields): `_parse_ndarray` parses or rejects those.
    Its caller checks that the data fits in the file."""
    try:
        magic, storage = _MAGIC_STORAGE.unpack_from(buf, o)  # (V1: magic, ndim)
        encoding, h = _FAST_ENCODINGS.get(magic, (None, 0))
        if encoding is None or (h == 8 and storage != 0):
            return None
        (ndim,) = _NDIM.unpack_from(buf, o + h)
        if not 0 < ndim <= _MAX_FAST_NDIM:
            return None
        shape = _DIMS[ndim].unpack_from(buf, o + h + 4)
        h += 4 + 8 * ndim
        dev_type, dev_id, flag = _CONTEXT.unpack_from(buf, o + h)
    except struct.error:  # the buffer ends early
        return None
    dtype = _FLAG_DTYPES.get(flag)
    if dtype is None:
        dtype = TYPE_FLAGS.get(flag)
        if dtype is None:
            return None
        _FLAG_DTYPES[flag] = dtype  # (known flags only: at most the table's size)
    if min(shape) <= 0 or dev_type not in _DEVICES:
        return None
    context = "cpu(0)" if dev_type == 1 and dev_id == 0 else f"{_DEVICES[dev_type]}({dev_id})"
    return encoding, shape, dtype, context, h + 12


def _parse_ndarray(view: FileView, pos: int, i: int) -> tuple[_Record, int]:
    where = f"#{i}"  # names come after all arrays; errors here name the position
    start = pos
    (magic,) = view.unpack("<I", pos, "NDArray magic", where)
    encoding = _ENCODINGS.get(magic, "legacy")
    storage = 0
    if encoding in ("V2", "V3"):
        (storage,) = view.unpack("<i", pos + 4, "storage type", where)
        pos += 8
        if storage not in _STORAGE or (encoding == "V3" and storage != 0):
            raise FormatError(f"unknown storage type {storage} for a {encoding} array", file=view.path,
                              array=where, offset=pos - 4)
        if storage != 0:
            return _skip_sparse(view, i, start, pos, storage)
        shape, pos = _read_shape(view, pos, "<q", where)
    elif encoding == "V1":
        shape, pos = _read_shape(view, pos + 4, "<q", where)
    else:  # legacy: the uint32 just read is ndim
        shape, pos = _read_shape(view, pos, "<I", where, ndim=magic)
    if shape is None or (encoding != "V3" and len(shape) == 0):  # "none": nothing follows the shape
        return _Record(i, start, encoding, 0, (0,), np.dtype("<f4"), None, pos, none=True), pos
    context, dtype, pos = _read_context_and_type(view, pos, where)
    nbytes = _count(shape) * dtype.itemsize
    view.require(pos, nbytes, f"{dtype}{list(shape)} data", where)
    return _Record(i, start, encoding, 0, shape, dtype, context, pos), pos + nbytes


def _read_shape(view: FileView, pos: int, dim_fmt: str, where: str, ndim=None):
    """(shape or None for an unknown/none shape, next offset); ndim is checked against the file."""
    if ndim is None:
        (ndim,) = view.unpack("<i", pos, "shape ndim", where)
        pos += 4
        if ndim == -1:
            return None, pos
        if ndim < 0:
            raise FormatError(f"shape has ndim {ndim}", file=view.path, array=where, offset=pos - 4)
    else:
        pos += 4
    item = 8 if dim_fmt == "<q" else 4
    view.require(pos, ndim * item, f"{ndim} shape dims", where)
    dims = view.unpack(f"<{ndim}{dim_fmt[1]}", pos, "shape dims", where) if ndim else ()
    if any(d < 0 for d in dims):
        raise FormatError(f"shape {list(dims)} has a negative dimension", file=view.path, array=where,
                          offset=pos)
    return tuple(int(d) for d in dims), pos + ndim * item


def _read_context_and_type(view: FileView, pos: int, where: str):
    dev_type, dev_id, flag = view.unpack("<iii", pos, "context and type flag", where)
    if dev_type not in _DEVICES:
        raise FormatError(f"device type {dev_type} is not an MXNet context", file=view.path, array=where,
                          offset=pos, hint="the file is corrupt or not an NDArray list")
    dtype = TYPE_FLAGS.get(flag)
    if dtype is None:
        raise UnsupportedError(f"type flag {flag} is not a known mshadow dtype", file=view.path, array=where,
                               offset=pos + 8)
    return f"{_DEVICES[dev_type]}({dev_id})", dtype, pos + 12


def _skip_sparse(view: FileView, i: int, start: int, pos: int, storage: int):
    """Step over a row_sparse/csr array so the names (and so its name) can be read."""
    where = f"#{i}"
    storage_shape, pos = _read_shape(view, pos, "<q", where)
    shape, pos = _read_shape(view, pos, "<q", where)
    context, dtype, pos = _read_context_and_type(view, pos, where)
    aux_bytes = 0
    for _ in range(_AUX_COUNT[storage]):
        (aux_flag,) = view.unpack("<i", pos, "sparse aux type", where)
        aux_shape, pos = _read_shape(view, pos + 4, "<q", where)
        aux_dtype = TYPE_FLAGS.get(aux_flag)
        if aux_dtype is None:
            raise UnsupportedError(f"aux type flag {aux_flag}", file=view.path, array=where, offset=pos)
        aux_bytes += _count(aux_shape or ()) * aux_dtype.itemsize
    nbytes = _count(storage_shape or ()) * dtype.itemsize + aux_bytes
    view.require(pos, nbytes, "sparse data", where)
    return _Record(i, start, "V2", storage, shape or (0,), dtype, context, pos), pos + nbytes


def _parse_names(view: FileView, pos: int) -> tuple[list[str], int]:
    (n,) = view.unpack("<Q", pos, "name count")
    view.require(pos + 8, n * 8, f"{n} names")
    pos += 8
    # the names run to the end of the file: read them at once (up to a bound), field by field after
    tail = view.bytes(pos, min(view.size - pos, _NAMES_READ_MAX), "names") if n else b""
    base, end, u64 = pos, pos + len(tail), _U64.unpack_from
    names = []
    for i in range(n):
        if pos + 8 <= end:
            (length,) = u64(tail, pos - base)
        else:
            (length,) = view.unpack("<Q", pos, "name length", f"name #{i}")
        if pos + 8 + length <= end:
            raw = tail[pos + 8 - base:pos + 8 + length - base]
        else:
            raw = view.bytes(pos + 8, length, "name", f"name #{i}")
        try:
            names.append(raw.decode("utf-8"))
        except UnicodeDecodeError:
            raise FormatError("array name is not UTF-8", file=view.path, array=f"name #{i}", offset=pos + 8) from None
        pos += 8 + length
    return names, pos


def _count(shape) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


# --- names, roles, layers ---------------------------------------------------------------------

def _split_prefix(name: str) -> tuple[str | None, str]:
    """('arg' or 'aux' or None, the rest): `arg:conv0_weight` -> ('arg', 'conv0_weight')."""
    if name[3:4] == ":" and len(name) > 4 and name[:3] in _PREFIXES:
        return name[:3], name[4:]
    return None, name


def _keys(view, records, names, strip_prefix) -> list[tuple[_Record, str, str]]:
    """(record, stored name, key): keys drop arg:/aux: unless that would make two keys equal."""
    stored = names or [str(i) for i in range(len(records))]
    if len(set(stored)) != len(stored):
        dup = next(n for n in stored if stored.count(n) > 1)
        raise FormatError("array name appears twice", file=view.path, array=dup)
    # (_split_prefix inlined: 5,000 names in 0.5 ms, not 2)
    keys = ([n[4:] if n[3:4] == ":" and len(n) > 4 and n[:3] in _PREFIXES else n for n in stored]
            if strip_prefix else list(stored))
    if len(set(keys)) != len(keys):
        keys = list(stored)
    return list(zip(records, stored, keys))


def _graph_keys(keyed) -> dict[str, str]:
    """Symbol node name -> ArrayFile key (arg: wins over aux: if both spell the same node)."""
    out: dict[str, str] = {}
    for prefix in ("arg", None, "aux"):
        for _, stored, key in keyed:
            p, bare = _split_prefix(stored)
            if p == prefix:
                out.setdefault(bare, key)
    return out


def _handles(view: FileView, keyed, owner: dict) -> list[ArrayHandle]:
    """The arrays' handles; their meta is worked out for all of them when any is first asked for.

    `.numpy()` reads with pread, never through the map (a file cut short while open is a
    TruncatedError, not a SIGBUS): small arrays in file order share one pread of up to 64 KiB
    (`SmallReads`: ~1 us each, where a pread of their own costs a syscall and more Python), big ones
    read alone into their own buffers. The fast walk's records need no per-array checks."""
    meta_of = _Metas(keyed, owner)
    add, out = SmallReads(view).add, []
    for rec, _, key in keyed:
        if rec.checked:
            shape, dtype, start = rec.shape, rec.dtype, rec.data_offset
            out.append(add(key, shape, dtype, start, start + _count(shape) * dtype.itemsize, meta_of))
        elif rec.none:
            out.append(ArrayHandle(key, (0,), np.float32, partial(np.zeros, (0,), np.float32), meta_of, fresh=True))
        else:  # checked as any handle is (shape, byte count)
            out.append(view.handle(key, rec.data_offset, rec.dtype, rec.shape, meta_of))
    return out


class _Metas:
    """Every array's meta dict, built together on first use: `index` counts a layer's arrays in
    file order, so one array's meta needs every array's layer."""

    def __init__(self, keyed, owner: dict):
        self._keyed, self._owner, self._metas = keyed, owner, None

    def __call__(self, handle: ArrayHandle) -> dict:
        if self._metas is None:
            self._metas = _build_metas(self._keyed, self._owner)
            self._keyed = self._owner = None
        return self._metas[handle.name]


def _build_metas(keyed, owner: dict) -> dict[str, dict]:
    metas, seen = {}, {}
    for rec, stored, key in keyed:
        meta = _meta(rec, stored, owner.get(key))
        layer = meta["layer"]
        if "index" not in meta:
            meta["index"] = seen.get(layer, 0)
        seen[layer] = seen.get(layer, 0) + 1
        metas[key] = meta
    return metas


def _meta(rec: _Record, stored: str, owner) -> dict:
    prefix, bare = _split_prefix(stored)
    meta = {"stored_name": stored, "encoding": rec.encoding}
    if prefix:
        meta["prefix"] = prefix
    if rec.context:
        meta["context"] = rec.context
    role, layer = _role_and_layer(bare, prefix)
    if owner is not None:
        layer_name, op, attrs, position = owner
        layer = layer_name
        meta["layer_type"] = op
        meta["index"] = position
        if role is None and position < len(_OP_ROLES.get(op, ())):
            role = _OP_ROLES[op][position]
        if role == "weight":
            layout = weight_layout(op, attrs, len(rec.shape))
            if layout:
                meta["layout"] = layout
    meta["layer"] = layer
    meta["role"] = role or ("running_stat" if prefix == "aux" else "other")
    if rec.none:
        meta["none"] = True
    return meta


def _role_and_layer(name: str, prefix: str | None) -> tuple[str | None, str]:
    """Role and layer from an MXNet name (`conv0_weight`) or a Gluon path (`features.0.weight`)."""
    if "." in name:  # Gluon save_parameters: structural path, the last component is the param
        layer, _, last = name.rpartition(".")
        role = role_from_name(last) or dict(_SUFFIX_ROLES).get("_" + last)
        if role is not None:
            return role, layer
    split = split_role_suffix(name)
    if split:
        return split[0], split[1]
    return None, name


def _find_symbol(path: str):
    """`<stem>-symbol.json` beside `<stem>-NNNN.params` (what mx.model.save_checkpoint and
    HybridBlock.export write), or None."""
    m = re.match(r"^(?P<stem>.+)-\d{4,}\.params$", os.path.basename(path))
    if not m:
        return None
    candidate = Path(path).with_name(f"{m['stem']}-symbol.json")
    return candidate if candidate.is_file() else None
