"""Tensor plumbing: concat, split, slice, flatten, reshape, transpose, squeeze, unsqueeze, pad,
crop, identity, constant."""
from __future__ import annotations

from ..pyformat import py
from . import Ctx, Emitted, emits


@emits("concat")
def emit_concat(ctx: Ctx) -> Emitted:
    return Emitted(forward=[f"{ctx.y} = torch.cat([{', '.join(ctx.ins)}], dim={int(ctx.a['axis'])})"])


@emits("split")
def emit_split(ctx: Ctx) -> Emitted:
    sizes = [int(s) for s in ctx.a["sizes"]]
    if len(sizes) != len(ctx.outs):
        raise ctx.unsupported(f"{len(sizes)} sizes for {len(ctx.outs)} outputs")
    lhs = ", ".join(ctx.outs) + ("," if len(ctx.outs) == 1 else "")
    return Emitted(forward=[f"{lhs} = torch.split({ctx.x}, {py(sizes)}, dim={int(ctx.a['axis'])})"])


@emits("slice")
def emit_slice(ctx: Ctx) -> Emitted:
    a = ctx.a
    axis, start, stop, step = int(a["axis"]), a.get("start"), a.get("stop"), int(a.get("step", 1) or 1)
    if step < 1:
        raise ctx.unsupported(f"slice step {step}")
    part = f"{'' if start in (None, 0) else int(start)}:{'' if stop is None else int(stop)}"
    if step != 1:
        part += f":{step}"
    index = ("..., " if axis < 0 else ":, " * axis) + part
    if axis < -1:
        index = "..., " + part + ", :" * (-axis - 1)
    return Emitted(forward=[f"{ctx.y} = {ctx.x}[{index}]"])


@emits("flatten")
def emit_flatten(ctx: Ctx) -> Emitted:
    end = int(ctx.a.get("end_dim", -1))
    args = f"{int(ctx.a.get('start_dim', 1))}" + ("" if end == -1 else f", {end}")
    return Emitted(forward=[f"{ctx.y} = torch.flatten({ctx.x}, {args})"])


@emits("reshape")
def emit_reshape(ctx: Ctx) -> Emitted:
    shape = [int(d) for d in ctx.a["shape"]]
    if shape.count(-1) > 1:
        raise ctx.unsupported("reshape with two -1 dims")
    dims = [f"{ctx.x}.shape[{i}]" if d == 0 else str(d) for i, d in enumerate(shape)]
    return Emitted(forward=[f"{ctx.y} = {ctx.x}.reshape({', '.join(dims)}{',' if len(dims) == 1 else ''})"])


@emits("transpose")
def emit_transpose(ctx: Ctx) -> Emitted:
    return Emitted(forward=[f"{ctx.y} = {ctx.x}.permute({', '.join(str(int(p)) for p in ctx.a['perm'])})"])


@emits("squeeze")
def emit_squeeze(ctx: Ctx) -> Emitted:
    axes = tuple(int(v) for v in ctx.a["axes"])
    return Emitted(forward=[f"{ctx.y} = torch.squeeze({ctx.x}, {py(axes if len(axes) > 1 else axes[0])})"])


@emits("unsqueeze")
def emit_unsqueeze(ctx: Ctx) -> Emitted:
    axes = sorted(int(v) for v in ctx.a["axes"])
    if any(v < 0 for v in axes):
        raise ctx.unsupported("negative unsqueeze axes")
    expr = ctx.x
    for v in axes:
        expr = f"torch.unsqueeze({expr}, {v})"
    return Emitted(forward=[f"{ctx.y} = {expr}"])


@emits("pad")
def emit_pad(ctx: Ctx) -> Emitted:
    a = ctx.a
    mode, value = a.get("mode", "constant"), float(a.get("value", 0.0))
    if mode not in ("constant", "reflect", "replicate"):
        raise ctx.unsupported(f"pad mode {mode!r}")
    pairs = [tuple(int(v) for v in p) for p in a["pads"]]
    while pairs and pairs[0] == (0, 0):  # F.pad pads the last dims; leading untouched dims are implicit
        pairs = pairs[1:]
    flat = []
    for b, e in reversed(pairs):
        flat += [b, e]
    if mode != "constant" and len(pairs) > 3:
        raise ctx.unsupported(f"{mode} padding of {len(pairs)} trailing dims")
    extra = f", mode={py(mode)}" if mode != "constant" else (f", value={py(value)}" if value != 0 else "")
    return Emitted(forward=[f"{ctx.y} = F.pad({ctx.x}, {py(flat)}{extra})"])


@emits("crop")
def emit_crop(ctx: Ctx) -> Emitted:
    offsets = ctx.a["offsets"]
    sizes = ctx.a.get("sizes")
    ref = ctx.ins[1] if len(ctx.ins) > 1 else None
    if ref is None and sizes is None:
        raise ctx.unsupported("crop without a reference input or sizes")
    expr = ctx.x
    for dim, off in enumerate(offsets):
        if off is None:
            continue
        length = f"{ref}.shape[{dim}]" if ref is not None else str(int(sizes[dim]))
        expr = f"{expr}.narrow({dim}, {int(off)}, {length})"
    return Emitted(forward=[f"{ctx.y} = {expr}"])


@emits("identity")
def emit_identity(ctx: Ctx) -> Emitted:
    return Emitted(forward=[f"{ctx.y} = {ctx.x}"])


@emits("constant")
def emit_constant(ctx: Ctx) -> Emitted:
    shape = tuple(int(d) for d in ctx.a["shape"])
    dtype = ctx.a.get("dtype", "float32")
    if dtype not in ("float32", "float64", "float16", "int64", "int32", "bool"):
        raise ctx.unsupported(f"constant of dtype {dtype}")
    init = f"self.register_buffer({py(ctx.attr)}, torch.zeros({py(shape)}, dtype=torch.{dtype}))"
    return Emitted(forward=[f"{ctx.y} = self.{ctx.attr}"], init=[init], tensors={"value": ctx.attr})
