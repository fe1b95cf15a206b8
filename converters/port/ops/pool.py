"""pool -> nn.MaxPoolNd / nn.AvgPoolNd; global_pool -> a mean / amax over the spatial dims.

Caffe rounds pooled sizes up and drops a last window that would start in the padding only when
pad > 0; PyTorch's ceil_mode drops it whenever it starts past `input + pad`: the same rule, except
with pad 0 and stride > kernel, which is refused. Caffe AVE divides by the window clipped to the
padded image, as count_include_pad=True does. Padding PyTorch pools cannot take (asymmetric,
more than half the kernel, TF SAME) is an explicit pad first: -inf for max, and for an average
that excludes padding the sum is divided by the count of real pixels (`avg_pool_exclude_pad`).
"""
from __future__ import annotations

from ..pyformat import py
from . import Ctx, Emitted, emits, helper
from .conv import TF_SAME_PAD, split_padding, torch_pads

AVG_EXCLUDE = helper("avg_pool_exclude_pad", '''
def avg_pool_exclude_pad(x, pads, kernel, stride, ceil_mode=False):
    """Average pooling over `x` zero-padded by `pads` (F.pad order), dividing each window's sum by
    the number of real (unpadded) pixels in it, as TF and count_include_pad=False do."""
    pool = [F.avg_pool1d, F.avg_pool2d, F.avg_pool3d][len(kernel) - 1]
    ones = torch.ones_like(x[:1, :1])
    total = pool(F.pad(x, pads), kernel, stride, ceil_mode=ceil_mode)
    count = pool(F.pad(ones, pads), kernel, stride, ceil_mode=ceil_mode)
    return total / count
''')


def _t(v):
    v = tuple(int(i) for i in v)
    return v[0] if len(set(v)) == 1 else v


@emits("pool")
def emit_pool(ctx: Ctx) -> Emitted:
    a, dims = ctx.a, int(ctx.a["dims"])
    kind, kernel, stride = a["kind"], tuple(a["kernel"]), tuple(a["stride"])
    dilation = tuple(a.get("dilation") or (1,) * dims)
    ceil = bool(a.get("ceil_mode", False))
    if dims not in (1, 2, 3) or kind not in ("max", "avg"):
        raise ctx.unsupported(f"{dims}-d {kind} pooling")
    if kind == "avg" and set(dilation) != {1}:
        raise ctx.unsupported("dilated average pooling")
    pads = a["padding"]
    if pads == "same":
        return _same(ctx, kind, kernel, stride, dilation)
    sym = split_padding(pads)
    if ceil and (sym is None or not any(sym)) and any(s > k for s, k in zip(stride, kernel)):
        raise ctx.unsupported("ceil rounding with stride > kernel and no padding (Caffe and PyTorch differ)")
    fits = sym is not None and all(2 * p <= k for p, k in zip(sym, kernel))
    lines, x = [], ctx.x
    if not fits and ceil:
        raise ctx.unsupported("ceil rounding with padding PyTorch pools cannot take "
                              "(asymmetric or over half the kernel)")
    if not fits:
        if kind == "avg":
            if a.get("count_include_pad", True):
                lines.append(f"{ctx.y} = F.pad({x}, {torch_pads(pads)})")
                x, sym = ctx.y, (0,) * dims
            else:
                call = f"avg_pool_exclude_pad({x}, {torch_pads(pads)}, {py(kernel)}, {py(stride)}, ceil_mode={ceil})"
                return Emitted(forward=[f"{ctx.y} = {call}"], helpers=[AVG_EXCLUDE])
        else:
            lines.append(f'{ctx.y} = F.pad({x}, {torch_pads(pads)}, value=-float("inf"))')
            x, sym = ctx.y, (0,) * dims
    args = [f"{py(_t(kernel))}"]
    if stride != kernel:
        args.append(f"stride={py(_t(stride))}")
    if any(sym):
        args.append(f"padding={py(_t(sym))}")
    if kind == "max" and set(dilation) != {1}:
        args.append(f"dilation={py(_t(dilation))}")
    if ceil:
        args.append("ceil_mode=True")
    if kind == "avg" and any(sym) and not a.get("count_include_pad", True):
        args.append("count_include_pad=False")
    cls = f"nn.{'MaxPool' if kind == 'max' else 'AvgPool'}{dims}d"
    lines.append(f"{ctx.y} = self.{ctx.attr}({x})")
    return Emitted(forward=lines, module=f"{cls}({', '.join(args)})")


def _same(ctx, kind, kernel, stride, dilation):
    """TF SAME pooling: max pads with -inf, average excludes the padding."""
    if kind == "max":
        pad = f'{ctx.y} = tf_same_pad({ctx.x}, {py(kernel)}, {py(stride)}, {py(dilation)}, -float("inf"))'
        dilated = f", dilation={py(_t(dilation))}" if set(dilation) != {1} else ""
        args = f"{py(_t(kernel))}, stride={py(_t(stride))}{dilated}"
        return Emitted(forward=[pad, f"{ctx.y} = self.{ctx.attr}({ctx.y})"],
                       module=f"nn.MaxPool{len(kernel)}d({args})", helpers=[TF_SAME_PAD])
    pads = f"same_pads({ctx.x}, {py(kernel)}, {py(stride)})"
    call = f"avg_pool_exclude_pad({ctx.x}, {pads}, {py(kernel)}, {py(stride)})"
    return Emitted(forward=[f"{ctx.y} = {call}"], helpers=[SAME_PADS, AVG_EXCLUDE])


SAME_PADS = helper("same_pads", '''
def same_pads(x, kernel, stride):
    """TF "SAME" padding of `x` for this window (F.pad order), the odd pixel at the end."""
    pads = []
    for i in range(len(kernel) - 1, -1, -1):
        n = x.shape[2 + i]
        total = max((-(-n // stride[i]) - 1) * stride[i] + kernel[i] - n, 0)
        pads += [total // 2, total - total // 2]
    return pads
''')


@emits("global_pool")
def emit_global_pool(ctx: Ctx) -> Emitted:
    kind = ctx.a["kind"]
    if kind not in ("max", "avg"):
        raise ctx.unsupported(f"global {kind} pooling")
    fn = "torch.mean" if kind == "avg" else "torch.amax"
    keep = bool(ctx.a.get("keepdims", True))
    return Emitted(forward=[f"{ctx.y} = {fn}({ctx.x}, dim=list(range(2, {ctx.x}.dim())), keepdim={keep})"])
