"""TensorFlow's padding="same" arithmetic, shared by the Keras-derived modules."""
from __future__ import annotations

import math

import torch.nn.functional as F
from torch import nn


def same_pads(size: int, kernel: int, stride: int, dilation: int = 1) -> tuple[int, int]:
    """(before, after) padding of one axis: out = ceil(size/stride), total pad =
    max((out-1)*stride + (kernel-1)*dilation + 1 - size, 0), the odd pixel going after."""
    out = math.ceil(size / stride)
    total = max((out - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)
    return total // 2, total - total // 2


class TFSamePad2d(nn.Module):
    """Padding that reproduces TensorFlow's padding="same" for a kernel and stride, computed from
    the input's size at run time; `value=-inf` for max pooling (padded cells never win)."""

    def __init__(self, kernel: int = 3, stride: int = 2, value: float = 0.0):
        super().__init__()
        self.kernel, self.stride, self.value = kernel, stride, value

    def forward(self, x):
        top, bottom = same_pads(x.shape[-2], self.kernel, self.stride)
        left, right = same_pads(x.shape[-1], self.kernel, self.stride)
        return F.pad(x, (left, right, top, bottom), value=self.value)

    def extra_repr(self):
        return f"kernel={self.kernel}, stride={self.stride}" + (f", value={self.value}" if self.value else "")
