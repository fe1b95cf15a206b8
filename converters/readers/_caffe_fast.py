"""The [caffe] reader's fast open: a .caffemodel of thousands of small blobs indexed with a few
numpy passes (`_protowire.scan`) instead of Python work per protobuf field.

caffe.py's field-by-field walk costs ~29 us of Python per blob (5.5x protobuf on 5,000 blobs). Here:
  1. NetParameter's fields are listed by one tight loop (layers are its only many fields);
  2. all layers, then all their param messages, blobs and BlobShapes are walked at once (`scan`)
     and checked as arrays: wire types, one packed data field per blob, dims against its length;
  3. blobs become one-object handles (`_binary.SmallReads`) whose `.numpy()` copies out of one
     pread window shared with the blobs after it in file order;
  4. per-array meta (roles, layouts) and the layers (params with caffe.proto defaults) are worked
     out on first access by the walk itself, so they are exactly what it gives.
What this path does not cover (a prototxt, files over WALK_MAP_MAX, non-packed or split data,
BlobShape dims not packed, anything malformed) goes to the walk for the whole file (None): every
error and edge case is the walk's. Param messages with nested or packed fields are checked one
by one with the walk's own decoder.
"""
from __future__ import annotations

import numpy as np

from ..arrays import ArrayFile
from ..errors import ConvertersError
from . import _binary
from . import _caffe_schema as S
from . import _protowire as pw
from . import caffe as C
from ._binary import FileView, SmallReads
from ._lazy_structure import LazyStructure
from ._protowire import texts as _texts

LEN, VARINT, FIXED32, FIXED64 = pw.LEN, pw.VARINT, pw.FIXED32, pw.FIXED64
_F4, _F8 = np.dtype("<f4"), np.dtype("<f8")

# LayerParameter / V1LayerParameter field roles ([v1, field]; fields past the table: unknown)
UNKNOWN, NAME, TYPE, BLOB, PARAM, IGNORED, V0 = range(7)
_ROLE = np.zeros((2, 1004), np.int8)
_WIRE = np.full((2, 1004), -1, np.int8)  # the wire type a role needs (-1: any); another one: unknown
for _v1, (_name, _type, _bottom, _top, _blobs, _params, _other) in enumerate((
        (S.LAYER_NAME, S.LAYER_TYPE, S.LAYER_BOTTOM, S.LAYER_TOP, S.LAYER_BLOBS, S.LAYER_PARAMS, S.LAYER_KNOWN_OTHER),
        (S.V1_NAME, S.V1_TYPE, S.V1_BOTTOM, S.V1_TOP, S.V1_BLOBS, S.V1_PARAMS, S.V1_KNOWN_OTHER))):
    _ROLE[_v1, list(_other)] = IGNORED
    for _f, _role in ((_name, NAME), (_bottom, IGNORED), (_top, IGNORED), (_blobs, BLOB),
                      *((f, PARAM) for f in _params)):
        _ROLE[_v1, _f], _WIRE[_v1, _f] = _role, LEN
    _ROLE[_v1, _type] = TYPE  # any wire: the walk takes a V2 string or a V1 enum, ignores others
_ROLE[0, S.LAYER_PHASE], _WIRE[0, S.LAYER_PHASE] = IGNORED, VARINT
_ROLE[1, S.V1_V0_LAYER], _WIRE[1, S.V1_V0_LAYER] = V0, LEN
_PARAMS = (S.LAYER_PARAMS, S.V1_PARAMS)

OK, ODD, DECODE = 0, 1, 2  # a param message field: plain, unknown to the walk, or decoded by it


def _param_table(message: str) -> np.ndarray:
    """[field, wire] -> OK / ODD (reported as unknown) / DECODE (packed ints, nested messages)."""
    fields = S.MESSAGES[message]
    table = np.full((max(f[0] for f in fields) + 2, 8), ODD, np.int8)
    for number, _, kind, _, _ in fields:
        if kind in ("int", "bool") or kind[0] == "enum":
            table[number, VARINT], table[number, LEN] = OK, DECODE
        elif kind == "float":
            table[number, FIXED32] = table[number, LEN] = OK
        elif kind == "double":
            table[number, FIXED64] = OK
        elif kind == "string":
            table[number, LEN] = OK
        else:
            table[number, LEN] = DECODE
    return table


_PARAM_TABLES = {message: _param_table(message) for message in S.MESSAGES}


def open_fast(view: FileView, headers: FileView) -> ArrayFile | None:
    """The ArrayFile of a .caffemodel opened without a prototxt, or None: the walk must open it.
    Its messages are walked in `headers` (caffe._headers: a pread copy of the file), its arrays
    read from `view`."""
    if not 0 < view.size <= _binary.WALK_MAP_MAX:
        return None
    gather = np.frombuffer(headers.buf, np.uint8).__getitem__
    try:
        return _open(view, headers, gather)
    except (ConvertersError, ValueError, TypeError, IndexError, OverflowError):
        return None
    finally:
        del gather  # (were it the map, its array would pin it: close() must be able to release it)


def _open(view: FileView, headers: FileView, gather) -> ArrayFile | None:
    buf, path = headers.buf, view.path
    other, spans = _net_fields(buf, view.size) or _split(list(pw.iter_fields(buf, 0, view.size, path)))
    net_name, inputs, _, version, unknown_net = C._read_net(headers, other + _stubs(spans), lambda *_a, **_k: None)
    spans.sort(key=lambda span: span[1])  # the walk's order: V2 layers, then V1 ones
    layers = _Layers(gather, buf, path, spans)
    if not layers.ok:
        return None
    blobs = _Blobs(gather, buf, layers.blob_start, layers.blob_len)
    if not blobs.ok:
        return None
    meta = {"format": "caffemodel", "version": version, "name": net_name, "input": inputs, "prototxt": None}
    if unknown_net:
        meta["unknown_net_fields"] = unknown_net
    if layers.unknown:
        meta["unknown_layer_fields"] = layers.unknown
    keys = C._unique_keys(layers.names)
    structure = _Structure(view)
    reads = SmallReads(view, blobs.start.tolist(), (blobs.start + blobs.nbytes).tolist())
    owner = layers.blob_layer
    index = (np.arange(owner.size) - np.searchsorted(owner, owner)).tolist()  # blob index in its layer
    names = [f"{keys[layer]}/{k}" for layer, k in zip(owner.tolist(), index)]
    arrays = reads.handles(names, blobs.shapes, blobs.dtypes, structure.meta_of)
    return ArrayFile(path, C.NAME, arrays, meta=meta, layers=structure.layers, closer=view.close)


def _net_fields(buf, end: int) -> tuple[list, list] | None:
    """(NetParameter's fields other than layers, as iter_fields gives them; [(layer span, V1?)])
    for a net of name, input, input_shape and layer fields (one- or two-byte keys), or None for
    anything else (iter_fields lists it)."""
    other, spans, pos = [], [], 0
    add = spans.append
    while pos < end:
        b = buf[pos]
        if b == 0xA2 and buf[pos + 1] == 0x06:  # field 100 (layer), LEN
            p, v1 = pos + 2, 0
        elif b == 0x12:  # field 2 (layers, V1), LEN
            p, v1 = pos + 1, 1
        elif b in (0x0A, 0x1A, 0x42):  # name, input, input_shape
            p, v1 = pos + 1, -1
        else:
            return None
        n = buf[p]
        if n < 0x80:
            p += 1
        else:
            n, p = pw.read_varint(buf, p, end)
        if p + n > end:
            return None
        if v1 < 0:
            other.append((b >> 3, LEN, (p, n), pos))
        else:
            add(((p, n), v1))
        pos = p + n
    return other, spans


def _split(fields: list) -> tuple[list, list]:
    """_net_fields' answer from iter_fields' list."""
    other, spans = [], []
    for field in fields:
        number, wire, value, _ = field
        if wire == LEN and number in (S.NET_LAYER, S.NET_LAYERS_V1):
            spans.append((value, int(number == S.NET_LAYERS_V1)))
        else:
            other.append(field)
    return other, spans


def _stubs(spans: list) -> list:
    """A layer field of each kind present, so that the walk's _read_net names the version (and
    finds layers at all) from fields that are not layers plus these."""
    kinds = {v1 for _, v1 in spans}
    return [(S.NET_LAYERS_V1 if v1 else S.NET_LAYER, LEN, (0, 0), 0) for v1 in sorted(kinds)]


class _Layers:
    """Every layer walked at once: names, blob spans (in layer then field order) and the unknown
    fields the walk would report (its own and its param messages')."""

    def __init__(self, gather, buf, path, spans):
        self.ok = False
        n = len(spans)
        if n == 0:
            return
        starts = np.array([s for (s, _), _ in spans], np.int64)  # (layer order: the walk's)
        lens = np.array([m for (_, m), _ in spans], np.int64)
        v1 = np.array([v for _, v in spans], np.int64)
        tab, slow = pw.scan(gather, starts, starts + lens, buf, max_steps=256)
        if slow.size:
            return
        msg, fld, wire = tab["msg"], tab["field"], tab["wire"]
        lv1, fc = v1[msg], np.minimum(fld, _ROLE.shape[1] - 1)
        role = _ROLE[lv1, fc]
        need = _WIRE[lv1, fc]
        role = np.where((need >= 0) & (need != wire) & (role != TYPE), UNKNOWN, role)
        if (role == V0).any():
            return
        named = np.flatnonzero(role == NAME)
        last = np.concatenate((msg[named][1:] != msg[named][:-1], [True])) if named.size else named.astype(bool)
        row = np.full(n, -1, np.int64)
        row[msg[named[last]]] = named[last]  # the last name field of each layer wins, as in the walk
        has = row >= 0
        name_start = np.where(has, tab["start"][row], 0)
        name_len = np.where(has, tab["value"][row].astype(np.int64), 0)
        self.names = _texts(gather, name_start, name_len)
        unknown = {f"{'V1LayerParameter' if v else 'LayerParameter'}.{f}"
                   for v, f in set(zip(lv1[role == UNKNOWN].tolist(), fld[role == UNKNOWN].tolist()))}
        blob = role == BLOB
        self.blob_layer, self.blob_start = msg[blob], tab["start"][blob]
        self.blob_len = tab["value"][blob].astype(np.int64)
        param = role == PARAM
        found = _param_unknowns(gather, buf, path, lv1[param], fld[param], tab["start"][param],
                                tab["value"][param].astype(np.int64))
        self.unknown = sorted(unknown | found)
        self.ok = True


def _param_unknowns(gather, buf, path, v1, fields, starts, lens) -> set:
    """`<param>.<field>` of every field the walk would skip in these param messages (a malformed
    one raises the walk's own error: open_fast then leaves the file to the walk)."""
    tab, slow = pw.scan(gather, starts, starts + lens, buf, max_steps=256)
    out: set = set()
    decode = set(slow.tolist())
    names = [_PARAMS[v][f] for v, f in zip(v1.tolist(), fields.tolist())]
    msg, fld, wire = tab["msg"], tab["field"], tab["wire"]
    for message in {m for _, m in names}:
        mine = np.array([m == message for _, m in names])[msg]
        table = _PARAM_TABLES[message]
        code = table[np.minimum(fld[mine], table.shape[0] - 1), wire[mine]]
        decode.update(msg[mine][code == DECODE].tolist())
        odd = code == ODD
        out.update(f"{names[m][0]}.{f}" for m, f in zip(msg[mine][odd].tolist(), fld[mine][odd].tolist()))
    for m in decode:  # nested messages, packed ints, a message scan left: the walk's own decoder
        pname, message = names[m]
        _, odd = C._decode_present(buf, (int(starts[m]), int(lens[m])), message, path)
        out.update(f"{pname}.{f}" for f in odd)
    return out


class _Blobs:
    """Every BlobProto walked at once: shape, dtype and the one packed data field of each
    (`start`, `nbytes`); `ok` False where the walk must decide (see the module docstring)."""

    def __init__(self, gather, buf, starts, lens):
        self.ok = False
        n = starts.size
        tab, slow = pw.scan(gather, starts, starts + lens, buf)
        if slow.size:
            return
        msg, fld, wire = tab["msg"], tab["field"], tab["wire"]
        if ((fld == S.BLOB_DATA) & (wire == FIXED32)).any() or ((fld == S.BLOB_DOUBLE_DATA) & (wire == FIXED64)).any():
            return  # non-packed values (old writers): the walk gathers them
        f4 = (fld == S.BLOB_DATA) & (wire == LEN)
        f8 = (fld == S.BLOB_DOUBLE_DATA) & (wire == LEN)
        shp = (fld == S.BLOB_SHAPE) & (wire == LEN)
        legacy = (fld >= S.BLOB_NUM) & (fld <= S.BLOB_WIDTH) & (wire == VARINT)
        n4, n8 = np.bincount(msg[f4], minlength=n), np.bincount(msg[f8], minlength=n)
        double = (n4 == 0) & (n8 > 0)
        if (n4 > 1).any() or (n8 > 1).any() or (n4 + n8 == 0).any() or (np.bincount(msg[shp], minlength=n) > 1).any():
            return  # split data, no data, several shapes: the walk
        data = np.where(double[msg], f8, f4)
        self.start = np.zeros(n, np.int64)
        self.nbytes = np.zeros(n, np.int64)
        self.start[msg[data]] = tab["start"][data]
        self.nbytes[msg[data]] = tab["value"][data].astype(np.int64)
        width = np.where(double, 8, 4)
        if (self.nbytes % width).any():
            return
        count = self.nbytes // width
        shaped = msg[shp]
        shapes = _shapes(gather, buf, tab["start"][shp], tab["value"][shp].astype(np.int64), count[shaped])
        if shapes is None:
            return
        self.shapes: list = [None] * n
        for m, shape in zip(shaped.tolist(), shapes):
            self.shapes[m] = shape
        if shaped.size < n and not self._unshaped(msg[legacy], fld[legacy], tab["value"][legacy], count):
            return
        self.dtypes = [_F8 if x else _F4 for x in double.tolist()]
        self.ok = True

    def _unshaped(self, owner, fields, values, count) -> bool:
        """Shapes of the blobs without a BlobShape: legacy num/channels/height/width, else (count,)."""
        legacy: dict = {}
        for m, f, v in zip(owner.tolist(), fields.tolist(), values.tolist()):
            if self.shapes[m] is None:
                legacy.setdefault(m, {})[f] = v
        for m, shape in enumerate(self.shapes):
            if shape is not None:
                continue
            if m not in legacy:
                self.shapes[m] = (int(count[m]),)
                continue
            d = tuple(legacy[m].get(f, 0) for f in (S.BLOB_NUM, S.BLOB_CHANNELS, S.BLOB_HEIGHT, S.BLOB_WIDTH))
            if not all(0 <= x < 1 << 31 for x in d) or d[0] * d[1] * d[2] * d[3] != count[m]:
                return False
            self.shapes[m] = d
        return True


def _shapes(gather, buf, starts, lens, count) -> list | None:
    """The shape tuples of these BlobShape messages (each must hold its dims as one packed field,
    varints of up to 4 bytes, at most 8 dims whose product is `count`), decoded at once; one tuple
    object per distinct shape. None: the walk decides."""
    if not starts.size:
        return []
    tab, slow = pw.scan(gather, starts, starts + lens, buf)
    k = starts.size
    if slow.size or ((tab["field"] != 1) | (tab["wire"] != LEN)).any():
        return None
    if (np.bincount(tab["msg"], minlength=k) > 1).any():
        return None
    p_start, p_len = np.zeros(k, np.int64), np.zeros(k, np.int64)
    p_start[tab["msg"]], p_len[tab["msg"]] = tab["start"], tab["value"].astype(np.int64)
    ends = np.cumsum(p_len)
    total = int(ends[-1])
    raw = gather(np.repeat(p_start - (ends - p_len), p_len) + np.arange(total)) if total else np.zeros(0, np.uint8)
    term = raw < 0x80
    if not term[ends[p_len > 0] - 1].all():
        return None  # a varint cut at the end of its field: the walk reports it
    first = np.flatnonzero(np.concatenate(([True], term[:-1]))) if total else np.zeros(0, np.int64)
    at = np.arange(total) - np.repeat(first, np.diff(np.append(first, total)))
    if total and at.max() > 3:
        return None
    values = np.add.reduceat((raw & 0x7F).astype(np.int64) << (7 * at), first) if total else np.zeros(0, np.int64)
    seen = np.concatenate(([0], np.cumsum(term)))
    ndim = seen[ends] - seen[ends - p_len]
    if ndim.max() > 8:
        return None
    grid = np.ones((k, 8), np.int64)
    row = np.repeat(np.arange(k), ndim)
    grid[row, np.arange(values.size) - np.repeat(np.cumsum(ndim) - ndim, ndim)] = values
    nonzero = np.maximum(grid, 1).astype(np.float64).prod(axis=1) * 8  # element_count's bound, with a zero dim too
    if (nonzero > 2.0 ** 62).any() or (grid.prod(axis=1) != count).any():
        return None
    grid[np.arange(8) >= ndim[:, None]] = -1  # (padding: rows of different ranks stay apart)
    order = np.lexsort(grid.T[::-1])
    ranked = grid[order]
    new = np.concatenate(([True], (ranked[1:] != ranked[:-1]).any(axis=1)))
    distinct = [tuple(x for x in r if x >= 0) for r in ranked[new].tolist()]
    group = np.empty(k, np.int64)
    group[order] = np.cumsum(new) - 1
    return [distinct[g] for g in group.tolist()]


class _Structure(LazyStructure):
    """Layers and per-array meta, built on first access by the field-by-field walk (caffe._open_walk)."""

    what = "Caffe model"

    def __init__(self, view: FileView):
        super().__init__(view.path)
        self.view = view

    def walk(self, check_unchanged) -> tuple[dict, dict]:
        """The walk runs over a pread copy of the file (small files only come here): through the
        map, a file cut short since it was opened would kill the process with SIGBUS."""
        view, temp = self.view, None
        if getattr(view.buf, "closed", True):  # the file was closed
            check_unchanged()
            view = temp = FileView(self.path)
        try:
            walked = C._open_walk(view.snapshot("the layers and array metadata"), False)
        finally:
            if temp is not None:
                temp.close()
        return {name: h.meta for name, h in walked.items()}, walked.layers
