"""[numpy] reader: `.npy` and `.npz` files.

`.npy` arrays and uncompressed `.npz` members are read at their offset (`.numpy()` preads into a
new array, `copy=False` is a memory-map view); compressed members are inflated on demand into a
new array (handed out without a second copy), after their declared size was checked against what
is stored. Neither reads through the map, so a file cut short while open is a TruncatedError (not a
SIGBUS). Object (pickled) arrays
are refused unless allow_pickle=True is passed explicitly: unpickling runs code from the file.
With it, a pickled container (the dict of dicts TF ports such as facenet's MTCNN `det1.npy`
write) is unpickled at open and its numeric leaves become arrays named by their keys joined with
`/` (`conv1/weights`); `encoding` is numpy's for Python 2 pickles ('latin1', 'bytes', 'ASCII').
"""
from __future__ import annotations

import ast
import builtins
import zipfile

import numpy as np

from ..arrays import ArrayFile, ArrayHandle, role_from_name
from ..errors import ConvertersError, FormatError, UnsupportedError
from ._binary import FileArray, FileView
from ._limits import check_inflation, element_count, parser_errors

NAME = "numpy"
OPTIONS = {"allow_pickle": bool, "encoding": str}
"""Reader options (`--option KEY=VALUE`) and their types; readers/__init__ validates against it."""
_NPY_MAGIC = b"\x93NUMPY"
_ENCODINGS = ("ASCII", "latin1", "bytes")
_MAX_HEADER = 1 << 20
_PICKLE_HINT = "pass allow_pickle=True (--option allow_pickle=true) only for files you trust"


def sniff(path, head: bytes) -> bool:
    if head.startswith(_NPY_MAGIC):
        return True
    return head.startswith(b"PK\x03\x04") and str(path).endswith(".npz")


def open(path, allow_pickle: bool = False, encoding: str = "ASCII", **options) -> ArrayFile:
    path = str(path)
    if encoding not in _ENCODINGS:
        raise ConvertersError(f"encoding={encoding!r}: choose one of {', '.join(_ENCODINGS)}", file=path)
    with builtins.open(path, "rb") as fh:
        head = fh.read(8)
    with parser_errors(path, "numpy file"):
        if head.startswith(_NPY_MAGIC):
            return _open_npy(path, allow_pickle, encoding)
        if head.startswith(b"PK"):
            return _open_npz(path, allow_pickle, encoding)
    raise FormatError("neither an .npy (\\x93NUMPY) nor an .npz (zip) file", file=path, offset=0)


def _open_npy(path: str, allow_pickle: bool, encoding: str) -> ArrayFile:
    view = FileView(path)
    try:
        dtype, shape, fortran, data = _npy_header(view, 0, "array")
        if dtype.hasobject:
            _refuse_pickle(allow_pickle, path, "array", data)
            view.close()
            obj = np.load(path, allow_pickle=True, encoding=encoding)
            return ArrayFile(path, NAME, _flatten(obj, "", path), meta={"format": "npy", "pickled": True})
        handle = _mapped_handle(view, data, dtype, shape, fortran, "array", view.size - data)
    except BaseException:
        view.close()
        raise
    return ArrayFile(path, NAME, [handle], meta={"format": "npy"}, closer=view.close)


def _npy_header(view: FileView, offset: int, name: str):
    """(dtype, shape, fortran_order, data_offset) of the .npy record at `offset`."""
    magic = view.bytes(offset, 8, ".npy magic", name)
    if not magic.startswith(_NPY_MAGIC):
        raise FormatError("bad .npy magic", file=view.path, array=name, offset=offset)
    major = magic[6]
    if major == 1:
        (hlen,) = view.unpack("<H", offset + 8, ".npy header length", name)
        start = offset + 10
    elif major in (2, 3):
        (hlen,) = view.unpack("<I", offset + 8, ".npy header length", name)
        start = offset + 12
    else:
        raise UnsupportedError(f".npy version {major} is not supported", file=view.path, array=name, offset=offset)
    if hlen > _MAX_HEADER:
        raise FormatError(f".npy header length {hlen} is implausible", file=view.path, array=name, offset=offset)
    text = view.bytes(start, hlen, ".npy header", name).decode("latin1")
    return (*_parse_header(text, view.path, name, start), start + hlen)


def _parse_header(text: str, path, name, offset=None):
    try:
        d = ast.literal_eval(text)
        dtype = np.lib.format.descr_to_dtype(d["descr"])
        shape, fortran = tuple(int(n) for n in d["shape"]), bool(d["fortran_order"])
    except Exception as e:  # literal_eval and descr_to_dtype raise many kinds
        raise FormatError(f"unreadable .npy header {text.strip()[:200]!r}: {type(e).__name__}: {e}", file=path,
                          array=name, offset=offset) from None
    if element_count(shape, dtype.itemsize) is None:
        raise FormatError(f"header shape {list(shape)} cannot be an array", file=path, array=name, offset=offset)
    return dtype, shape, fortran


def _refuse_pickle(allow_pickle: bool, path, name, offset=None) -> None:
    if not allow_pickle:
        raise UnsupportedError("array holds pickled Python objects (loading them runs code from the file)",
                               file=path, array=name, offset=offset, hint=_PICKLE_HINT)


def _mapped_handle(view, data, dtype, shape, fortran, name, room) -> ArrayHandle:
    """A lazy view of the array at `data`, whose bytes must fit in the `room` bytes after it."""
    nbytes = element_count(shape) * dtype.itemsize
    if nbytes > room:
        raise FormatError(f"{dtype}{list(shape)} needs {nbytes} bytes but its record holds {room}",
                          file=view.path, array=name, offset=data, hint="the file is truncated or corrupt")
    view.require(data, nbytes, "array data", name)
    if not fortran:  # .numpy() preads into a new array, copy=False is a map view
        return view.handle(name, data, dtype, shape, {"role": role_from_name(name)})
    return FileArray(name, shape, dtype, lambda: view.read_array(data, dtype, shape[::-1], name).T,
                     lambda: view.array(data, dtype, shape[::-1], name).T, {"role": role_from_name(name)})


# ------------------------------------------------------------------------------------- npz

def _open_npz(path: str, allow_pickle: bool, encoding: str) -> ArrayFile:
    zf = zipfile.ZipFile(path)
    view = FileView(path)
    handles = []
    try:
        for info in zf.infolist():
            name = info.filename[:-4] if info.filename.endswith(".npy") else info.filename
            if info.compress_type == zipfile.ZIP_STORED:
                handles += _stored_member(view, zf, info, name, allow_pickle, encoding)
            else:
                handles += _compressed_member(view, zf, info, name, allow_pickle, encoding)
    except BaseException:
        zf.close()
        view.close()
        raise

    def close():
        zf.close()
        view.close()
    return ArrayFile(path, NAME, handles, meta={"format": "npz"}, closer=close)


def _stored_member(view, zf, info, name, allow_pickle, encoding) -> list[ArrayHandle]:
    # local header: 30 bytes + file name + extra field, then the member's bytes
    n_name, n_extra = view.unpack("<HH", info.header_offset + 26, "zip local header", name)
    start = info.header_offset + 30 + n_name + n_extra
    view.require(start, info.compress_size, "zip member data", name)
    dtype, shape, fortran, data = _npy_header(view, start, name)
    if dtype.hasobject:
        _refuse_pickle(allow_pickle, view.path, name, data)
        return _pickled_member(zf, info, name, view.path, encoding)
    return [_mapped_handle(view, data, dtype, shape, fortran, name, start + info.compress_size - data)]


def _member_header(fh, info, name, path):
    """The .npy header of a member read through zipfile (bounded: a header is a few hundred bytes)."""
    prefix = fh.read(12)
    if not prefix.startswith(_NPY_MAGIC) or len(prefix) < 10:
        raise FormatError("member is not an .npy record", file=path, array=name)
    major = prefix[6]
    if major == 1:
        hlen, rest = int.from_bytes(prefix[8:10], "little"), prefix[10:]
    elif major in (2, 3):
        hlen, rest = int.from_bytes(prefix[8:12], "little"), b""
    else:
        raise UnsupportedError(f".npy version {major} is not supported", file=path, array=name)
    if hlen > _MAX_HEADER:
        raise FormatError(f".npy header length {hlen} is implausible", file=path, array=name)
    text = rest + fh.read(hlen - len(rest))
    dtype, shape, fortran = _parse_header(text.decode("latin1"), path, name)
    return dtype, shape, fortran, len(prefix) - len(rest) + hlen


def _compressed_member(view, zf, info, name, allow_pickle, encoding) -> list[ArrayHandle]:
    path = view.path
    check_inflation(info.file_size, info.compress_size, f"member {info.filename}", path, name)
    with zf.open(info) as fh:
        dtype, shape, fortran, header = _member_header(fh, info, name, path)
    if dtype.hasobject:
        _refuse_pickle(allow_pickle, path, name)
        return _pickled_member(zf, info, name, path, encoding)
    nbytes = element_count(shape) * dtype.itemsize
    if header + nbytes != info.file_size:
        raise FormatError(f"{dtype}{list(shape)} needs {header + nbytes} bytes but the member holds "
                          f"{info.file_size}", file=path, array=name, hint="the file is truncated or corrupt")

    def load():
        out = np.empty(shape[::-1] if fortran else shape, dtype)
        try:  # zipfile reads with its own file handle (no map)
            with parser_errors(path, f"member {info.filename}", name), zf.open(info) as fh:
                fh.read(header)
                raw = out.reshape(-1).view(np.uint8)
                got = 0
                while got < nbytes and (n := fh.readinto(raw[got:got + (1 << 24)])):
                    got += n
            if got != nbytes:
                raise FormatError(f"member ends after {got} of {nbytes} data bytes", file=path, array=name)
        except FormatError:
            view.check_size(f"member {info.filename}", name)  # cut short since it was opened: say so
            raise
        return out.T if fortran else out
    return [ArrayHandle(name, shape, dtype, load, {"role": role_from_name(name)}, fresh=True)]


def _pickled_member(zf, info, name, path, encoding) -> list[ArrayHandle]:
    check_inflation(info.file_size, info.compress_size, f"member {info.filename}", path, name)
    with zf.open(info) as fh:
        obj = np.lib.format.read_array(fh, allow_pickle=True, pickle_kwargs={"encoding": encoding})
    return _flatten(obj, name, path)


# -------------------------------------------------------------------------------- pickles

def _flatten(obj, prefix: str, path) -> list[ArrayHandle]:
    """Numeric leaves of an unpickled container as arrays named `key/key/...` (dicts by key,
    lists and object arrays by position); strings and other objects are left out."""
    leaves: list[tuple[str, np.ndarray]] = []
    _collect(obj, prefix, leaves, 0)
    if not leaves:
        raise FormatError("the pickled object holds no numeric arrays", file=path, array=prefix or None)
    out = []
    for name, arr in leaves:
        layer = name.rsplit("/", 1)[0] if "/" in name else None
        meta = {"role": role_from_name(name), "pickled": True}
        if layer:
            meta["layer"] = layer
        out.append(ArrayHandle(name, arr.shape, arr.dtype, lambda a=arr: a, meta))
    return out


def _collect(obj, prefix, leaves, depth) -> None:
    if depth > 64:
        raise FormatError("pickled containers nest deeper than 64 levels", array=prefix)
    join = (lambda k: f"{prefix}/{k}") if prefix else str
    if isinstance(obj, np.ndarray) and obj.dtype.hasobject:
        if obj.shape == ():
            _collect(obj.item(), prefix, leaves, depth + 1)
        else:
            for i, v in enumerate(obj.reshape(-1)):
                _collect(v, join(i), leaves, depth + 1)
    elif isinstance(obj, dict):
        for k, v in obj.items():
            key = k.decode("latin1") if isinstance(k, bytes) else str(k)
            _collect(v, join(key), leaves, depth + 1)
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            _collect(v, join(i), leaves, depth + 1)
    elif isinstance(obj, (np.ndarray, np.generic, bool, int, float, complex)):
        arr = np.asarray(obj)
        if arr.dtype.kind in "biufc" and not arr.dtype.fields:
            leaves.append((prefix or "array", arr))
