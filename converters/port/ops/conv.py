"""conv / conv_transpose -> nn.ConvNd / nn.ConvTransposeNd.

Symmetric padding goes into the module; asymmetric padding (TF explicit, ONNX pads) is an F.pad
before it (with `padding_value`); TF "same" is `tf_same_pad`, computed from the input size at
run time exactly as TF does (the extra pixel at the end). A transposed conv's asymmetric padding
crops its output instead.
"""
from __future__ import annotations

from ..pyformat import py
from . import Ctx, Emitted, emits, helper

TF_SAME_PAD = helper("tf_same_pad", '''
def tf_same_pad(x, kernel, stride, dilation, value=0.0):
    """TF "SAME" padding: total = max((ceil(n / s) - 1) * s + (k - 1) * d + 1 - n, 0) per
    spatial dim, the odd pixel at the end; computed from the input size at run time."""
    pads = []
    for i in range(len(kernel) - 1, -1, -1):
        n = x.shape[2 + i]
        out = -(-n // stride[i])
        total = max((out - 1) * stride[i] + (kernel[i] - 1) * dilation[i] + 1 - n, 0)
        pads += [total // 2, total - total // 2]
    return F.pad(x, pads, value=value)
''')


def torch_pads(pairs) -> list:
    """Per-dim (begin, end) pairs, first spatial dim first -> F.pad's order (last dim first)."""
    out = []
    for b, e in reversed(list(pairs)):
        out += [int(b), int(e)]
    return out


def split_padding(pairs):
    """-> (symmetric per-dim padding for the module, or None when a pre-pad is needed)."""
    pairs = [tuple(int(v) for v in p) for p in pairs]
    if all(b == e for b, e in pairs):
        return tuple(b for b, _ in pairs)
    return None


def _tuple(v, dims):
    v = tuple(int(i) for i in (v if isinstance(v, (list, tuple)) else [v] * dims))
    return v[0] if len(set(v)) == 1 else v


@emits("conv")
def emit_conv(ctx: Ctx) -> Emitted:
    a, dims = ctx.a, int(ctx.a["dims"])
    if dims not in (1, 2, 3):
        raise ctx.unsupported(f"{dims}-d convolution")
    kernel, stride, dilation = a["kernel"], a["stride"], a["dilation"]
    lines, x, pad = [], ctx.x, 0
    value = float(a.get("padding_value", 0.0))
    if a["padding"] == "same":
        lines.append(f"{ctx.y} = tf_same_pad({x}, {py(tuple(kernel))}, {py(tuple(stride))}, "
                     f"{py(tuple(dilation))}{'' if value == 0 else ', ' + py(value)})")
        x, helpers = ctx.y, [TF_SAME_PAD]
    else:
        helpers = []
        sym = split_padding(a["padding"])
        if sym is None:
            fill = "" if value == 0 else ", value=" + py(value)
            lines.append(f"{ctx.y} = F.pad({x}, {torch_pads(a['padding'])}{fill})")
            x = ctx.y
        elif any(sym):
            if value != 0:
                lines.append(f"{ctx.y} = F.pad({x}, {torch_pads(a['padding'])}, value={py(value)})")
                x = ctx.y
            else:
                pad = _tuple(sym, dims)
    module = _module(f"nn.Conv{dims}d", a, dims, pad, kernel, stride, dilation)
    lines.append(f"{ctx.y} = self.{ctx.attr}({x})")
    return Emitted(forward=lines, module=module, helpers=helpers)


def _module(cls, a, dims, pad, kernel, stride, dilation, extra=""):
    args = [str(int(a["in_channels"])), str(int(a["out_channels"])), f"kernel_size={py(_tuple(kernel, dims))}"]
    if _tuple(stride, dims) != 1:
        args.append(f"stride={py(_tuple(stride, dims))}")
    if pad != 0:
        args.append(f"padding={py(pad)}")
    if extra:
        args.append(extra)
    if _tuple(dilation, dims) != 1:
        args.append(f"dilation={py(_tuple(dilation, dims))}")
    if int(a.get("groups", 1)) != 1:
        args.append(f"groups={int(a['groups'])}")
    if not a["bias"]:
        args.append("bias=False")
    return f"{cls}({', '.join(args)})"


@emits("conv_transpose")
def emit_conv_transpose(ctx: Ctx) -> Emitted:
    a, dims = ctx.a, int(ctx.a["dims"])
    if dims not in (1, 2, 3):
        raise ctx.unsupported(f"{dims}-d transposed convolution")
    if a["padding"] == "same":
        raise ctx.unsupported("SAME padding on a transposed convolution")
    sym = split_padding(a["padding"])
    out_pad = _tuple(a.get("output_padding", 0), dims)
    extra = f"output_padding={py(out_pad)}" if out_pad != 0 else ""
    module = _module(f"nn.ConvTranspose{dims}d", a, dims, _tuple(sym, dims) if sym else 0, a["kernel"],
                     a["stride"], a["dilation"], extra)
    lines = [f"{ctx.y} = self.{ctx.attr}({ctx.x})"]
    if sym is None:  # asymmetric: remove begin/end rows of the full output
        for i, (b, e) in enumerate(a["padding"]):
            if b or e:
                lines.append(f"{ctx.y} = {ctx.y}.narrow({2 + i}, {int(b)}, {ctx.y}.shape[{2 + i}] - {int(b) + int(e)})")
    return Emitted(forward=lines, module=module)
