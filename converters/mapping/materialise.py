"""Running a rule's chain on real data and handing out contiguous arrays.

Transforms return numpy views where they can (a permute is free); the copy that makes the result
contiguous is done here, by torch when possible: its blocked, multi-threaded copy is 2-4x faster
than numpy's for transposed views, which is most of a TF/Keras conversion's time.
"""
from __future__ import annotations

import warnings

import numpy as np

from ..arrays import release_pages
from .transforms import chain_apply

try:
    import torch
except ImportError:  # pragma: no cover - torch is a dependency; keep numpy-only use possible
    torch = None


def contiguous_copy(arr: np.ndarray) -> np.ndarray:
    """A C-contiguous array that owns its memory."""
    if torch is not None and not arr.flags.c_contiguous and all(s >= 0 for s in arr.strides):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # read-only source views: torch only reads them here
                return torch.from_numpy(arr).contiguous().numpy()
        except (TypeError, RuntimeError):  # dtypes torch lacks (ml_dtypes bfloat16 views etc.)
            pass
    return np.array(arr, copy=True, order="C")


def produce(assignment, arrays) -> list[np.ndarray]:
    """The assignment's output arrays, contiguous and independent of the source file; the file
    pages the sources touched are released so they do not count twice in memory."""
    views = [arrays[s].numpy(copy=False) for s in assignment.sources]
    out = chain_apply(assignment.rule.transforms, views if len(views) > 1 else views[0])
    out = [contiguous_copy(np.asarray(o)) for o in (out if isinstance(out, list) else [out])]
    for v in views:
        release_pages(v)
    return out
