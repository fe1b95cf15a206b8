"""The LevelDB table (SSTable) format, as TensorFlow writes it for checkpoint `.index` files.

Layout (tensorflow/core/lib/io/table_format): data blocks, a meta-index block, an index block,
then a 48-byte footer: two BlockHandles (varint offset, varint size) padded to 40 bytes and the
8-byte magic 0xdb4775248b80fb57. Each block is followed by a 5-byte trailer: a compression type
byte (0 = none, 1 = snappy) and a masked crc32c. A block holds prefix-compressed entries
(varint shared, varint non_shared, varint value_length, key delta, value) then a restart array of
uint32 offsets and its uint32 count. The tensor-bundle writer never compresses, so a compressed
block is refused rather than decoded (no snappy dependency).

Values are returned as (offset, length) spans into the file so callers can walk protobufs in
place without copying.
"""
from __future__ import annotations

from ..errors import FormatError, TruncatedError, UnsupportedError
from ._binary import FileView
from ._protowire import read_varint

MAGIC = 0xDB4775248B80FB57
FOOTER_SIZE = 48
TRAILER_SIZE = 5


def has_magic(path) -> bool:
    """True when the file ends with the table magic (cheap: reads 8 bytes)."""
    try:
        with open(path, "rb") as fh:
            fh.seek(0, 2)
            size = fh.tell()
            if size < FOOTER_SIZE:
                return False
            fh.seek(size - 8)
            return int.from_bytes(fh.read(8), "little") == MAGIC
    except OSError:
        return False


def _block_handle(view: FileView, pos: int, end: int, what: str) -> tuple[tuple[int, int], int]:
    offset, pos = read_varint(view.buf, pos, end, view.path)
    size, pos = read_varint(view.buf, pos, end, view.path)
    return (offset, size), pos


def read_footer(view: FileView) -> tuple[tuple[int, int], tuple[int, int]]:
    """(metaindex handle, index handle) from the last 48 bytes."""
    if view.size < FOOTER_SIZE:
        raise TruncatedError(f"a table needs at least {FOOTER_SIZE} bytes (footer) but the file has {view.size}",
                             file=view.path, offset=0, hint="the .index file is truncated")
    start = view.size - FOOTER_SIZE
    (magic,) = view.unpack("<Q", view.size - 8, "table magic")
    if magic != MAGIC:
        raise FormatError(f"table footer magic is {magic:#018x}, expected {MAGIC:#018x}", file=view.path,
                          offset=view.size - 8, hint="not a TensorFlow checkpoint .index file, or truncated")
    metaindex, pos = _block_handle(view, start, view.size - 8, "metaindex handle")
    index, _ = _block_handle(view, pos, view.size - 8, "index handle")
    return metaindex, index


def block_entries(view: FileView, handle: tuple[int, int], what: str):
    """Yield (key bytes, (value offset, value length)) for each entry of the block at `handle`."""
    offset, size = handle
    view.require(offset, size + TRAILER_SIZE, f"{what} block and trailer")
    kind = view.buf[offset + size]
    if kind != 0:
        raise UnsupportedError(f"{what} block is compressed (type {kind}{', snappy' if kind == 1 else ''})",
                               file=view.path, offset=offset,
                               hint="TensorFlow's bundle writer never compresses; re-save the checkpoint with TF")
    if size < 4:
        raise FormatError(f"{what} block of {size} bytes has no restart count", file=view.path, offset=offset)
    end = offset + size
    (num_restarts,) = view.unpack("<I", end - 4, "restart count")
    limit = end - 4 - 4 * num_restarts
    if num_restarts == 0 or limit < offset:
        raise FormatError(f"{what} block claims {num_restarts} restart points, impossible in {size} bytes",
                          file=view.path, offset=end - 4)
    pos, key = offset, b""
    while pos < limit:
        entry = pos
        shared, pos = read_varint(view.buf, pos, limit, view.path)
        unshared, pos = read_varint(view.buf, pos, limit, view.path)
        vlen, pos = read_varint(view.buf, pos, limit, view.path)
        if shared > len(key) or pos + unshared + vlen > limit:
            raise FormatError(f"{what} entry (shared {shared}, key {unshared}, value {vlen} bytes) "
                              "does not fit its block",
                              file=view.path, offset=entry)
        key = key[:shared] + bytes(view.buf[pos:pos + unshared])
        pos += unshared
        yield key, (pos, vlen)
        pos += vlen


def read_table(view: FileView):
    """Yield every (key, value span) of the table in key order: index block -> data blocks."""
    _metaindex, index = read_footer(view)
    for _last_key, (vpos, vlen) in block_entries(view, index, "index"):
        handle, _ = _block_handle(view, vpos, vpos + vlen, "data block handle")
        yield from block_entries(view, handle, "data")


def table_spans(view: FileView):
    """The whole table as (keys, value starts, value lengths) lists, or None when a block is
    compressed or an entry does not fit (read_table then walks it and names the error).

    The same walk as read_table with the usual one-byte varints inlined: a checkpoint of thousands
    of small variables spends ~3 us per entry in read_table's generators and read_varint calls."""
    buf = view.buf
    try:
        blocks = [_block_handle(view, vpos, vpos + vlen, "data block handle")[0]
                  for _k, (vpos, vlen) in block_entries(view, read_footer(view)[1], "index")]
    except (FormatError, UnsupportedError):
        return None
    keys, starts, lens = [], [], []
    add_key, add_start, add_len = keys.append, starts.append, lens.append
    for offset, size in blocks:
        if offset < 0 or size < 4 or offset + size + TRAILER_SIZE > view.size or buf[offset + size] != 0:
            return None
        end = offset + size
        num_restarts = int.from_bytes(buf[end - 4:end], "little")
        limit = end - 4 - 4 * num_restarts
        if num_restarts == 0 or limit < offset:
            return None
        d = buf[offset:limit]  # bytes: indexing and slicing a bytes object is the cheapest there is
        pos, n, key = 0, limit - offset, b""
        try:
            while pos < n:
                shared = d[pos]
                if shared < 0x80:
                    pos += 1
                else:
                    shared, pos = read_varint(d, pos, n)
                unshared = d[pos]
                if unshared < 0x80:
                    pos += 1
                else:
                    unshared, pos = read_varint(d, pos, n)
                vlen = d[pos]
                if vlen < 0x80:
                    pos += 1
                else:
                    vlen, pos = read_varint(d, pos, n)
                if shared > len(key) or pos + unshared + vlen > n:
                    return None
                key = key[:shared] + d[pos:pos + unshared]
                pos += unshared
                add_key(key)
                add_start(offset + pos)
                add_len(vlen)
                pos += vlen
        except (IndexError, FormatError):
            return None
    return keys, starts, lens
