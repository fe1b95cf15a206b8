"""A minimal protocol-buffer wire-format walker.

Caffe models, TF checkpoint index entries, frozen GraphDefs and ONNX files are protobufs. Parsing
them with generated message classes copies every weight into Python objects; walking the wire
format instead lets a reader record *where* each packed weight array lies and map it lazily.
Unknown fields are skipped by wire type, which is what makes forked .proto files readable.
"""
from __future__ import annotations

import os
import struct

import numpy as np

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
                raise TruncatedError(f"field {field} claims {length} bytes but its message ends {end - pos} "
                                     "bytes later", file=file, offset=field_start)
            value = (pos, length)
            pos += length
        elif wire == FIXED32:
            if pos + 4 > end:
                raise TruncatedError(f"field {field} (fixed32) runs past the end", file=file, offset=field_start)
            value = int.from_bytes(buf[pos:pos + 4], "little")  # any buffer with slicing (PreadBuffer too)
            pos += 4
        elif wire == FIXED64:
            if pos + 8 > end:
                raise TruncatedError(f"field {field} (fixed64) runs past the end", file=file, offset=field_start)
            value = int.from_bytes(buf[pos:pos + 8], "little")
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


def texts(gather, starts, lens) -> list[str]:
    """The UTF-8 strings at (start, length) spans, bad bytes replaced (as `text` does), their
    bytes fetched in one `gather` (positions -> uint8 array; for the ONNX and Caffe fast paths)."""
    lens = np.asarray(lens, np.int64)
    total = int(lens.sum())
    if total == 0:
        return [""] * lens.size
    ends = np.cumsum(lens)
    offs = ends - lens
    blob = gather(np.repeat(np.asarray(starts, np.int64) - offs, lens) + np.arange(total)).tobytes()
    pairs = zip(offs.tolist(), ends.tolist())
    if blob.isascii():
        text = blob.decode("ascii")
        return [text[a:b] for a, b in pairs]
    return [blob[a:b].decode("utf-8", errors="replace") for a, b in pairs]


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


# --------------------------------------------------------------------------- many messages at once

def message_table(buf, start: int, end: int, file=None) -> tuple[list, list, list, list]:
    """(keys, starts, lengths, offsets) of one message's LEN fields (key = field << 3 | 2), in order.

    The same walk as iter_fields with one-byte keys and short lengths inlined, for messages of thousands
    of fields (an ONNX graph's nodes and initializers). Any field that is not a LEN field, or
    anything malformed, and the message is walked again with iter_fields, which names the error
    (and its non-LEN fields are left out here too)."""
    keys, starts, lengths, offsets = [], [], [], []
    add_key, add_start, add_length, add_offset = keys.append, starts.append, lengths.append, offsets.append
    pos = start
    try:
        if isinstance(buf, PreadBuffer):
            return _pread_table(buf, start, end)
        while pos < end:
            add_offset(pos)
            key = buf[pos]
            if key >= 0x80 or key & 7 != LEN or key < 8:
                raise _Slow
            n = buf[pos + 1]
            if n < 0x80:
                pos += 2
            elif buf[pos + 2] < 0x80:
                n = (n & 0x7F) | buf[pos + 2] << 7
                pos += 3
            else:
                n, pos = read_varint(buf, pos + 1, end, file)
            if pos + n > end:
                raise _Slow
            add_key(key)
            add_start(pos)
            add_length(n)
            pos += n
    except (_Slow, IndexError, FormatError):
        keys, starts, lengths, offsets = [], [], [], []
        for f, w, v, off in iter_fields(buf, start, end, file):
            if w == LEN:
                keys.append(f << 3 | LEN)
                starts.append(v[0])
                lengths.append(v[1])
                offsets.append(off)
    return keys, starts, lengths, offsets


def _pread_table(buf, pos: int, end: int) -> tuple[list, list, list, list]:
    """message_table for a PreadBuffer: one 16-byte pread per field (its key and length), so a
    graph of thousands of nodes and tensors costs thousands of small reads, nothing per byte."""
    keys, starts, lengths, offsets = [], [], [], []
    fd = buf.fd
    while pos < end:
        head = os.pread(fd, 16, pos)
        key = head[0] if head else 0
        if key >= 0x80 or key & 7 != LEN or key < 8:
            raise _Slow
        n, shift, i = 0, 0, 1
        while True:
            if i >= len(head) or shift > 63:
                raise _Slow
            b = head[i]
            n |= (b & 0x7F) << shift
            i += 1
            if b < 0x80:
                break
            shift += 7
        if pos + i + n > end:
            raise _Slow
        keys.append(key)
        starts.append(pos + i)
        lengths.append(n)
        offsets.append(pos)
        pos += i + n
    return keys, starts, lengths, offsets


class _Slow(Exception):
    """message_table met something its inlined walk does not handle."""


def _varints_at(gather, p, end):
    """The varints starting at positions p (each < its end): values (uint64), positions after, and
    a mask of those that did not decode cleanly (None: all did). Varints past 64 bits or running
    past their message's end are not clean: the caller walks those messages with iter_fields."""
    b = gather(p)
    val = (b & 0x7F).astype(np.uint64)
    more = _where(b >= 0x80)
    if not more.size:
        return val, p + 1, None
    nxt = p + 1
    bad = np.zeros(p.size, bool)
    k = 1
    while more.size:
        if k == 10:  # an eleventh byte
            bad[more] = True
            break
        q = p[more] + k
        inside = q < end[more]
        if not inside.all():
            bad[more[~inside]] = True
            more, q = more[inside], q[inside]
        bb = gather(q)
        if k == 9:  # the tenth byte holds bit 63 only (0x01 for a negative int64)
            bad[more[(bb & 0x7E) != 0]] = True
        val[more] |= (bb & 0x7F).astype(np.uint64) << np.uint64(7 * k)
        nxt[more] = q + 1
        more = more[bb >= 0x80]
        k += 1
    return val, nxt, bad


def _where(mask: np.ndarray) -> np.ndarray:
    return mask.nonzero()[0]  # np.flatnonzero without its two Python-level wrappers


_WIRE_OK = np.array([True, True, True, False, False, True, False, False])  # VARINT FIXED64 LEN FIXED32
SCAN_TAIL = 24
"""When fewer messages than this are left, scan finishes them with iter_fields: a numpy step costs
about as much as walking a few dozen fields in Python."""


def scan(gather, starts, ends, buf=None, max_steps: int = 64) -> tuple[dict, np.ndarray]:
    """Walk many messages at once, one field of every message per step, in numpy.

    gather(positions) -> uint8 bytes at those file positions. Returns (table, slow): table holds
    equal-length arrays, ordered by message then field order: `msg` (index into starts), `field`,
    `wire`, `value` (a VARINT's or FIXED's value; a LEN field's length), `start` (where a LEN
    field's payload starts) and `offset` (where the field starts). `slow` lists the messages left
    out: malformed ones, groups, more than max_steps fields. Their caller walks them with
    iter_fields, which decodes every case and names the error of a malformed one. Given `buf`,
    the last few messages of a long tail are walked with iter_fields here (SCAN_TAIL).
    The cost is numpy calls per step, not Python work per field: thousands of small tensors or
    nodes take little longer than a few."""
    starts = np.asarray(starts, np.int64)
    ends = np.asarray(ends, np.int64)
    slow = np.zeros(starts.size, bool)
    pos = starts.copy()
    active = _where(pos < ends)
    parts = []
    for _step in range(max_steps):
        if not active.size:
            break
        if buf is not None and active.size < SCAN_TAIL:
            parts.append(_tail(buf, active, pos, ends, slow))
            active = active[:0]
            break
        p, e = pos[active], ends[active]
        key, after, bad = _varints_at(gather, p, e)
        key = key.astype(np.int64)  # keys past 2**63 come out negative: field <= 0, refused
        wire, field = key & 7, key >> 3
        refused = (field <= 0) | ~_WIRE_OK[wire]
        bad = refused if bad is None else bad | refused
        value = np.zeros(p.size, np.uint64)
        nxt = after.copy()
        vi = _where(((wire == VARINT) | (wire == LEN)) & ~bad)
        if vi.size:
            a, ev = after[vi], e[vi]
            inside = a < ev
            if not inside.all():
                bad[vi[~inside]] = True
                vi, a, ev = vi[inside], a[inside], ev[inside]
            v, q, badv = _varints_at(gather, a, ev)
            if badv is not None:
                bad[vi[badv]] = True
            value[vi] = v
            nxt[vi] = q
            after[vi] = q
            li = _where(wire[vi] == LEN)
            if li.size:
                lv, ql, vl = vi[li], q[li], v[li]
                fits = vl <= (ev[li] - ql).astype(np.uint64)
                if not fits.all():
                    bad[lv[~fits]] = True
                nxt[lv] = ql + np.where(fits, vl, 0).astype(np.int64)
        fixed = (wire & 1).astype(bool) & ~bad  # FIXED64 (1) and FIXED32 (5)
        if fixed.any():
            for w, width in ((FIXED32, 4), (FIXED64, 8)):
                fx = _where(fixed & (wire == w))
                if fx.size:
                    fits = after[fx] + width <= e[fx]
                    bad[fx[~fits]] = True
                    fx = fx[fits]
                    for k in range(width):
                        value[fx] |= gather(after[fx] + k).astype(np.uint64) << np.uint64(8 * k)
                    nxt[fx] = after[fx] + width
        if bad.any():
            slow[active[bad]] = True
            good = ~bad
            parts.append((active[good], field[good], wire[good], value[good], after[good], p[good]))
            pos[active] = nxt
            active = active[good & (nxt < e)]
        else:
            parts.append((active, field, wire, value, after, p))
            pos[active] = nxt
            active = active[nxt < e]
    slow[active] = True  # more fields than max_steps
    names = ("msg", "field", "wire", "value", "start", "offset")
    if parts:
        table = {k: np.concatenate([part[i] for part in parts]) for i, k in enumerate(names)}
        order = np.argsort(table["msg"], kind="stable")
        if slow.any():
            order = order[~slow[table["msg"][order]]]
        table = {k: v[order] for k, v in table.items()}
    else:
        table = {k: np.zeros(0, np.uint64 if k == "value" else np.int64) for k in names}
    return table, _where(slow)


def _tail(buf, active, pos, ends, slow):
    """scan's last messages, walked with iter_fields (malformed ones marked slow)."""
    rows = []
    for m in active.tolist():
        got = []
        try:
            for f, w, v, off in iter_fields(buf, int(pos[m]), int(ends[m])):
                if w == LEN:
                    got.append((m, f, w, v[1], v[0], off))
                elif v >> 64 or f >> 62:  # past what the numpy walk holds: the caller's walk decides
                    raise FormatError("wide value")
                else:
                    got.append((m, f, w, v, off, off))
        except FormatError:
            slow[m] = True
            continue
        rows.extend(got)
    if not rows:
        return (np.zeros(0, np.int64),) * 3 + (np.zeros(0, np.uint64),) + (np.zeros(0, np.int64),) * 2
    cols = list(zip(*rows))
    return tuple(np.array(c, np.uint64 if i == 3 else np.int64) for i, c in enumerate(cols))


class PreadBuffer:
    """A file's bytes for header walks, read with pread in small blocks.

    Touching a memory map maps whole page-cache folios into the process (on ext4 with large folios
    one header byte maps ~1-2 MB), so walking the headers of a 1 GB model through its map put
    ~100 MB of file pages in the resident set. pread copies just the pieces asked for. Supports
    what the walkers use: len(), buf[i], buf[a:b] (bytes) and gather(positions)."""

    BLOCK = 512  # for buf[i] and short slices: a tensor's header fits, copying it costs nothing
    KEEP = 2048  # blocks cached (1 MB)

    def __init__(self, path, size: int):
        self.fd = os.open(os.fspath(path), os.O_RDONLY | getattr(os, "O_BINARY", 0))
        self.size = size
        self._blocks: dict[int, bytes] = {}
        self._base, self._cur = 0, b""  # the block buf[i] read last

    def close(self) -> None:
        self.forget()
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def forget(self) -> None:
        """Drop what was read (a walk is over; the next one reads again)."""
        self._blocks, self._base, self._cur = {}, 0, b""
        self._pieces, self._store = PreadBuffer._pieces, PreadBuffer._store

    def __len__(self) -> int:
        return self.size

    def _block(self, i: int) -> bytes:
        b = self._blocks.get(i)
        if b is None:
            if len(self._blocks) >= self.KEEP:
                self._blocks.pop(next(iter(self._blocks)))
            b = self._blocks[i] = os.pread(self.fd, self.BLOCK, i * self.BLOCK)
        return b

    def __getitem__(self, key):
        if type(key) is int:
            j = key - self._base
            if 0 <= j < len(self._cur):
                return self._cur[j]
            if not 0 <= key < self.size:
                raise IndexError("PreadBuffer index out of range")
            self._base = key - key % self.BLOCK
            self._cur = self._block(key // self.BLOCK)
            return self._cur[key - self._base]
        start, stop, _ = key.indices(self.size)
        if stop - start > 2 * self.BLOCK:
            return os.pread(self.fd, stop - start, start)
        return b"".join(self._block(i)[max(start - i * self.BLOCK, 0):stop - i * self.BLOCK]
                        for i in range(start // self.BLOCK, (stop - 1) // self.BLOCK + 1)) if stop > start else b""

    def gather(self, positions: np.ndarray) -> np.ndarray:
        """The bytes at `positions`, from 256-byte pieces kept for the whole walk (a tensor's header
        is one piece: thousands of tensors cost thousands of small reads once, not per step)."""
        index = positions // GATHER_PIECE
        need = np.sort(index)
        need = need[np.concatenate(([True], need[1:] != need[:-1]))] if need.size else need
        have, missing = self._pieces, need
        if have.size:
            at = np.minimum(np.searchsorted(have, need), have.size - 1)
            missing = need[have[at] != need]
        if missing.size:
            self._read_pieces(missing)
        row = np.searchsorted(self._pieces, index)
        return self._store[row, positions % GATHER_PIECE]

    _pieces = np.zeros(0, np.int64)
    _store = np.zeros((0, 256), np.uint8)

    def _read_pieces(self, missing: np.ndarray) -> None:
        """Read the pieces `missing` (sorted), one pread per run of adjacent pieces."""
        firsts = np.flatnonzero(np.concatenate(([True], np.diff(missing) != 1)))
        counts = np.diff(np.append(firsts, missing.size))
        chunks = []
        for first, n in zip(missing[firsts].tolist(), counts.tolist()):
            data = os.pread(self.fd, n * GATHER_PIECE, first * GATHER_PIECE)
            chunks.append(data.ljust(n * GATHER_PIECE, b"\0"))
        new = np.frombuffer(b"".join(chunks), np.uint8).reshape(-1, GATHER_PIECE)
        ids = np.concatenate((self._pieces, missing))
        order = np.argsort(ids, kind="stable")
        self._pieces = ids[order]
        self._store = np.concatenate((self._store, new))[order]


GATHER_PIECE = 256
