"""Named, composable layout transforms.

Each transform has a shape rule (`shape`, checked in dry runs before any data is read), an
implementation on numpy arrays (`apply`) and an inverse (`inverse(in_shape)`, used by tests and by
exporting back). A rule's chain passes either one array or a list of arrays from step to step:

    map      one array -> one array; applied to each element when given a list
    expand   one array -> list      (split, bias_ih_hh)
    reduce   list -> one array      (concat, caffe_bn_stat)
    select   list -> one element    (take)

Transforms are written in YAML as a bare name (`tf_conv`) or a one-key mapping with arguments
(`permute: [3, 2, 0, 1]`, `flip: {axis: 1}`); a scalar or list argument fills the first parameter.
"""
from __future__ import annotations

import inspect

import numpy as np

from ..errors import MappingError

REGISTRY: dict[str, type] = {}


def transform(name):
    def register(cls):
        cls.name = name
        REGISTRY[name] = cls
        return cls
    return register


class Transform:
    name = "?"
    kind = "map"
    lossless = True

    def __init__(self, rule=None):
        self.rule = rule

    def error(self, message, shape=None):
        extra = f" (input shape {list(shape)})" if shape is not None else ""
        return MappingError(f"transform {self.name}: {message}{extra}", rule=self.rule)

    def shape(self, s):
        return s

    def dtype(self, d):
        return d

    def apply(self, a):
        raise NotImplementedError

    def inverse(self, in_shape) -> Transform:
        raise self.error("has no inverse")

    def args(self) -> dict:
        return {}

    def __repr__(self):
        args = self.args()
        return self.name if not args else f"{self.name}({', '.join(f'{k}={v}' for k, v in args.items())})"


def _axis(axis, ndim, t, shape):
    if not -ndim <= axis < ndim:
        raise t.error(f"axis {axis} is out of range for a {ndim}-d array", shape)
    return axis % ndim


# ---- axis order ---------------------------------------------------------------------------------

@transform("permute")
class Permute(Transform):
    """Reorder axes: out.shape[i] = in.shape[axes[i]] (numpy.transpose semantics)."""

    def __init__(self, axes, rule=None):
        super().__init__(rule)
        self.axes = [int(a) for a in axes]
        if sorted(self.axes) != list(range(len(self.axes))):
            raise self.error(f"axes {self.axes} are not a permutation of 0..{len(self.axes) - 1}")

    def shape(self, s):
        if len(s) != len(self.axes):
            raise self.error(f"needs a {len(self.axes)}-d array", s)
        return tuple(s[a] for a in self.axes)

    def apply(self, a):
        return np.transpose(a, self.axes)

    def inverse(self, in_shape):
        return Permute(list(np.argsort(self.axes)), self.rule)

    def args(self):
        return {"axes": self.axes}


@transform("transpose")
class Transpose(Transform):
    """Swap two axes (default: the two axes of a matrix, e.g. a TF/Keras dense kernel (in,out))."""

    def __init__(self, axes=(0, 1), rule=None):
        super().__init__(rule)
        self.axes = tuple(int(a) for a in axes)
        if len(self.axes) != 2:
            raise self.error("takes exactly two axes to swap")

    def _perm(self, s):
        if len(s) < 2:
            raise self.error("needs at least a 2-d array", s)
        a, b = (_axis(x, len(s), self, s) for x in self.axes)
        perm = list(range(len(s)))
        perm[a], perm[b] = perm[b], perm[a]
        return perm

    def shape(self, s):
        return tuple(s[p] for p in self._perm(s))

    def apply(self, a):
        return np.transpose(a, self._perm(a.shape))

    def inverse(self, in_shape):
        return self

    def args(self):
        return {} if self.axes == (0, 1) else {"axes": list(self.axes)}


@transform("tf_conv")
class TfConv(Transform):
    """TF/Keras convolution kernel (*spatial, in, out) -> PyTorch (out, in, *spatial).

    Covers conv1d (K,I,O), conv2d (H,W,I,O), conv3d (D,H,W,I,O), and transposed convolutions,
    whose TF kernel (*spatial, out, in) lands on PyTorch's ConvTranspose (in, out, *spatial).
    """

    def _perm(self, s):
        if len(s) < 3:
            raise self.error("needs a kernel with at least one spatial axis (>= 3-d)", s)
        n = len(s)
        return [n - 1, n - 2, *range(n - 2)]

    def shape(self, s):
        return tuple(s[p] for p in self._perm(s))

    def apply(self, a):
        return np.transpose(a, self._perm(a.shape))

    def inverse(self, in_shape):
        return Permute(list(np.argsort(self._perm(in_shape))), self.rule)


REGISTRY["tf_conv_transpose"] = TfConv


@transform("tf_conv1d_as_2d")
class TfConv1dAs2d(Transform):
    """Keras/TF Conv1D kernel (K, I, O) -> PyTorch Conv2d weight (O, I, K, 1) for a port that runs
    the sequence as an image of width 1 (`kernel: k1`, default) or height 1 (`kernel: 1k`, (O, I, 1, K))."""

    def __init__(self, kernel="k1", rule=None):
        super().__init__(rule)
        self.kernel = str(kernel)
        if self.kernel not in ("k1", "1k"):
            raise self.error(f"kernel must be k1 (K x 1) or 1k (1 x K), not {kernel!r}")

    def shape(self, s):
        if len(s) != 3:
            raise self.error("needs a 3-d (K, I, O) Conv1D kernel", s)
        k, i, o = s
        return (o, i, k, 1) if self.kernel == "k1" else (o, i, 1, k)

    def apply(self, a):
        return np.transpose(a, (2, 1, 0)).reshape(self.shape(a.shape))

    def inverse(self, in_shape):
        o, i, k = in_shape[2], in_shape[1], in_shape[0]
        return _Chain([Reshape([o, i, k], self.rule), Permute([2, 1, 0], self.rule)], self.rule)

    def args(self):
        return {} if self.kernel == "k1" else {"kernel": self.kernel}


@transform("tf_dense")
class TfDense(Transpose):
    """TF/Keras dense kernel (in, out) -> PyTorch Linear weight (out, in)."""

    def shape(self, s):
        if len(s) != 2:
            raise self.error("needs a 2-d kernel", s)
        return super().shape(s)


@transform("tf_depthwise")
class TfDepthwise(Transform):
    """TF depthwise kernel (H, W, C, M) -> PyTorch (C*M, 1, H, W) for a conv with groups=C."""

    def shape(self, s):
        if len(s) != 4:
            raise self.error("needs a 4-d (H, W, C, M) kernel", s)
        h, w, c, m = s
        return (c * m, 1, h, w)

    def apply(self, a):
        h, w, c, m = a.shape
        return np.transpose(a, (2, 3, 0, 1)).reshape(c * m, 1, h, w)

    def inverse(self, in_shape):
        return _Chain([Reshape([in_shape[2], in_shape[3], in_shape[0], in_shape[1]], self.rule),
                       Permute([2, 3, 0, 1], self.rule)], self.rule)


class _Chain(Transform):
    """Several transforms as one (used for inverses)."""

    def __init__(self, steps, rule=None):
        super().__init__(rule)
        self.steps = steps

    def shape(self, s):
        for t in self.steps:
            s = t.shape(s)
        return s

    def apply(self, a):
        for t in self.steps:
            a = t.apply(a)
        return a


# ---- shape --------------------------------------------------------------------------------------

@transform("reshape")
class Reshape(Transform):
    def __init__(self, shape, rule=None):
        super().__init__(rule)
        self.target = [int(d) for d in shape]
        if sum(d == -1 for d in self.target) > 1 or any(d < -1 for d in self.target):
            raise self.error(f"shape {self.target} may hold at most one -1 and no other negative size")

    def shape(self, s):
        size = int(np.prod(s, dtype=np.int64))
        known = int(np.prod([d for d in self.target if d != -1], dtype=np.int64))
        out = list(self.target)
        if -1 in out:
            if known == 0 or size % known:
                raise self.error(f"cannot reshape {size} values to {self.target}", s)
            out[out.index(-1)] = size // known
        if int(np.prod(out, dtype=np.int64)) != size:
            raise self.error(f"cannot reshape {size} values to {self.target}", s)
        return tuple(out)

    def apply(self, a):
        return a.reshape(self.shape(a.shape))

    def inverse(self, in_shape):
        return Reshape(list(in_shape), self.rule)

    def args(self):
        return {"shape": self.target}


@transform("squeeze")
class Squeeze(Transform):
    def __init__(self, axis=None, rule=None):
        super().__init__(rule)
        self.axis = axis

    def _axes(self, s):
        if self.axis is None:
            return [i for i, d in enumerate(s) if d == 1]
        ax = _axis(int(self.axis), len(s), self, s)
        if s[ax] != 1:
            raise self.error(f"axis {self.axis} has size {s[ax]}, not 1", s)
        return [ax]

    def shape(self, s):
        drop = self._axes(s)
        return tuple(d for i, d in enumerate(s) if i not in drop)

    def apply(self, a):
        return np.squeeze(a, axis=tuple(self._axes(a.shape)))

    def inverse(self, in_shape):
        return Reshape(list(in_shape), self.rule)

    def args(self):
        return {} if self.axis is None else {"axis": self.axis}


@transform("unsqueeze")
class Unsqueeze(Transform):
    def __init__(self, axis=0, rule=None):
        super().__init__(rule)
        self.axis = int(axis)

    def _ax(self, s):
        return _axis(self.axis, len(s) + 1, self, s)

    def shape(self, s):
        ax = self._ax(s)
        return tuple(s[:ax]) + (1,) + tuple(s[ax:])

    def apply(self, a):
        return np.expand_dims(a, self._ax(a.shape))

    def inverse(self, in_shape):
        return Squeeze(self._ax(in_shape), self.rule)

    def args(self):
        return {"axis": self.axis}


@transform("flip")
class Flip(Transform):
    """Reverse one axis: `flip: {axis: 1}` on a first conv turns a BGR model into an RGB one."""

    def __init__(self, axis, rule=None):
        super().__init__(rule)
        self.axis = int(axis)

    def shape(self, s):
        _axis(self.axis, len(s), self, s)
        return s

    def apply(self, a):
        return np.flip(a, self.axis)

    def inverse(self, in_shape):
        return self

    def args(self):
        return {"axis": self.axis}


@transform("flatten_order")
class FlattenOrder(Transform):
    """Reorder the flattened-feature axis of a dense weight from one (h, w, c) order to another.

    A Keras Flatten after an NHWC feature map enumerates features h-major, c-minor; PyTorch's
    flatten of NCHW is c-major. Apply after tf_dense (the axis is 1 of (out, features)).
    `order` is `<from>_to_<to>` with each side a permutation of h, w, c: `hwc_to_chw` (default),
    `chw_to_hwc`, or e.g. `hwc_to_whc` for a port that permutes NCHW to (N, W, H, C) first.
    """

    def __init__(self, h, w, c, axis=1, order="hwc_to_chw", rule=None):
        super().__init__(rule)
        self.h, self.w, self.c, self.axis, self.order = int(h), int(w), int(c), int(axis), order
        src, _, dst = str(order).partition("_to_")
        if sorted(src) != ["c", "h", "w"] or sorted(dst) != ["c", "h", "w"]:
            raise self.error(f"order must be <from>_to_<to>, each a permutation of h, w, c (e.g. hwc_to_chw), "
                             f"not {order!r}")
        self.src, self.dst = src, dst

    def shape(self, s):
        ax = _axis(self.axis, len(s), self, s)
        if s[ax] != self.h * self.w * self.c:
            raise self.error(f"axis {self.axis} has {s[ax]} features, h*w*c = {self.h * self.w * self.c}", s)
        return s

    def apply(self, a):
        ax = _axis(self.axis, a.ndim, self, a.shape)
        pre, post = a.shape[:ax], a.shape[ax + 1:]
        size = {"h": self.h, "w": self.w, "c": self.c}
        src, perm = tuple(size[k] for k in self.src), tuple(self.src.index(k) for k in self.dst)
        n = len(pre)
        b = a.reshape(*pre, *src, *post)
        b = np.transpose(b, [*range(n), *(n + p for p in perm), *range(n + 3, b.ndim)])
        return b.reshape(a.shape)

    def inverse(self, in_shape):
        return FlattenOrder(self.h, self.w, self.c, self.axis, f"{self.dst}_to_{self.src}", self.rule)

    def args(self):
        return {"h": self.h, "w": self.w, "c": self.c, "axis": self.axis, "order": self.order}


@transform("slice")
class Slice(Transform):
    """Keep start:stop:step along an axis (e.g. drop the background row of a 1001-class head)."""

    lossless = False

    def __init__(self, axis=0, start=None, stop=None, step=None, rule=None):
        super().__init__(rule)
        self.axis, self.start, self.stop, self.step = int(axis), start, stop, step

    def shape(self, s):
        ax = _axis(self.axis, len(s), self, s)
        n = len(range(*slice(self.start, self.stop, self.step).indices(s[ax])))
        if n == 0:
            raise self.error("selects nothing", s)
        return tuple(n if i == ax else d for i, d in enumerate(s))

    def apply(self, a):
        ax = _axis(self.axis, a.ndim, self, a.shape)
        idx = [slice(None)] * a.ndim
        idx[ax] = slice(self.start, self.stop, self.step)
        return a[tuple(idx)]

    def inverse(self, in_shape):
        """Scatter back into zeros of the original shape (what was dropped is lost)."""
        return _Unslice(self, tuple(in_shape))

    def args(self):
        return {k: v for k, v in (("axis", self.axis), ("start", self.start), ("stop", self.stop),
                                  ("step", self.step)) if v is not None}


class _Unslice(Transform):
    name = "unslice"

    def __init__(self, sl, full_shape):
        super().__init__(sl.rule)
        self.sl, self.full = sl, full_shape

    def shape(self, s):
        return self.full

    def apply(self, a):
        out = np.zeros(self.full, a.dtype)
        idx = [slice(None)] * len(self.full)
        idx[self.sl.axis] = slice(self.sl.start, self.sl.stop, self.sl.step)
        out[tuple(idx)] = a
        return out


# ---- recurrent gates ----------------------------------------------------------------------------

@transform("gates")
class Gates(Transform):
    """Reorder gate blocks along an axis, gates named by letters: `gates: {from: zrh, to: rzh}`.

    PyTorch LSTM is ifgo (Keras ifco is the same order), GRU rzn. Keras GRU zrh -> rzh; ONNX
    LSTM iofc -> ifco; TF1 LSTMCell ijfo -> ifjo.
    """

    def __init__(self, from_=None, to=None, axis=0, rule=None, **kw):
        super().__init__(rule)
        self.src = kw.pop("from", from_)
        self.dst, self.axis = to, int(axis)
        if kw:
            raise self.error(f"unknown arguments {sorted(kw)}")
        if not self.src or not self.dst or sorted(self.src) != sorted(self.dst) or len(set(self.src)) != len(self.src):
            raise self.error(f"from {self.src!r} and to {self.dst!r} must name the same distinct gate letters")

    def shape(self, s):
        ax = _axis(self.axis, len(s), self, s)
        if s[ax] % len(self.src):
            raise self.error(f"axis {self.axis} ({s[ax]}) does not split into {len(self.src)} gates", s)
        return s

    def apply(self, a):
        ax = _axis(self.axis, a.ndim, self, a.shape)
        blocks = np.split(a, len(self.src), axis=ax)
        return np.concatenate([blocks[self.src.index(g)] for g in self.dst], axis=ax)

    def inverse(self, in_shape):
        return Gates(self.dst, self.src, self.axis, self.rule)

    def args(self):
        return {"from": self.src, "to": self.dst, "axis": self.axis}


@transform("gate_add")
class GateAdd(Transform):
    """Add a constant to one gate's block, e.g. TF1 LSTMCell's forget_bias (added at run time, not
    stored): `gate_add: {gates: ifjo, gate: f, value: 1.0}`."""

    def __init__(self, gates, gate, value, axis=0, rule=None):
        super().__init__(rule)
        self.gates, self.gate, self.value, self.axis = gates, gate, float(value), int(axis)
        if gate not in gates:
            raise self.error(f"gate {gate!r} is not one of {gates!r}")

    def shape(self, s):
        return Gates(self.gates, self.gates, self.axis, self.rule).shape(s)

    def apply(self, a):
        ax = _axis(self.axis, a.ndim, self, a.shape)
        out = np.array(a, copy=True)
        n = a.shape[ax] // len(self.gates)
        k = self.gates.index(self.gate)
        idx = [slice(None)] * a.ndim
        idx[ax] = slice(k * n, (k + 1) * n)
        out[tuple(idx)] += np.asarray(self.value, dtype=a.dtype)
        return out

    def inverse(self, in_shape):
        return GateAdd(self.gates, self.gate, -self.value, self.axis, self.rule)

    def args(self):
        return {"gates": self.gates, "gate": self.gate, "value": self.value}


@transform("keras_gru_bias")
class KerasGruBias(Transform):
    """Keras GRU bias (2, 3H) with reset_after=True -> [bias_ih, bias_hh] in PyTorch's r,z,n order."""

    kind = "expand"

    def shape(self, s):
        if len(s) == 1:
            raise self.error("this Keras GRU has reset_after=False (one bias row): it applies the reset gate "
                             "before the recurrent matmul, which nn.GRU cannot express; re-train or rebuild "
                             "the Keras layer with reset_after=True", s)
        if len(s) != 2 or s[0] != 2 or s[1] % 3:
            raise self.error("needs a (2, 3*H) bias", s)
        return [(s[1],), (s[1],)]

    def apply(self, a):
        g = Gates("zrh", "rzh", 0, self.rule)
        return [g.apply(a[0]), g.apply(a[1])]


@transform("bias_ih_hh")
class BiasIhHh(Transform):
    """One combined RNN bias (Keras LSTM) -> [bias_ih, bias_hh = zeros]; PyTorch adds the two."""

    kind = "expand"

    def shape(self, s):
        return [tuple(s), tuple(s)]

    def apply(self, a):
        return [a, np.zeros_like(a)]


# ---- several arrays -----------------------------------------------------------------------------

@transform("split")
class Split(Transform):
    """One array -> list: `split: {axis: 0, parts: 3}` or `split: {axis: 1, sizes: [64, -1]}`."""

    kind = "expand"

    def __init__(self, axis=0, parts=None, sizes=None, rule=None):
        super().__init__(rule)
        self.axis, self.parts, self.sizes = int(axis), parts, sizes
        if (parts is None) == (sizes is None):
            raise self.error("give exactly one of parts or sizes")

    def _sizes(self, s):
        ax = _axis(self.axis, len(s), self, s)
        n = s[ax]
        if self.parts is not None:
            if n % int(self.parts):
                raise self.error(f"axis {self.axis} ({n}) does not split into {self.parts} equal parts", s)
            return ax, [n // int(self.parts)] * int(self.parts)
        sizes = [int(x) for x in self.sizes]
        if sizes.count(-1) == 1:
            sizes[sizes.index(-1)] = n - sum(x for x in sizes if x != -1)
        if sum(sizes) != n or any(x <= 0 for x in sizes):
            raise self.error(f"sizes {self.sizes} do not add up to axis {self.axis} ({n})", s)
        return ax, sizes

    def shape(self, s):
        ax, sizes = self._sizes(s)
        return [tuple(k if i == ax else d for i, d in enumerate(s)) for k in sizes]

    def apply(self, a):
        ax, sizes = self._sizes(a.shape)
        return np.split(a, np.cumsum(sizes)[:-1], axis=ax)

    def inverse(self, in_shape):
        return Concat(self.axis, self.rule)

    def args(self):
        return {"axis": self.axis, **({"parts": self.parts} if self.parts is not None else {"sizes": self.sizes})}


@transform("concat")
class Concat(Transform):
    """List -> one array along an axis (e.g. separate q, k, v kernels -> in_proj_weight)."""

    kind = "reduce"

    def __init__(self, axis=0, rule=None):
        super().__init__(rule)
        self.axis = int(axis)

    def shape(self, shapes):
        first = shapes[0]
        ax = _axis(self.axis, len(first), self, first)
        for s in shapes[1:]:
            if len(s) != len(first) or any(a != b for i, (a, b) in enumerate(zip(s, first)) if i != ax):
                raise self.error(f"cannot concatenate {[list(x) for x in shapes]} along axis {self.axis}")
        return tuple(sum(s[ax] for s in shapes) if i == ax else d for i, d in enumerate(first))

    def apply(self, arrays):
        return np.concatenate(arrays, axis=self.axis)

    def args(self):
        return {"axis": self.axis}


@transform("take")
class Take(Transform):
    """List -> its element `index`."""

    kind = "select"

    def __init__(self, index, rule=None):
        super().__init__(rule)
        self.index = int(index)

    def shape(self, shapes):
        if not -len(shapes) <= self.index < len(shapes):
            raise self.error(f"index {self.index} of a list of {len(shapes)}")
        return shapes[self.index]

    def apply(self, arrays):
        return arrays[self.index]

    def args(self):
        return {"index": self.index}


# ---- values -------------------------------------------------------------------------------------

@transform("caffe_bn_stat")
class CaffeBnStat(Transform):
    """[mean or var, scale factor] -> statistic / factor (factor 0 -> 0), as Caffe's BatchNorm does.

    Caffe stores unnormalised running sums and the factor as the layer's third blob; write the rule
    with `with: ['{layer}/2']` so the factor arrives as the second array.
    """

    kind = "reduce"
    lossless = False

    def shape(self, shapes):
        if len(shapes) != 2 or int(np.prod(shapes[1], dtype=np.int64)) != 1:
            raise self.error(f"needs [statistic, scale factor of one value], got {[list(s) for s in shapes]}")
        return shapes[0]

    def apply(self, arrays):
        stat, factor = arrays
        f = float(np.asarray(factor).reshape(-1)[0])
        return (stat / f if f != 0 else np.zeros_like(stat)).astype(stat.dtype)


@transform("scale")
class Scale(Transform):
    def __init__(self, factor, rule=None):
        super().__init__(rule)
        self.factor = float(factor)
        if self.factor == 0:
            raise self.error("factor 0 destroys the array; use `constant: 0` if that is meant")

    def apply(self, a):
        return (a * self.factor).astype(a.dtype)

    def inverse(self, in_shape):
        return Scale(1 / self.factor, self.rule)

    def args(self):
        return {"factor": self.factor}


@transform("add")
class Add(Transform):
    def __init__(self, value, rule=None):
        super().__init__(rule)
        self.value = float(value)

    def apply(self, a):
        return (a + self.value).astype(a.dtype)

    def inverse(self, in_shape):
        return Add(-self.value, self.rule)

    def args(self):
        return {"value": self.value}


@transform("constant")
class Constant(Transform):
    """Replace the values, keep shape and dtype: MXNet BatchNorm with fix_gamma=True ignores the
    stored gamma and uses ones (`constant: 1`)."""

    lossless = False

    def __init__(self, value, rule=None):
        super().__init__(rule)
        self.value = float(value)

    def apply(self, a):
        return np.full(a.shape, self.value, dtype=a.dtype)

    def args(self):
        return {"value": self.value}


@transform("cast")
class Cast(Transform):
    """Explicit dtype change; the writer never changes a dtype on its own."""

    def __init__(self, dtype, rule=None):
        super().__init__(rule)
        try:
            self.to = np.dtype(dtype)
        except TypeError:
            raise self.error(f"unknown dtype {dtype!r}") from None
        self.src = None

    def dtype(self, d):
        self.src = d
        return self.to

    def apply(self, a):
        self.src = a.dtype
        return a.astype(self.to)

    def inverse(self, in_shape):
        if self.src is None:
            raise self.error("inverse needs the source dtype (run shape/dtype first)")
        return Cast(self.src, self.rule)

    def args(self):
        return {"dtype": str(self.to)}


# ---- parsing ------------------------------------------------------------------------------------

def build(spec, rule=None) -> Transform:
    """A transform from its YAML form: 'name' or {name: args}."""
    if isinstance(spec, str):
        name, args = spec, None
    elif isinstance(spec, dict) and len(spec) == 1:
        (name, args), = spec.items()
    else:
        raise MappingError(f"a transform is a name or a one-key mapping {{name: args}}, not {spec!r}", rule=rule)
    cls = REGISTRY.get(name)
    if cls is None:
        import difflib

        close = difflib.get_close_matches(str(name), REGISTRY, n=2)
        hint = f"did you mean {' or '.join(close)}?" if close else f"known: {', '.join(sorted(REGISTRY))}"
        raise MappingError(f"unknown transform {name!r}", rule=rule, hint=hint)
    try:
        if args is None:
            return cls(rule=rule)
        if isinstance(args, dict):
            return cls(**args, rule=rule)
        first = next(iter(p for p in inspect.signature(cls.__init__).parameters if p not in ("self", "rule")), None)
        if first is None:
            raise TypeError("takes no arguments")
        return cls(**{first: args}, rule=rule)
    except TypeError as e:
        raise MappingError(f"transform {name}: bad arguments {args!r} ({e})", rule=rule) from None


def chain_shape(chain, shape, dtype):
    """Shape and dtype after a whole chain; shape is a tuple or a list of tuples."""
    for t in chain:
        shape = _step(t, shape, t.shape, is_shape=True)
        dtype = t.dtype(dtype)
    return shape, dtype


def chain_apply(chain, value):
    for t in chain:
        value = _step(t, value, t.apply, is_shape=False)
    return value


def _step(t, value, fn, is_shape):
    many = isinstance(value, list)
    if t.kind in ("reduce", "select"):
        if not many:
            raise t.error("needs several arrays (give the rule `with:` sources or split first)")
        return fn(value)
    if many:
        if t.kind == "expand":
            raise t.error("needs one array but the chain carries a list here (add concat or take first)")
        return [fn(v) for v in value]
    return fn(value)
