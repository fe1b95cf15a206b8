"""Filling a file with planned tensors, one at a time, at offsets fixed before any data is read.

Both output formats know every tensor's name, shape and dtype up front, so the header (safetensors
JSON, torch pickle + zip records) is laid out first and each tensor's bytes go to a known offset.
Tensors move in chunks of CHUNK_BYTES through a two-stage pipeline: this thread makes chunk k+1
(the transform's last copy -- a transpose, a cast -- goes straight from the source view into a
reused chunk buffer; for the torch zip, its CRC32 too) while a writer thread pwrites chunk k
(writing into the page cache is the slower stage, so the CRC goes to this thread); numpy's
copy, os.pwrite and zlib.crc32 all release the GIL. A C-contiguous little-endian value (a tensor
that needs no transform) is pwritten from its own memory, with no copy at all. So no output
tensor is ever held whole in memory: the writer's own memory is two chunk buffers, each at most
a quarter of the largest tensor (and at most CHUNK_BYTES).

An entry is (name, shape, dtype, produce) or (name, shape, dtype, produce, source): produce() ->
array; source() -> a context manager yielding the value as it is (a view of the input file, say),
valid until the context exits. The writer prefers `source` when there is one. A source may also
yield a `StoredSpan` (the value's bytes lie verbatim in the input file): those are copied file to
file by the kernel (copy_file_range: no page faults on the input map, no copy through user space),
falling back to a pwrite from the input's map where the kernel cannot (another file system).
"""
from __future__ import annotations

import errno
import os
import queue
import threading
import zlib

import numpy as np

from ..arrays import StoredSpan, release_pages
from ..errors import ConvertersError, TruncatedError
from ..mapping.materialise import copy_into

CHUNK_BYTES = 4 << 20
MIN_CHUNK_BYTES = 256 << 10
COPY_BYTES = 64 << 20  # per copy_file_range request: no buffer is involved, only the call count
_BUFFERS = 2


def little(dtype) -> np.dtype:
    """Both formats store little-endian bytes."""
    dtype = np.dtype(dtype)
    return dtype.newbyteorder("<") if dtype.byteorder == ">" else dtype


def nbytes(shape, dtype) -> int:
    return int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize


def write_tensors(fd: int, entries, offsets, *, checksum: bool = False, progress=None) -> list[int]:
    """Write every entry's bytes at its offset in `fd`; returns each tensor's CRC32 when
    `checksum`, else zeros."""
    crcs = [0] * len(entries)
    largest = max((nbytes(e[1], e[2]) for e in entries), default=0)
    pipe = _Pipeline(fd, min(CHUNK_BYTES, max(MIN_CHUNK_BYTES, largest // 4)))
    try:
        for i, (entry, offset) in enumerate(zip(entries, offsets)):
            name, shape, dtype, produce, *rest = entry
            if rest and rest[0] is not None:
                with rest[0]() as value:
                    if isinstance(value, StoredSpan) and _span_fits(value, shape, dtype):
                        crcs[i] = _write_span(pipe, value, name, offset, checksum)
                    else:
                        value = value.view() if isinstance(value, StoredSpan) else value
                        crcs[i] = _write_value(pipe, _checked(value, name, shape, dtype), offset, checksum)
            else:
                crcs[i] = _write_value(pipe, _checked(produce(), name, shape, dtype), offset, checksum)
            if progress is not None:
                progress.update(1)
    except BaseException:
        pipe.close(check=False)  # the caller's error is the one to report
        raise
    pipe.close()
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


def _write_span(pipe, span: StoredSpan, name: str, offset: int, checksum: bool) -> int:
    """Queue a file-to-file copy of the span, chunk by chunk; the CRC32 (torch's zip records)
    is taken from the input's map, which reads the pages without copying them."""
    crc = 0
    view = span.view().reshape(-1).view(np.uint8) if checksum else None
    step = pipe.chunk if checksum else COPY_BYTES  # a CRC chunk is computed while the last is copied
    for start in range(0, span.nbytes, step):
        n = min(step, span.nbytes - start)
        if checksum:
            crc = zlib.crc32(view[start:start + n], crc)
            release_pages(view[start:start + n])  # read once for the CRC: not kept in RSS
        pipe.submit_copy(span, name, start, n, offset + start)
    return crc


def _write_value(pipe, value: np.ndarray, offset: int, checksum: bool) -> int:
    """Queue `value`'s little-endian bytes for offset, in chunks: from its own memory when it is
    already laid out as stored, else copied chunk by chunk (along the first axis) into buffers.
    Returns their CRC32 when `checksum`, else 0."""
    dtype = little(value.dtype)
    crc = 0
    if value.size == 0:
        return crc
    chunk = pipe.chunk
    if value.flags.c_contiguous and value.dtype == dtype:
        flat = value.reshape(-1).view(np.uint8)
        for start in range(0, flat.nbytes, chunk):
            if checksum:
                crc = zlib.crc32(flat[start:start + chunk], crc)
            pipe.submit(flat[start:start + chunk], offset + start)
        return crc
    if value.ndim == 0:
        value = value.reshape(1)
    row = value.nbytes // value.shape[0]
    per = max(1, chunk // row)
    for r in range(0, value.shape[0], per):
        part = value[r:r + per]
        buf = pipe.buffer(part.nbytes)
        copy_into(buf[:part.nbytes].view(dtype).reshape(part.shape), part)
        if checksum:
            crc = zlib.crc32(buf[:part.nbytes], crc)
        pipe.submit(buf[:part.nbytes], offset + r * row, buf)
    return crc


def _pwrite_all(fd, data, offset: int) -> None:
    data = memoryview(data)
    while len(data):
        done = os.pwrite(fd, data, offset)
        data, offset = data[done:], offset + done


_NO_COPY_RANGE = {errno.EXDEV, errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.EBADF, errno.EPERM}


class _SpanCopier:
    """File-to-file copies of stored spans; after the kernel refuses one (another file system, an
    old kernel), pwrites from the input's map instead."""

    def __init__(self):
        self.copy_range = hasattr(os, "copy_file_range")

    def copy(self, span: StoredSpan, name: str, start: int, n: int, out_fd: int, out_offset: int) -> None:
        """Bytes start..start+n of the span into out_fd at out_offset."""
        src, at = span.check(name), span.offset + start
        while n and self.copy_range:
            try:
                done = os.copy_file_range(src, out_fd, n, at, out_offset)
            except OSError as e:
                if e.errno not in _NO_COPY_RANGE:
                    raise
                self.copy_range = False
                break
            if done == 0:
                raise TruncatedError(f"the source ends before byte {at + n} of {name}", file=span.path, array=name,
                                     offset=at, hint="the file was truncated while converting")
            n, at, out_offset, start = n - done, at + done, out_offset + done, start + done
        if n:
            _pwrite_all(out_fd, span.view().reshape(-1).view(np.uint8)[start:start + n], out_offset)


class _Pipeline:
    """A writer thread that pwrites chunks in submission order while the caller makes the next
    one; chunk buffers go back to the caller once written."""

    def __init__(self, fd, chunk):
        self.fd, self.chunk, self.error = fd, chunk, None
        self.spans = _SpanCopier()
        self.free = queue.SimpleQueue()
        self.spare = _BUFFERS  # buffers not allocated yet: a file of small tensors never needs them
        self.work = queue.Queue(maxsize=2 * _BUFFERS)
        self.thread = threading.Thread(target=self._run, name="converters-writer", daemon=True)
        self.thread.start()

    def buffer(self, n: int) -> np.ndarray:
        """A chunk buffer of at least n bytes (a one-off buffer for a chunk larger than self.chunk:
        a single row that long)."""
        self._raise()
        if n > self.chunk:
            return np.empty(n, np.uint8)
        if self.spare:
            self.spare -= 1
            return np.empty(self.chunk, np.uint8)
        return self.free.get()

    def submit(self, data: np.ndarray, offset: int, buf=None) -> None:
        self._raise()
        self.work.put((data, offset, buf))

    def submit_copy(self, span: StoredSpan, name: str, start: int, n: int, offset: int) -> None:
        """Copy bytes start..start+n of a stored span to `offset`, in order with the chunks."""
        self._raise()
        self.work.put(((span, name, start, n), offset, None))

    def _run(self):
        while (item := self.work.get()) is not None:
            data, offset, buf = item
            try:
                if self.error is None and isinstance(data, tuple):
                    self.spans.copy(*data, self.fd, offset)
                elif self.error is None:
                    _pwrite_all(self.fd, data, offset)
            except BaseException as e:  # noqa: BLE001 - handed to the caller's thread
                self.error = e
            finally:
                del data, item
                if buf is not None and buf.nbytes == self.chunk:
                    self.free.put(buf)
                buf = None

    def _raise(self):
        if self.error is not None:
            raise self.error

    def close(self, check: bool = True):
        self.work.put(None)
        self.thread.join()
        if check:
            self._raise()
