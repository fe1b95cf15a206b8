"""activation, prelu, softmax, clip: element-wise functions, written as torch calls in forward.

Keras hard_sigmoid is clip(alpha*x + beta, 0, 1) with its own alpha/beta (0.2, 0.5 in Keras 2),
not torch's hardsigmoid (1/6, 1/2): it is written out. `power` is Caffe Power:
(shift + scale * x) ** power.
"""
from __future__ import annotations

from ..pyformat import py
from . import Ctx, Emitted, emits

_SIMPLE = {"relu": "F.relu({x})", "relu6": "F.relu6({x})", "selu": "F.selu({x})", "sigmoid": "torch.sigmoid({x})",
           "tanh": "torch.tanh({x})", "hard_swish": "F.hardswish({x})", "silu": "F.silu({x})",
           "softplus": "F.softplus({x})", "softsign": "F.softsign({x})", "exp": "torch.exp({x})",
           "abs": "torch.abs({x})", "neg": "torch.neg({x})", "sqrt": "torch.sqrt({x})", "linear": "{x}"}


@emits("activation")
def emit_activation(ctx: Ctx) -> Emitted:
    a, x = ctx.a, ctx.x
    kind = a["kind"]
    if kind in _SIMPLE:
        expr = _SIMPLE[kind].format(x=x)
    elif kind == "leaky_relu":
        expr = f"F.leaky_relu({x}, {py(float(a['negative_slope']))})"
    elif kind == "elu":
        expr = f"F.elu({x}, {py(float(a.get('alpha', 1.0)))})"
    elif kind == "gelu":
        approx = a.get("approximate", "none")
        expr = f"F.gelu({x})" if approx == "none" else f"F.gelu({x}, approximate={py(approx)})"
    elif kind == "hard_sigmoid":
        expr = f"torch.clamp({py(float(a['alpha']))} * {x} + {py(float(a['beta']))}, 0.0, 1.0)"
    elif kind == "power":
        expr = _power(x, float(a.get("power", 1.0)), float(a.get("scale", 1.0)), float(a.get("shift", 0.0)))
    else:
        raise ctx.unsupported(f"activation kind {kind!r}")
    return Emitted(forward=[f"{ctx.y} = {expr}"])


def _power(x, power, scale, shift) -> str:
    expr = x if scale == 1.0 else f"{py(scale)} * {x}"
    if shift != 0.0:
        expr = f"{expr} + {py(shift)}"
    if power == 1.0:
        return expr
    return f"torch.pow({expr}, {py(power)})"


@emits("prelu")
def emit_prelu(ctx: Ctx) -> Emitted:
    if int(ctx.a.get("axis", 1)) != 1:
        raise ctx.unsupported(f"PReLU along axis {ctx.a['axis']}")
    return Emitted(forward=[ctx.call()], module=f"nn.PReLU({int(ctx.a['num_parameters'])})")


@emits("softmax")
def emit_softmax(ctx: Ctx) -> Emitted:
    fn = "torch.log_softmax" if ctx.a.get("log", False) else "torch.softmax"
    return Emitted(forward=[f"{ctx.y} = {fn}({ctx.x}, dim={int(ctx.a['axis'])})"])


@emits("clip")
def emit_clip(ctx: Ctx) -> Emitted:
    lo, hi = ctx.a.get("min"), ctx.a.get("max")
    args = [ctx.x] + ([f"min={py(float(lo))}"] if lo is not None else [])
    args += [f"max={py(float(hi))}"] if hi is not None else []
    return Emitted(forward=[f"{ctx.y} = torch.clamp({', '.join(args)})"])
