"""TensorFlow's padding="same" arithmetic, shared by the Keras-derived modules."""
from __future__ import annotations

import math


def same_pads(size: int, kernel: int, stride: int, dilation: int = 1) -> tuple[int, int]:
    """(before, after) padding of one axis: out = ceil(size/stride), total pad =
    max((out-1)*stride + (kernel-1)*dilation + 1 - size, 0), the odd pixel going after."""
    out = math.ceil(size / stride)
    total = max((out - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)
    return total // 2, total - total // 2
