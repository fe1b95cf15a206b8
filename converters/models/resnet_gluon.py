"""ResNet-50 "v1" as MXNet Gluon's model zoo builds it (`gluon.model_zoo.vision.resnet50_v1`).

torchvision's ResNet-50 is the "v1.5" variant: a downsampling bottleneck strides in its 3x3
convolution. Gluon's `BottleneckV1` follows the original paper (He et al. 2015) and strides in
the FIRST 1x1 convolution instead, so the 3x3 convolution sees an already halved map. The
parameter shapes are the same either way, which is why loading Gluon weights into torchvision's
resnet50 "works" and then gives different numbers: the stride sits in a different place.

Gluon's bottleneck also keeps the default `use_bias=True` on its two 1x1 convolutions (body.0 and
body.6); the 3x3 convolution and the projection shortcut have no bias. torchvision's convolutions
never have one, so this block adds them.

Everything else is torchvision's: stem (7x7/2 conv, BN, ReLU, 3x3/2 max-pool with padding 1 and
floor rounding), BatchNorm eps 1e-5 (Gluon's nn.BatchNorm default, recorded as `eps` in exported
symbols), global average pooling, one fully connected layer. The state-dict names are
torchvision's (`layer1.0.conv1.weight`, `layer1.0.downsample.0.weight`, `fc.weight`) plus
`layerN.M.conv1.bias` / `conv3.bias`.
"""
from __future__ import annotations

from torch import nn
from torchvision.models.resnet import Bottleneck, ResNet, conv3x3


class BottleneckV1(Bottleneck):
    """torchvision's Bottleneck with the stride moved to conv1 and biases on conv1 and conv3."""

    def __init__(self, inplanes, planes, stride=1, downsample=None, groups=1, base_width=64, dilation=1,
                 norm_layer=None):
        super().__init__(inplanes, planes, stride, downsample, groups, base_width, dilation, norm_layer)
        width = self.conv1.out_channels
        # same attribute names (so forward() and the state-dict names stay torchvision's), new layers
        self.conv1 = nn.Conv2d(inplanes, width, kernel_size=1, stride=stride, bias=True)
        self.conv2 = conv3x3(width, width, 1, groups, dilation)
        self.conv3 = nn.Conv2d(width, planes * self.expansion, kernel_size=1, bias=True)
        self.stride = stride


def resnet50_v1(num_classes: int = 1000) -> ResNet:
    """Gluon's resnet50_v1 layout with torchvision names; eval() before comparing outputs."""
    # the projection shortcut stays torchvision's (1x1 conv with the stride, no bias, BatchNorm)
    return ResNet(BottleneckV1, [3, 4, 6, 3], num_classes=num_classes)
