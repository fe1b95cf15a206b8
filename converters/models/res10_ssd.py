"""ResNet-10 SSD face detector: OpenCV's `res10_300x300_ssd_iter_140000` Caffe model in PyTorch.

The network of the model's deploy.prototxt up to its raw head outputs, as DetectionOutput reads
them:

* `mbox_loc` (N, 4 * priors): each box-regression head's output permuted to NHWC, flattened and
  concatenated, as the prototxt's Permute / Flatten / Concat layers do;
* `mbox_conf_flatten` (N, 2 * priors): the class heads the same way, then reshaped to
  (N, priors, 2), softmaxed over the 2 classes (background, face) and flattened again.

Attribute names are the Caffe layer names, so a converted model and the Caffe net can be compared
layer by layer. Caffe BatchNorm + Scale pairs are one `nn.BatchNorm2d` each (named after the
BatchNorm layer; the Scale's gamma/beta are its weight/bias). The SSD `Normalize` layer is
`L2Norm`. Caffe's Pooling rounds output sizes up: the max-pool has ceil_mode=True.

Not here, on purpose: PriorBox and DetectionOutput hold no learned numbers. `prior_boxes()` gives
the priors exactly as the prototxt's PriorBox layers lay them out; decoding the boxes and the
non-maximum suppression of DetectionOutput are left to the caller (torchvision.ops.nms).
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

# Caffe's BatchNorm default eps; every BatchNorm layer of the published prototxt uses it.
CAFFE_BN_EPS = 1e-5


def _conv(cin, cout, k, stride=1, pad=0, dilation=1, bias=True):
    return nn.Conv2d(cin, cout, k, stride=stride, padding=pad, dilation=dilation, bias=bias)


def _bn(channels):
    return nn.BatchNorm2d(channels, eps=CAFFE_BN_EPS)


class L2Norm(nn.Module):
    """SSD's `Normalize` layer (across_spatial: false, channel_shared: false): each pixel's channel
    vector divided by its L2 norm sqrt(sum x^2 + eps), times a learned per-channel scale."""

    def __init__(self, channels: int, eps: float = 1e-10, scale: float = 20.0):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.full((channels,), float(scale)))

    def forward(self, x):
        norm = torch.sqrt(x.pow(2).sum(dim=1, keepdim=True) + self.eps)
        return x / norm * self.weight.view(1, -1, 1, 1)


# The six SSD heads: (source feature, channels, priors per cell, PriorBox min/max size, aspect
# ratios, step), from the prototxt's PriorBox layers.
HEADS = [
    ("conv4_3_norm", 128, 4, 30.0, 60.0, (2.0,), 8.0),
    ("fc7", 256, 6, 60.0, 111.0, (2.0, 3.0), 16.0),
    ("conv6_2", 256, 6, 111.0, 162.0, (2.0, 3.0), 32.0),
    ("conv7_2", 128, 6, 162.0, 213.0, (2.0, 3.0), 64.0),
    ("conv8_2", 128, 4, 213.0, 264.0, (2.0,), 100.0),
    ("conv9_2", 128, 4, 264.0, 315.0, (2.0,), 300.0),
]
PRIOR_VARIANCE = (0.1, 0.1, 0.2, 0.2)
NUM_CLASSES = 2


class ResNet10SSD(nn.Module):
    """Input: (N, 3, H, W) BGR, the mean (104, 177, 123) already subtracted (300x300 as trained).
    Returns (mbox_loc, mbox_conf_flatten), see the module docstring."""

    def __init__(self):
        super().__init__()
        self.data_bn = _bn(3)  # a BatchNorm + Scale on the input itself
        self.conv1_h = _conv(3, 32, 7, 2, 3)
        self.conv1_bn_h = _bn(32)
        self.conv1_pool = nn.MaxPool2d(3, 2, ceil_mode=True)
        # layer_64_1: the block's input is already activated (conv1's ReLU); identity shortcut
        self.layer_64_1_conv1_h = _conv(32, 32, 3, 1, 1, bias=False)
        self.layer_64_1_bn2_h = _bn(32)
        self.layer_64_1_conv2_h = _conv(32, 32, 3, 1, 1, bias=False)
        # pre-activation blocks with a 1x1 projection shortcut from the activated input
        self.layer_128_1_bn1_h = _bn(32)
        self.layer_128_1_conv1_h = _conv(32, 128, 3, 2, 1, bias=False)
        self.layer_128_1_bn2 = _bn(128)
        self.layer_128_1_conv2 = _conv(128, 128, 3, 1, 1, bias=False)
        self.layer_128_1_conv_expand_h = _conv(32, 128, 1, 2, 0, bias=False)
        self.layer_256_1_bn1 = _bn(128)
        self.layer_256_1_conv1 = _conv(128, 256, 3, 2, 1, bias=False)
        self.layer_256_1_bn2 = _bn(256)
        self.layer_256_1_conv2 = _conv(256, 256, 3, 1, 1, bias=False)
        self.layer_256_1_conv_expand = _conv(128, 256, 1, 2, 0, bias=False)
        self.layer_512_1_bn1 = _bn(256)
        self.layer_512_1_conv1_h = _conv(256, 128, 3, 1, 1, bias=False)
        self.layer_512_1_bn2_h = _bn(128)
        self.layer_512_1_conv2_h = _conv(128, 256, 3, 1, 2, dilation=2, bias=False)
        self.layer_512_1_conv_expand_h = _conv(256, 256, 1, 1, 0, bias=False)
        self.last_bn_h = _bn(256)
        # extra SSD feature layers
        self.conv6_1_h = _conv(256, 128, 1)
        self.conv6_2_h = _conv(128, 256, 3, 2, 1)
        self.conv7_1_h = _conv(256, 64, 1)
        self.conv7_2_h = _conv(64, 128, 3, 2, 1)
        self.conv8_1_h = _conv(128, 64, 1)
        self.conv8_2_h = _conv(64, 128, 3, 1, 1)
        self.conv9_1_h = _conv(128, 64, 1)
        self.conv9_2_h = _conv(64, 128, 3, 1, 1)
        self.conv4_3_norm = L2Norm(128)
        for feature, channels, priors, *_ in HEADS:
            setattr(self, f"{feature}_mbox_loc", _conv(channels, priors * 4, 3, 1, 1))
            setattr(self, f"{feature}_mbox_conf", _conv(channels, priors * NUM_CLASSES, 3, 1, 1))

    def features(self, x) -> dict:
        """The six feature maps the heads read, by the prototxt's names."""
        x = self.data_bn(x)
        x = self.conv1_pool(F.relu(self.conv1_bn_h(self.conv1_h(x))))
        y = self.layer_64_1_conv2_h(F.relu(self.layer_64_1_bn2_h(self.layer_64_1_conv1_h(x))))
        x = y + x
        a = F.relu(self.layer_128_1_bn1_h(x))
        y = self.layer_128_1_conv2(F.relu(self.layer_128_1_bn2(self.layer_128_1_conv1_h(a))))
        x = y + self.layer_128_1_conv_expand_h(a)
        a = F.relu(self.layer_256_1_bn1(x))
        conv4_3 = a  # Normalize reads the activated input of layer_256_1
        y = self.layer_256_1_conv2(F.relu(self.layer_256_1_bn2(self.layer_256_1_conv1(a))))
        x = y + self.layer_256_1_conv_expand(a)
        a = F.relu(self.layer_512_1_bn1(x))
        y = self.layer_512_1_conv2_h(F.relu(self.layer_512_1_bn2_h(self.layer_512_1_conv1_h(a))))
        x = y + self.layer_512_1_conv_expand_h(a)
        fc7 = F.relu(self.last_bn_h(x))
        conv6_2 = F.relu(self.conv6_2_h(F.relu(self.conv6_1_h(fc7))))
        conv7_2 = F.relu(self.conv7_2_h(F.relu(self.conv7_1_h(conv6_2))))
        conv8_2 = F.relu(self.conv8_2_h(F.relu(self.conv8_1_h(conv7_2))))
        conv9_2 = F.relu(self.conv9_2_h(F.relu(self.conv9_1_h(conv8_2))))
        return {"conv4_3_norm": self.conv4_3_norm(conv4_3), "fc7": fc7, "conv6_2": conv6_2,
                "conv7_2": conv7_2, "conv8_2": conv8_2, "conv9_2": conv9_2}

    def forward(self, x):
        maps = self.features(x)
        loc, conf = [], []
        for feature, *_ in HEADS:
            # Permute (0, 2, 3, 1) then Flatten: per cell, per prior, its 4 offsets / 2 scores
            loc.append(getattr(self, f"{feature}_mbox_loc")(maps[feature]).permute(0, 2, 3, 1).flatten(1))
            conf.append(getattr(self, f"{feature}_mbox_conf")(maps[feature]).permute(0, 2, 3, 1).flatten(1))
        mbox_loc = torch.cat(loc, dim=1)
        scores = torch.cat(conf, dim=1)
        # mbox_conf_reshape (0, -1, 2) -> mbox_conf_softmax (axis 2) -> mbox_conf_flatten
        mbox_conf_flatten = torch.softmax(scores.view(scores.shape[0], -1, NUM_CLASSES), dim=2).flatten(1)
        return mbox_loc, mbox_conf_flatten


def feature_sizes(height: int = 300, width: int = 300) -> list[tuple[int, int]]:
    """(h, w) of the six head feature maps for an input of this size (Caffe's size arithmetic)."""
    def conv(n, k, s, p):
        return (n + 2 * p - k) // s + 1

    def pool_ceil(n, k, s):
        return int(math.ceil((n - k) / s)) + 1

    def chain(n):
        n = pool_ceil(conv(n, 7, 2, 3), 3, 2)
        conv4_3 = n = conv(n, 3, 2, 1)          # layer_128_1
        fc7 = n = conv(n, 3, 2, 1)              # layer_256_1 (layer_512_1 keeps the size)
        conv6_2 = n = conv(n, 3, 2, 1)
        conv7_2 = n = conv(n, 3, 2, 1)
        return [conv4_3, fc7, conv6_2, conv7_2, n, n]  # conv8_2, conv9_2: 3x3, pad 1, stride 1

    return list(zip(chain(height), chain(width)))


def prior_boxes(height: int = 300, width: int = 300) -> np.ndarray:
    """The SSD priors of the prototxt's PriorBox layers, concatenated as its `mbox_priorbox`:
    shape (1, 2, 4 * priors); [0, 0] holds (xmin, ymin, xmax, ymax) per prior relative to the
    image, [0, 1] the variances (0.1, 0.1, 0.2, 0.2). Per cell (row by row) the order is: the
    min-size square, the sqrt(min * max) square, then each aspect ratio r and its flip 1/r.
    Offset 0.5, no clipping, as the prototxt says."""
    boxes = []
    for (fh, fw), (_, _, _, min_size, max_size, ratios, step) in zip(feature_sizes(height, width), HEADS):
        shapes = [(min_size, min_size), (math.sqrt(min_size * max_size),) * 2]
        for r in ratios:
            for ar in (r, 1.0 / r):
                shapes.append((min_size * math.sqrt(ar), min_size / math.sqrt(ar)))
        for i in range(fh):
            for j in range(fw):
                cx, cy = (j + 0.5) * step, (i + 0.5) * step
                for bw, bh in shapes:
                    boxes.append(((cx - bw / 2) / width, (cy - bh / 2) / height,
                                  (cx + bw / 2) / width, (cy + bh / 2) / height))
    coords = np.asarray(boxes, np.float32).reshape(-1)
    variances = np.tile(np.asarray(PRIOR_VARIANCE, np.float32), len(boxes))
    return np.stack([coords, variances])[None]
