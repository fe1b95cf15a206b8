"""Shape arithmetic the graph frontends share (MXNet, TensorFlow): output sizes of convolutions
and pooling, broadcasting, reshape with one -1. A shape is a tuple whose entries are ints or None
(unknown); a whole shape is None when not even the rank is known."""
from __future__ import annotations

import math


def conv_out(size, kernel, stride, dilation, pad_begin, pad_end):
    """One spatial dim of a convolution's output (floor), None when the input size is unknown."""
    if size is None:
        return None
    return (size + pad_begin + pad_end - dilation * (kernel - 1) - 1) // stride + 1


def pool_out(size, kernel, stride, pad_begin, pad_end, ceil):
    """One spatial dim of a pooling output as MXNet/PyTorch compute it before PyTorch's
    "last window must start inside the input" correction (see `torch_ceil_drops_window`)."""
    if size is None:
        return None
    span = size + pad_begin + pad_end - kernel
    return (math.ceil(span / stride) if ceil else span // stride) + 1


def torch_ceil_drops_window(size, kernel, stride, pad) -> bool:
    """True when PyTorch's ceil_mode pooling drops a last window that starts in the padding
    (MXNet's `full` convention keeps it): then the two disagree on the output size."""
    out = pool_out(size, kernel, stride, pad, pad, True)
    return (out - 1) * stride >= size + pad


def same_out(size, stride):
    """TF SAME: out = ceil(in / stride)."""
    return None if size is None else -(-size // stride)


def broadcast(*shapes):
    """numpy broadcasting of several shapes (None entries stay unknown); None if any rank is unknown."""
    if any(s is None for s in shapes):
        return None
    ndim = max(len(s) for s in shapes)
    out = []
    for i in range(ndim):
        dims = [s[i - ndim + len(s)] for s in shapes if i - ndim + len(s) >= 0]
        known = [d for d in dims if d is not None and d != 1]
        if any(d is None for d in dims) and not known:
            out.append(None)
        else:
            out.append(known[0] if known else 1)
    return tuple(out)


def numel(shape):
    """Elements of a shape, None when any dim is unknown."""
    if shape is None or any(d is None for d in shape):
        return None
    return math.prod(shape)


def with_minus_one(shape, total):
    """Resolve one -1 in a reshape target against `total` elements (None stays -1)."""
    shape = list(shape)
    if -1 in shape and total is not None:
        rest = math.prod(d for d in shape if d != -1)
        shape[shape.index(-1)] = total // rest if rest else 0
    return tuple(shape)
