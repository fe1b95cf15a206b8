"""Running a rule's chain on real data and handing out contiguous arrays.

Transforms return numpy views where they can (a permute is free); the copy that makes the result
contiguous is done here. A transposed 2-D view (a TF/Keras dense kernel: most of such a
conversion's time) is copied through a small staging buffer (`_transpose_staged`): GROUP source
rows at a time are first copied as they lie (contiguous runs), into rows padded by PAD elements,
then transposed out of it. Copying a transposed view directly reads the source at a stride of
one row, and at power-of-two widths (2048 floats = 8 KB) those reads all fall in the same few
cache sets and evict each other; through the padded buffer both passes stream. Measured on row
chunks of 2048x2048 kernels (what the streaming writer copies): 0.5-0.75 s/GB, where column tiles
took 1.2-1.6 s/GB, numpy's own copy 2-3 s/GB and torch's 5-30 s/GB; at width 724 it is as fast as
tiles (0.35-0.45 s/GB). Where OpenCV is installed (the parity extra), cv2.transpose does that copy
instead, about twice as fast again (0.15 s/GB on the same chunks, 0.13 s/GB on two threads).
Other views go through torch's parallel copy when it can take them (2-4x faster than numpy for
permuted conv kernels). A writer that knows where a tensor's bytes go (a memory-mapped output)
takes the views from `outputs` and lets `copy_into` make that one copy straight into the file.
"""
from __future__ import annotations

import contextlib
import warnings

import numpy as np

from ..arrays import release_pages
from .transforms import chain_apply

try:
    import torch
except ImportError:  # pragma: no cover - torch is a dependency; keep numpy-only use possible
    torch = None


def _torch_copy(dest, arr) -> bool:
    """dest[...] = arr by torch's parallel copy; False where torch cannot view the arrays."""
    if torch is None or arr.shape != dest.shape or any(s < 0 for s in arr.strides):
        return False
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # read-only source views: torch only reads them here
            torch.from_numpy(dest).copy_(torch.from_numpy(arr))
        return True
    except (TypeError, RuntimeError, ValueError):  # dtypes torch lacks (ml_dtypes bfloat16), byte-swapped
        return False


TILE = 64  # columns per tile: 64 source rows' pages fit the L1 TLB
GROUP = 128  # source rows staged at a time
STAGE_ROWS = 1024  # output rows per staging pass: the buffer is at most GROUP x (STAGE_ROWS + PAD)
PAD = 16  # elements added to each staged row, so the transposing reads do not alias in the cache


def contiguous_copy(arr: np.ndarray) -> np.ndarray:
    """A C-contiguous array that owns its memory."""
    if arr.flags.c_contiguous:
        return np.array(arr, copy=True, order="C")
    out = np.empty(arr.shape, arr.dtype)
    copy_into(out, arr)
    return out


def copy_into(dest: np.ndarray, arr: np.ndarray) -> None:
    """Copy `arr` into the C-contiguous `dest` of the same shape; only the byte order may differ."""
    if arr.ndim == 2 and arr.shape[1] > TILE and abs(arr.strides[0]) < abs(arr.strides[1]):
        if arr.strides[0] == arr.itemsize:  # a transposed matrix: its source rows are contiguous
            if not (arr.dtype == dest.dtype and _transpose_opencv(dest, arr)):
                _transpose_staged(dest, arr)
            return
        for c in range(0, arr.shape[1], TILE):  # otherwise strided: tiles of whole columns
            np.copyto(dest[:, c:c + TILE], arr[:, c:c + TILE], casting="equiv")
    elif arr.flags.c_contiguous or arr.dtype != dest.dtype or not _torch_copy(dest, arr):
        np.copyto(dest, arr, casting="equiv")


_OPENCV_VIEWS = {1: np.uint8, 2: np.uint16, 4: np.int32, 8: np.float64}  # same-size types OpenCV moves bit for bit
_opencv = None  # cv2 once looked for; False where it is not installed


def opencv():
    """cv2, imported on the first transpose (21 ms; `import converters` stays light), or None."""
    global _opencv
    if _opencv is None:
        try:
            import cv2
        except ImportError:
            cv2 = False
        _opencv = cv2
    return _opencv or None


def _transpose_opencv(dest: np.ndarray, arr: np.ndarray) -> bool:
    """dest[...] = arr for a transposed view by cv2.transpose (SIMD, GIL released: 0.15 s/GB on
    one core, against 0.24-0.35 s/GB for the staged numpy copy); False where OpenCV (the parity
    extra) is missing or cannot take the arrays. Only bytes move, so any dtype goes through as an
    unsigned type of its size (bfloat16 included); nothing is converted."""
    cv2, view = opencv(), _OPENCV_VIEWS.get(arr.itemsize)
    if cv2 is None or view is None or min(arr.shape) == 0 or max(arr.shape) >= 2**31:
        return False
    out = dest.view(view)
    try:
        written = cv2.transpose(arr.T.view(view), out)
    except cv2.error:
        return False
    return written is out or np.shares_memory(written, out)  # else OpenCV made an array of its own


def _transpose_staged(dest: np.ndarray, arr: np.ndarray) -> None:
    """dest[...] = arr for a transposed view `arr` (arr.T has contiguous rows), via a padded buffer."""
    rows, cols = arr.shape
    src = arr.T
    step = min(rows, STAGE_ROWS)
    staged = np.empty((GROUP, step + PAD), arr.dtype)
    for r in range(0, rows, step):
        n = min(step, rows - r)
        for c in range(0, cols, GROUP):
            g = min(GROUP, cols - c)
            block = staged[:g, :n]
            np.copyto(block, src[c:c + g, r:r + n])
            np.copyto(dest[r:r + n, c:c + g], block.T, casting="equiv")


@contextlib.contextmanager
def outputs(assignment, arrays):
    """The assignment's outputs as the chain leaves them (views of the source file where free);
    the file pages the sources touched are released on exit, once the caller copied them."""
    views = []
    for s in assignment.sources:
        handle = arrays[s]
        span = handle.stored_span()
        if span is not None:
            span.check(s)  # a view past the file's end would be a SIGBUS: an error instead
        views.append(handle.numpy(copy=False))
    try:
        out = chain_apply(assignment.rule.transforms, views if len(views) > 1 else views[0])
        yield [np.asarray(o) for o in (out if isinstance(out, list) else [out])]
    finally:
        for v in views:
            release_pages(v)


def produce(assignment, arrays) -> list[np.ndarray]:
    """The assignment's output arrays, contiguous and independent of the source file."""
    with outputs(assignment, arrays) as outs:
        return [contiguous_copy(o) for o in outs]
