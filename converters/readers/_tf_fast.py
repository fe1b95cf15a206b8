"""The tensor-bundle reader's fast open: thousands of small variables indexed with a few numpy
passes, their metadata worked out on first access, their bytes read a chunk at a time.

tensorflow._read_bundle's entry-by-entry walk costs ~40 us of Python per variable (generators per
protobuf field, the object graph, roles and layouts, a pread per array): 8x tf.train.load_checkpoint
on a TF2 checkpoint of 5,000 small variables. Here:
  1. the index table is listed by one tight loop (`_tf_sstable.table_spans`);
  2. all BundleEntryProtos, then their shapes, then their dims are walked at once (`_protowire.scan`);
  3. dtypes, shapes, shards, sizes and bounds are checked as arrays; handles are `BundleArray`s
     sharing one loader and one lazy meta callable (nothing per handle but the handle);
  4. the object graph is parsed, and every key described, on the first `.meta` of any array
     (by the same `describe_keys` the walk uses, so the meta is exactly the walk's);
  5. `.numpy()` of a small array reads the run of small arrays around it with one pread (CHUNK)
     and hands out slices of it; big arrays are read on their own, as before. A chunk cut short
     since the file was opened is read array by array: those still whole read as before, the
     others are a TruncatedError naming shard and array.
Anything this path does not cover (partitioned variables, malformed or unusual entries, unknown
dtypes, sizes that do not add up, out-of-range shards or offsets) sends the whole file to the
walk (`None`), which decodes every case and names the error.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..arrays import element_count
from ..errors import ConvertersError, FormatError, TruncatedError
from . import _gc
from . import _protowire as pw
from . import _tf_sstable as sstable
from ._binary import FileArray, FileView
from ._limits import parser_errors
from ._tf_objects import OBJECT_GRAPH_KEY, describe_keys, layout_for, parse_object_graph
from ._tf_types import DT_STRING, DTYPES, tensor_shape

SMALL = 64 << 10
"""Arrays under this many bytes are read in chunks; bigger ones with a pread of their own."""
CHUNK = 256 << 10
"""Bytes per chunk read: one pread instead of hundreds, and a kept array pins at most this much."""


def open_fast(prefix, index: FileView, shards: dict, bundle_header, string_tensor,
              shard_path) -> tuple[list, dict] | None:
    """(handles, file meta) of a tensor bundle, or None when tensorflow._read_bundle must walk it
    (shards it opened stay in `shards` for the caller to close)."""
    try:
        with _gc.paused():  # thousands of handles and lists, none of them garbage
            return _open(prefix, index, shards, bundle_header, string_tensor, shard_path)
    except (ConvertersError, ValueError, TypeError, IndexError, OverflowError):
        return None


def _open(prefix, index, shards, bundle_header, string_tensor, shard_path):
    table = sstable.table_spans(index)
    if table is None:
        return None
    keys, starts, lens = table
    if not keys or keys[0] != b"" or any(k[:1] == b"\x00" for k in keys):  # no header; partitioned variables
        return None
    header = bundle_header(index, (starts[0], lens[0]))
    num_shards = header["num_shards"]
    names = [k.decode("utf-8") for k in keys[1:]]
    e = _entries(index, np.asarray(starts[1:], np.int64), np.asarray(lens[1:], np.int64))
    if e is None:
        return None
    dtype_codes, shapes, shard_ids, offsets, sizes, crcs = e
    if ((shard_ids < 0) | (shard_ids >= num_shards)).any():
        return None
    for sid in sorted(set(shard_ids.tolist())):  # (np.unique imports numpy.ma: 28 ms in a fresh process)
        p = shard_path(prefix, sid, num_shards)
        if not Path(p).is_file():
            return None
        shards[sid] = FileView(p)
    shard_size = np.array([shards[s].size if s in shards else 0 for s in range(num_shards)], np.int64)
    if ((offsets < 0) | (sizes < 0) | (offsets + sizes > shard_size[shard_ids])).any():
        return None
    codes = dtype_codes.tolist()
    kinds = set(codes) - {DT_STRING}
    if any(c not in DTYPES for c in kinds):
        return None
    dtypes = {c: np.dtype(DTYPES[c]) for c in kinds}
    objects_data, strings = None, {}
    for i in np.flatnonzero(dtype_codes == DT_STRING).tolist():
        if names[i] == OBJECT_GRAPH_KEY:
            values = string_tensor(shards[int(shard_ids[i])], _entry_dict(i, e), names[i])
            if len(values) != 1:
                return None
            objects_data = values[0]
        else:
            strings[names[i]] = shapes[i]
    numeric = np.flatnonzero(dtype_codes != DT_STRING).tolist()
    counts: dict = {}
    for shape, code in set((shapes[i], codes[i]) for i in numeric):
        n = element_count(shape, dtypes[code].itemsize)
        counts[shape, code] = -1 if n is None else n * dtypes[code].itemsize
    expected = np.array([counts[shapes[i], codes[i]] for i in numeric], np.int64)
    if ((expected < 0) | (expected != sizes[numeric])).any():
        return None
    itemsizes = np.ones(len(names), np.int64)
    for c, dt in dtypes.items():
        itemsizes[dtype_codes == c] = dt.itemsize
    src = _Bundle(index.path, names, shards, e, numeric, itemsizes, objects_data)
    handles = []
    add, new, meta_of = handles.append, BundleArray.__new__, src.meta_of
    for i in numeric:  # no constructor call: this loop is most of what 5,000 handles cost
        h = new(BundleArray)
        h.name, h.shape, h.dtype, h._meta, h._load, h._fresh, h._src, h._i = \
            names[i], shapes[i], dtypes[codes[i]], meta_of, None, True, src, i
        add(h)
    meta = {"prefix": prefix, "num_shards": num_shards, "version": header["version"]}
    if objects_data is not None:
        meta["object_graph"] = {"nodes": src.node_count()}
    if strings:
        meta["string_tensors"] = strings
    return handles, meta


def _entries(index: FileView, starts, lens):
    """dtype, shape, shard_id, offset, size, crc32c of every BundleEntryProto, as arrays (shapes a
    list of tuples), or None for anything the walk must decode (slices, repeated or odd fields)."""
    u8 = np.frombuffer(index.buf, np.uint8)
    try:
        gather = u8.__getitem__
        t, slow = pw.scan(gather, starts, starts + lens, index.buf)
        if slow.size:
            return None
        n = starts.size
        msg, fld, wire, value, start = t["msg"], t["field"], t["wire"], t["value"], t["start"]
        cols = {}
        for f, w in ((1, pw.VARINT), (2, pw.LEN), (3, pw.VARINT), (4, pw.VARINT), (5, pw.VARINT), (6, pw.FIXED32),
                     (7, pw.LEN)):
            sel = np.flatnonzero((fld == f) & (wire == w))
            if sel.size and f == 7:
                return None  # a slice list: the walk assembles partitioned variables
            if sel.size > 1 and (np.diff(msg[sel]) == 0).any():
                return None  # a field twice in one message (last wins): the walk's business
            cols[f] = sel
        big = value[np.concatenate([cols[f] for f in (1, 3, 4, 5)])]
        if big.size and big.max() >= np.uint64(1 << 62):
            return None
        col = {}
        for f in (1, 3, 4, 5):
            a = np.zeros(n, np.int64)
            a[msg[cols[f]]] = value[cols[f]].astype(np.int64)
            col[f] = a
        crcs = np.full(n, -1, np.int64)
        crcs[msg[cols[6]]] = value[cols[6]].astype(np.int64)
    finally:
        del u8  # its array pins the memory map, which close() must be able to release
    shapes = _shapes(index, n, msg[cols[2]].tolist(), start[cols[2]].tolist(), value[cols[2]].tolist())
    return col[1], shapes, col[3], col[4], col[5], crcs


def _shapes(index: FileView, n, owner, starts, lens) -> list:
    """TensorShapeProto of each entry (`owner` the entry of each) as tuples; () where there is none.
    Variables of one shape store the same bytes: each distinct shape is decoded once, by the walk's
    own tensor_shape (which refuses unknown dims and ranks)."""
    buf, decoded = index.buf, {}
    out = [()] * n
    for i, a, k in zip(owner, starts, lens):
        raw = buf[a:a + k]
        shape = decoded.get(raw)
        if shape is None:
            shape = decoded[raw] = tensor_shape(raw, (0, k), index.path, "", a)
        out[i] = shape
    return out


def _plan(numeric, shard_ids, offsets, sizes, itemsizes, n):
    """(chunk of each array or -1, chunks [start, end, buffer, arrays still to hand out]): small arrays
    that lie next to each other in a shard, grouped by the CHUNK-sized stretch of the shard they
    start in; arrays at an offset their dtype's itemsize does not divide are read on their own."""
    chunk_of = np.full(n, -1, np.int64)
    small = numeric[sizes[numeric] < SMALL]
    if not small.size:
        return chunk_of, []
    order = small[np.lexsort((offsets[small], shard_ids[small]))]
    s, o = shard_ids[order], offsets[order]
    end = o + sizes[order]
    base = s * (int(end.max()) + 1)  # one line of positions for all shards: ends grow unless arrays overlap
    reach = np.maximum.accumulate(base + end) - base
    new = np.ones(order.size, bool)
    new[1:] = (s[1:] != s[:-1]) | (o[1:] // CHUNK != o[:-1] // CHUNK) | (o[1:] < reach[:-1]) | \
        (o[1:] - reach[:-1] > 4096)
    ids = np.cumsum(new) - 1
    firsts = np.flatnonzero(new)
    starts = o[firsts]
    ends = np.maximum.reduceat(end, firsts)
    ok = (o - starts[ids]) % itemsizes[order] == 0  # aligned inside its chunk (np.empty is 16-aligned)
    counts = np.bincount(ids[ok], minlength=firsts.size)
    chunk_of[order[ok]] = ids[ok]
    chunks = [[a, b, None, c] for a, b, c in zip(starts.tolist(), ends.tolist(), counts.tolist())]
    return chunk_of, chunks


def _entry_dict(i, e) -> dict:
    dtype_codes, shapes, shard_ids, offsets, sizes, crcs = e
    return {"dtype": int(dtype_codes[i]), "shape": shapes[i], "shard_id": int(shard_ids[i]),
            "offset": int(offsets[i]), "size": int(sizes[i])}


class _Bundle:
    """What the handles of one bundle share: where each array is, chunks of small arrays, and the
    per-key meta (worked out for all keys on first access)."""

    def __init__(self, index_path, names, shards, e, numeric, itemsizes, objects_data):
        self.index_path, self.names, self.shards = index_path, names, shards
        self.codes, self.shapes, shard_ids, offsets, sizes, self.crcs = e
        self.objects_data = objects_data
        self._described = None
        self._objects = None
        chunk_of, self.chunks = _plan(np.asarray(numeric, np.int64), shard_ids, offsets, sizes, itemsizes, len(names))
        # plain lists: indexing numpy arrays one element at a time costs more than the rest of a load
        self.shard_of, self.offset_of, self.size_of = shard_ids.tolist(), offsets.tolist(), sizes.tolist()
        self.chunk_of = chunk_of.tolist()
        self.shard_names = {s: Path(v.path).name for s, v in shards.items()}

    def load(self, h: BundleArray, copy: bool) -> np.ndarray:
        i = h._i
        view, offset = self.shards[self.shard_of[i]], self.offset_of[i]
        if not copy:
            return view.array(offset, h.dtype, h.shape, h.name)
        c = self.chunk_of[i]
        if c >= 0:
            self.chunk_of[i] = -1  # handed out once: a second load reads an array of its own
            chunk = self.chunks[c]
            buf = chunk[2]
            chunk[3] -= 1
            if buf is None:
                try:
                    buf = view.read_into(np.empty(chunk[1] - chunk[0], np.uint8), chunk[0],
                                         f"tensor data of {chunk[3] + 1} arrays", h.name)
                except TruncatedError:  # the file was cut short: this array alone, which may still be whole
                    return view.read_array(offset, h.dtype, h.shape, h.name)
                chunk[2] = buf
            if not chunk[3]:
                chunk[2] = None  # all handed out: the arrays keep the buffer alive, not us
            a = offset - chunk[0]
            return buf[a:a + self.size_of[i]].view(h.dtype).reshape(h.shape)
        return view.read_array(offset, h.dtype, h.shape, h.name)

    def meta_of(self, h: BundleArray) -> dict:
        """The walk's meta for this array (role, layer, layout, readable name, shard, offset, crc32c)."""
        if self._described is None:
            with parser_errors(self.index_path, "TensorFlow object graph", array=OBJECT_GRAPH_KEY):
                self._described = describe_keys(self.names, self.objects())
        i = h._i
        meta = dict(self._described[self.names[i]])
        meta["layout"] = layout_for(meta, len(self.shapes[i]))
        meta.update({"shard": self.shard_names[self.shard_of[i]], "offset": self.offset_of[i]})
        if self.crcs[i] >= 0:
            meta["crc32c"] = int(self.crcs[i])
        return meta

    def objects(self):
        if self._objects is None and self.objects_data is not None:
            self._objects = parse_object_graph(self.objects_data, self.index_path)
        return self._objects

    def node_count(self) -> int:
        """Nodes in the object graph (its top-level field 1), without decoding them."""
        data, pos, n, count = self.objects_data, 0, len(self.objects_data), 0
        while pos < n:  # nodes are all there is at the top level: key 0x0a, a length, the node
            if data[pos] != 0x0A:
                keys = pw.message_table(data, 0, n, self.index_path)[0]  # anything else: the general walk
                return sum(1 for k in keys if k == 1 << 3 | pw.LEN)
            length = data[pos + 1] if pos + 1 < n else 0x80
            if length < 0x80:
                pos += 2 + length
            else:
                length, pos = pw.read_varint(data, pos + 1, n, self.index_path)
                pos += length
            count += 1
        if pos > n:
            raise FormatError(f"object graph node {count - 1} runs past the end of the graph", file=self.index_path,
                              array=OBJECT_GRAPH_KEY)
        return count


class BundleArray(FileArray):
    """A bundle variable: loads through its _Bundle (chunks for small arrays), meta on first access.
    A FileArray for its `stored_span`: an entry's bytes are the array's, C order, as TF wrote them
    (little-endian: the header of a big-endian bundle is refused; partitioned variables and string
    tensors never become BundleArrays), so a writer can copy them file to file."""

    __slots__ = ("_src", "_i")

    def numpy(self, copy: bool = True) -> np.ndarray:
        return self._src.load(self, copy)

    def view(self) -> np.ndarray:
        return self._src.load(self, False)

    def where(self) -> tuple[FileView, int] | None:
        src, i = self._src, self._i
        if self.dtype.newbyteorder("<") != self.dtype:  # (a big-endian host: not the bytes as stored)
            return None
        return src.shards[src.shard_of[i]], src.offset_of[i]
