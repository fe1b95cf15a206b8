"""[tensorflow] reader: tensor-bundle checkpoints (TF1 and TF2), SavedModel variables, frozen GraphDefs.

Without TensorFlow:
  * a checkpoint is `prefix.index` (a LevelDB table, see _tf_sstable) mapping each tensor key to a
    BundleEntryProto (dtype, shape, shard, offset, size) and `prefix.data-NNNNN-of-NNNNN` shards
    holding the raw little-endian bytes; shards are memory-mapped and every array is a lazy view;
  * a TF2 checkpoint also stores `_CHECKPOINTABLE_OBJECT_GRAPH`, a serialized TrackableObjectGraph
    that tells which object owns each key; it is decoded to give readable names, the variable's
    own name, and to tell model weights from optimizer state (see _tf_objects);
  * a SavedModel keeps its variables as the checkpoint `variables/variables`;
  * a frozen GraphDef `.pb` keeps weights as `Const` nodes whose TensorProto is walked in place.
Array keys are the checkpoint keys exactly as TensorFlow lists them (tf.train.list_variables);
names="readable" keys by the object-graph path instead. See docs/readers/tensorflow.md.
"""
from __future__ import annotations

import copy
import re
from pathlib import Path

import numpy as np

from ..arrays import ArrayFile, ArrayHandle
from ..errors import FormatError, TruncatedError, UnsupportedError
from . import _tf_sstable as sstable
from ._binary import FileView, new_array
from ._limits import parser_errors
from ._protowire import FIXED32, LEN, VARINT, fields, ints, iter_fields, read_varint
from ._tf_fast import open_fast
from ._tf_graph import is_graphdef, open_graphdef
from ._tf_objects import OBJECT_GRAPH_KEY, describe_keys, layout_for, parse_object_graph
from ._tf_types import DT_STRING, DTYPES, dtype_name, tensor_shape

NAME = "tensorflow"
OPTIONS = {"names": str}
"""Reader options (`--option KEY=VALUE`) and their types; readers/__init__ validates against it."""
_SHARD_RE = re.compile(r"^(?P<prefix>.*)\.data-\d{5}-of-\d{5}$")


def sniff(path, head: bytes) -> bool:
    path = Path(path)
    if path.is_dir():
        return _dir_prefix(path, strict=False) is not None
    if not path.exists():
        return Path(str(path) + ".index").is_file()
    if path.suffix == ".index":
        return sstable.has_magic(path)
    m = _SHARD_RE.match(str(path))
    if m and Path(m["prefix"] + ".index").is_file():
        return True
    if path.name == "saved_model.pb":
        return (path.parent / "variables" / "variables.index").is_file()
    return is_graphdef(path, head)


def open(path, names: str = "keys", **options) -> ArrayFile:
    """Open a checkpoint (prefix, .index, data shard or directory), a SavedModel or a frozen .pb.

    names="keys" (default): arrays are keyed by checkpoint key; names="readable": by the
    object-graph path (TF2 checkpoints; keys stay as they are where there is no object graph).
    """
    if names not in ("keys", "readable"):
        raise FormatError(f"names={names!r}: choose 'keys' or 'readable'", file=path)
    path = Path(path)
    with parser_errors(path, "TensorFlow file"):  # a field of an unexpected type, a bad UTF-8 name, ...
        prefix, meta = _resolve(path)
        if prefix is None:
            return open_graphdef(path, NAME)
        return _open_bundle(path, prefix, meta, names)


# ---------------------------------------------------------------------------- locating the files

def _resolve(path: Path) -> tuple[str | None, dict]:
    """(checkpoint prefix, file-level meta) for any accepted spelling; (None, {}) for a GraphDef."""
    if path.is_dir():
        prefix = _dir_prefix(path, strict=True)
        if (path / "saved_model.pb").is_file() or (path / "saved_model.pbtxt").is_file() or \
                prefix == str(path / "variables" / "variables"):
            return prefix, {"format": "saved_model", "saved_model": True}
        return prefix, {"format": "checkpoint"}
    if path.is_file():
        if path.suffix == ".index":
            return str(path)[:-len(".index")], {"format": "checkpoint"}
        m = _SHARD_RE.match(str(path))
        if m:
            return m["prefix"], {"format": "checkpoint"}
        if path.name == "saved_model.pb" and (path.parent / "variables" / "variables.index").is_file():
            return str(path.parent / "variables" / "variables"), {"format": "saved_model", "saved_model": True}
        return None, {}
    if Path(str(path) + ".index").is_file():
        return str(path), {"format": "checkpoint"}
    raise FormatError("no such file, directory or checkpoint prefix", file=path,
                      hint="pass the checkpoint prefix (without .index), the .index file or its directory")


def _dir_prefix(d: Path, strict: bool) -> str | None:
    """The checkpoint prefix a directory stands for: SavedModel variables, the `checkpoint` file's
    latest entry, or its only .index file."""
    variables = d / "variables" / "variables"
    if Path(str(variables) + ".index").is_file():
        return str(variables)
    if (d / "saved_model.pb").is_file():
        if strict:
            raise FormatError("SavedModel has no variables/variables.index", file=d,
                              hint="a SavedModel without variables holds no weights in a checkpoint")
        return None
    state = d / "checkpoint"
    if state.is_file():
        m = re.search(r'^model_checkpoint_path:\s*"((?:[^"\\]|\\.)*)"', state.read_text(errors="replace"), re.M)
        if m:
            try:  # the state file is a text proto: C-style escapes inside the quotes
                p = Path(m.group(1).encode("latin-1", "backslashreplace").decode("unicode_escape"))
            except UnicodeDecodeError:
                p = Path(m.group(1))
            prefix = p if p.is_absolute() else d / p
            if Path(str(prefix) + ".index").is_file():
                return str(prefix)
            # the state file keeps the path it was written with; fall back to its basename here
            if Path(str(d / p.name) + ".index").is_file():
                return str(d / p.name)
            if strict:
                raise FormatError(f"the checkpoint file names {m.group(1)!r} but {prefix}.index does not exist",
                                  file=state)
    found = sorted(p for p in d.glob("*.index") if sstable.has_magic(p))
    if len(found) == 1:
        return str(found[0])[:-len(".index")]
    if strict:
        listed = ", ".join(p.name for p in found)
        what = f"{len(found)} checkpoints ({listed})" if found else "no checkpoint .index file"
        raise FormatError(f"directory holds {what}", file=d, hint="pass the checkpoint prefix or .index file itself")
    return None


def _shard_path(prefix: str, shard: int, num_shards: int) -> str:
    return f"{prefix}.data-{shard:05d}-of-{num_shards:05d}"


# ---------------------------------------------------------------------------- the tensor bundle

def _open_bundle(path: Path, prefix: str, meta: dict, names: str) -> ArrayFile:
    index = FileView(prefix + ".index")
    shards: dict[int, FileView] = {}

    def close():
        index.close()
        for v in shards.values():
            v.close()
    try:
        # the index is nothing but headers: walked in one pread copy (shares the descriptor close() closes)
        index = index.walk_view("the checkpoint index")
        fast = open_fast(prefix, index, shards, _bundle_header, _string_tensor, _shard_path)
        if fast is not None:
            handles, more = fast
            meta.update(more)
            return ArrayFile(path, NAME, _rekey(handles, index.path) if names == "readable" else handles,
                             meta=meta, closer=close)
        for v in shards.values():
            v.close()
        shards.clear()
        return _read_bundle(path, prefix, index, shards, meta, names, close)
    except BaseException:
        close()
        raise


def _read_bundle(path, prefix, index: FileView, shards, meta, names, close) -> ArrayFile:
    entries = sstable.read_table(index)
    first = next(entries, None)
    if first is None or first[0] != b"":
        raise FormatError("checkpoint index does not start with the bundle header (empty key)", file=index.path,
                          hint="not a TensorFlow tensor bundle")
    header = _bundle_header(index, first[1])
    meta.update({"prefix": prefix, "num_shards": header["num_shards"], "version": header["version"]})
    num_shards = header["num_shards"]
    records, slice_entries = [], {}
    for key, span in entries:
        if key.startswith(b"\x00"):  # a slice of a partitioned variable (ordered-code key)
            slice_entries[key] = (key, span)
            continue
        records.append((key.decode("utf-8", errors="replace"), _bundle_entry(index, key, span)))

    def shard(entry, name) -> FileView:
        sid = entry["shard_id"]
        if not 0 <= sid < num_shards:
            raise FormatError(f"shard_id {sid} but the header says {num_shards} shards", file=index.path,
                              array=name, offset=entry["at"])
        if sid not in shards:
            p = _shard_path(prefix, sid, num_shards)
            if not Path(p).is_file():
                raise FormatError(f"data shard {Path(p).name} is missing", file=p, array=name,
                                  hint=f"a checkpoint needs all {num_shards} .data-*-of-{num_shards:05d} files "
                                       "beside its .index")
            shards[sid] = FileView(p)
        return shards[sid]

    objects = None
    strings = {}
    for name, e in records:
        if name == OBJECT_GRAPH_KEY:
            values = _string_tensor(shard(e, name), e, name)
            if len(values) != 1:
                raise FormatError(f"object graph tensor holds {len(values)} strings, expected 1", file=index.path,
                                  array=name, offset=e["at"])
            objects = parse_object_graph(values[0], index.path)
    described = describe_keys([n for n, _ in records], objects)
    handles = []
    for name, e in records:
        if e["dtype"] == DT_STRING:  # not an array of numbers; listed in meta instead
            if name != OBJECT_GRAPH_KEY:
                strings[name] = e["shape"]
            continue
        info = described[name]
        if e["slices"]:
            parts = []
            for extent in e["slices"]:
                key = slice_key(name, extent)
                if key not in slice_entries:
                    raise FormatError(f"slice {extent} of a partitioned variable has no entry", file=index.path,
                                      array=name, offset=e["at"])
                part = _bundle_entry(index, *slice_entries.pop(key))
                parts.append((extent, shard(part, name), part))
            handles.append(_sliced_handle(index, e, name, info, parts))
        else:
            handles.append(_bundle_handle(shard(e, name), e, name, info))
    if objects is not None:
        meta["object_graph"] = {"nodes": len(objects.nodes)}
    if strings:
        meta["string_tensors"] = strings
    if slice_entries:  # slices no variable lists: keep them visible rather than drop them silently
        meta["orphan_slices"] = len(slice_entries)
    if names == "readable":
        handles = _rekey(handles, index.path)
    return ArrayFile(path, NAME, handles, meta=meta, closer=close)


def _bundle_header(index: FileView, span) -> dict:
    s, n = span
    f = fields(index.buf, s, s + n, index.path)
    num_shards = ints(f.get(1, []), index.buf, index.path)[-1:] or [1]
    endian = (ints(f.get(2, []), index.buf, index.path) or [0])[-1]
    if endian != 0:
        raise UnsupportedError("checkpoint was written big-endian", file=index.path, offset=s,
                               hint="re-save it on a little-endian machine")
    version = {}
    for w, v, _o in f.get(3, []):
        if w == LEN:
            vf = fields(index.buf, v[0], v[0] + v[1], index.path)
            version = {"producer": (ints(vf.get(1, []), index.buf) or [0])[-1],
                       "min_consumer": (ints(vf.get(2, []), index.buf) or [0])[-1]}
    if num_shards[0] < 1 or num_shards[0] > 1_000_000:
        raise FormatError(f"bundle header claims {num_shards[0]} shards", file=index.path, offset=s)
    return {"num_shards": num_shards[0], "version": version}


def _bundle_entry(index: FileView, key: bytes, span) -> dict:
    """BundleEntryProto: dtype=1 shape=2 shard_id=3 offset=4 size=5 crc32c=6 slices=7."""
    s, n = span
    buf, name = index.buf, key.decode("utf-8", errors="replace")
    out = {"dtype": 0, "shape": (), "shard_id": 0, "offset": 0, "size": 0, "crc32c": None, "slices": [], "at": s}
    for f, w, v, off in iter_fields(buf, s, s + n, index.path):
        if f == 1 and w == VARINT:
            out["dtype"] = v
        elif f == 2 and w == LEN:
            out["shape"] = tensor_shape(buf, v, index.path, name, off)
        elif f in (3, 4, 5) and w == VARINT:
            out[{3: "shard_id", 4: "offset", 5: "size"}[f]] = v
        elif f == 6 and w == FIXED32:
            out["crc32c"] = v
        elif f == 7 and w == LEN:
            out["slices"].append(_extent_list(buf, v, index.path))
    return out


def _extent_list(buf, span, file) -> tuple:
    """TensorSliceProto: extent=1 {start=1, length=2}; a missing length means the whole dimension (-1)."""
    out = []
    for f, w, v, _o in iter_fields(buf, span[0], span[0] + span[1], file):
        if f == 1 and w == LEN:
            start, length = 0, -1
            for f2, w2, v2, _o2 in iter_fields(buf, v[0], v[0] + v[1], file):
                if f2 == 1 and w2 == VARINT:
                    start = v2
                elif f2 == 2 and w2 == VARINT:
                    length = v2
            out.append((start, length))
    return tuple(out)


def _count(shape) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def _bundle_handle(view: FileView, e: dict, name: str, info: dict) -> ArrayHandle:
    dt = e["dtype"]
    if dt not in DTYPES:
        raise UnsupportedError(f"dtype {dtype_name(dt)} is not supported", file=view.path, array=name,
                               offset=e["offset"])
    dtype, shape, offset, size = np.dtype(DTYPES[dt]), e["shape"], e["offset"], e["size"]
    view.require(offset, size, "tensor data", name)
    meta = dict(info)
    meta["layout"] = layout_for(meta, len(shape))
    meta.update({"shard": Path(view.path).name, "offset": offset})
    if e["crc32c"] is not None:
        meta["crc32c"] = e["crc32c"]
    expected = _count(shape) * dtype.itemsize
    if size != expected:
        raise FormatError(f"entry holds {size} bytes but {dtype_name(dt)}{list(shape)} needs {expected}",
                          file=view.path, array=name, offset=offset)
    return view.handle(name, offset, dtype, shape, meta)


def _sliced_handle(index: FileView, e: dict, name: str, info: dict, parts) -> ArrayHandle:
    """A partitioned variable (TF1 partitioner or TF2 sharding policy): its slices, possibly in
    several shards, are checked now and assembled into one array when loaded."""
    dt = e["dtype"]
    if dt not in DTYPES:
        raise UnsupportedError(f"dtype {dtype_name(dt)} is not supported", file=index.path, array=name,
                               offset=e["at"])
    dtype, shape = np.dtype(DTYPES[dt]), e["shape"]
    pieces, covered = [], 0
    for extent, view, part in parts:
        if len(extent) != len(shape):
            raise FormatError(f"slice {extent} has rank {len(extent)}, the variable {len(shape)}", file=index.path,
                              array=name, offset=e["at"])
        region = tuple(slice(0, dim) if n < 0 else slice(a, a + n) for (a, n), dim in zip(extent, shape))
        sub = tuple(len(range(dim)[r]) for r, dim in zip(region, shape))
        if any(r.stop > dim for r, dim in zip(region, shape)) or part["shape"] != sub or part["dtype"] != dt:
            raise FormatError(f"slice {extent} stored as {dtype_name(part['dtype'])}{list(part['shape'])} does not fit "
                              f"{dtype_name(dt)}{list(shape)}", file=index.path, array=name, offset=part["at"])
        if part["size"] != _count(sub) * dtype.itemsize:
            raise FormatError(f"slice entry holds {part['size']} bytes, {list(sub)} needs "
                              f"{_count(sub) * dtype.itemsize}",
                              file=view.path, array=name, offset=part["offset"])
        view.require(part["offset"], part["size"], "tensor slice data", name)
        pieces.append((region, view, part["offset"], sub))
        covered += _count(sub)
    if covered != _count(shape):
        raise FormatError(f"slices cover {covered} of {_count(shape)} elements", file=index.path, array=name,
                          offset=e["at"])

    def load():  # a new array each call: handed out as it is (fresh); every slice read with pread
        out = new_array(shape, dtype)
        for region, view, offset, sub in pieces:
            target = out[region]
            if target.flags.c_contiguous:  # slices along the first axis: read in place
                view.read_into(target, offset, "tensor slice data", name)
            else:  # (never copied out of the map: a file cut short while open is a TruncatedError)
                target[...] = view.read_into(np.empty(sub, dtype), offset, "tensor slice data", name)
        return out
    meta = dict(info)
    meta["layout"] = layout_for(meta, len(shape))
    meta.update({"partitioned": len(pieces), "shard": sorted({Path(p[1].path).name for p in pieces})})
    return ArrayHandle(name, shape, dtype, load, meta, fresh=True)


def slice_key(name: str, extent: tuple) -> bytes:
    """The table key of one slice: TF's OrderedCode of (0, name, rank, start0, length0, ...)."""
    escape = {0x00: b"\x00\xff", 0xFF: b"\xff\x00"}
    escaped = b"".join(escape.get(c, bytes([c])) for c in name.encode("utf-8"))
    out = bytearray(_num_increasing(0) + escaped + b"\x00\x01")
    out += _num_increasing(len(extent))
    for start, length in extent:
        out += _signed_increasing(start) + _signed_increasing(length)
    return bytes(out)


def _num_increasing(v: int) -> bytes:
    body = v.to_bytes((v.bit_length() + 7) // 8, "big")
    return bytes([len(body)]) + body


_HEADER_BITS = [(0, 0), (0x80, 0), (0xC0, 0), (0xE0, 0), (0xF0, 0), (0xF8, 0), (0xFC, 0), (0xFE, 0), (0xFF, 0),
                (0xFF, 0x80), (0xFF, 0xC0)]


def _signed_increasing(v: int) -> bytes:
    x = ~v if v < 0 else v
    if x < 64:
        return bytes([(0x80 ^ v) & 0xFF])
    n = (x.bit_length() + 7) // 7
    body = bytearray((v & ((1 << 80) - 1)).to_bytes(10, "big")[10 - n:])
    body[0] ^= _HEADER_BITS[n][0]
    body[1] ^= _HEADER_BITS[n][1]
    return bytes(body)


def _string_tensor(view: FileView, e: dict, name: str) -> list[bytes]:
    """A DT_STRING tensor: varint64 length per element, a 4-byte checksum of the lengths, the bytes.
    Read with pread (the object graph is read while opening: a shard cut short meanwhile is a
    TruncatedError, where its map would be a SIGBUS)."""
    offset, size = e["offset"], e["size"]
    data = view.pread(offset, size, "string tensor", name)
    count = _count(e["shape"])
    lengths, pos = [], 0
    for _ in range(count):
        n, pos = read_varint(data, pos, size, view.path)
        lengths.append(n)
    pos += 4
    if pos + sum(lengths) > size:
        raise TruncatedError(f"string tensor of {count} elements needs {pos + sum(lengths)} bytes, entry has {size}",
                             file=view.path, array=name, offset=offset)
    out = []
    for n in lengths:
        out.append(data[pos:pos + n])
        pos += n
    return out


def _rekey(handles: list[ArrayHandle], file) -> list[ArrayHandle]:
    """Key handles by meta['readable_name'] (the checkpoint key is kept as meta['checkpoint_key'])."""
    out, seen = [], set()
    for h in handles:
        new = h.meta.get("readable_name") or h.name
        if new in seen:
            raise FormatError(f"two arrays resolve to the readable name {new!r}", file=file, array=h.name,
                              hint="use names='keys'")
        seen.add(new)
        renamed = copy.copy(h)  # same loaders (pread, map view), new name
        renamed.name, renamed.meta = new, {**h.meta, "checkpoint_key": h.name}
        out.append(renamed)
    return out
