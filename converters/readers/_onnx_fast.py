"""The ONNX reader's fast open: a graph of thousands of small tensors indexed with a few numpy
passes instead of Python work per protobuf field.

onnx_files' field-by-field walk (`_parse_graph` + `_collect`) costs ~30 us of Python per tensor:
6x `onnx.load` on Paddle2ONNX-style exports of thousands of small Constant nodes. Here:
  1. the graph's own fields are listed by one tight loop (`pw.message_table`);
  2. all nodes, then all their attributes, then all tensors are walked at once (`pw.scan`: one
     numpy step per field position, however many messages);
  3. tensors are checked as arrays (dtype, dims, byte counts) and become `SmallReads` handles
     (`.numpy()` reads with pread, small tensors in file order sharing one pread of up to 64 KiB;
     `.numpy(copy=False)` is a view into the map);
  4. roles, layouts and layers, which need every node's strings, are worked out on first access
     (by the field-by-field walk, so they are exactly what it gives).
What this path does not cover (subgraphs, sparse initializers, Constant nodes other than
`value=tensor`, malformed fields) goes to the field-by-field walk for the whole file (`None`);
tensors it does not cover (external data, varint or string fields, unknown dtypes, sizes that do
not add up) go one by one to `onnx_files._parse_tensor` + `_Reader.handle`. So every error and
edge case is that walk's.
"""
from __future__ import annotations

import weakref
from functools import partial

import numpy as np

from ..arrays import ArrayFile, ArrayHandle
from ..errors import ConvertersError, FormatError, UnsupportedError
from . import _protowire as pw
from . import onnx_files as ox
from ._binary import SmallReads
from ._lazy_structure import LazyStructure

LEN, VARINT, FIXED32 = pw.LEN, pw.VARINT, pw.FIXED32
K_NAME, K_INIT, K_INPUT, K_OUTPUT, K_SPARSE = (f << 3 | LEN for f in (2, 5, 11, 12, 15))
K_NODE = 1 << 3 | LEN
_ATTR_WIRES = {1: (LEN,), 2: (FIXED32,), 3: (VARINT,), 4: (LEN,), 5: (LEN,), 7: (LEN, FIXED32), 8: (LEN, VARINT),
               9: (LEN,)}
"""AttributeProto field -> the wire types `onnx_files._parse_attribute` decodes (others: that walk)."""
_VIEWS = (ox.T_RAW, ox.T_FLOAT, ox.T_DOUBLE)  # data fields mapped as one view
_VARINTS = (ox.T_INT32, ox.T_INT64, ox.T_UINT64)  # packed varints, decoded by onnx_files.decode_typed
_TENSOR_WIRES = {1: VARINT, 2: VARINT, 8: LEN, **{f: LEN for f in _VIEWS + _VARINTS}}
_TENSOR_ELSEWHERE = (ox.T_STRING, ox.T_EXTERNAL, ox.T_LOCATION)


def _wire_table(allowed: dict, refused=()) -> np.ndarray:
    """[field, wire] -> may this path take it; fields past the table share its last row (any wire)."""
    table = np.ones((max(max(allowed), *refused, 0) + 2, 8), bool)
    for f, wires in allowed.items():
        table[f] = False
        table[f, list(wires)] = True
    table[list(refused)] = False
    return table


_ATTR_OK = _wire_table(_ATTR_WIRES, refused=(6, 11))  # graph attributes: subgraphs
_TENSOR_OK = _wire_table({f: (w,) for f, w in _TENSOR_WIRES.items()}, refused=_TENSOR_ELSEWHERE)
_IS_DATA = np.zeros(_TENSOR_OK.shape[0], bool)
_IS_DATA[list(_VIEWS + _VARINTS)] = True


def open_fast(reader, meta: dict, graph_span) -> ArrayFile | None:
    """The ArrayFile of an ONNX model, or None when the field-by-field walk must open it. A file
    with an error anywhere is also the walk's: it reports the first error in file order."""
    gather = reader.gather()
    try:
        return _open(reader, gather, meta, graph_span)
    except (ConvertersError, ValueError, TypeError, IndexError, OverflowError):
        return None
    finally:
        del gather  # its array pins the memory map, which close() must be able to release


def _open(reader, gather, meta, graph_span):
    src, path = reader.src, reader.path
    keys, starts, lens, _offs = (np.asarray(x, np.int64) for x in pw.message_table(src, *ox._end(graph_span), path))
    if (keys == K_SPARSE).any():
        return None
    nodes = _Nodes(gather, src, starts[keys == K_NODE], lens[keys == K_NODE])
    if not nodes.ok:
        return None
    init_start, init_len = starts[keys == K_INIT], lens[keys == K_INIT]
    n_init, n_const = init_start.size, nodes.const_start.size
    tensors = _Tensors(gather, src, np.concatenate((init_start, nodes.const_start, nodes.check_start)),
                       np.concatenate((init_len, nodes.const_len, nodes.check_len)))
    if tensors.complex[n_init + n_const:].any():  # a ConstantOfShape-style value the walk may reject
        return None
    names = pw.texts(gather, tensors.name_start[:n_init], tensors.name_len[:n_init]) + nodes.const_names
    walked = {i: ox._parse_tensor(src, int(tensors.start[i]), int(tensors.length[i]), path)
              for i in np.flatnonzero(tensors.complex).tolist()}
    for i, t in walked.items():
        if i < n_init:
            names[i] = t.name
    structure = _Structure(reader)
    arrays, meta_of, file = [], structure.meta_of, reader.view  # (ArrayFile refuses a name twice)
    add = SmallReads(file).add
    rows = zip(names, tensors.complex.tolist(), tensors.dtypes, tensors.shapes(), tensors.count.tolist(),
               tensors.view.tolist(), tensors.data_start.tolist())
    for i, (name, walk, dtype, shape, count, view, start) in enumerate(rows):
        if walk:
            handle = reader.handle(walked[i], name, {})
            structure.base[name], handle.meta = handle.meta, meta_of  # ({"storage": "external"})
            arrays.append(handle)
            continue
        if view and count:  # pread (never the map: a file cut short is a TruncatedError, not a SIGBUS)
            arrays.append(add(name, shape, dtype, start, start + count * dtype.itemsize, meta_of))
            continue
        if view:
            load = partial(np.zeros, shape, dtype)
        else:  # packed varints, decoded (and counted) on load as the walk's _typed_loader does
            f = int(tensors.data_field[i])
            entries = [(LEN, (start, int(tensors.data_len[i])), int(tensors.data_offset[i]))]
            load = partial(ox.decode_typed, file, f, entries, dtype, shape, count, name)
        arrays.append(ArrayHandle.checked(name, shape, dtype, load, meta_of))
    graph_names = np.flatnonzero(keys == K_NAME)
    graph_name = pw.text(src, (int(starts[graph_names[-1]]), int(lens[graph_names[-1]]))) if graph_names.size else ""
    inputs, outputs = ([ox._value_info(src, (int(s), int(n)), path) for s, n in zip(starts[keys == k], lens[keys == k])]
                       for k in (K_INPUT, K_OUTPUT))
    ox._graph_meta(meta, graph_name, inputs, outputs, set(names[:n_init]))
    opened = ArrayFile(path, ox.NAME, arrays, meta=meta, layers=structure.layers, closer=reader.close)
    structure.file = weakref.ref(opened)
    return opened


class _Nodes:
    """Every NodeProto of a graph, walked at once: which are Constants (and their output names and
    value tensors), and the `value` tensors of other nodes (ConstantOfShape), to be checked.
    `ok` False: something only the field-by-field walk handles (a subgraph, an odd attribute)."""

    def __init__(self, gather, buf, starts, lens):
        self.ok = False
        self.const_start = self.const_len = self.check_start = self.check_len = np.zeros(0, np.int64)
        self.const_names: list[str] = []
        tab, slow = pw.scan(gather, starts, starts + lens, buf)
        if slow.size:
            return
        n = starts.size
        msg, fld, is_len = tab["msg"], tab["field"], tab["wire"] == LEN
        op_start, op_len = _last(tab, is_len & (fld == 4), n)
        dom_start, dom_len = _last(tab, is_len & (fld == 7), n)
        out_start, out_len = _last(tab, is_len & (fld == 2), n, first=True)
        const = _equals(gather, op_start, op_len, b"Constant") & (out_len >= 0)
        for i in np.flatnonzero(const & (dom_len > 0)).tolist():  # a domain other than the default
            const[i] = pw.texts(gather, dom_start[i:i + 1], dom_len[i:i + 1])[0] in ("", "ai.onnx")
        a = is_len & (fld == 5)
        a_node, a_start, a_len = msg[a], tab["start"][a], tab["value"][a].astype(np.int64)
        atab, slow = pw.scan(gather, a_start, a_start + a_len, buf)
        afield = np.minimum(atab["field"], _ATTR_OK.shape[0] - 1)
        if slow.size or not _ATTR_OK[afield, atab["wire"]].all():  # subgraphs, odd wire types
            return
        na = a_start.size
        name_start, name_len = _last(atab, atab["field"] == 1, na, first=True)
        t_start, t_len = _last(atab, atab["field"] == 5, na)
        is_value = _equals(gather, name_start, name_len, b"value") & (t_len >= 0)
        per_node = np.bincount(a_node, minlength=n)
        c = np.flatnonzero(const)
        if c.size:  # Constant nodes here hold exactly one attribute: value=<tensor>
            first_attr = np.searchsorted(a_node, c)
            if (per_node[c] != 1).any() or not is_value[first_attr].all():
                return
            self.const_start, self.const_len = t_start[first_attr], t_len[first_attr]
            self.const_names = pw.texts(gather, out_start[c], out_len[c])
        check = is_value & ~const[a_node]
        self.check_start, self.check_len = t_start[check], t_len[check]
        self.ok = True


class _Tensors:
    """Every TensorProto walked at once. `complex[i]`: left to the field-by-field walk; for the
    others `dtypes`, `count` and their one data field: `data_field`, `data_start`, `data_len`,
    `data_offset` (a raw_data or packed float/double view, or packed int32/int64/uint64 varints)."""

    def __init__(self, gather, buf, starts, lens):
        n = starts.size
        self.start, self.length = starts, lens
        tab, slow = pw.scan(gather, starts, starts + lens, buf)
        msg, fld, wire, val = tab["msg"], tab["field"], tab["wire"], tab["value"]
        cx = np.zeros(n, bool)
        cx[slow] = True
        fld_c = np.minimum(fld, _TENSOR_OK.shape[0] - 1)
        cx[msg[~_TENSOR_OK[fld_c, wire]]] = True
        data = _IS_DATA[fld_c]
        cx |= np.bincount(msg[data], minlength=n) != 1
        row = _pick(tab, data, n)
        self.data_field, self.data_start, self.data_len, self.data_offset = (
            np.where(row >= 0, tab[k][row], -1).astype(np.int64) for k in ("field", "start", "value", "offset"))
        _, codes = _last(tab, fld == 2, n)
        cx |= codes < 0
        self.name_start, self.name_len = _last(tab, fld == 8, n)
        self.name_start = np.where(self.name_len < 0, 0, self.name_start)
        self.name_len = np.maximum(self.name_len, 0)
        dims = fld == 1
        self._dmsg, self._dval = msg[dims], val[dims].astype(np.int64)
        cx[self._dmsg[self._dval < 0]] = True
        self.ndim = np.bincount(self._dmsg, minlength=n)
        nonzero = np.ones(n)
        np.multiply.at(nonzero, self._dmsg, np.maximum(self._dval, 1).astype(np.float64))
        count = np.ones(n, np.int64)
        np.multiply.at(count, self._dmsg, self._dval)
        itemsize = np.zeros(n, np.int64)
        self.dtypes: list = [None] * n
        kinds = codes * 64 + self.data_field  # (data_type, data field): a handful of distinct pairs
        for kind in sorted(set(kinds[~cx].tolist())):  # (np.unique imports numpy.ma on first use: 7 ms)
            rows = (kinds == kind) & ~cx
            dtype = _dtype_for(kind // 64, kind % 64)
            if dtype is None:
                cx |= rows
                continue
            itemsize[rows] = dtype.itemsize
            for i in np.flatnonzero(rows).tolist():
                self.dtypes[i] = dtype
        cx |= nonzero * np.maximum(itemsize, 1) > 2.0 ** 61  # element_count's bound, with room
        view = np.isin(self.data_field, _VIEWS)
        cx |= view & (self.data_len != count * itemsize)  # varints are counted when decoded, as in the walk
        self.count, self.complex, self.view = count, cx, view

    def shapes(self) -> list[tuple]:
        dims = self._dval.tolist()
        bounds = np.concatenate(([0], np.cumsum(self.ndim))).tolist()
        same: dict = {}  # one tuple per distinct shape: fewer live objects for the garbage collector to walk
        return [same.setdefault(t, t) for t in (tuple(dims[a:b]) for a, b in zip(bounds[:-1], bounds[1:]))]


def _dtype_for(code: int, data_field: int) -> np.dtype | None:
    """The dtype of a tensor of data_type `code` whose data is in `data_field`, or None where the
    field-by-field walk must decide (it raises the error: unknown type, field that cannot hold it)."""
    try:
        dtype = ox._np_dtype(code, None, None, None)
        if dtype.hasobject:
            return None
        if data_field != ox.T_RAW:
            ox._check_field_fits(data_field, dtype, None, None, None)
    except (UnsupportedError, FormatError):
        return None
    return dtype


def _pick(tab: dict, rows: np.ndarray, n: int, first: bool = False) -> np.ndarray:
    """Per message, the table row of its last (or first) field among `rows`; -1 where none.
    The table is in message-then-field order: a message's rows are together and in file order."""
    out = np.full(n, -1, np.int64)
    idx = np.flatnonzero(rows)
    if idx.size:
        m = tab["msg"][idx]
        edge = m[1:] != m[:-1]
        chosen = idx[np.concatenate(([True], edge)) if first else np.concatenate((edge, [True]))]
        out[tab["msg"][chosen]] = chosen
    return out


def _last(tab: dict, rows: np.ndarray, n: int, first: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(start, value) per message of its last (or first) field among `rows`, -1 where it has none:
    a LEN field's payload start and length, a VARINT's value."""
    row = _pick(tab, rows, n, first)
    has = row >= 0
    start, value = np.full(n, -1, np.int64), np.full(n, -1, np.int64)
    start[has] = tab["start"][row[has]]
    value[has] = tab["value"][row[has]].astype(np.int64)
    return start, value


def _equals(gather, starts, lens, literal: bytes) -> np.ndarray:
    """Which (start, length) spans hold exactly `literal`."""
    out = lens == len(literal)
    idx = np.flatnonzero(out)
    if idx.size:
        pos = starts[idx][:, None] + np.arange(len(literal))
        out[idx] = (gather(pos.reshape(-1)).reshape(pos.shape) == np.frombuffer(literal, np.uint8)).all(axis=1)
    return out


class _Structure(LazyStructure):
    """Layers and per-array meta (roles, layouts, consumers), built on first access by the
    field-by-field walk (onnx_files._walk)."""

    what = "ONNX model"

    def __init__(self, reader):
        super().__init__(reader.path)
        self.reader = reader
        self.base: dict[str, dict] = {}  # meta a handle was made with (external storage)
        self.file = None  # weakref to the ArrayFile: its handles stand for themselves in the walk

    def walk(self, check_unchanged) -> tuple[dict, dict]:
        reader, temp, mapped = self.reader, None, None
        if reader.closed:
            check_unchanged()
            reader = temp = ox._Reader(self.path, reader.allow_outside)
        elif not isinstance(reader.src, pw.PreadBuffer):  # a small file walked after open: over a
            # pread copy, not the map (a file cut short meanwhile: TruncatedError, not SIGBUS)
            mapped, reader.src = reader.src, reader.view.pread(0, reader.view.size, "the layers and array metadata")
        try:
            _meta, graph_span = ox._model_fields(reader)
            opened = self.file() if self.file is not None else None
            make = None if opened is None else partial(_Stand, opened._arrays, self.base)
            arrays, layers, _graph = ox._walk(reader, graph_span, want_subgraphs=True, make=make)
        finally:
            if temp is not None:
                temp.close()
            elif mapped is not None:
                reader.src = mapped
            elif isinstance(reader.src, pw.PreadBuffer):
                reader.src.forget()
        return {a.name: a.meta for a in arrays}, layers


class _Stand:
    """An opened handle's stand-in in the walk that works out meta: what `_array_meta` reads of
    it, and a fresh meta dict to fill (no second handle made, no tensor checked twice)."""

    __slots__ = ("name", "ndim", "dtype", "meta")

    def __init__(self, handles: dict, base: dict, name: str):
        real = handles[name]
        self.name, self.ndim, self.dtype, self.meta = name, real.ndim, real.dtype, dict(base.get(name, ()))
