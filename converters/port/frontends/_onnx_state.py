"""ONNX frontend state: constants (source arrays + transform chains), propagated shapes, the
emitted nodes, and the small helpers every op handler uses (attributes, pads, window sizes)."""
from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import numpy as np

from ...mapping.transforms import build as build_transform
from ...mapping.transforms import chain_apply, chain_shape
from ..graph import Node, Param, PortError, UnsupportedOpError

_BIG = 2 ** 62  # ONNX Slice ends given as INT64_MAX / INT32_MAX mean "to the end"
_LAYOUTS = {2: "NC", 3: "NCL", 4: "NCHW", 5: "NCDHW"}


@dataclass
class _Const:
    """A constant tensor: one source array through a transform chain, or a folded value."""

    shape: tuple
    dtype: np.dtype
    source: str | None = None
    transforms: list = field(default_factory=list)
    _value: np.ndarray | None = None
    source_shape: tuple | None = None  # the source array's own shape

    def value(self, f) -> np.ndarray:
        if self._value is None:
            chain = [build_transform(t) for t in self.transforms]
            self._value = np.asarray(chain_apply(chain, f[self.source].numpy()))
        return self._value

    def derive(self, transform) -> _Const:
        shape, dtype = chain_shape([build_transform(transform)], self.shape, self.dtype)
        chain = self.transforms + [transform]
        if self.source and all(_shape_only(t) for t in chain):  # reshape chains collapse to one
            chain = [] if tuple(shape) == tuple(self.source_shape) else [{"reshape": list(shape)}]
        return _Const(tuple(shape), np.dtype(dtype), self.source, chain, source_shape=self.source_shape)


def _shape_only(t) -> bool:
    key = t if isinstance(t, str) else next(iter(t))
    return key in ("reshape", "squeeze", "unsqueeze")


class _Builder:
    """State of one conversion: shapes, constants, emitted nodes, which arrays were used how."""

    def __init__(self, f, path, opset: int):
        self.f, self.path, self.opset = f, path, opset
        self.shapes: dict[str, tuple] = {}
        self.consts: dict[str, _Const] = {}
        self.shapevals: dict[str, list] = {}     # folded integer tensors (may hold symbols)
        self.runtime: set[str] = set()           # tensors forward() computes
        self.nodes: list[Node] = []
        self.node_names: set[str] = set()
        self.const_nodes: dict[str, str] = {}    # const tensor -> constant node output
        self.used: set[str] = set()
        self.folded: dict[str, str] = {}         # source array -> why no Param reads it
        self.consumers: dict[str, list] = {}
        self._sym = itertools.count()
        self.layer = None
        self.skip: set[str] = set()              # layers already covered by a fusion or folding
        self.graph_outputs: list[str] = []

    # ----- errors and symbols

    def unsupported(self, what: str, hint: str | None = None):
        L = self.layer
        return UnsupportedOpError(f"{L.type} ({what})" if what else L.type, L.name, self.path, hint=hint)

    def symbol(self) -> str:
        return f"?{next(self._sym)}"

    # ----- tensors

    def shape(self, t: str) -> tuple:
        if t in self.shapes:
            return self.shapes[t]
        if t in self.consts:
            return self.consts[t].shape
        if t in self.shapevals:
            return (len(self.shapevals[t]),)
        raise PortError(f"layer {self.layer.name!r}: no shape known for tensor {t!r}", file=self.path)

    def is_const(self, t: str) -> bool:
        return t in self.consts or t in self.shapevals

    def ints(self, t: str, what: str) -> list:
        """An integer constant (or folded shape) as a list; symbols stay strings."""
        if t in self.shapevals:
            return list(self.shapevals[t])
        if t in self.consts:
            self.note_folded(t, f"{what} of {self.layer.name}")
            return [int(v) for v in np.asarray(self.consts[t].value(self.f)).reshape(-1)]
        raise self.unsupported(f"{what} computed at run time from {t!r}",
                               hint="only constant shapes, axes and sizes can be ported")

    def floats(self, t: str, what: str) -> list:
        if t not in self.consts:
            raise self.unsupported(f"{what} computed at run time from {t!r}", hint="only constant values can be ported")
        self.note_folded(t, f"{what} of {self.layer.name}")
        return [float(v) for v in np.asarray(self.consts[t].value(self.f)).reshape(-1)]

    def note_folded(self, t: str, why: str):
        c = self.consts.get(t)
        if c is not None and c.source:
            self.folded.setdefault(c.source, f"read as {why} (an attribute of the emitted code)")

    def tensor(self, t: str) -> str:
        """A tensor forward() can read: runtime tensors as is, constants as a buffer node."""
        if t in self.runtime:
            return t
        if t in self.consts:
            if t not in self.const_nodes:
                out = f"{t}__const"
                self.emit(f"const:{t}", "constant", [], [out], {"shape": self.consts[t].shape},
                          {"value": self.param(t)}, source_op="Constant", shape=self.consts[t].shape)
                self.const_nodes[t] = out
            return self.const_nodes[t]
        if t in self.shapevals:
            raise self.unsupported(f"a shape computed from {t!r} is used as data",
                                   hint="only shape arithmetic that folds into Reshape/Resize/... is ported")
        raise PortError(f"layer {self.layer.name!r} reads {t!r}, which no earlier node produces", file=self.path)

    def param(self, t: str, extra: list = ()) -> Param:
        c = self.consts.get(t)
        if c is None:
            raise self.unsupported(f"input {t!r} must be a constant (initializer or Constant node)")
        if c.source is None:
            raise self.unsupported(f"constant {t!r} is computed from other constants",
                                   hint="fold it with onnx-simplifier (onnxsim) first")
        self.used.add(c.source)
        return Param(source=c.source, transforms=list(c.transforms) + list(extra))

    def emit(self, name, op, inputs, outputs, attrs=None, params=None, *, source_op=None, shape=None):
        base, n = name, 1
        while name in self.node_names:
            n += 1
            name = f"{base}/{n}"
        self.node_names.add(name)
        self.nodes.append(Node(name, op, list(inputs), list(outputs), dict(attrs or {}), dict(params or {}),
                               source_op or (self.layer.type if self.layer else "")))
        for o in outputs:
            self.runtime.add(o)
        if shape is not None:
            self.shapes[outputs[0]] = tuple(shape)
        return name


# =========================================================================== helpers

def _attr(L, key, default=None):
    return L.params.get(key, default)


def _opt(L, i):
    """The i-th input name, or None when absent or empty (ONNX optional inputs)."""
    return L.inputs[i] if len(L.inputs) > i and L.inputs[i] else None


def _axis(axis: int, ndim: int) -> int:
    return axis + ndim if axis < 0 else axis


def _prod(dims):
    out = 1
    for d in dims:
        if not isinstance(d, int):
            return None
        out *= d
    return out


def _torch_shape(b: _Builder, dims: list, what: str, xs: tuple = ()) -> tuple:
    """A target shape with symbols -> what torch.reshape takes: a symbol that is the input's dim at
    the same index becomes 0 (copy it), one other unknown becomes -1."""
    dims = [0 if not isinstance(d, int) and i < len(xs) and xs[i] == d else d for i, d in enumerate(dims)]
    unknown = [i for i, d in enumerate(dims) if not isinstance(d, int) or d == -1]
    if len(unknown) > 1:
        raise b.unsupported(f"{what} {dims} has several dims unknown before run time",
                            hint="give the input shape (--input-shape) so they can be resolved")
    return tuple(-1 if i in unknown else int(d) for i, d in enumerate(dims))


def _pairs(pads: list, n: int) -> tuple:
    """ONNX pads [b1..bn, e1..en] -> ((b1, e1), ..., (bn, en))."""
    pads = list(pads) if pads else [0] * (2 * n)
    return tuple((int(pads[i]), int(pads[i + n])) for i in range(n))


def _window_out(size, k, s, d, pad, ceil_mode=False):
    if not isinstance(size, int):
        return None
    eff = d * (k - 1) + 1
    num = size + pad[0] + pad[1] - eff
    out = (-(-num // s) if ceil_mode else num // s) + 1
    if ceil_mode and (out - 1) * s >= size + pad[0]:  # the last window must start inside the input
        out -= 1
    return out


def _auto_pad(b, L, spatial, kernel, strides, dilations, pads):
    """Resolve auto_pad into (padding, out spatial dims); SAME_UPPER may stay 'same' (run time)."""
    mode = _attr(L, "auto_pad", "NOTSET")
    mode = mode.decode() if isinstance(mode, bytes) else mode
    n = len(kernel)
    if mode in ("NOTSET", ""):
        return _pairs(pads, n)
    if mode == "VALID":
        return tuple((0, 0) for _ in range(n))
    if mode not in ("SAME_UPPER", "SAME_LOWER"):
        raise b.unsupported(f"auto_pad {mode!r}")
    out = []
    for size, k, s, d in zip(spatial, kernel, strides, dilations):
        if not isinstance(size, int):
            if s == 1:
                total = d * (k - 1)
            elif mode == "SAME_UPPER":
                return "same"
            else:
                raise b.unsupported("auto_pad SAME_LOWER with stride > 1 on an input of unknown size",
                                    hint="give the input shape (--input-shape)")
        else:
            total = max((-(-size // s) - 1) * s + d * (k - 1) + 1 - size, 0)
        small, big = total // 2, total - total // 2
        out.append((small, big) if mode == "SAME_UPPER" else (big, small))
    return tuple(out)


def _out_spatial(b, spatial, kernel, strides, dilations, padding, ceil_mode=False):
    dims = []
    for i, (size, k, s, d) in enumerate(zip(spatial, kernel, strides, dilations)):
        if padding == "same":
            o = -(-size // s) if isinstance(size, int) else None
        else:
            o = _window_out(size, k, s, d, padding[i], ceil_mode)
        dims.append(o if o is not None else b.symbol())
    return dims
