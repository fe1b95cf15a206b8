"""MobileNetV2 as `keras.applications.MobileNetV2` builds it, in PyTorch (NCHW).

torchvision's MobileNetV2 is not the same network as Keras': Keras pads its stride-2 convolutions
TensorFlow's way (the extra pixel goes bottom/right, where PyTorch pads symmetrically), uses
BatchNorm eps 1e-3 (PyTorch 1e-5) and ends its classifier with a softmax. This module copies
Keras' layer sequence so that the table `keras/mobilenet_v2` fills it and the outputs agree:

* `conv1` (Keras `Conv1`): 3x3 stride 2, padding "same" -> `TFSamePad2d` then an unpadded conv.
* `blocks[i]` (Keras `block_{i}_*`, block 0 is `expanded_conv_*`): 1x1 `expand` (not in block 0),
  3x3 depthwise (`groups` = channels), 1x1 linear `project`, each followed by BatchNorm; ReLU6
  after expand and depthwise; a residual add when the shape is kept. Keras puts an explicit
  `ZeroPadding2D(correct_pad(...))` before each stride-2 depthwise conv: `KerasCorrectPad`.
* `conv_1` (Keras `Conv_1`): 1x1 to 1280 channels (more when alpha > 1), BatchNorm, ReLU6.
* `predictions`: global average pooling, Linear, softmax (`classifier_activation`).

BatchNorm momentum: Keras' 0.999 keeps 99.9% of the running statistic; PyTorch's `momentum` is
the weight of the new batch, so the same schedule is 0.001 (it matters only when training).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .tf_padding import TFSamePad2d

# (expansion, filters before alpha, stride) of Keras' blocks 0..16
BLOCKS = [(1, 16, 1),
          (6, 24, 2), (6, 24, 1),
          (6, 32, 2), (6, 32, 1), (6, 32, 1),
          (6, 64, 2), (6, 64, 1), (6, 64, 1), (6, 64, 1),
          (6, 96, 1), (6, 96, 1), (6, 96, 1),
          (6, 160, 2), (6, 160, 1), (6, 160, 1),
          (6, 320, 1)]

KERAS_BN_EPS = 1e-3
KERAS_BN_MOMENTUM = 1 - 0.999


def make_divisible(v: float, divisor: int = 8) -> int:
    """Keras' channel rounding: nearest multiple of `divisor`, never more than 10% below v."""
    new_v = max(divisor, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:
        new_v += divisor
    return new_v


class KerasCorrectPad(nn.Module):
    """Keras' `ZeroPadding2D(imagenet_utils.correct_pad(x, 3))` before a stride-2 3x3 conv.

    Keras computes it from the static feature-map size: (size % 2, 1) per axis, i.e. one pixel
    bottom/right on even sizes, one on each side on odd sizes (the same as TF "SAME"). A Keras model
    built with an unknown spatial size (input_shape=(None, None, 3)) pads (0, 1) whatever the size:
    `static=False` copies that.
    """

    def __init__(self, static: bool = True):
        super().__init__()
        self.static = static

    def forward(self, x):
        if not self.static:
            return F.pad(x, (0, 1, 0, 1))
        h, w = x.shape[-2], x.shape[-1]
        return F.pad(x, (w % 2, 1, h % 2, 1))

    def extra_repr(self):
        return f"static={self.static}"


def _bn(channels: int, eps: float) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=eps, momentum=KERAS_BN_MOMENTUM)


class InvertedResidual(nn.Module):
    """One Keras `_inverted_res_block`: [expand 1x1 -> BN -> ReLU6] -> depthwise 3x3 -> BN -> ReLU6
    -> project 1x1 -> BN, plus the input when channels and size are kept."""

    def __init__(self, in_channels: int, out_channels: int, expansion: int, stride: int, eps: float,
                 static_pad: bool):
        super().__init__()
        hidden = in_channels * expansion
        if expansion != 1:
            self.expand = nn.Conv2d(in_channels, hidden, 1, bias=False)
            self.expand_bn = _bn(hidden, eps)
        else:  # Keras block 0 (`expanded_conv_`) has no expansion layer
            self.expand = self.expand_bn = None
        self.pad = KerasCorrectPad(static_pad) if stride == 2 else None
        self.depthwise = nn.Conv2d(hidden, hidden, 3, stride, padding=0 if stride == 2 else 1,
                                   groups=hidden, bias=False)
        self.depthwise_bn = _bn(hidden, eps)
        self.project = nn.Conv2d(hidden, out_channels, 1, bias=False)
        self.project_bn = _bn(out_channels, eps)
        self.residual = in_channels == out_channels and stride == 1

    def forward(self, x):
        y = x
        if self.expand is not None:
            y = F.relu6(self.expand_bn(self.expand(y)))
        if self.pad is not None:
            y = self.pad(y)
        y = F.relu6(self.depthwise_bn(self.depthwise(y)))
        y = self.project_bn(self.project(y))
        return x + y if self.residual else y


class MobileNetV2(nn.Module):
    """Keras applications MobileNetV2, NCHW input (Keras feeds NHWC: permute(0, 3, 1, 2)).

    alpha, num_classes (Keras `classes`), include_top, pooling and classifier_activation mean what
    they mean for `keras.applications.MobileNetV2`. input_size: the Keras model's input height and
    width (int or pair); None when it was built with an unknown size, which changes Keras' padding
    before stride-2 depthwise convs (see `KerasCorrectPad`). bn_eps: keep Keras' 1e-3.
    """

    def __init__(self, alpha: float = 1.0, num_classes: int = 1000, input_size=224, include_top: bool = True,
                 pooling: str | None = None, classifier_activation: str | None = "softmax",
                 bn_eps: float = KERAS_BN_EPS):
        super().__init__()
        if pooling not in (None, "avg", "max"):
            raise ValueError(f"pooling must be None, 'avg' or 'max', not {pooling!r}")
        if classifier_activation not in (None, "softmax"):
            raise ValueError(f"classifier_activation must be 'softmax' or None, not {classifier_activation!r}")
        self.alpha, self.input_size = alpha, input_size
        self.include_top, self.pooling, self.classifier_activation = include_top, pooling, classifier_activation
        static_pad = input_size is not None

        first = make_divisible(32 * alpha, 8)
        self.conv1_pad = TFSamePad2d(3, 2)
        self.conv1 = nn.Conv2d(3, first, 3, 2, bias=False)
        self.conv1_bn = _bn(first, bn_eps)

        blocks, channels = [], first
        for expansion, filters, stride in BLOCKS:
            out = make_divisible(int(filters * alpha), 8)
            blocks.append(InvertedResidual(channels, out, expansion, stride, bn_eps, static_pad))
            channels = out
        self.blocks = nn.ModuleList(blocks)

        last = make_divisible(1280 * alpha, 8) if alpha > 1.0 else 1280
        self.conv_1 = nn.Conv2d(channels, last, 1, bias=False)
        self.conv_1_bn = _bn(last, bn_eps)
        self.num_features = last
        self.predictions = nn.Linear(last, num_classes) if include_top else None

    def features(self, x):
        x = F.relu6(self.conv1_bn(self.conv1(self.conv1_pad(x))))
        for block in self.blocks:
            x = block(x)
        return F.relu6(self.conv_1_bn(self.conv_1(x)))

    def forward(self, x):
        x = self.features(x)
        if self.include_top:
            x = self.predictions(x.mean(dim=(2, 3)))
            return torch.softmax(x, dim=1) if self.classifier_activation == "softmax" else x
        if self.pooling == "avg":
            return x.mean(dim=(2, 3))
        if self.pooling == "max":
            return x.amax(dim=(2, 3))
        return x
