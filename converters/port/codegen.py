"""Graph -> the text of model.py: one nn.Module class, helpers copied in, needing only torch.

Submodules are named after the source layers (sanitised), forward() runs the nodes in the
graph's order with variables named after the tensors, and every statement group is preceded by
a comment naming the source layer and op. Layout follows pyformat (ruff format's style).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from . import ops
from .graph import Graph, PortError, sanitise
from .pyformat import STEP, WIDTH, statement

# builtins the emitted code calls: no variable may shadow them (`input`, `id`, ... may be shadowed)
USED_BUILTINS = {"list", "range", "float", "int", "tuple", "len", "max", "min", "sum", "abs", "super", "print"}
HEADER_IMPORTS = ["import torch", "import torch.nn.functional as F", "from torch import nn"]


@dataclass
class Binding:
    """Where one node went: its submodule, its Params' target tensors, its lines in model.py."""

    node: object
    attr: str
    targets: dict                     # Param key -> state-dict name
    lines: tuple = (0, 0)             # first and last line of its forward statements (1-based)
    has_module: bool = False


@dataclass
class Generated:
    source: str
    class_name: str
    bindings: list = field(default_factory=list)


def generate(graph: Graph, class_name: str) -> Generated:
    file = graph.source_files[0] if graph.source_files else None
    ops.load_all()
    # attributes must not shadow nn.Module's own; variables neither the helpers nor builtins forward calls
    attrs, variables = set(dir(torch.nn.Module)), set(ops.HELPERS) | USED_BUILTINS
    names = {}
    for inp in graph.inputs:
        names[inp.name] = sanitise(inp.name, variables)
    init, forward, bindings, helper_names = [], [], [], []
    for node in graph.nodes:
        for t in node.outputs:
            names[t] = sanitise(t, variables)
        ctx = ops.Ctx(node, sanitise(node.name, attrs), [names[t] for t in node.inputs],
                      [names[t] for t in node.outputs], file)
        em = ops.emit(ctx)
        targets = {key: em.tensors.get(key, f"{ctx.attr}.{key}") for key in node.params}
        if node.params and em.module is None and not em.init:
            missing = [k for k in node.params if k not in em.tensors]
            if missing:
                raise PortError(f"internal: emitter for {node.op} gives no module for params {missing}", file=file)
        if em.module is not None:
            init.append(f"self.{ctx.attr} = {em.module}")
        init.extend(em.init)
        comment = f"# {node.name}: {node.source_op or node.op}"
        forward.append((comment, list(em.forward)))
        bindings.append(Binding(node, ctx.attr, targets, has_module=em.module is not None))
        for h in em.helpers:
            _add_helper(h, helper_names, file)
    outs = [names[t] for t in graph.outputs]
    ret = "return " + (outs[0] if len(outs) == 1 else ", ".join(outs))
    text = _assemble(graph, class_name, [names[i.name] for i in graph.inputs], init, forward, ret,
                     helper_names, bindings)
    return Generated(text, class_name, bindings)


def _add_helper(name, ordered: list, file):
    if name in ordered:
        return
    h = ops.HELPERS.get(name)
    if h is None:
        raise PortError(f"internal: emitter asks for unknown helper {name!r}", file=file)
    for dep in h.requires:
        _add_helper(dep, ordered, file)
    ordered.append(name)


def _assemble(graph, class_name, args, init, forward, ret, helper_names, bindings) -> str:
    src = ", ".join(str(s) for s in graph.source_files) or "?"
    imports = sorted({imp for h in helper_names for imp in ops.HELPERS[h].imports})
    lines = [f'"""{class_name}: {graph.framework} model {graph.name!r} ported by `convert port`.', "",
             f"Source: {src}.",
             "Plain PyTorch (needs only torch). Submodules are named after the source layers;",
             "a comment above each statement of forward() names the source layer and op.",
             '"""', ""]
    lines += imports + HEADER_IMPORTS + [""]
    for h in helper_names:  # two blank lines around every top-level definition
        lines += ["", *ops.HELPERS[h].source.split("\n"), ""]
    lines.append("")
    ins = ", ".join(f"{i.name} {tuple(i.shape) if i.shape else ''}".strip() for i in graph.inputs)
    outs = ", ".join(graph.output_names.get(t, t) for t in graph.outputs)
    lines += [f"class {class_name}(nn.Module):",
              *statement(f'"""Inputs: {ins}. Returns: {outs}."""', STEP), "",
              f"{STEP}def __init__(self):", f"{STEP * 2}super().__init__()"]
    for stmt in init:
        lines += statement(stmt, STEP * 2)
    lines += ["", *_def_line("forward", ["self", *args], STEP)]
    for (comment, stmts), binding in zip(forward, bindings):
        lines.append(STEP * 2 + comment)
        first = len(lines) + 1
        for stmt in stmts:
            lines += statement(stmt, STEP * 2)
        binding.lines = (first, len(lines))
    lines += statement(ret, STEP * 2)
    return "\n".join(lines) + "\n"


def _def_line(name: str, params: list, indent: str) -> list:
    """`def name(params):` laid out as ruff does when it is too long."""
    one = f"{indent}def {name}({', '.join(params)}):"
    if len(one) <= WIDTH:
        return [one]
    inner = indent + STEP
    if len(inner) + len(", ".join(params)) <= WIDTH:
        return [f"{indent}def {name}(", inner + ", ".join(params), f"{indent}):"]
    return [f"{indent}def {name}(", *(f"{inner}{p}," for p in params), f"{indent}):"]
