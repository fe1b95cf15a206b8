"""linear -> nn.Linear; matmul -> torch.matmul."""
from __future__ import annotations

from . import Ctx, Emitted, emits


@emits("linear")
def emit_linear(ctx: Ctx) -> Emitted:
    a = ctx.a
    bias = "" if a["bias"] else ", bias=False"
    return Emitted(forward=[ctx.call()], module=f"nn.Linear({int(a['in_features'])}, {int(a['out_features'])}{bias})")


@emits("matmul")
def emit_matmul(ctx: Ctx) -> Emitted:
    if len(ctx.ins) != 2:
        raise ctx.unsupported(f"matmul of {len(ctx.ins)} inputs")
    return Emitted(forward=[f"{ctx.y} = torch.matmul({ctx.ins[0]}, {ctx.ins[1]})"])
