"""Bounds-checked access to a file's bytes: a read-only memory map for views, pread for copies.

Every length and offset a reader takes from a file goes through `require` before anything is
allocated, so a corrupt header gives a FormatError naming the file and byte offset instead of a
MemoryError, a hang or a numpy traceback.

Arrays stored as one run of bytes become `FileArray` handles (`FileView.handle`): `.numpy()` reads
them with `pread` straight into a new buffer, `.numpy(copy=False)` is a view into the map. pread is
one kernel copy with the kernel's readahead, where copying out of the map first faults every page in
through the map (one fault per page or folio, slow and erratic when the pages are not cached) and
then has to release them again; a file shortened while open is a TruncatedError, not a SIGBUS.
"""
from __future__ import annotations

import mmap
import os
import struct

import numpy as np

from ..arrays import ArrayHandle, StoredSpan
from ..errors import FormatError, TruncatedError

WALK_MAP_MAX = 8 << 20  # files up to this size walk their headers in the map itself
MAX_PREAD = 1 << 30  # bytes per preadv call (Linux returns at most ~2 GB per call anyway)
ANON_MIN = 2 << 20  # arrays from this size get a mapping of their own (see new_array)


class _Anonymous:
    """The owner (numpy `base`) of the private anonymous mapping an array lives in. Not a
    memoryview of an mmap, so `arrays.release_pages` never takes it for a file's pages."""

    __slots__ = ("_map", "__array_interface__")


def new_array(shape, dtype) -> np.ndarray:
    """An uninitialised, writeable, C-contiguous array for a reader to fill.

    From ANON_MIN bytes on it gets a private anonymous mapping of its own advised MADV_NOHUGEPAGE.
    First-touch page faults are most of what filling fresh memory costs, and on this VM (free-page
    reporting hands free huge blocks back to the host) huge pages make them erratic: np.empty asks
    for huge pages from 4 MB on, and reading into huge pages took 0.05 s or 0.40 s for the same
    128 MB (runs in streaks) and 0.34-2.8 s per GB, where 4 KB pages take a steady 0.085-0.09 s and
    0.47-0.62 s. Measured and dropped: huge pages for all arrays, or for a first 256 MB.
    """
    dtype = np.dtype(dtype)
    count = 1
    for d in shape:
        count *= int(d)
    nbytes = count * dtype.itemsize
    if nbytes < ANON_MIN or dtype.hasobject or not hasattr(mmap, "MADV_NOHUGEPAGE"):
        return np.empty(shape, dtype)
    try:
        mapped = mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        mapped.madvise(mmap.MADV_NOHUGEPAGE)
    except (OSError, ValueError):  # advisory; no mapping: the ordinary allocation
        return np.empty(shape, dtype)
    owner = _Anonymous()
    owner._map = mapped
    address = np.frombuffer(mapped, np.uint8, count=1).ctypes.data
    owner.__array_interface__ = {"shape": (nbytes,), "typestr": "|u1", "data": (address, False), "version": 3}
    return np.asarray(owner).view(dtype).reshape(shape)


class FileView:
    """The whole file as a read-only buffer (memory-mapped; pages load only when touched)."""

    def __init__(self, path, pread_headers: bool = False):
        """pread_headers: `unpack` and `bytes` read with pread instead of through the map, for
        readers whose headers are spread through a big file (touching the map would make the
        pages around every header resident: whole 2 MB folios on ext4)."""
        self.path = os.fspath(path)
        self.pread_headers = pread_headers
        self._headers = None
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
        if self._headers is not None:
            self._headers.close()
        self._fh.close()

    def fileno(self) -> int | None:
        """The open file's descriptor; None once closed (a closed number may be another file's)."""
        return None if self._fh.closed else self._fh.fileno()

    def headers(self):
        """The buffer to walk a file's headers in: the map for small files; pread blocks
        (`_protowire.PreadBuffer`) for big ones, where touching the map would make whole page-cache
        folios around every header resident (~1-2 MB each on ext4: +93 MB opening a 128 MB
        caffemodel). Supports len(), buf[i] and buf[a:b] (bytes)."""
        if self.size <= WALK_MAP_MAX:
            return self.buf
        if self._headers is None:
            from ._protowire import PreadBuffer

            try:
                self._headers = PreadBuffer(self.path, self.size)
            except OSError as e:
                raise FormatError(f"cannot open: {e.strerror or e}", file=self.path) from None
        return self._headers

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
        if self.pread_headers:
            return self.pread(offset, length, what, array)
        self.require(offset, length, what, array)
        return bytes(self.buf[offset:offset + length])

    def pread(self, offset: int, length: int, what: str = "data", array=None) -> bytes:
        """`length` bytes from `offset`, read with pread whatever `pread_headers` says (never the
        map: a file cut short since it was opened is a TruncatedError, not a SIGBUS)."""
        self.require(offset, length, what, array)
        out = os.pread(self._fh.fileno(), length, offset)
        if len(out) != length:
            self._shrunk(offset, length, what, array)
        return out

    def walk_view(self, what: str) -> FileView:
        """The view to walk a file's messages in once it is open: for a file up to WALK_MAP_MAX
        (whose headers() is the map), one pread copy of it (`snapshot`), since walking the map of
        a file cut short meanwhile would kill the process with SIGBUS where a short copy is a
        TruncatedError naming the file; bigger files' headers() are pread blocks already."""
        if 0 < self.size <= WALK_MAP_MAX and isinstance(self.buf, mmap.mmap):
            return self.snapshot(what)
        return self

    def snapshot(self, what: str = "the file") -> FileView:
        """A FileView over one pread copy of the whole file (meant for files up to WALK_MAP_MAX),
        for a header walk run after open: walking it never touches the map, so a file cut short
        meanwhile is a TruncatedError here instead of a SIGBUS inside the walk. It shares this
        view's descriptor (its handles pread from the file as this view's do) and closes nothing."""
        copy = _Snapshot.__new__(_Snapshot)
        copy.path, copy.size, copy.pread_headers, copy._headers, copy._fh = self.path, self.size, False, None, self._fh
        copy.buf = self.pread(0, self.size, what)
        return copy

    def check_size(self, what: str, array=None) -> None:
        """TruncatedError if the file is shorter now than when it was opened (for data read by a
        parser of its own, zipfile say, whose errors would not say why)."""
        size = os.fstat(self._fh.fileno()).st_size
        if size < self.size:
            raise self._cut(f"{what} cannot be read: the file now has {size} bytes", array, None)

    def unpack(self, fmt: str, offset: int, what: str = "header", array=None) -> tuple:
        n = struct.calcsize(fmt)
        if self.pread_headers:
            return struct.unpack(fmt, self.bytes(offset, n, what, array))
        self.require(offset, n, what, array)
        return struct.unpack_from(fmt, self.buf, offset)

    def read_into(self, out: np.ndarray, offset: int, what: str | None = None, array=None) -> np.ndarray:
        """Fill the C-contiguous `out` with the file's bytes from `offset` (pread, no map);
        `what` names the data in errors (default: its dtype and shape)."""
        raw = out.reshape(-1).view(np.uint8)
        n = raw.size
        if offset < 0 or offset + n > self.size:
            self.require(offset, n, what or f"{out.dtype}{list(out.shape)} data", array)
        fd, done = self._fh.fileno(), 0
        while done < n:
            got = os.preadv(fd, [raw[done:done + MAX_PREAD]], offset + done)
            if got <= 0:
                self._shrunk(offset + done, n - done, what or f"{out.dtype}{list(out.shape)} data", array)
            done += got
        return out

    def read_array(self, offset: int, dtype, shape, array=None) -> np.ndarray:
        """A new writeable array of `shape` elements of `dtype` at `offset`, read with pread."""
        out = new_array(shape, dtype)
        return self.read_into(out, offset, None, array) if out.size else out

    def handle(self, name: str, offset: int, dtype, shape, meta: dict | None = None) -> FileArray:
        """The handle of an array stored as `shape` elements of `dtype` from `offset`."""
        dtype = np.dtype(dtype)
        return FileArray(name, shape, dtype, lambda: self.read_array(offset, dtype, shape, name),
                         lambda: self.array(offset, dtype, shape, name), meta, span=(self, offset))

    def _shrunk(self, offset: int, length: int, what: str, array):
        size = os.fstat(self._fh.fileno()).st_size
        raise self._cut(f"{what} needs bytes {offset}..{offset + length} but the file now has {size}", array, offset)

    def _cut(self, message: str, array, offset) -> TruncatedError:
        return TruncatedError(f"{message} (it was {self.size} when opened)", file=self.path, array=array,
                              offset=offset, hint="the file was truncated or replaced while open")

    def array(self, offset: int, dtype, shape, array=None) -> np.ndarray:
        """A read-only numpy view of `shape` elements of `dtype` at `offset` (no copy)."""
        dtype = np.dtype(dtype)
        count = 1
        for d in shape:
            count *= int(d)
        if offset < 0 or count < 0 or offset + count * dtype.itemsize > self.size:  # message only on failure
            self.require(offset, count * dtype.itemsize, f"{dtype}{list(shape)} data", array)
        if count == 0:
            return np.zeros(shape, dtype)
        return np.frombuffer(self.buf, dtype=dtype, count=count, offset=offset).reshape(shape)


class _Snapshot(FileView):
    """`FileView.snapshot`'s view: bytes instead of a map, its parent's descriptor (not its to close)."""

    def close(self) -> None:
        pass


class FileArray(ArrayHandle):
    """A handle whose `.numpy()` reads a new array of its own (`read`, e.g. pread: handed out
    without a second copy) and whose `.numpy(copy=False)` is a view into the memory map (`view`).
    A subclass that finds its bytes another way overrides `view` and `where` (and `numpy`)."""

    __slots__ = ("_view", "_span")

    def __init__(self, name: str, shape, dtype, read, view, meta: dict | None = None, span=None):
        """span: (FileView, offset) where the bytes lie as they are (see `stored_span`)."""
        super().__init__(name, shape, dtype, read, meta, fresh=True)
        self._view = view
        self._span = span

    def view(self) -> np.ndarray:
        """The read-only view into the memory map that `.numpy(copy=False)` checks and returns."""
        return self._view()

    def where(self) -> tuple[FileView, int] | None:
        """(FileView, offset) where the bytes lie as they are, or None (see `stored_span`)."""
        return self._span

    def stored_span(self) -> StoredSpan | None:
        span = self.where()
        if span is None:
            return None
        view, offset = span
        return StoredSpan(view.path, offset, self.nbytes, self.shape, self.dtype, view.fileno,
                          lambda: self.numpy(copy=False))

    def numpy(self, copy: bool = True) -> np.ndarray:
        """copy=False: a read-only view into the map, valid while the file is open. Unlike the
        default copy (pread), touching it after the file was cut short kills the process with SIGBUS."""
        if copy:
            return super().numpy()
        arr = self.view()
        if arr.shape != self.shape or arr.dtype != self.dtype:
            raise FormatError(f"decoded {arr.dtype}{list(arr.shape)}, expected {self.dtype}{list(self.shape)}",
                              array=self.name)
        return arr


class SmallReads:
    """`.numpy()` of many small arrays of one file: one pread of up to WINDOW bytes from an array's
    start serves it and the arrays after it in file order (each copied out). An array read again
    or out of order reads afresh, so every copy comes from a pread made for it or for the array
    read just before it: a file cut short after opening is a TruncatedError, as with `handle`
    (for the arrays it cut: one whose window runs past the new end is read on its own).
    Per array ~1.5 us where a pread of its own costs ~3-5 us; arrays over WINDOW read on their own."""

    WINDOW = 64 << 10

    def __init__(self, view: FileView, starts: list | None = None, ends: list | None = None):
        """starts/ends: the byte spans of the arrays `handles` makes; none: arrays come by `add`."""
        self.view, self.starts, self.ends = view, [] if starts is None else starts, [] if ends is None else ends
        self.window = (-1, 0, 0, None)  # (next array, start, end, bytes): one tuple, threads never mix two

    def handles(self, names: list, shapes: list, dtypes: list, meta) -> list:
        """One WindowArray per (start, end) span, made without per-array checks (the caller
        validated shapes, dtypes and byte counts; `meta` a callable or one dict per array)."""
        if callable(meta):
            return [_window_array(self, i, *a, meta) for i, a in enumerate(zip(names, shapes, dtypes))]
        return [_window_array(self, i, *a) for i, a in enumerate(zip(names, shapes, dtypes, meta))]

    def add(self, name: str, shape: tuple, dtype: np.dtype, start: int, end: int, meta) -> WindowArray:
        """The WindowArray of the array at bytes start..end, unchecked as with `handles`. Arrays
        added in file order share preads."""
        h = _window_array(self, len(self.starts), name, shape, dtype, meta)
        self.starts.append(start)
        self.ends.append(end)
        return h

    def read(self, i: int, dtype, shape, name) -> np.ndarray:
        start, end = self.starts[i], self.ends[i]
        following, base, limit, buf = self.window
        if i != following or start < base or end > limit:
            if end - start > self.WINDOW:
                self.window = (-1, 0, 0, None)
                return self.view.read_array(start, dtype, shape, name)
            limit, j, stop = end, i + 1, start + self.WINDOW
            starts, ends = self.starts, self.ends
            while j < len(ends) and start <= starts[j] and ends[j] <= stop:
                if ends[j] > limit:
                    limit = ends[j]
                j += 1
            try:
                buf = self.view.read_into(np.empty(limit - start, np.uint8), start, "array data", name)
            except TruncatedError:  # the file was cut short: this array alone, which may still be whole
                self.window = (-1, 0, 0, None)
                return self.view.read_array(start, dtype, shape, name)
            base = start
        self.window = (i + 1, base, limit, buf)
        return np.ndarray(shape, dtype, buf, start - base).copy()  # its own, aligned


class WindowArray(FileArray):
    """A FileArray read through SmallReads: its SmallReads and index stand for FileArray's loader,
    view and span closures, so a handle is one object (files of thousands of arrays make thousands
    of handles, not four times as many objects for the garbage collector to walk)."""

    __slots__ = ("_reads", "_index")

    def numpy(self, copy: bool = True) -> np.ndarray:
        if not copy:
            return super().numpy(False)
        return self._reads.read(self._index, self.dtype, self.shape, self.name)  # its shape and dtype

    def view(self) -> np.ndarray:
        return self._reads.view.array(self._reads.starts[self._index], self.dtype, self.shape, self.name)

    def where(self) -> tuple[FileView, int]:
        return self._reads.view, self._reads.starts[self._index]


def _window_array(reads: SmallReads, i: int, name: str, shape: tuple, dtype: np.dtype, meta) -> WindowArray:
    h = WindowArray.__new__(WindowArray)  # (no __init__: nothing to check, no closures to make)
    h.name, h.shape, h.dtype, h._fresh, h._meta, h._reads, h._index = name, shape, dtype, True, meta, reads, i
    return h
