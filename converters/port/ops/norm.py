"""batchnorm -> nn.BatchNormNd; lrn -> nn.LocalResponseNorm; scale (Caffe Scale) and normalize (SSD
Normalize) -> small modules emitted into model.py."""
from __future__ import annotations

from ..pyformat import py
from . import Ctx, Emitted, emits, helper

SCALE = helper("Scale", '''
class Scale(nn.Module):
    """Caffe Scale: y = x * weight (+ bias), one value per channel (axis 1)."""

    def __init__(self, num_features, bias=True):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(num_features))
        self.bias = nn.Parameter(torch.zeros(num_features)) if bias else None

    def forward(self, x):
        shape = (1, -1) + (1,) * (x.dim() - 2)
        y = x * self.weight.view(shape)
        return y if self.bias is None else y + self.bias.view(shape)
''')

NORMALIZE = helper("Normalize", '''
class Normalize(nn.Module):
    """SSD Normalize: x / sqrt(sum(x^2) + eps) over the channels of each pixel (or over the
    whole sample with across_spatial), times a learned scale per channel (or one shared)."""

    def __init__(self, num_features, across_spatial, channel_shared, eps):
        super().__init__()
        self.across_spatial = across_spatial
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(1 if channel_shared else num_features))

    def forward(self, x):
        dims = list(range(1, x.dim())) if self.across_spatial else [1]
        norm = torch.sqrt(x.pow(2).sum(dim=dims, keepdim=True) + self.eps)
        shape = (1, -1) + (1,) * (x.dim() - 2)
        return x / norm * self.weight.view(shape)
''')


@emits("batchnorm")
def emit_batchnorm(ctx: Ctx) -> Emitted:
    a = ctx.a
    dims = int(a["dims"])
    if dims not in (1, 2, 3):
        raise ctx.unsupported(f"{dims}-d batch norm")
    affine = "" if a["affine"] else ", affine=False"
    module = f"nn.BatchNorm{dims}d({int(a['num_features'])}, eps={py(float(a['eps']))}{affine})"
    return Emitted(forward=[ctx.call()], module=module)


@emits("scale")
def emit_scale(ctx: Ctx) -> Emitted:
    if int(ctx.a.get("axis", 1)) != 1:
        raise ctx.unsupported(f"Scale along axis {ctx.a['axis']}")
    bias = "" if ctx.a["bias"] else ", bias=False"
    return Emitted(forward=[ctx.call()], module=f"Scale({int(ctx.a['num_features'])}{bias})", helpers=[SCALE])


@emits("normalize")
def emit_normalize(ctx: Ctx) -> Emitted:
    a = ctx.a
    module = (f"Normalize({int(a['num_features'])}, across_spatial={bool(a['across_spatial'])}, "
              f"channel_shared={bool(a['channel_shared'])}, eps={py(float(a['eps']))})")
    return Emitted(forward=[ctx.call()], module=module, helpers=[NORMALIZE])


@emits("lrn")
def emit_lrn(ctx: Ctx) -> Emitted:
    a = ctx.a
    size = int(a["size"])
    if size % 2 == 0:  # torch centres an even window differently from ONNX; Caffe refuses even sizes
        raise ctx.unsupported(f"LRN over an even window ({size})")
    module = (f"nn.LocalResponseNorm({size}, alpha={py(float(a['alpha']))}, beta={py(float(a['beta']))}, "
              f"k={py(float(a['k']))})")
    return Emitted(forward=[ctx.call()], module=module)
