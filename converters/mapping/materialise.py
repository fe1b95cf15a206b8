"""Running a rule's chain on real data and handing out contiguous arrays.

Transforms return numpy views where they can (a permute is free); the copy that makes the result
contiguous is done here. A transposed 2-D view (a TF/Keras dense kernel: most of such a
conversion's time) is copied in column tiles of TILE: each tile's reads stay within a few dozen
pages, which keeps the TLB warm; measured 1.2-2x faster than torch's own transposing copy for
whole 2048x2048 kernels and 5-20x faster than torch or numpy on row chunks of one (what the
streaming writer copies). Other views go through torch's parallel copy when it can take them
(2-4x faster than numpy for permuted conv kernels). A writer that
knows where a tensor's bytes go (a memory-mapped output) takes the views from `outputs` and lets
`copy_into` make that one copy straight into the file.
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
        for c in range(0, arr.shape[1], TILE):  # transposed: tiles of whole columns
            np.copyto(dest[:, c:c + TILE], arr[:, c:c + TILE], casting="equiv")
    elif arr.flags.c_contiguous or arr.dtype != dest.dtype or not _torch_copy(dest, arr):
        np.copyto(dest, arr, casting="equiv")


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
