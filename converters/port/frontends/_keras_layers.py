"""Keras layer handlers: one function per Keras layer family (`@layer(...)`), reading the
layer's config and emitting canonical port nodes; tensors carry their Keras shape and whether
the module holds them channels-first (see keras.py for the layout rules)."""
from __future__ import annotations

from ..graph import (
    Node,
    Param,
    PortError,
    UnsupportedOpError,
    nhwc_axis,
)
from . import registry

_CONV_LIKE = {"Conv1D", "Conv2D", "Conv3D", "SeparableConv1D", "SeparableConv2D", "DepthwiseConv1D", "DepthwiseConv2D",
              "Conv1DTranspose", "Conv2DTranspose", "MaxPooling1D", "AveragePooling1D", "GlobalAveragePooling1D",
              "GlobalMaxPooling1D", "ZeroPadding1D", "Cropping1D", "UpSampling1D", "BatchNormalization"}
_IDENTITY = {"Dropout", "SpatialDropout1D", "SpatialDropout2D", "SpatialDropout3D", "GaussianNoise", "GaussianDropout",
             "AlphaDropout", "ActivityRegularization", "Masking"}
_CF_LAYOUT = {3: "NLC", 4: "NHWC", 5: "NDHWC"}


class _T:
    """A tensor: its IR name, its Keras shape (batch 'N', unknown None) and whether the module holds
    it channels-first."""

    def __init__(self, name: str, shape: tuple, cf: bool):
        self.name, self.shape, self.cf = name, tuple(shape), cf

    @property
    def rank(self):
        return len(self.shape)

    def module_shape(self):
        s = self.shape
        return (s[0], s[-1], *s[1:-1]) if self.cf else s


class _Builder:
    def __init__(self, f, path, version: str):
        self.f, self.path = f, path
        self.keras3 = version.startswith("3")
        self.nodes: list[Node] = []
        self.names: set[str] = set()
        self.tensors: set[str] = set()
        self.used: set[str] = set()
        self.cache: dict = {}
        self.layer = ("", "")  # (qualified name, class) for errors

    def unsupported(self, what: str = "", hint: str | None = None):
        q, cls = self.layer
        return UnsupportedOpError(f"{cls} ({what})" if what else cls, q, self.path, hint=hint)

    def fresh(self, base: str) -> str:
        name, n = base, 1
        while name in self.tensors:
            n += 1
            name = f"{base}#{n}"
        self.tensors.add(name)
        return name

    def emit(self, name, op, inputs, attrs=None, params=None, *, n_out=1, out=None):
        base, n = name, 1
        while name in self.names:
            n += 1
            name = f"{base}/{n}"
        self.names.add(name)
        outs = out or [self.fresh(name if n_out == 1 else f"{name}:{i}") for i in range(n_out)]
        self.nodes.append(Node(name, op, [t.name if isinstance(t, _T) else t for t in inputs], outs,
                               dict(attrs or {}), dict(params or {}), self.layer[1]))
        return outs

    # ----- weights

    def variables(self, q: str) -> dict:
        layer = self.f.layers.get(q)
        arrays = layer.arrays if layer is not None else []
        return {a.rsplit("/", 1)[-1]: a for a in arrays}

    def param(self, q, var, transforms=(), *, fill=None, required=True, prefix=None) -> Param | None:
        vs = self.variables(q)
        name = vs.get(var)
        if prefix is not None:
            name = next((a for a in self.f.layers[q].arrays if prefix in a.split("/")[:-1] and a.endswith("/" + var)),
                        None)
        if name is None:
            if fill is not None:
                return Param(fill=fill)
            if required:
                raise PortError(f"layer {q!r}: no array {var!r} in the file (arrays: {sorted(vs.values())})",
                                file=self.path, hint="the config and the weights disagree")
            return None
        self.used.add(name)
        return Param(source=name, transforms=list(transforms))

    # ----- layout changes

    def to_cf(self, t: _T) -> _T:
        if t.cf or t.rank < 3:
            return t
        key = ("cf", t.name)
        if key not in self.cache:
            r = t.rank
            out, = self.emit(f"{self.layer[0]}/to_nchw", "transpose", [t], {"perm": (0, r - 1, *range(1, r - 1))})
            self.cache[key] = _T(out, t.shape, True)
        return self.cache[key]

    def to_keras(self, t: _T) -> _T:
        if not t.cf or t.rank < 3:
            return t
        key = ("k", t.name)
        if key not in self.cache:
            r = t.rank
            out, = self.emit(f"{self.layer[0]}/to_nhwc", "transpose", [t], {"perm": (0, *range(2, r), 1)})
            self.cache[key] = _T(out, t.shape, False)
        return self.cache[key]

    def axis(self, t: _T, axis: int) -> int:
        """A Keras axis of t -> the module's axis."""
        axis = axis % t.rank
        return nhwc_axis(axis, t.rank) if t.cf else axis


def _tuple(v, n):
    if isinstance(v, (list, tuple)):
        return tuple(int(x) for x in v)
    return (int(v),) * n


def _same_pads(size, k, s, d):
    """TF SAME: (begin, end) with the extra pixel at the end; None when the size is unknown."""
    if not isinstance(size, int):
        return None
    total = max((-(-size // s) - 1) * s + d * (k - 1) + 1 - size, 0)
    return (total // 2, total - total // 2)


def _padding(b, cfg, spatial, kernel, strides, dilation):
    mode = cfg.get("padding", "valid")
    n = len(kernel)
    if mode == "valid":
        return ((0, 0),) * n
    if mode == "causal":
        return ((dilation[0] * (kernel[0] - 1), 0),)
    if mode != "same":
        raise b.unsupported(f"padding {mode!r}")
    pads = [_same_pads(sz, k, s, d) for sz, k, s, d in zip(spatial, kernel, strides, dilation)]
    if any(p is None for p in pads):
        if all(s == 1 for s in strides):
            return tuple((d * (k - 1) // 2, d * (k - 1) - d * (k - 1) // 2) for k, d in zip(kernel, dilation))
        return "same"
    return tuple(pads)


def _window_out(size, k, s, d, pad):
    if not isinstance(size, int):
        return None
    if pad == "same":
        return -(-size // s)
    return (size + pad[0] + pad[1] - d * (k - 1) - 1) // s + 1


def _spatial_out(spatial, kernel, strides, dilation, padding):
    return tuple(_window_out(sz, k, s, d, "same" if padding == "same" else padding[i])
                 for i, (sz, k, s, d) in enumerate(zip(spatial, kernel, strides, dilation)))


def _check_channels_last(b, cfg):
    if cfg.get("data_format", "channels_last") not in ("channels_last", None):
        raise b.unsupported(f"data_format {cfg.get('data_format')!r}", hint="only channels_last models are ported")


# =========================================================================== activations

def _activation_attrs(b, act, t: _T):
    """IR (op, attrs) of a Keras activation name; None for linear."""
    if isinstance(act, dict):
        act = act.get("config") if isinstance(act.get("config"), str) else act.get("class_name")
    act = (act or "linear").lower()
    simple = {"relu": "relu", "relu6": "relu6", "sigmoid": "sigmoid", "tanh": "tanh", "selu": "selu", "swish": "silu",
              "silu": "silu", "softplus": "softplus", "softsign": "softsign", "exponential": "exp",
              "hard_swish": "hard_swish", "hard_silu": "hard_swish"}
    if act == "linear":
        return None
    if act in simple:
        return "activation", {"kind": simple[act]}
    if act == "elu":
        return "activation", {"kind": "elu", "alpha": 1.0}
    if act == "gelu":
        return "activation", {"kind": "gelu", "approximate": "none"}
    if act == "leaky_relu":
        return "activation", {"kind": "leaky_relu", "negative_slope": 0.2}
    if act == "hard_sigmoid":
        alpha = 1.0 / 6.0 if b.keras3 else 0.2
        return "activation", {"kind": "hard_sigmoid", "alpha": alpha, "beta": 0.5}
    if act in ("softmax", "log_softmax"):
        return "softmax", {"axis": b.axis(t, -1), "log": act == "log_softmax"}
    raise b.unsupported(f"activation {act!r}")


def _apply_activation(b, q, act, t: _T, own_name=False) -> _T:
    spec = _activation_attrs(b, act, t)
    if spec is None:
        return t
    op, attrs = spec
    out, = b.emit(q if own_name else f"{q}/{attrs.get('kind', op)}", op, [t], attrs)
    return _T(out, t.shape, t.cf)


# =========================================================================== layers

LAYERS = {}
layer = registry(LAYERS)


@layer("Conv1D", "Conv2D", "Conv3D")
def _conv(b, q, cfg, ins):
    _check_channels_last(b, cfg)
    x = b.to_cf(ins[0])
    n = x.rank - 2
    kernel, strides = _tuple(cfg["kernel_size"], n), _tuple(cfg.get("strides", 1), n)
    dilation, groups = _tuple(cfg.get("dilation_rate", 1), n), int(cfg.get("groups", 1) or 1)
    cin, cout = x.shape[-1], int(cfg["filters"])
    padding = _padding(b, cfg, x.shape[1:-1], kernel, strides, dilation)
    bias = bool(cfg.get("use_bias", True))
    params = {"weight": b.param(q, "kernel", ["tf_conv"])}
    if bias:
        params["bias"] = b.param(q, "bias")
    attrs = {"dims": n, "in_channels": cin, "out_channels": cout, "kernel": kernel, "stride": strides,
             "dilation": dilation, "groups": groups, "padding": padding, "bias": bias, "padding_value": 0.0}
    out, = b.emit(q, "conv", [x], attrs, params)
    y = _T(out, (x.shape[0], *_spatial_out(x.shape[1:-1], kernel, strides, dilation, padding), cout), True)
    return [_apply_activation(b, q, cfg.get("activation"), y)]


def _depthwise(b, q, cfg, x, name, var, *, bias):
    n = x.rank - 2
    kernel, strides = _tuple(cfg["kernel_size"], n), _tuple(cfg.get("strides", 1), n)
    dilation = _tuple(cfg.get("dilation_rate", 1), n)
    c, m = x.shape[-1], int(cfg.get("depth_multiplier", 1))
    padding = _padding(b, cfg, x.shape[1:-1], kernel, strides, dilation)
    vs = b.variables(q)
    var = var if var in vs else "kernel"
    kernel_t = "tf_depthwise" if n == 2 else {"permute": [1, 2, 0]}  # 1-d: (K, C, M) -> (C, M, K), M == 1 only
    if n == 1 and m != 1:
        raise b.unsupported("DepthwiseConv1D with depth_multiplier > 1")
    params = {"weight": b.param(q, var, [kernel_t])}
    if bias:
        params["bias"] = b.param(q, "bias")
    attrs = {"dims": n, "in_channels": c, "out_channels": c * m, "kernel": kernel, "stride": strides,
             "dilation": dilation, "groups": c, "padding": padding, "bias": bias, "padding_value": 0.0}
    out, = b.emit(name, "conv", [x], attrs, params)
    return _T(out, (x.shape[0], *_spatial_out(x.shape[1:-1], kernel, strides, dilation, padding), c * m), True)


@layer("DepthwiseConv2D", "DepthwiseConv1D")
def _depthwise_conv(b, q, cfg, ins):
    _check_channels_last(b, cfg)
    y = _depthwise(b, q, cfg, b.to_cf(ins[0]), q, "depthwise_kernel", bias=bool(cfg.get("use_bias", True)))
    return [_apply_activation(b, q, cfg.get("activation"), y)]


@layer("SeparableConv2D", "SeparableConv1D")
def _separable(b, q, cfg, ins):
    _check_channels_last(b, cfg)
    x = b.to_cf(ins[0])
    d = _depthwise(b, q, cfg, x, f"{q}/depthwise", "depthwise_kernel", bias=False)
    n = x.rank - 2
    cout, bias = int(cfg["filters"]), bool(cfg.get("use_bias", True))
    params = {"weight": b.param(q, "pointwise_kernel", ["tf_conv"])}
    if bias:
        params["bias"] = b.param(q, "bias")
    attrs = {"dims": n, "in_channels": d.shape[-1], "out_channels": cout, "kernel": (1,) * n, "stride": (1,) * n,
             "dilation": (1,) * n, "groups": 1, "padding": ((0, 0),) * n, "bias": bias, "padding_value": 0.0}
    out, = b.emit(q, "conv", [d], attrs, params)
    return [_apply_activation(b, q, cfg.get("activation"), _T(out, (*d.shape[:-1], cout), True))]


@layer("Conv2DTranspose", "Conv1DTranspose")
def _conv_transpose(b, q, cfg, ins):
    _check_channels_last(b, cfg)
    x = b.to_cf(ins[0])
    n = x.rank - 2
    kernel, strides = _tuple(cfg["kernel_size"], n), _tuple(cfg.get("strides", 1), n)
    dilation = _tuple(cfg.get("dilation_rate", 1), n)
    if cfg.get("output_padding") is not None or any(d != 1 for d in dilation):
        raise b.unsupported("output_padding / dilation_rate")
    cout, bias = int(cfg["filters"]), bool(cfg.get("use_bias", True))
    params = {"weight": b.param(q, "kernel", ["tf_conv"])}
    if bias:
        params["bias"] = b.param(q, "bias")
    mode = cfg.get("padding", "valid")
    if mode == "same" and any(k < st for k, st in zip(kernel, strides)):
        raise b.unsupported("padding 'same' with kernel_size < strides")
    if mode not in ("same", "valid"):
        raise b.unsupported(f"padding {mode!r}")
    # TF crops the full output ((in - 1) * s + k) to in * s for "same", the extra row at the end
    crops = tuple(((k - st) // 2, (k - st) - (k - st) // 2) if mode == "same" else (0, 0)
                  for k, st in zip(kernel, strides))
    attrs = {"dims": n, "in_channels": x.shape[-1], "out_channels": cout, "kernel": kernel, "stride": strides,
             "dilation": dilation, "groups": 1, "padding": crops, "output_padding": (0,) * n, "bias": bias}
    out, = b.emit(q, "conv_transpose", [x], attrs, params)
    spatial = [(s - 1) * st + k - c0 - c1 if isinstance(s, int) else None
               for s, st, k, (c0, c1) in zip(x.shape[1:-1], strides, kernel, crops)]
    y = _T(out, (x.shape[0], *spatial, cout), True)
    return [_apply_activation(b, q, cfg.get("activation"), y)]


@layer("Dense")
def _dense(b, q, cfg, ins):
    x = b.to_keras(ins[0])
    units, bias = int(cfg["units"]), bool(cfg.get("use_bias", True))
    vs = b.variables(q)
    kshape = b.f[vs["kernel"]].shape if "kernel" in vs else (x.shape[-1], units)
    params = {"weight": b.param(q, "kernel", ["tf_dense"])}
    if bias:
        params["bias"] = b.param(q, "bias")
    out, = b.emit(q, "linear", [x], {"in_features": int(kshape[0]), "out_features": units, "bias": bias}, params)
    return [_apply_activation(b, q, cfg.get("activation"), _T(out, (*x.shape[:-1], units), False))]


@layer("TimeDistributed")
def _time_distributed(b, q, cfg, ins):
    inner = cfg.get("layer", {})
    if inner.get("class_name") != "Dense":
        raise b.unsupported(f"TimeDistributed({inner.get('class_name')})", hint="only TimeDistributed(Dense) is ported")
    return _dense(b, q, inner.get("config", {}), ins)


@layer("BatchNormalization")
def _batchnorm(b, q, cfg, ins):
    t = ins[0]
    axis = cfg.get("axis", -1)
    axis = axis[0] if isinstance(axis, (list, tuple)) and len(axis) == 1 else axis
    if not isinstance(axis, int) or axis % t.rank != t.rank - 1:
        raise b.unsupported(f"axis {cfg.get('axis')} (only the channel axis -1 is ported)")
    x = b.to_cf(t)
    c = x.shape[-1]
    params = {"weight": b.param(q, "gamma", fill=None if cfg.get("scale", True) else 1.0),
              "bias": b.param(q, "beta", fill=None if cfg.get("center", True) else 0.0),
              "running_mean": b.param(q, "moving_mean"), "running_var": b.param(q, "moving_variance")}
    attrs = {"dims": max(x.rank - 2, 1), "num_features": c, "eps": float(cfg.get("epsilon", 1e-3)), "affine": True}
    out, = b.emit(q, "batchnorm", [x], attrs, params)
    return [_T(out, x.shape, x.cf)]


@layer("Activation")
def _activation_layer(b, q, cfg, ins):
    y = _apply_activation(b, q, cfg.get("activation"), ins[0], own_name=True)
    if y is ins[0]:
        out, = b.emit(q, "identity", [y])
        y = _T(out, y.shape, y.cf)
    return [y]


@layer("ReLU")
def _relu(b, q, cfg, ins):
    t = ins[0]
    top = cfg.get("max_value")
    slope, thr = float(cfg.get("negative_slope", 0.0) or 0.0), float(cfg.get("threshold", 0.0) or 0.0)
    if thr != 0.0:
        raise b.unsupported(f"threshold {thr}")
    if top is not None and float(top) == 6.0 and slope == 0.0:
        out, = b.emit(q, "activation", [t], {"kind": "relu6"})
        return [_T(out, t.shape, t.cf)]
    attrs = {"kind": "leaky_relu", "negative_slope": slope} if slope else {"kind": "relu"}
    out, = b.emit(q if top is None else f"{q}/{attrs['kind']}", "activation", [t], attrs)
    if top is not None:
        out, = b.emit(q, "clip", [out], {"min": None, "max": float(top)})
    return [_T(out, t.shape, t.cf)]


@layer("LeakyReLU")
def _leaky(b, q, cfg, ins):
    slope = cfg.get("negative_slope", cfg.get("alpha", 0.3))
    out, = b.emit(q, "activation", [ins[0]], {"kind": "leaky_relu", "negative_slope": float(slope)})
    return [_T(out, ins[0].shape, ins[0].cf)]


@layer("ELU")
def _elu(b, q, cfg, ins):
    out, = b.emit(q, "activation", [ins[0]], {"kind": "elu", "alpha": float(cfg.get("alpha", 1.0))})
    return [_T(out, ins[0].shape, ins[0].cf)]


@layer("Softmax")
def _softmax(b, q, cfg, ins):
    t = ins[0]
    axis = cfg.get("axis", -1)
    axis = axis[0] if isinstance(axis, (list, tuple)) and len(axis) == 1 else axis
    if not isinstance(axis, int):
        raise b.unsupported(f"axis {axis}")
    out, = b.emit(q, "softmax", [t], {"axis": b.axis(t, axis), "log": False})
    return [_T(out, t.shape, t.cf)]


@layer("PReLU")
def _prelu(b, q, cfg, ins):
    t = ins[0]
    vs = b.variables(q)
    ashape = tuple(b.f[vs["alpha"]].shape)
    n = 1
    for d in ashape:
        n *= d
    per_channel = ashape[-1] == n and n == t.shape[-1]
    if not (n == 1 or per_channel):
        raise b.unsupported(f"alpha of shape {list(ashape)} (shared_axes {cfg.get('shared_axes')})",
                            hint="nn.PReLU has one slope or one per channel: use shared_axes over all spatial axes")
    x = b.to_cf(t) if t.rank >= 3 else t
    out, = b.emit(q, "prelu", [x], {"num_parameters": n, "axis": 1},
                  {"weight": b.param(q, "alpha", [] if ashape == (n,) else [{"reshape": [n]}])})
    return [_T(out, x.shape, x.cf)]


@layer("MaxPooling1D", "MaxPooling2D", "MaxPooling3D", "AveragePooling1D", "AveragePooling2D", "AveragePooling3D")
def _pool(b, q, cfg, ins, kind=None):
    _check_channels_last(b, cfg)
    x = b.to_cf(ins[0])
    n = x.rank - 2
    kernel = _tuple(cfg.get("pool_size", 2), n)
    strides = _tuple(cfg.get("strides") or kernel, n)
    padding = _padding(b, cfg, x.shape[1:-1], kernel, strides, (1,) * n)
    kind = "max" if b.layer[1].startswith("Max") else "avg"
    attrs = {"kind": kind, "dims": n, "kernel": kernel, "stride": strides, "padding": padding, "ceil_mode": False,
             "dilation": (1,) * n}
    if kind == "avg":
        attrs["count_include_pad"] = False
    out, = b.emit(q, "pool", [x], attrs)
    return [_T(out, (x.shape[0], *_spatial_out(x.shape[1:-1], kernel, strides, (1,) * n, padding), x.shape[-1]), True)]


@layer("GlobalAveragePooling1D", "GlobalAveragePooling2D", "GlobalAveragePooling3D", "GlobalMaxPooling1D",
       "GlobalMaxPooling2D", "GlobalMaxPooling3D")
def _global_pool(b, q, cfg, ins):
    _check_channels_last(b, cfg)
    x = b.to_cf(ins[0])
    keep = bool(cfg.get("keepdims", False))
    kind = "max" if "Max" in b.layer[1] else "avg"
    out, = b.emit(q, "global_pool", [x], {"kind": kind, "keepdims": keep})
    shape = (x.shape[0], *([1] * (x.rank - 2)), x.shape[-1]) if keep else (x.shape[0], x.shape[-1])
    return [_T(out, shape, keep)]


@layer("Flatten")
def _flatten(b, q, cfg, ins):
    x = b.to_keras(ins[0])
    size = 1
    for d in x.shape[1:]:
        size = size * d if isinstance(d, int) and isinstance(size, int) else None
    out, = b.emit(q, "flatten", [x], {"start_dim": 1})
    return [_T(out, (x.shape[0], size), False)]


@layer("Reshape")
def _reshape(b, q, cfg, ins):
    x = b.to_keras(ins[0])
    target = tuple(int(d) for d in cfg["target_shape"])
    if -1 in target:
        known, total = 1, 1
        for d in target:
            known *= d if d != -1 else 1
        for d in x.shape[1:]:
            total = total * d if isinstance(d, int) and total is not None else None
        shown = tuple(total // known if d == -1 and total else d for d in target)
    else:
        shown = target
    out, = b.emit(q, "reshape", [x], {"shape": (0, *target) if -1 in target else (-1, *target)})
    return [_T(out, (x.shape[0], *shown), False)]


@layer("Permute")
def _permute(b, q, cfg, ins):
    x = b.to_keras(ins[0])
    dims = tuple(int(d) for d in cfg["dims"])
    out, = b.emit(q, "transpose", [x], {"perm": (0, *dims)})
    return [_T(out, (x.shape[0], *[x.shape[d] for d in dims]), False)]


_MERGE = {"Add": "add", "Subtract": "sub", "Multiply": "mul", "Maximum": "max", "Minimum": "min", "Average": "add"}


def _aligned(b, ins):
    if any(t.cf and t.rank >= 3 for t in ins):
        return [b.to_cf(t) for t in ins]
    return list(ins)


@layer(*_MERGE)
def _merge(b, q, cfg, ins):
    xs = _aligned(b, ins)
    op = _MERGE[b.layer[1]]
    attrs = {}
    if op == "add":
        attrs["coeffs"] = [1.0 / len(xs)] * len(xs) if b.layer[1] == "Average" else None
    out, = b.emit(q, op, xs, attrs)
    return [_T(out, xs[0].shape, xs[0].cf)]


@layer("Concatenate")
def _concat(b, q, cfg, ins):
    xs = _aligned(b, ins)
    axis = int(cfg.get("axis", -1)) % xs[0].rank
    out, = b.emit(q, "concat", xs, {"axis": b.axis(xs[0], axis)})
    sizes = [t.shape[axis] for t in xs]
    total = sum(sizes) if all(isinstance(s, int) for s in sizes) else None
    return [_T(out, tuple(total if i == axis else d for i, d in enumerate(xs[0].shape)), xs[0].cf)]


def _pairs(v, n):
    """Keras padding/cropping argument -> ((b, e), ...) per spatial dim."""
    if isinstance(v, int):
        return ((v, v),) * n
    v = list(v)
    if n == 1 and len(v) == 2 and all(isinstance(a, int) for a in v):
        return ((v[0], v[1]),)
    return tuple((int(p), int(p)) if isinstance(p, int) else (int(p[0]), int(p[1])) for p in v)


@layer("ZeroPadding1D", "ZeroPadding2D", "ZeroPadding3D")
def _zero_pad(b, q, cfg, ins):
    _check_channels_last(b, cfg)
    x = b.to_cf(ins[0])
    n = x.rank - 2
    pads = _pairs(cfg.get("padding", 1), n)
    out, = b.emit(q, "pad", [x], {"pads": ((0, 0), (0, 0), *pads), "mode": "constant", "value": 0.0})
    spatial = tuple(s + p0 + p1 if isinstance(s, int) else None for s, (p0, p1) in zip(x.shape[1:-1], pads))
    return [_T(out, (x.shape[0], *spatial, x.shape[-1]), True)]


@layer("Cropping1D", "Cropping2D", "Cropping3D")
def _crop(b, q, cfg, ins):
    _check_channels_last(b, cfg)
    x = b.to_cf(ins[0])
    n = x.rank - 2
    crops = _pairs(cfg.get("cropping", 1), n)
    y = x
    active = [i for i, (c0, c1) in enumerate(crops) if c0 or c1] or [0]
    for i in active:
        c0, c1 = crops[i]
        o, = b.emit(q if i == active[-1] else f"{q}/{i}", "slice", [y],
                    {"axis": 2 + i, "start": c0, "stop": -c1 if c1 else None, "step": 1})
        y = _T(o, y.shape, True)
    spatial = tuple(s - c0 - c1 if isinstance(s, int) else None for s, (c0, c1) in zip(x.shape[1:-1], crops))
    return [_T(y.name, (x.shape[0], *spatial, x.shape[-1]), True)]


@layer("UpSampling1D", "UpSampling2D")
def _upsample(b, q, cfg, ins):
    _check_channels_last(b, cfg)
    x = b.to_cf(ins[0])
    n = x.rank - 2
    size = _tuple(cfg.get("size", 2), n)
    interp = cfg.get("interpolation", "nearest")
    if interp == "nearest":
        attrs = {"mode": "nearest", "align_corners": False, "half_pixel": False}
    elif interp == "bilinear" and n == 2:
        attrs = {"mode": "bilinear", "align_corners": False, "half_pixel": True}
    else:
        raise b.unsupported(f"interpolation {interp!r}")
    attrs.update(scale=tuple(float(s) for s in size), size=None)
    out, = b.emit(q, "upsample", [x], attrs)
    spatial = tuple(s * k if isinstance(s, int) else None for s, k in zip(x.shape[1:-1], size))
    return [_T(out, (x.shape[0], *spatial, x.shape[-1]), True)]


@layer("Rescaling")
def _rescaling(b, q, cfg, ins):
    """x * scale + offset (Keras preprocessing): a per-channel Scale whose values the table fills."""
    t = ins[0]
    values = []
    for key, default in (("scale", 1.0), ("offset", 0.0)):
        v = cfg.get(key, default)
        v = sorted(set(v)) if isinstance(v, (list, tuple)) else [v]
        if len(v) != 1 or not isinstance(v[0], (int, float)):
            raise b.unsupported(f"{key} {cfg.get(key)!r}", hint="only one scale and one offset for all channels")
        values.append(float(v[0]))
    channels = t.shape[-1]
    if not isinstance(channels, int):
        raise b.unsupported("an input whose channel count the config does not give")
    x = b.to_cf(t)
    params = {"weight": Param(fill=values[0])}
    if values[1] != 0.0:
        params["bias"] = Param(fill=values[1])
    out, = b.emit(q, "scale", [x], {"num_features": channels, "bias": values[1] != 0.0, "axis": 1}, params)
    return [_T(out, x.shape, x.cf)]


@layer("Normalization")
def _normalization(b, q, cfg, ins):
    """(x - mean) / max(sqrt(variance), 1e-7) with the adapted mean/variance arrays: a BatchNorm
    without affine and eps 0 (equal unless a variance is below 1e-14)."""
    t = ins[0]
    axis = cfg.get("axis", -1)
    axis = axis[0] if isinstance(axis, (list, tuple)) and len(axis) == 1 else axis
    if cfg.get("invert") or cfg.get("mean") is not None or not isinstance(axis, int) or axis % t.rank != t.rank - 1:
        raise b.unsupported("invert, mean/variance given in the config, or an axis other than the channels")
    vs = b.variables(q)
    names = ("mean", "variance") if "mean" in vs else ("0", "1")  # Keras 3 saves them as vars/0, vars/1
    x = b.to_cf(t)
    c = x.shape[-1]
    params = {"running_mean": b.param(q, names[0], [{"reshape": [c]}]),
              "running_var": b.param(q, names[1], [{"reshape": [c]}])}
    out, = b.emit(q, "batchnorm", [x], {"dims": max(x.rank - 2, 1), "num_features": c, "eps": 0.0, "affine": False},
                  params)
    return [_T(out, x.shape, x.cf)]


@layer(*_IDENTITY)
def _identity(b, q, cfg, ins):
    out, = b.emit(q, "identity", [ins[0]])
    return [_T(out, ins[0].shape, ins[0].cf)]


_OPS = {"Add": "add", "Subtract": "sub", "Multiply": "mul", "Divide": "div", "TrueDivide": "div"}


def keras_op(b, q, cls, args):
    """A keras.ops call recorded in a Keras 3 functional config (`x + 3.0` -> numpy.Add): the
    arithmetic ops with tensors and scalar constants; scalars become buffers the table fills."""
    op = _OPS.get(cls)
    tensors = [a for a in args if isinstance(a, _T)]
    if op is None or not tensors or len(args) != 2:
        raise b.unsupported("a keras.ops operation",
                            hint="only +, -, *, / of two tensors or a tensor and a scalar are ported")
    ins = []
    for i, a in enumerate(args):
        if isinstance(a, _T):
            ins.append(a)
            continue
        out, = b.emit(f"{q}/const{i}", "constant", [], {"shape": (), "dtype": "float32"}, {"value": Param(fill=a)})
        ins.append(out)
    aligned = _aligned(b, tensors)
    ins = [aligned.pop(0) if isinstance(a, _T) else a for a in ins]
    out, = b.emit(q, op, ins, {"coeffs": None} if op == "add" else {})
    return [_T(out, _widest_shape(tensors), any(t.cf for t in ins if isinstance(t, _T)))]


def _widest_shape(tensors):
    return max((t.shape for t in tensors), key=len)


# ----- recurrent

def _rnn_params(b, q, cfg, kind, suffix="", prefix=None):
    if cfg.get("activation", "tanh") != "tanh" or cfg.get("recurrent_activation", "sigmoid") != "sigmoid":
        raise b.unsupported(f"activation {cfg.get('activation')!r} / recurrent_activation "
                            f"{cfg.get('recurrent_activation')!r}", hint="nn.LSTM/nn.GRU use tanh and sigmoid")
    if cfg.get("stateful"):
        raise b.unsupported("stateful=True")
    gates = [] if kind == "lstm" else [{"gates": {"from": "zrh", "to": "rzh"}}]
    p = {f"weight_ih_l0{suffix}": b.param(q, "kernel", ["transpose", *gates], prefix=prefix),
         f"weight_hh_l0{suffix}": b.param(q, "recurrent_kernel", ["transpose", *gates], prefix=prefix)}
    if not cfg.get("use_bias", True):
        p[f"bias_ih_l0{suffix}"] = Param(fill=0.0)
        p[f"bias_hh_l0{suffix}"] = Param(fill=0.0)
    elif kind == "lstm":
        p[f"bias_ih_l0{suffix}"] = b.param(q, "bias", prefix=prefix)
        p[f"bias_hh_l0{suffix}"] = Param(fill=0.0)
    else:
        if not cfg.get("reset_after", False):  # configs without the key predate it (Keras <= 2.1: False)
            raise b.unsupported("reset_after=False", hint="nn.GRU applies the reset gate after the recurrent matmul "
                                                          "(Keras reset_after=True)")
        p[f"bias_ih_l0{suffix}"] = b.param(q, "bias", ["keras_gru_bias", {"take": 0}], prefix=prefix)
        p[f"bias_hh_l0{suffix}"] = b.param(q, "bias", ["keras_gru_bias", {"take": 1}], prefix=prefix)
    return p


def _rnn_node(b, q, cfg, ins, kind, params, *, two_way=False, merge="concat"):
    x = b.to_keras(ins[0])
    units = int(cfg["units"])
    seq = bool(cfg.get("return_sequences", False))
    n_states = (2 if kind == "lstm" else 1) * (2 if two_way else 1) if cfg.get("return_state") else 0
    attrs = {"input_size": x.shape[-1], "hidden_size": units, "num_layers": 1, "bidirectional": two_way,
             "batch_first": True, "return_sequences": seq, "go_backwards": bool(cfg.get("go_backwards", False))}
    if two_way:
        attrs["merge_mode"] = merge
    outs = b.emit(q, kind, [x], attrs, params, n_out=1 + n_states)
    width = units * 2 if two_way and merge == "concat" else units
    y = _T(outs[0], (x.shape[0], x.shape[1], width) if seq else (x.shape[0], width), False)
    return [y] + [_T(o, (x.shape[0], units), False) for o in outs[1:]]


@layer("LSTM", "GRU")
def _rnn(b, q, cfg, ins):
    kind = b.layer[1].lower()
    return _rnn_node(b, q, cfg, ins, kind, _rnn_params(b, q, cfg, kind))


@layer("Bidirectional")
def _bidirectional(b, q, cfg, ins):
    inner = cfg.get("layer", {})
    kind = inner.get("class_name", "").lower()
    if kind not in ("lstm", "gru"):
        raise b.unsupported(f"Bidirectional({inner.get('class_name')})")
    icfg = inner.get("config", {})
    merge = cfg.get("merge_mode", "concat")
    if merge is None or icfg.get("go_backwards"):
        raise b.unsupported(f"merge_mode {merge!r} / go_backwards")
    arrays = b.f.layers[q].arrays
    fw = next((p for a in arrays for p in a.split("/")[:-1] if p.startswith("forward")), None)
    bw = next((p for a in arrays for p in a.split("/")[:-1] if p.startswith("backward")), None)
    if not fw or not bw:
        raise PortError(f"layer {q!r}: cannot tell the forward and backward weights apart in {arrays}", file=b.path)
    params = {**_rnn_params(b, q, icfg, kind, prefix=fw), **_rnn_params(b, q, icfg, kind, "_reverse", prefix=bw)}
    return _rnn_node(b, q, icfg, ins, kind, params, two_way=True, merge=merge)
