"""MTCNN P-Net (Zhang et al. 2016), the proposal stage of the MTCNN face detector.

Follows the original Caffe model: 3x3 convolutions with per-channel PReLU, a 2x2 max-pool that
rounds its output size up like Caffe (ceil_mode=True), and two 1x1 heads: face probability
(softmax over 2 channels) and bounding-box regression (4 channels). Fully convolutional: a 12x12
input gives 1x1 outputs, larger inputs give score maps.
"""
from __future__ import annotations

import torch
from torch import nn


class PNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 10, 3)
        self.prelu1 = nn.PReLU(10)
        self.pool1 = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.conv2 = nn.Conv2d(10, 16, 3)
        self.prelu2 = nn.PReLU(16)
        self.conv3 = nn.Conv2d(16, 32, 3)
        self.prelu3 = nn.PReLU(32)
        self.conv4_1 = nn.Conv2d(32, 2, 1)
        self.conv4_2 = nn.Conv2d(32, 4, 1)

    def forward(self, x: torch.Tensor):
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.prelu2(self.conv2(x))
        x = self.prelu3(self.conv3(x))
        return torch.softmax(self.conv4_1(x), dim=1), self.conv4_2(x)
