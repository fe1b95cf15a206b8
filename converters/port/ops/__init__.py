"""Emitters: one module per op family, each turning canonical nodes into PyTorch code.

An emitter is a function `(ctx: Ctx) -> Emitted`, registered for one or more canonical ops
(port/graph.py) with `@emits("conv", "conv_transpose")`. It writes plain Python source:

* `Emitted.module`: a constructor expression; codegen writes `self.<ctx.attr> = <module>` in
  `__init__` (the attribute is the sanitised source layer name).
* `Emitted.init`: extra `__init__` statements (`self.register_buffer(...)`, ...), if any.
* `Emitted.forward`: the statements of `forward`, reading `ctx.ins` and assigning `ctx.outs`
  (Python variable names derived from the tensor names). Codegen adds a comment naming the
  source layer and op above them and formats long lines.
* `Emitted.tensors`: node Param key -> the state-dict name it fills; a key not listed fills
  `<ctx.attr>.<key>` (the submodule's own tensor of that name). The table generator turns each
  Param into a rule to that name.
* `Emitted.helpers`: names of helper classes (registered with `helper(...)`, e.g. a TF SAME pad
  module) the code uses; codegen copies their source into model.py once, so the file needs only
  torch at run time.

Emitters never approximate: an attribute combination they cannot express exactly raises
`ctx.unsupported("why")` (an UnsupportedOpError naming op, layer and file).
"""
from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass, field

from ..graph import Node, UnsupportedOpError

EMITTERS: dict[str, Callable] = {}
HELPERS: dict[str, Helper] = {}


@dataclass
class Ctx:
    """What an emitter sees: the node, its submodule attribute and its variables."""

    node: Node
    attr: str                 # self.<attr> holds the node's submodule (sanitised layer name)
    ins: list                 # Python variable names of node.inputs, in order
    outs: list                # Python variable names of node.outputs, in order
    file: str | None = None   # the source file, for errors

    @property
    def a(self) -> dict:
        return self.node.attrs

    @property
    def x(self) -> str:
        return self.ins[0]

    @property
    def y(self) -> str:
        return self.outs[0]

    def call(self, *args: str) -> str:
        """`y = self.<attr>(x)`: the usual forward statement of a one-submodule node."""
        return f"{', '.join(self.outs)} = self.{self.attr}({', '.join(args or self.ins)})"

    def unsupported(self, why: str) -> UnsupportedOpError:
        src = self.node.source_op or self.node.op
        return UnsupportedOpError(f"{src} ({why})", self.node.name, self.file)


@dataclass
class Emitted:
    forward: list
    module: str | None = None
    init: list = field(default_factory=list)
    tensors: dict = field(default_factory=dict)
    helpers: list = field(default_factory=list)


@dataclass
class Helper:
    name: str
    source: str               # a formatted top-level class/def, without trailing blank lines
    requires: tuple = ()      # other helpers it uses
    imports: tuple = ()       # extra top-level imports it needs (`import math`)


def emits(*ops: str):
    """Register the decorated function as the emitter of these canonical ops."""
    def register(fn):
        for op in ops:
            if op in EMITTERS and EMITTERS[op] is not fn:
                raise RuntimeError(f"two emitters for op {op!r}: {EMITTERS[op].__module__} and {fn.__module__}")
            EMITTERS[op] = fn
        return fn
    return register


def helper(name: str, source: str, requires=(), imports=()) -> str:
    """Register a helper class emitted into model.py when used; returns its name."""
    HELPERS[name] = Helper(name, source.strip("\n"), tuple(requires), tuple(imports))
    return name


def load_all() -> None:
    """Import every emitter module of this package (registration happens at import)."""
    for info in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{info.name}")


def emit(ctx: Ctx) -> Emitted:
    """The code for one node, or UnsupportedOpError when no emitter covers its op."""
    if not EMITTERS:
        load_all()
    fn = EMITTERS.get(ctx.node.op)
    if fn is None:
        raise UnsupportedOpError(ctx.node.source_op or ctx.node.op, ctx.node.name, ctx.file,
                                 hint=f"no emitter for canonical op {ctx.node.op!r} "
                                      "(docs/port.md lists the covered ops)")
    return fn(ctx)
