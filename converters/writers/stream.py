"""Filling a file with planned tensors, one at a time, at offsets fixed before any data is read.

Both output formats know every tensor's name, shape and dtype up front, so the header (safetensors
JSON, torch pickle + zip records) is laid out first and each tensor's bytes go to a known offset.
A tensor of at least MAP_MIN_BYTES is written through a memory map of its own window of the
output: the transform's last copy (a transpose, a cast) lands in the file's page-cache pages
directly, with no intermediate array and no write() copy. Its CRC (torch zip) and the unmapping run
on a helper thread while the next tensor is made; at most two windows are mapped at once, and no
output tensor is ever held in anonymous memory. Smaller tensors are made in memory and pwritten.

An entry is (name, shape, dtype, produce) or (name, shape, dtype, produce, source): produce() ->
array; source() -> a context manager yielding the value as it is (a view of the input file, say),
valid until the context exits, for the writer to copy from.
"""
from __future__ import annotations

import concurrent.futures
import contextlib
import mmap
import os
import zlib

import numpy as np

from ..arrays import c_contiguous
from ..errors import ConvertersError
from ..mapping.materialise import copy_into

MAP_MIN_BYTES = 1 << 20


def little(dtype) -> np.dtype:
    """Both formats store little-endian bytes."""
    dtype = np.dtype(dtype)
    return dtype.newbyteorder("<") if dtype.byteorder == ">" else dtype


def nbytes(shape, dtype) -> int:
    return int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize


def write_tensors(fd: int, entries, offsets, *, checksum: bool = False, progress=None) -> list[int]:
    """Write every entry's bytes at its offset in `fd` (already long enough for the mapped ones);
    returns each tensor's CRC32 when `checksum`, else zeros."""
    crcs = [0] * len(entries)
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="converters-writer") as pool:
        pending = None
        try:
            for i, (entry, offset) in enumerate(zip(entries, offsets)):
                name, shape, dtype, produce, *rest = entry
                source = rest[0] if rest else None
                n = nbytes(shape, dtype)
                if n >= MAP_MIN_BYTES:
                    mm, delta = _mapped_fill(fd, offset, n, name, tuple(shape), np.dtype(dtype), produce, source)
                    if pending is not None:
                        pending.result()
                    pending = pool.submit(_finish, mm, delta, n, checksum, crcs, i)
                else:
                    data = _bytes_of(_checked(produce(), name, shape, dtype))
                    _pwrite_all(fd, data, offset)
                    if checksum:
                        crcs[i] = zlib.crc32(data)
                if progress is not None:
                    progress.update(1)
        finally:
            if pending is not None:
                pending.result()
    return crcs


def _checked(value, name, shape, dtype) -> np.ndarray:
    arr = np.asarray(value)
    if arr.shape != tuple(shape) or arr.dtype != np.dtype(dtype):
        raise ConvertersError(f"produced {arr.dtype}{list(arr.shape)}, planned {np.dtype(dtype)}{list(shape)}",
                              array=name)
    return arr


def _bytes_of(arr: np.ndarray) -> memoryview:
    arr = c_contiguous(arr)
    if arr.dtype.byteorder == ">":
        arr = arr.astype(little(arr.dtype))
    return memoryview(arr.reshape(-1).view(np.uint8))


def _pwrite_all(fd, data: memoryview, offset: int) -> None:
    while len(data):
        done = os.pwrite(fd, data, offset)
        data, offset = data[done:], offset + done


def _mapped_fill(fd, offset, n, name, shape, dtype, produce, source):
    """Map the window [offset, offset + n) and copy the tensor into it; returns (map, offset in map)."""
    start = offset - offset % mmap.ALLOCATIONGRANULARITY
    mm = mmap.mmap(fd, offset - start + n, offset=start)
    try:
        dest = np.frombuffer(mm, np.uint8, n, offset - start).view(little(dtype)).reshape(shape)
        try:
            if source is not None:
                with source() as value:
                    copy_into(dest, _checked(value, name, shape, dtype))
            else:
                copy_into(dest, _checked(produce(), name, shape, dtype))
        finally:
            del dest
    except BaseException:
        with contextlib.suppress(BufferError):  # a traceback may still reference a view of the map
            mm.close()
        raise
    return mm, offset - start


def _finish(mm, delta, n, checksum, crcs, i) -> None:
    """The tensor's CRC32 (zlib releases the GIL), then unmap: its dirty pages stay in the page cache."""
    try:
        if checksum:
            with memoryview(mm) as view:
                crcs[i] = zlib.crc32(view[delta:delta + n])
    finally:
        mm.close()
