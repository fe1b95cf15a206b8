"""Filling a file with planned tensors at offsets fixed before any data is read.

Both output formats know every tensor's name, shape and dtype up front, so the header (safetensors
JSON, torch pickle + zip records) is laid out first and each tensor's bytes go to a known offset.
That lets the work be split: each tensor is cut into pieces of at most PIECE_BYTES (whole rows),
and WORKERS threads write pieces at once, each piece by one thread from start to end: the
transform's last copy (a transpose, a cast) from the source view into the thread's chunk buffer,
then a pwrite of the chunk, chunk after chunk. numpy's copy, os.pwrite, copy_file_range and
zlib.crc32 release the GIL, so a transpose on one core overlaps a transpose or a write on the
other, and a chunk is written from the cache of the core that made it. For the torch zip each
piece's CRC32 is taken as it is written and the pieces' CRCs are combined (writers/crc.py).

This thread stays the only one that opens and reads the source (readers need not be thread-safe):
it takes each tensor's value, as a view where it can, and hands its pieces to the workers. Two
kinds of value hold memory until their last piece is written: one the chain had to materialise
(an array of its own) and one rearranged out of the input's map (a transposed piece reads every
page of its source, so they all stay mapped). At most one of those is in flight, cut into at
least one piece per worker so that the threads share it: the writer's memory stays one tensor
plus a chunk buffer per thread (each at most a quarter of the largest tensor, and at most
CHUNK_BYTES). Measured on a TF checkpoint of 64 transposed 16 MB kernels: peak RSS 15 MB over
the baseline, where a tensor per thread made it 32 MB, at the same speed. A C-contiguous
little-endian value is pwritten from its own memory, with no copy at all.

An entry is (name, shape, dtype, produce) or (name, shape, dtype, produce, source): produce() ->
array; source() -> a context manager yielding the value as it is (a view of the input file, say),
valid until the context exits, which happens once all its pieces are written. The writer prefers
`source`. A source may also yield a `StoredSpan` (the value's bytes lie verbatim in the input
file): those are copied file to file by the kernel (copy_file_range: no page faults on the input
map, no copy through user space), falling back to a pwrite from the input's map where the kernel
cannot (another file system).
"""
from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import errno
import mmap
import os
import threading
import zlib

import numpy as np

from ..arrays import StoredSpan, map_of, release_pages
from ..errors import ConvertersError, TruncatedError
from ..mapping.materialise import copy_into
from .crc import crc32_combine

CHUNK_BYTES = 1 << 20  # measured best of 256 KB-4 MB at 1 GB (0.94-1.0 s against 1.04-1.44 s for 4 MB)
MIN_CHUNK_BYTES = 256 << 10
PIECE_BYTES = 16 << 20  # a worker's unit: small enough to share one large tensor between threads
COPY_BYTES = 64 << 20  # per copy_file_range request: no buffer is involved, only the call count
WORKERS = max(1, min(2, os.cpu_count() or 1))


def little(dtype) -> np.dtype:
    """Both formats store little-endian bytes."""
    dtype = np.dtype(dtype)
    return dtype.newbyteorder("<") if dtype.byteorder == ">" else dtype


def nbytes(shape, dtype) -> int:
    return int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize


def write_tensors(fd: int, entries, offsets, *, checksum: bool = False, progress=None,
                  workers: int | None = None, core_busy: bool = False) -> list[int]:
    """Write every entry's bytes at its offset in `fd`; returns each tensor's CRC32 when
    `checksum`, else zeros. `core_busy`: something else keeps a core busy meanwhile (the source
    hash): stored bytes are then copied by one thread, the other core's being taken (measured at
    1 GB: 1.0 s on one thread, 1.2-1.5 s on two, against 0.52-0.56 s on two without the hash)."""
    crcs = [0] * len(entries)
    largest = max((nbytes(e[1], e[2]) for e in entries), default=0)
    chunk = min(CHUNK_BYTES, max(MIN_CHUNK_BYTES, largest // 4))
    with _Workers(fd, chunk, checksum, workers or WORKERS, spans_alone=core_busy) as pool:
        for i, (entry, offset) in enumerate(zip(entries, offsets)):
            name, shape, dtype, produce, *rest = entry
            with contextlib.ExitStack() as stack:
                if rest and rest[0] is not None:
                    value = stack.enter_context(rest[0]())
                    if isinstance(value, StoredSpan) and not _span_fits(value, shape, dtype):
                        value = value.view()
                else:
                    pool.wait_for_whole()  # produce() allocates: the previous such tensor goes first
                    value = produce()
                if not isinstance(value, StoredSpan):
                    value = _checked(value, name, shape, dtype)
                pool.submit(i, name, value, offset, stack.pop_all(), progress)
        for i, crc in pool.finish():
            crcs[i] = crc
    return crcs


def _checked(value, name, shape, dtype) -> np.ndarray:
    arr = np.asarray(value)
    if arr.shape != tuple(shape) or arr.dtype != np.dtype(dtype):
        raise ConvertersError(f"produced {arr.dtype}{list(arr.shape)}, planned {np.dtype(dtype)}{list(shape)}",
                              array=name)
    return arr


def _span_fits(span: StoredSpan, shape, dtype) -> bool:
    """The stored bytes are exactly the planned tensor's little-endian bytes."""
    return span.shape == tuple(shape) and span.dtype == np.dtype(dtype) and little(span.dtype) == span.dtype


def _borrowed(value) -> bool:
    """A StoredSpan or a view of a file's map: it costs no memory of this process's own."""
    return isinstance(value, StoredSpan) or map_of(value) is not None


def _as_stored(value) -> bool:
    """Its bytes are already the output's: written (or copied file to file) as they are."""
    return isinstance(value, StoredSpan) or (value.flags.c_contiguous and value.dtype == little(value.dtype))


def _pieces(value, offset: int, workers: int) -> list[tuple[int, int, int, int]]:
    """(start, stop, output offset, bytes) of each piece: bytes of a span or a contiguous value,
    rows of any other (a piece is whole rows, so its chunks are made along the first axis). A
    value to rearrange is cut into at least one piece per worker, so that the threads share it
    rather than each holding a tensor of its own (see `_Workers.submit`)."""
    size = value.nbytes
    if _as_stored(value):
        return [(s, min(s + PIECE_BYTES, size), offset + s, min(PIECE_BYTES, size - s))
                for s in range(0, size, PIECE_BYTES)]
    rows = value.shape[0] if value.ndim else 1
    row = size // rows if rows else 0
    per = max(1, min(PIECE_BYTES // row, -(-rows // workers))) if row else 1
    return [(r, min(r + per, rows), offset + r * row, (min(r + per, rows) - r) * row) for r in range(0, rows, per)]


_Tensor = collections.namedtuple("_Tensor", "index futures sizes stack whole progress")


class _Workers:
    """The pieces of the tensors in flight, written by a thread pool; tensors are finished (their
    CRC combined, their source context closed) in order, from the calling thread."""

    def __init__(self, fd: int, chunk: int, checksum: bool, workers: int, spans_alone: bool = False):
        self.fd, self.chunk, self.checksum, self.spans_alone = fd, chunk, checksum, spans_alone
        self.workers = workers
        self.spans = _SpanCopier()
        self.local = threading.local()
        self.stopping = False
        self.pool = concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="converters-writer")
        # copy_file_range calls go one at a time: two at once contend in the kernel for the output's
        # lock (a third more CPU for no gain, and slower once the source hash needs the other core)
        self.copier = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="converters-copier")
        self.limit = workers + 1  # pieces queued or running: one ready for each thread as it frees up
        self.tensors: collections.deque[_Tensor] = collections.deque()
        self.done: list[tuple[int, int]] = []

    def __enter__(self):
        return self

    def __exit__(self, kind, error, tb):
        if kind is not None:  # the caller's error (or a worker's) is the one to report
            self.stopping = True
        try:
            while self.tensors:
                t = self.tensors.popleft()
                concurrent.futures.wait(t.futures)
                t.stack.close()
        finally:
            self.pool.shutdown(wait=True)
            self.copier.shutdown(wait=True)
        return False

    def submit(self, index: int, name: str, value, offset: int, stack, progress) -> None:
        """Queue the value's pieces; `stack` (its source context) is closed once they are written.

        A value that holds memory for as long as any of its pieces is being written goes alone:
        one materialised by the chain (its own memory), or one rearranged out of the input's map
        (a transposed piece reads every page of its source, so the pages stay mapped until its
        last piece). The threads then share that one tensor, and peak RSS stays one tensor plus a
        chunk buffer per thread, where a tensor per thread would double it."""
        whole = not _borrowed(value) or not _as_stored(value)
        if whole:
            self.wait_for_whole()
        tensor = _Tensor(index, [], [], stack, whole, progress)
        pieces = _pieces(value, offset, self.workers)
        left = _Countdown(len(pieces))
        try:
            for start, stop, at, size in pieces:
                while self._pending() + sum(not f.done() for f in tensor.futures) >= self.limit:
                    if not self._finish_oldest():  # none older: wait for one of this tensor's own
                        concurrent.futures.wait(tensor.futures, return_when=concurrent.futures.FIRST_COMPLETED)
                pool = self.copier if isinstance(value, StoredSpan) and (
                    self.spans_alone or self._in_kernel(value, start, at)) else self.pool
                tensor.futures.append(pool.submit(self._piece, name, value, start, stop, at, left))
                tensor.sizes.append(size)
        finally:
            self.tensors.append(tensor)

    def _pending(self) -> int:
        return sum(not f.done() for t in self.tensors for f in t.futures)

    def wait_for_whole(self) -> None:
        while any(t.whole for t in self.tensors):
            self._finish_oldest()

    def finish(self) -> list[tuple[int, int]]:
        while self.tensors:
            self._finish_oldest()
        return self.done

    def _finish_oldest(self) -> bool:
        """Wait for the oldest tensor's pieces, combine its CRC, release its source; False when
        there is none (but the one being submitted)."""
        if not self.tensors:
            return False
        t = self.tensors.popleft()
        try:
            crc = 0
            for future, size in zip(t.futures, t.sizes):
                piece = future.result()  # a worker's error is raised here
                crc = crc32_combine(crc, piece, size) if self.checksum else 0
        finally:
            t.stack.close()
        self.done.append((t.index, crc))
        if t.progress is not None:
            t.progress.update(1)
        return True

    # --- in the worker threads

    def _piece(self, name: str, value, start: int, stop: int, at: int, left: _Countdown) -> int:
        """Write one piece; its CRC32 when checksumming. The tensor's last piece drops the source
        pages it touched from RSS at once (a transposed piece reads every page of its source),
        without waiting for the tensors before it to finish."""
        try:
            return self._write_piece(name, value, start, stop, at)
        finally:
            if left.one_done() and isinstance(value, np.ndarray):
                release_pages(value)

    def _write_piece(self, name: str, value, start: int, stop: int, at: int) -> int:
        if self.stopping or start == stop:
            return 0
        if isinstance(value, StoredSpan):
            return self._span_piece(value, name, start, stop, at)
        if value.flags.c_contiguous and value.dtype == little(value.dtype):
            flat = value.reshape(-1).view(np.uint8)[start:stop]
            _pwrite_all(self.fd, flat, at)
            return zlib.crc32(flat) if self.checksum else 0
        return self._rows_piece(value, start, stop, at)

    def _span_piece(self, span: StoredSpan, name: str, start: int, stop: int, at: int) -> int:
        """Stored bytes to the output: in the kernel (copy_file_range) where they keep their place
        within a page, else through this thread's buffer (pread, then pwrite)."""
        if self._in_kernel(span, start, at):
            for s in range(start, stop, COPY_BYTES):
                n = min(stop, s + COPY_BYTES) - s
                copied = self.spans.copy(span, name, s, n, self.fd, at + s - start)
                if copied < n:  # the kernel refused (another file system): the rest through the buffer
                    return self._bounce(span, name, s + copied, stop, at + s + copied - start)
            return 0
        return self._bounce(span, name, start, stop, at)

    def _in_kernel(self, span: StoredSpan, start: int, at: int) -> bool:
        """Where the kernel's copy is the fast one. Measured at 1 GB on ext4: bytes that keep their
        offset within a page copy as fast as shutil.copyfile (0.54 s), but shifted across pages
        cost 40% more (0.75 s), where a pread + pwrite through a 1 MB buffer on two threads takes
        0.44 s. A CRC (the torch zip) needs the bytes in memory anyway: through the buffer too,
        which also never touches the input's map (a file cut short is an error, not a SIGBUS)."""
        return self.spans.copy_range and not self.checksum and (span.offset + start - at) % mmap.PAGESIZE == 0

    def _bounce(self, span: StoredSpan, name: str, start: int, stop: int, at: int) -> int:
        """Bytes start..stop of the span read into this thread's buffer and written from it; their
        CRC32 when checksumming."""
        src, buf, crc = span.check(name), memoryview(self._buffer(self.chunk)), 0
        for s in range(start, stop, self.chunk):
            if self.stopping:
                break
            n = min(self.chunk, stop - s)
            _pread_all(src, buf[:n], span.offset + s, span, name)
            if self.checksum:
                crc = zlib.crc32(buf[:n], crc)
            _pwrite_all(self.fd, buf[:n], at + s - start)
        return crc

    def _rows_piece(self, value: np.ndarray, start: int, stop: int, at: int) -> int:
        """Rows start..stop of a value not laid out as stored, copied chunk by chunk into this
        thread's buffer (the last copy of the chain) and written from it."""
        dtype = little(value.dtype)
        if value.ndim == 0:
            value = value.reshape(1)
        row = value.nbytes // value.shape[0]
        per = max(1, self.chunk // row)
        crc = 0
        for r in range(start, stop, per):
            if self.stopping:
                break
            part = value[r:min(r + per, stop)]
            buf = self._buffer(part.nbytes)[:part.nbytes]
            copy_into(buf.view(dtype).reshape(part.shape), part)
            if self.checksum:
                crc = zlib.crc32(buf, crc)
            _pwrite_all(self.fd, buf, at + (r - start) * row)
        return crc

    def _buffer(self, n: int) -> np.ndarray:
        """This thread's chunk buffer (a one-off buffer for a single row longer than a chunk)."""
        if n > self.chunk:
            return np.empty(n, np.uint8)
        buf = getattr(self.local, "buf", None)
        if buf is None:
            buf = self.local.buf = np.empty(self.chunk, np.uint8)
        return buf


class _Countdown:
    """Pieces of one tensor still to write; True for the thread that writes the last."""

    def __init__(self, n: int):
        self.n, self.lock = n, threading.Lock()

    def one_done(self) -> bool:
        with self.lock:
            self.n -= 1
            return self.n == 0


def _pwrite_all(fd, data, offset: int) -> None:
    data = memoryview(data)
    while len(data):
        done = os.pwrite(fd, data, offset)
        data, offset = data[done:], offset + done


_NO_COPY_RANGE = {errno.EXDEV, errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.EBADF, errno.EPERM}


class _SpanCopier:
    """copy_file_range, until the kernel refuses it once (another file system, an old kernel)."""

    def __init__(self):
        self.copy_range = hasattr(os, "copy_file_range")

    def copy(self, span: StoredSpan, name: str, start: int, n: int, out_fd: int, out_offset: int) -> int:
        """Bytes start..start+n of the span into out_fd at out_offset, as far as the kernel takes
        them: returns how many it copied (n, or fewer once it refused)."""
        src, at, copied = span.check(name), span.offset + start, 0
        while copied < n and self.copy_range:
            try:
                done = os.copy_file_range(src, out_fd, n - copied, at + copied, out_offset + copied)
            except OSError as e:
                if e.errno not in _NO_COPY_RANGE:
                    raise
                self.copy_range = False
                break
            if done == 0:
                _truncated(span, name, at + n)
            copied += done
        return copied


def _pread_all(fd: int, buf: memoryview, offset: int, span: StoredSpan, name: str) -> None:
    while len(buf):
        done = os.preadv(fd, [buf], offset)
        if done == 0:
            _truncated(span, name, offset + len(buf))
        buf, offset = buf[done:], offset + done


def _truncated(span: StoredSpan, name: str, end: int):
    raise TruncatedError(f"the source ends before byte {end} of {name}", file=span.path, array=name,
                         offset=span.offset, hint="the file was truncated while converting")
