"""What an HDF5 object is, decoded from its version-1 object header, for the plain cases only.

h5py opens a dataset in ~50 us (HDF5 decodes the whole header into property lists) and a group
in ~20 us; a Keras file of thousands of small arrays spends most of its load there. A contiguous,
unfiltered, attribute-less numeric dataset is four short messages, decoded here in a few us.
Anything else (version-2 headers, shared or unknown messages, compact / chunked / external /
virtual layouts, dataset attributes, non-IEEE types, a superblock with a base address) gives
None, and the caller asks h5py: a file this module misunderstands is read the slow way, never
differently. Every offset is checked against the mapped bytes before it is read.
"""
from __future__ import annotations

import struct
from typing import NamedTuple

import numpy as np

_HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
_UNDEF = (1 << 64) - 1
_MAX_BLOCKS = 64  # continuation blocks followed per header (h5py writes one or two)

# message types (HDF5 file format specification, section IV.A.2)
_DATASPACE, _DATATYPE, _EXTERNAL, _LAYOUT, _FILTERS, _ATTRIBUTE, _CONTINUATION, _ATTR_INFO = \
    0x01, 0x03, 0x07, 0x08, 0x0B, 0x0C, 0x10, 0x15
_GROUP_MESSAGES = {0x02, 0x06, 0x11}  # link info, link, symbol table
_HARMLESS = {0x00, 0x04, 0x05, 0x0A, 0x0D, 0x0E, 0x12, 0x13, 0x16}  # nil, fill values, group info,
# comment, modification times, B-tree 'K' values, reference count: none changes where the data is
_DATASET_MESSAGES = {_DATASPACE, _DATATYPE, _LAYOUT}
_ATTRIBUTES = {_ATTRIBUTE, _ATTR_INFO}
_KNOWN = _HARMLESS | _GROUP_MESSAGES | _DATASET_MESSAGES | _ATTRIBUTES

# IEEE float layouts by size: (bit offset, precision, exponent location, exponent size,
# mantissa location, mantissa size, exponent bias, sign location)
_IEEE = {2: (0, 16, 10, 5, 0, 10, 15, 15), 4: (0, 32, 23, 8, 0, 23, 127, 31),
         8: (0, 64, 52, 11, 0, 52, 1023, 63)}


class Plain(NamedTuple):
    """A contiguous numeric dataset: its shape, dtype and the offset of its bytes in the view."""

    shape: tuple
    dtype: np.dtype
    offset: int


class Group(NamedTuple):
    """A group: (data offset, size) of its attribute messages, or None when they are stored
    densely (in a fractal heap: ask h5py)."""

    attributes: list | None


def plain_superblock(buf, base: int) -> bool:
    """True for a superblock at `base` with 8-byte offsets and lengths and base address 0
    (every h5py-written file): then header addresses are offsets from `base`."""
    if len(buf) < base + 36 or buf[base:base + 8] != _HDF5_MAGIC:
        return False
    version = buf[base + 8]
    if version in (0, 1):
        sizes, at = (buf[base + 13], buf[base + 14]), base + (24 if version == 0 else 28)
    elif version in (2, 3):
        sizes, at = (buf[base + 9], buf[base + 10]), base + 12
    else:
        return False
    return sizes == (8, 8) and struct.unpack_from("<Q", buf, at)[0] == 0


def describe(buf, base: int, addr: int) -> Plain | Group | None:
    """The object whose header is at `addr` (relative to `base`), or None: ask h5py."""
    messages = _messages(buf, base, addr)
    if messages is None:
        return None
    types = [t for t, _, _ in messages]
    kinds = set(types)
    if not kinds <= _KNOWN:
        return None
    if kinds & _GROUP_MESSAGES:
        if kinds & _DATASET_MESSAGES:
            return None
        return Group(None if _ATTR_INFO in kinds else [(at, size) for t, at, size in messages if t == _ATTRIBUTE])
    if kinds & _ATTRIBUTES or not kinds >= _DATASET_MESSAGES or sum(t in _DATASET_MESSAGES for t in types) != 3:
        return None  # attributes (bfloat16's `dtype`), or a message missing or repeated
    found = {t: (at, size) for t, at, size in messages}
    shape, dtype = _dataspace(buf, *found[_DATASPACE]), _datatype(buf, *found[_DATATYPE])
    layout = _layout(buf, *found[_LAYOUT])
    if shape is None or dtype is None or layout is None:
        return None
    offset, length = layout
    count = 1
    for d in shape:
        count *= d
    if length != count * dtype.itemsize:
        return None
    return Plain(shape, dtype, base + offset)


def _messages(buf, base: int, addr: int) -> list | None:
    """(type, data offset, data size) of every message of a version-1 object header."""
    size = len(buf)
    p = base + addr
    if addr >= size or p + 16 > size or buf[p] != 1 or buf[p + 1] != 0:
        return None
    count, length = struct.unpack_from("<H", buf, p + 2)[0], struct.unpack_from("<I", buf, p + 8)[0]
    blocks, out = [(p + 16, length)], []
    for _ in range(_MAX_BLOCKS):
        if not blocks:
            return out if len(out) <= count else None
        q, length = blocks.pop()
        end = q + length
        if end > size:
            return None
        while q + 8 <= end:
            mtype, msize, flags = struct.unpack_from("<HHB", buf, q)
            data, q = q + 8, q + 8 + msize
            if q > end or flags & 0x02:  # past the block, or a shared message (stored elsewhere)
                return None
            if mtype == _CONTINUATION:
                if msize < 16:
                    return None
                at, n = struct.unpack_from("<QQ", buf, data)
                blocks.append((base + at, n))
            else:
                out.append((mtype, data, msize))
            if len(out) > count:
                return None
    return None  # more continuation blocks than any real header has


def _dataspace(buf, at: int, size: int) -> tuple | None:
    if size < 8:
        return None
    version, ndim = buf[at], buf[at + 1]
    if version == 1:
        dims_at = at + 8
    elif version == 2 and buf[at + 3] in (0, 1):  # scalar or simple; 2 is the null dataspace
        dims_at = at + 4
    else:
        return None
    if ndim > 32 or dims_at + 8 * ndim > at + size:
        return None
    return struct.unpack_from(f"<{ndim}Q", buf, dims_at)


def _datatype(buf, at: int, size: int) -> np.dtype | None:
    if size < 12:
        return None
    cv, b0, b1, b2, itemsize = struct.unpack_from("<BBBBI", buf, at)
    cls, version, bits = cv & 0x0F, cv >> 4, b0 | b1 << 8 | b2 << 16
    if version not in (1, 2, 3):
        return None
    order = ">" if bits & 1 else "<"
    offset, precision = struct.unpack_from("<HH", buf, at + 8)
    if cls == 0:  # fixed-point: no padding bits, every bit used
        if bits >> 4 or bits & 0x06 or itemsize not in (1, 2, 4, 8) or (offset, precision) != (0, 8 * itemsize):
            return None
        return np.dtype(f"{order}{'i' if bits & 0x08 else 'u'}{itemsize}")
    if cls == 1 and size >= 20:  # IEEE floating point, implied leading mantissa bit
        eloc, esize, mloc, msize, bias = struct.unpack_from("<BBBBI", buf, at + 12)
        if (bits & 0xFE) != 0x20 or bits >> 16 or \
                _IEEE.get(itemsize) != (offset, precision, eloc, esize, mloc, msize, bias, (bits >> 8) & 0xFF):
            return None
        return np.dtype(f"{order}f{itemsize}")
    return None


def _layout(buf, at: int, size: int) -> tuple[int, int] | None:
    """(address, byte length) of a contiguous, allocated, version 3/4 layout."""
    if size < 18 or buf[at] not in (3, 4) or buf[at + 1] != 1:
        return None
    addr, length = struct.unpack_from("<QQ", buf, at + 2)
    return None if addr == _UNDEF else (addr, length)


def attributes(buf, base: int, messages: list, heaps: dict) -> dict | None:
    """{name: value} of attribute messages, valued as h5py gives them (numbers and fixed-length
    strings as numpy scalars / arrays, variable-length strings as str); None if any is of a
    kind not decoded here. `heaps` caches the global heap collections read, by address."""
    out = {}
    for at, size in messages:
        decoded = _attribute(buf, base, at, size, heaps)
        if decoded is None:
            return None
        out[decoded[0]] = decoded[1]
    return out


def _attribute(buf, base: int, at: int, size: int, heaps: dict):
    end = at + size
    if size < 8:
        return None
    version, flags, nname, ntype, nspace = struct.unpack_from("<BBHHH", buf, at)
    if version == 1:
        pad, p = 8, at + 8
    elif version in (2, 3) and not flags & 0x03:  # not shared datatype / dataspace
        pad, p = 1, at + 8 + (version == 3)
    else:
        return None

    def padded(n):
        return (n + pad - 1) // pad * pad
    name_at, type_at = p, p + padded(nname)
    space_at = type_at + padded(ntype)
    data_at = space_at + padded(nspace)
    if nname < 1 or ntype < 8 or data_at > end or buf[name_at + nname - 1] != 0:
        return None
    try:
        name = bytes(buf[name_at:name_at + nname - 1]).decode("utf-8")
    except UnicodeDecodeError:
        return None
    shape = _dataspace(buf, space_at, nspace)
    if shape is None:
        return None
    count = 1
    for d in shape:
        count *= d
    cv, b0, b1 = buf[type_at], buf[type_at + 1], buf[type_at + 2]
    cls, itemsize = cv & 0x0F, struct.unpack_from("<I", buf, type_at + 4)[0]
    if count * itemsize > end - data_at:
        return None
    if cls == 9:  # variable-length: strings only, each (length, heap collection address, index)
        if b0 & 0x0F != 1 or itemsize != 16 or b1 & 0x0F > 1:
            return None
        values = []
        for i in range(count):
            n, addr, index = struct.unpack_from("<IQI", buf, data_at + 16 * i)
            if n:
                objects = heaps.get(addr)
                if objects is None:
                    objects = heaps[addr] = _heap_objects(buf, base + addr)
                start, osize = objects.get(index, (0, -1))
                if n > osize:
                    return None
                text = bytes(buf[start:start + n])
            else:
                text = b""
            try:
                values.append(text.decode("utf-8"))
            except UnicodeDecodeError:
                return None
        if not shape:
            return name, values[0]
        arr = np.empty(len(values), dtype=object)
        arr[:] = values
        return name, arr.reshape(shape)
    if cls == 3:  # fixed-length, null-terminated or null-padded
        if b0 & 0x0F not in (0, 1) or not itemsize:
            return None
        dtype = np.dtype(f"S{itemsize}")
    else:
        dtype = _datatype(buf, type_at, ntype)
        if dtype is None:
            return None
    arr = np.frombuffer(buf, dtype, count, data_at).reshape(shape).copy() if count else np.zeros(shape, dtype)
    return name, (arr[()] if not shape else arr)


def _heap_objects(buf, p: int) -> dict:
    """{index: (data offset, size)} of the global heap collection at `p`, every object inside both
    the collection and the file; {} for anything else. A forward walk: corrupt sizes end it."""
    if p + 16 > len(buf) or buf[p:p + 4] != b"GCOL" or buf[p + 4] != 1:
        return {}
    end = min(len(buf), p + struct.unpack_from("<Q", buf, p + 8)[0])
    q, out = p + 16, {}
    while q + 16 <= end:
        idx, _, osize = struct.unpack_from("<HHxxxxQ", buf, q)
        if idx == 0:  # free space: the rest of the collection
            break
        if q + 16 + osize <= end:
            out.setdefault(idx, (q + 16, osize))
        q += 16 + (osize + 7) // 8 * 8
    return out
