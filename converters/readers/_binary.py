"""Bounds-checked access to a file's bytes through a read-only memory map.

Every length and offset a reader takes from a file goes through `require` before anything is
allocated, so a corrupt header gives a FormatError naming the file and byte offset instead of a
MemoryError, a hang or a numpy traceback.
"""
from __future__ import annotations

import mmap
import os
import struct

import numpy as np

from ..errors import FormatError, TruncatedError


class FileView:
    """The whole file as a read-only buffer (memory-mapped; pages load only when touched)."""

    def __init__(self, path):
        self.path = os.fspath(path)
        try:
            self._fh = open(self.path, "rb")
        except OSError as e:  # missing, a directory, no permission
            raise FormatError(f"cannot open: {e.strerror or e}", file=self.path) from None
        try:
            self.size = os.fstat(self._fh.fileno()).st_size
            self.buf = mmap.mmap(self._fh.fileno(), 0, access=mmap.ACCESS_READ) if self.size else b""
        except (OSError, ValueError) as e:
            self._fh.close()
            raise FormatError(f"cannot map the file: {e}", file=self.path) from None

    def close(self) -> None:
        # Arrays handed out with copy=False may still point into the map; let GC close it then.
        try:
            if isinstance(self.buf, mmap.mmap):
                self.buf.close()
        except BufferError:
            pass
        self._fh.close()

    def walking(self, on: bool) -> None:
        """Advise the kernel that reads are scattered (no readahead) while headers are walked,
        and back to normal (readahead helps materialising whole arrays) afterwards."""
        advice = getattr(mmap, "MADV_RANDOM" if on else "MADV_NORMAL", None)
        if isinstance(self.buf, mmap.mmap) and advice is not None:
            try:
                self.buf.madvise(advice)
            except (ValueError, OSError):  # advisory only
                pass
        if not on:
            self.release()

    def release(self) -> None:
        """Drop the pages a header walk touched from this process's resident set (they stay in the
        OS page cache), so opening a file costs no memory however its headers are spread."""
        if isinstance(self.buf, mmap.mmap) and hasattr(mmap, "MADV_DONTNEED"):
            try:
                self.buf.madvise(mmap.MADV_DONTNEED)
            except (ValueError, OSError):  # advisory only
                pass

    def require(self, offset: int, length: int, what: str, array=None) -> None:
        if offset < 0 or length < 0 or offset + length > self.size:
            raise TruncatedError(
                f"{what} needs bytes {offset}..{offset + length} but the file has {self.size}",
                file=self.path, array=array, offset=offset,
                hint="the file is truncated or corrupt")

    def bytes(self, offset: int, length: int, what: str = "data", array=None) -> bytes:
        self.require(offset, length, what, array)
        return bytes(self.buf[offset:offset + length])

    def unpack(self, fmt: str, offset: int, what: str = "header", array=None) -> tuple:
        n = struct.calcsize(fmt)
        self.require(offset, n, what, array)
        return struct.unpack_from(fmt, self.buf, offset)

    def array(self, offset: int, dtype, shape, array=None) -> np.ndarray:
        """A read-only numpy view of `shape` elements of `dtype` at `offset` (no copy)."""
        dtype = np.dtype(dtype)
        count = 1
        for d in shape:
            count *= int(d)
        self.require(offset, count * dtype.itemsize, f"{dtype}{list(shape)} data", array)
        if count == 0:
            return np.zeros(shape, dtype)
        return np.frombuffer(self.buf, dtype=dtype, count=count, offset=offset).reshape(shape)
