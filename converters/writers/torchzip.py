"""The zip container torch.save writes, laid out before any record's data exists.

Records are stored (not compressed) with their data 64-byte aligned by an extra field of 'Z's
(id "FB", as torch's writer pads), so torch.load(mmap=True) can map them in place. Every size is
known in advance, so each record's data offset is too; only CRC32s are filled in afterwards, by
writing the local header once its data is written. Sizes and offsets of 4 GiB or more use zip64
fields; the zip64 end records are always written, as torch does.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass

ALIGNMENT = 64
ZIP64_LIMIT = 0xFFFFFFFF
_UTF8 = 0x0800


@dataclass
class Record:
    name: bytes
    size: int
    header_offset: int
    extra: bytes  # local extra fields: zip64 sizes (when needed) and the alignment padding
    crc: int = 0

    @property
    def data_offset(self) -> int:
        return self.header_offset + 30 + len(self.name) + len(self.extra)


class ZipLayout:
    """Records in file order; `zip64_limit` is lowered only by tests, to exercise zip64 on small files."""

    def __init__(self, prefix: str, zip64_limit: int = ZIP64_LIMIT):
        self.prefix, self.limit, self.records, self.end = prefix, zip64_limit, [], 0

    def add(self, name: str, size: int) -> Record:
        full = f"{self.prefix}/{name}".encode()
        zip64 = struct.pack("<HHQQ", 1, 16, size, size) if size >= self.limit else b""
        unpadded = self.end + 30 + len(full) + len(zip64) + 4
        pad = -unpadded % ALIGNMENT
        rec = Record(full, size, self.end, zip64 + struct.pack("<HH", 0x4246, pad) + b"Z" * pad)  # "FB"
        self.records.append(rec)
        self.end = rec.data_offset + size
        return rec

    def local_header(self, rec: Record) -> bytes:
        big = rec.size >= self.limit
        size = ZIP64_LIMIT if big else rec.size
        return struct.pack("<IHHHHHIIIHH", 0x04034B50, 45 if big else 20, _UTF8, 0, 0, 0, rec.crc, size, size,
                           len(rec.name), len(rec.extra)) + rec.name + rec.extra

    def directory(self) -> bytes:
        """Central directory and end records, to be written at `self.end`."""
        out = []
        for rec in self.records:
            fields = [rec.size, rec.size] if rec.size >= self.limit else []
            if rec.header_offset >= self.limit:
                fields.append(rec.header_offset)
            extra = struct.pack(f"<HH{len(fields)}Q", 1, 8 * len(fields), *fields) if fields else b""
            size = ZIP64_LIMIT if rec.size >= self.limit else rec.size
            offset = ZIP64_LIMIT if rec.header_offset >= self.limit else rec.header_offset
            out.append(struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 45, 45 if fields else 20, _UTF8, 0, 0, 0,
                                   rec.crc, size, size, len(rec.name), len(extra), 0, 0, 0, 0, offset)
                       + rec.name + extra)
        cd = b"".join(out)
        n, cd_offset, eocd64 = len(self.records), self.end, self.end + len(cd)
        tail = struct.pack("<IQHHIIQQQQ", 0x06064B50, 44, 45, 45, 0, 0, n, n, len(cd), cd_offset)
        tail += struct.pack("<IIQI", 0x07064B50, 0, eocd64, 1)
        tail += struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, min(n, 0xFFFF), min(n, 0xFFFF),
                            min(len(cd), ZIP64_LIMIT), min(cd_offset, ZIP64_LIMIT), 0)
        return cd + tail
