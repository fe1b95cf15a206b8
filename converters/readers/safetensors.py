"""[safetensors] reader: 8-byte header length, JSON header, raw little-endian data.

The format is small and fully specified, so it is read directly: every tensor is a lazy handle
whose `.numpy()` preads its bytes into a new array (small tensors share one pread of up to 64 KiB,
`_binary.SmallReads`), so a file cut short while open is a TruncatedError; `.numpy(copy=False)` is
a memory-map view. bfloat16 / float8 come through ml_dtypes (the safetensors package's numpy
backend has neither).
The per-tensor work at open is a few dictionary lookups and one multiplication per dimension:
on 5,000 small tensors that, not the JSON parse, is what the open costs.
"""
from __future__ import annotations

import json
from operator import itemgetter

from ..arrays import ArrayFile, element_count, role_from_name
from ..dtypes import SAFETENSORS as _DTYPES
from ..errors import FormatError, UnsupportedError
from . import _gc
from ._binary import FileView, SmallReads
from ._limits import parser_errors

NAME = "safetensors"
OPTIONS = {}
"""Reader options (`--option KEY=VALUE`) and their types; readers/__init__ validates against it."""
_MAX_HEADER = 100 * 1024 * 1024
_MAX_BYTES = 1 << 62


def sniff(path, head: bytes) -> bool:
    if len(head) < 10:
        return False
    n = int.from_bytes(head[:8], "little")
    return 2 <= n <= _MAX_HEADER and head[8:9] == b"{" and head[9:10] in (b'"', b"}")


def open(path, **options) -> ArrayFile:
    view = FileView(path)
    try:
        with _gc.paused():
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
    dtypes: dict = {}  # header code -> numpy dtype, looked up once per file
    entries = []
    for name, info in header.items():
        try:
            code, shape, (start, stop) = info["dtype"], info["shape"], info["data_offsets"]
            dtype = dtypes[code]
        except (KeyError, TypeError, ValueError):
            code, shape, start, stop = _entry(info, view.path, name)
            dtype = dtypes[code] = _dtype(code, view.path, name)
        if type(shape) is not list or type(start) is not int or type(stop) is not int or start < 0:
            _entry(info, view.path, name)  # raises, naming what is wrong
        count = 1
        for d in shape:
            if type(d) is not int or d < 0:
                _entry(info, view.path, name)
            count *= d
        nbytes = count * dtype.itemsize
        if stop - start != nbytes or nbytes > _MAX_BYTES or (
                not count and element_count(shape, dtype.itemsize) is None):
            raise FormatError(f"data_offsets {start}..{stop} do not hold {code}{shape}",
                              file=view.path, array=name, offset=base + start)
        if base + stop > view.size:
            view.require(base + start, nbytes, "tensor data", name)
        entries.append((base + start, base + stop, name, tuple(shape), dtype))
    entries.sort(key=itemgetter(0))  # file order is data order (JSON key order is not meaningful)
    starts, ends, names, shapes, dtypes = (list(c) for c in zip(*entries)) if entries else ([], [], [], [], [])
    handles = SmallReads(view, starts, ends).handles(names, shapes, dtypes, _meta)
    return ArrayFile(view.path, NAME, handles, meta=meta, closer=view.close)


def _meta(h) -> dict:
    """Worked out when a caller first reads `h.meta`."""
    return {"role": role_from_name(h.name)}


def _dtype(code, path, name):
    """The numpy dtype of a header code, or UnsupportedError naming it."""
    if not isinstance(code, str) or code not in _DTYPES:
        raise UnsupportedError(f"dtype {code} is not supported", file=path, array=name)
    return _DTYPES[code]


def _entry(info, path, name):
    """(dtype, shape, start, stop) of one header entry, each of the type the format specifies;
    a FormatError naming the entry otherwise."""
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
