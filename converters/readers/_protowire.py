"""A minimal protocol-buffer wire-format walker.

Caffe models, TF checkpoint index entries, frozen GraphDefs and ONNX files are protobufs. Parsing
them with generated message classes copies every weight into Python objects; walking the wire
format instead lets a reader record *where* each packed weight array lies and map it lazily.
Unknown fields are skipped by wire type, which is what makes forked .proto files readable.
"""
from __future__ import annotations

import struct

from ..errors import FormatError, TruncatedError

VARINT, FIXED64, LEN, START_GROUP, END_GROUP, FIXED32 = 0, 1, 2, 3, 4, 5


def read_varint(buf, pos: int, end: int, file=None) -> tuple[int, int]:
    result = 0
    shift = 0
    while True:
        if pos >= end:
            raise TruncatedError("varint runs past the end of its message", file=file, offset=pos)
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise FormatError("varint longer than 10 bytes", file=file, offset=pos)


def iter_fields(buf, start: int = 0, end: int | None = None, file=None):
    """Yield (field_number, wire_type, value, offset) for each field in buf[start:end].

    value is an int for VARINT/FIXED32/FIXED64 and a (start, length) pair for LEN fields, so the
    caller decides whether to decode, recurse or just remember where the bytes are.
    """
    if end is None:
        end = len(buf)
    pos = start
    while pos < end:
        field_start = pos
        key, pos = read_varint(buf, pos, end, file)
        field, wire = key >> 3, key & 7
        if field == 0:
            raise FormatError("field number 0 (not a protobuf message here)", file=file, offset=field_start)
        if wire == VARINT:
            value, pos = read_varint(buf, pos, end, file)
        elif wire == LEN:
            length, pos = read_varint(buf, pos, end, file)
            if pos + length > end:
                raise TruncatedError(f"field {field} claims {length} bytes but its message ends {end - pos} bytes later",
                                     file=file, offset=field_start)
            value = (pos, length)
            pos += length
        elif wire == FIXED32:
            if pos + 4 > end:
                raise TruncatedError(f"field {field} (fixed32) runs past the end", file=file, offset=field_start)
            value = struct.unpack_from("<I", buf, pos)[0]
            pos += 4
        elif wire == FIXED64:
            if pos + 8 > end:
                raise TruncatedError(f"field {field} (fixed64) runs past the end", file=file, offset=field_start)
            value = struct.unpack_from("<Q", buf, pos)[0]
            pos += 8
        elif wire == START_GROUP:  # deprecated groups: skip to the matching END_GROUP
            pos = _skip_group(buf, pos, end, field, file)
            continue
        else:
            raise FormatError(f"invalid wire type {wire} for field {field}", file=file, offset=field_start)
        yield field, wire, value, field_start


def _skip_group(buf, pos, end, field, file):
    """Position just after the END_GROUP that closes `field` (groups may nest)."""
    while pos < end:
        key, pos = read_varint(buf, pos, end, file)
        f, wire = key >> 3, key & 7
        if wire == END_GROUP:
            if f == field:
                return pos
            raise FormatError(f"group {field} closed by end of group {f}", file=file, offset=pos)
        if wire == VARINT:
            _, pos = read_varint(buf, pos, end, file)
        elif wire == LEN:
            n, pos = read_varint(buf, pos, end, file)
            pos += n
        elif wire == FIXED32:
            pos += 4
        elif wire == FIXED64:
            pos += 8
        elif wire == START_GROUP:
            pos = _skip_group(buf, pos, end, f, file)
        else:
            raise FormatError(f"invalid wire type {wire} for field {f}", file=file, offset=pos)
    raise TruncatedError(f"group {field} is not closed", file=file, offset=pos)


def fields(buf, start: int = 0, end: int | None = None, file=None) -> dict[int, list]:
    """All fields of one message grouped by number: {field: [(wire, value, offset), ...]}."""
    out: dict[int, list] = {}
    for f, w, v, off in iter_fields(buf, start, end, file):
        out.setdefault(f, []).append((w, v, off))
    return out


def text(buf, span) -> str:
    s, n = span
    return bytes(buf[s:s + n]).decode("utf-8", errors="replace")


def packed_varints(buf, span, file=None) -> list[int]:
    s, n = span
    out, pos, end = [], s, s + n
    while pos < end:
        v, pos = read_varint(buf, pos, end, file)
        out.append(v)
    return out


def ints(entries, buf, file=None, signed=True) -> list[int]:
    """Decode a repeated integer field that may be packed (LEN) or not (VARINT)."""
    out: list[int] = []
    for w, v, _off in entries:
        if w == LEN:
            out.extend(packed_varints(buf, v, file))
        elif w == VARINT:
            out.append(v)
    if signed:
        out = [v - (1 << 64) if v >= 1 << 63 else v for v in out]
    return out


def f32(value: int) -> float:
    return struct.unpack("<f", struct.pack("<I", value))[0]


def f64(value: int) -> float:
    return struct.unpack("<d", struct.pack("<Q", value))[0]
