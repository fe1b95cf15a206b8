"""[numpy] reader: `.npy` and `.npz` files.

`.npy` arrays and uncompressed `.npz` members are memory-mapped; compressed members are read on
demand. Object (pickled) arrays are refused unless allow_pickle=True is passed explicitly:
unpickling runs code from the file.
"""
from __future__ import annotations

import builtins
import zipfile

import numpy as np

from ..arrays import ArrayFile, ArrayHandle, role_from_name
from ..errors import FormatError, UnsupportedError
from ._binary import FileView

NAME = "numpy"
OPTIONS = {"allow_pickle": bool, "encoding": str}
"""Reader options (`--option KEY=VALUE`) and their types; readers/__init__ validates against it."""
_NPY_MAGIC = b"\x93NUMPY"


def sniff(path, head: bytes) -> bool:
    if head.startswith(_NPY_MAGIC):
        return True
    return head.startswith(b"PK\x03\x04") and str(path).endswith(".npz")


def open(path, allow_pickle: bool = False, **options) -> ArrayFile:
    path = str(path)
    with builtins.open(path, "rb") as fh:
        head = fh.read(8)
    if head.startswith(_NPY_MAGIC):
        view = FileView(path)
        try:
            handle = _npy_handle(view, 0, "array", path, allow_pickle)
        except BaseException:
            view.close()
            raise
        return ArrayFile(path, NAME, [handle], meta={"format": "npy"}, closer=view.close)
    if head.startswith(b"PK"):
        return _open_npz(path, allow_pickle)
    raise FormatError("neither an .npy (\\x93NUMPY) nor an .npz (zip) file", file=path, offset=0)


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
    text = view.bytes(start, hlen, ".npy header", name).decode("latin1")
    import ast

    try:
        d = ast.literal_eval(text)
        dtype = np.lib.format.descr_to_dtype(d["descr"])
        shape, fortran = tuple(d["shape"]), bool(d["fortran_order"])
    except Exception as e:  # literal_eval and descr_to_dtype raise many kinds
        raise FormatError(f"unreadable .npy header {text.strip()!r}: {e}", file=view.path, array=name,
                          offset=start) from None
    return dtype, shape, fortran, start + hlen


def _npy_handle(view: FileView, offset: int, name: str, path: str, allow_pickle: bool) -> ArrayHandle:
    dtype, shape, fortran, data = _npy_header(view, offset, name)
    if dtype.hasobject:
        if not allow_pickle:
            raise UnsupportedError("array holds pickled Python objects", file=path, array=name, offset=data,
                                   hint="pass allow_pickle=True only for files you trust")
        raise UnsupportedError("object arrays cannot be memory-mapped", file=path, array=name)
    def load():
        arr = view.array(data, dtype, shape[::-1] if fortran else shape, name)
        return arr.T if fortran else arr
    view.require(data, int(np.prod(shape, dtype=np.int64)) * dtype.itemsize, "array data", name)
    return ArrayHandle(name, shape, dtype, load, {"role": role_from_name(name)})


def _open_npz(path: str, allow_pickle: bool) -> ArrayFile:
    try:
        zf = zipfile.ZipFile(path)
    except zipfile.BadZipFile as e:
        raise FormatError(f"not a readable .npz (zip) file: {e}", file=path) from None
    view = FileView(path)
    handles = []
    try:
        for info in zf.infolist():
            name = info.filename[:-4] if info.filename.endswith(".npy") else info.filename
            if info.compress_type == zipfile.ZIP_STORED:
                # local header: 30 bytes + file name + extra field, then the member's bytes
                n_name, n_extra = view.unpack("<HH", info.header_offset + 26, "zip local header", name)
                start = info.header_offset + 30 + n_name + n_extra
                handles.append(_npy_handle(view, start, name, path, allow_pickle))
            else:
                handles.append(_compressed_member(zf, info, name, path, allow_pickle))
    except BaseException:
        zf.close()
        view.close()
        raise

    def close():
        zf.close()
        view.close()
    return ArrayFile(path, NAME, handles, meta={"format": "npz"}, closer=close)


def _compressed_member(zf, info, name, path, allow_pickle) -> ArrayHandle:
    with zf.open(info) as fh:
        version = np.lib.format.read_magic(fh)
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran, dtype = read_header(fh)
    if dtype.hasobject and not allow_pickle:
        raise UnsupportedError("array holds pickled Python objects", file=path, array=name,
                               hint="pass allow_pickle=True only for files you trust")

    def load():
        with zf.open(info) as fh:
            return np.lib.format.read_array(fh, allow_pickle=allow_pickle)
    return ArrayHandle(name, shape, dtype, load, {"role": role_from_name(name)})
