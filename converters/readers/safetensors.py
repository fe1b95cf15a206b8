"""[safetensors] reader: 8-byte header length, JSON header, raw little-endian data.

The format is small and fully specified, so it is read directly: that keeps every tensor a lazy
memory-map view and supports bfloat16 through ml_dtypes (the safetensors package's numpy
backend has no bfloat16).
"""
from __future__ import annotations

import json

import numpy as np

from ..arrays import ArrayFile, ArrayHandle, role_from_name
from ..dtypes import SAFETENSORS as _DTYPES
from ..errors import FormatError, UnsupportedError
from ._binary import FileView
from ._limits import element_count, parser_errors

NAME = "safetensors"
OPTIONS = {}
"""Reader options (`--option KEY=VALUE`) and their types; readers/__init__ validates against it."""
_MAX_HEADER = 100 * 1024 * 1024


def sniff(path, head: bytes) -> bool:
    if len(head) < 10:
        return False
    n = int.from_bytes(head[:8], "little")
    return 2 <= n <= _MAX_HEADER and head[8:9] == b"{" and head[9:10] in (b'"', b"}")


def open(path, **options) -> ArrayFile:
    view = FileView(path)
    try:
        return _open(view)
    except BaseException:
        view.close()
        raise


def _open(view: FileView) -> ArrayFile:
    (n,) = view.unpack("<Q", 0, "header length")
    if n > _MAX_HEADER:
        raise FormatError(f"header length {n} is implausible", file=view.path, offset=0,
                          hint="not a safetensors file")
    with parser_errors(view.path, "JSON header", hint="not a safetensors file, or a corrupt one"):
        header = json.loads(view.bytes(8, n, "JSON header"))
    if not isinstance(header, dict):
        raise FormatError("header is not a JSON object", file=view.path, offset=8)
    base = 8 + n
    meta = {"format": "safetensors", "metadata": header.pop("__metadata__", None) or {}}
    arrays = []
    for name, info in header.items():
        dtype_name, shape, start, stop = _entry(info, view.path, name)
        if dtype_name not in _DTYPES or _DTYPES[dtype_name] is None:
            raise UnsupportedError(f"dtype {dtype_name} is not supported", file=view.path, array=name)
        dtype = np.dtype(_DTYPES[dtype_name])
        count = element_count(shape, dtype.itemsize)
        if count is None or stop - start != count * dtype.itemsize:
            raise FormatError(f"data_offsets {start}..{stop} do not hold {dtype_name}{shape}",
                              file=view.path, array=name, offset=base + start)
        view.require(base + start, stop - start, "tensor data", name)
        arrays.append((start, ArrayHandle(name, shape, dtype, _loader(view, base + start, dtype, shape, name),
                                          {"role": role_from_name(name)})))
    arrays.sort(key=lambda t: t[0])  # file order is data order; JSON key order is not meaningful
    return ArrayFile(view.path, NAME, [a for _, a in arrays], meta=meta, closer=view.close)


def _entry(info, path, name):
    """(dtype, shape, start, stop) of one header entry, each of the type the format specifies."""
    try:
        dtype_name, shape, (start, stop) = info["dtype"], info["shape"], info["data_offsets"]
    except (KeyError, TypeError, ValueError):
        raise FormatError("header entry lacks dtype/shape/data_offsets", file=path, array=name) from None
    ints = [*shape, start, stop] if isinstance(shape, list) else None
    if not isinstance(dtype_name, str) or ints is None or \
            not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in ints):
        raise FormatError(f"header entry {json.dumps(info)[:200]} is not a dtype string, a list of "
                          "non-negative int dims and two int offsets", file=path, array=name)
    return dtype_name, shape, start, stop


def _loader(view, offset, dtype, shape, name):
    return lambda: view.array(offset, dtype, shape, name)
