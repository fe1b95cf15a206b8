"""upsample -> F.interpolate.

nearest: torch's "nearest" picks floor(i * in / out) (TF legacy, Caffe Upsample, ONNX asymmetric);
with half_pixel it is "nearest-exact". bilinear: align_corners True maps corners to corners;
False is half-pixel (TF2, ONNX half_pixel); the TF1 asymmetric bilinear (neither) is refused.
"""
from __future__ import annotations

from ..pyformat import py
from . import Ctx, Emitted, emits


@emits("upsample")
def emit_upsample(ctx: Ctx) -> Emitted:
    a = ctx.a
    mode, align = a["mode"], bool(a.get("align_corners", False))
    scale, size = a.get("scale"), a.get("size")
    if (scale is None) == (size is None):
        raise ctx.unsupported("upsample needs exactly one of scale and size")
    args = [ctx.x, f"size={py(tuple(int(s) for s in size))}" if size is not None
            else f"scale_factor={py(tuple(float(s) for s in scale))}"]
    if mode == "nearest":
        if align:
            raise ctx.unsupported("nearest upsampling with align_corners")
        args.append('mode="nearest-exact"' if a.get("half_pixel", False) else 'mode="nearest"')
    elif mode == "bilinear":
        if not align and not a.get("half_pixel", True):
            raise ctx.unsupported("asymmetric bilinear resize (TF1 without half_pixel_centers)")
        args += ['mode="bilinear"', f"align_corners={align}"]
    else:
        raise ctx.unsupported(f"upsample mode {mode!r}")
    return Emitted(forward=[f"{ctx.y} = F.interpolate({', '.join(args)})"])
