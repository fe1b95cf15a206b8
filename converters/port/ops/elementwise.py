"""add / sub / mul / div / max / min: n-ary element-wise ops with numpy broadcasting.

`add` takes Caffe Eltwise SUM coefficients (`coeffs`): y = sum(c_i * x_i).
"""
from __future__ import annotations

from ..pyformat import py
from . import Ctx, Emitted, emits

_INFIX = {"add": " + ", "sub": " - ", "mul": " * ", "div": " / "}


@emits("add", "sub", "mul", "div", "max", "min")
def emit_elementwise(ctx: Ctx) -> Emitted:
    op, ins = ctx.node.op, list(ctx.ins)
    if len(ins) < 2 and op not in ("add", "mul", "max", "min"):
        raise ctx.unsupported(f"{op} of {len(ins)} input(s)")
    if op in ("sub", "div") and len(ins) != 2:
        raise ctx.unsupported(f"{op} of {len(ins)} inputs")
    coeffs = ctx.a.get("coeffs")
    if coeffs is not None:
        if op != "add" or len(coeffs) != len(ins):
            raise ctx.unsupported(f"{len(coeffs)} coefficients for {len(ins)} inputs")
        ins = [x if float(c) == 1.0 else f"{py(float(c))} * {x}" for c, x in zip(coeffs, ins)]
    if op in _INFIX:
        expr = _INFIX[op].join(ins)
    else:
        fn = "torch.maximum" if op == "max" else "torch.minimum"
        expr = ins[0]
        for other in ins[1:]:
            expr = f"{fn}({expr}, {other})"
    return Emitted(forward=[f"{ctx.y} = {expr}"])
