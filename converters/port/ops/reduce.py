"""reduce -> torch.mean / sum / amax / amin over the given axes."""
from __future__ import annotations

from ..pyformat import py
from . import Ctx, Emitted, emits

_FN = {"mean": "torch.mean", "sum": "torch.sum", "max": "torch.amax", "min": "torch.amin"}


@emits("reduce")
def emit_reduce(ctx: Ctx) -> Emitted:
    kind = ctx.a["kind"]
    if kind not in _FN:
        raise ctx.unsupported(f"reduce kind {kind!r}")
    axes = [int(v) for v in ctx.a["axes"]]
    keep = bool(ctx.a.get("keepdims", False))
    return Emitted(forward=[f"{ctx.y} = {_FN[kind]}({ctx.x}, dim={py(axes)}, keepdim={keep})"])
