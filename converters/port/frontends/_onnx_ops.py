"""ONNX op handlers: one function per ONNX op family, registered with `@handles(...)`, each
reading a node (`readers.onnx_files` Layer) and emitting canonical port nodes through the builder."""
from __future__ import annotations

import numpy as np

from ..graph import Param
from . import registry
from ._onnx_state import (
    _BIG,
    _attr,
    _auto_pad,
    _axis,
    _Builder,
    _Const,
    _opt,
    _out_spatial,
    _pairs,
    _prod,
    _torch_shape,
)

# =========================================================================== handlers

HANDLERS = {}
handles = registry(HANDLERS)


def _conv_geometry(L, wshape):
    """Spatial dims, kernel, strides, dilations and group of a Conv/ConvTranspose, defaults filled."""
    n = len(wshape) - 2
    return (n, tuple(_attr(L, "kernel_shape") or wshape[2:]), tuple(_attr(L, "strides") or [1] * n),
            tuple(_attr(L, "dilations") or [1] * n), int(_attr(L, "group", 1)))


@handles("Conv")
def _conv(b: _Builder, L):
    x, w = L.inputs[0], L.inputs[1]
    wshape = b.shape(w)
    n, kernel, strides, dilations, group = _conv_geometry(L, wshape)
    xs = b.shape(x)
    padding = _auto_pad(b, L, xs[2:], kernel, strides, dilations, _attr(L, "pads"))
    bias = _opt(L, 2)
    params = {"weight": b.param(w)}
    if bias:
        params["bias"] = b.param(bias)
    name, out_t = L.name, L.outputs[0]
    add = None if bias else _fusable_bias_add(b, out_t, int(wshape[0]), channel_axis=1, ndim=n + 2)
    if add is not None:  # Paddle2ONNX: Conv, then Add(Reshape(bias, [1, C, 1, 1]))
        add_layer, const = add
        params["bias"] = _bias_param(b, const, int(wshape[0]))
        b.skip.add(add_layer.name)
        bias, out_t = const, add_layer.outputs[0]
    attrs = {"dims": n, "in_channels": int(wshape[1]) * group, "out_channels": int(wshape[0]),
             "kernel": kernel, "stride": strides, "dilation": dilations, "groups": group,
             "padding": padding, "bias": bool(bias), "padding_value": 0.0}
    out = (xs[0], int(wshape[0]), *_out_spatial(b, xs[2:], kernel, strides, dilations, padding))
    b.emit(name, "conv", [b.tensor(x)], [out_t], attrs, params, shape=out)


@handles("ConvTranspose")
def _conv_transpose(b: _Builder, L):
    x, w = L.inputs[0], L.inputs[1]
    wshape = b.shape(w)
    n, kernel, strides, dilations, group = _conv_geometry(L, wshape)
    if _attr(L, "output_shape") is not None or _attr(L, "auto_pad", "NOTSET") not in ("NOTSET", "VALID", ""):
        raise b.unsupported("output_shape / auto_pad SAME", hint="re-export with explicit pads")
    pads = _pairs(_attr(L, "pads"), n) if _attr(L, "auto_pad", "NOTSET") != "VALID" else ((0, 0),) * n
    out_pad = tuple(_attr(L, "output_padding") or [0] * n)
    bias = _opt(L, 2)
    params = {"weight": b.param(w)}
    if bias:
        params["bias"] = b.param(bias)
    xs = b.shape(x)
    spatial = [(s - 1) * st - p[0] - p[1] + d * (k - 1) + op + 1 if isinstance(s, int) else b.symbol()
               for s, st, p, d, k, op in zip(xs[2:], strides, pads, dilations, kernel, out_pad)]
    attrs = {"dims": n, "in_channels": int(wshape[0]), "out_channels": int(wshape[1]) * group, "kernel": kernel,
             "stride": strides, "dilation": dilations, "groups": group, "padding": pads,
             "output_padding": out_pad, "bias": bool(bias)}
    b.emit(L.name, "conv_transpose", [b.tensor(x)], L.outputs[:1], attrs, params,
           shape=(xs[0], attrs["out_channels"], *spatial))


@handles("Gemm")
def _gemm(b: _Builder, L):
    a, w = L.inputs[0], L.inputs[1]
    if int(_attr(L, "transA", 0)):
        raise b.unsupported("transA=1")
    if w not in b.consts:
        raise b.unsupported("B is not a constant")
    wshape = b.shape(w)
    trans_b = int(_attr(L, "transB", 0))
    out_f, in_f = (wshape[0], wshape[1]) if trans_b else (wshape[1], wshape[0])
    alpha, beta = float(_attr(L, "alpha", 1.0)), float(_attr(L, "beta", 1.0))
    extra = ([] if trans_b else ["transpose"]) + ([] if alpha == 1.0 else [{"scale": alpha}])
    params = {"weight": b.param(w, extra)}
    c = _opt(L, 2)
    if c is not None and beta != 0.0:
        params["bias"] = _bias_param(b, c, out_f, beta)
    attrs = {"in_features": int(in_f), "out_features": int(out_f), "bias": "bias" in params}
    b.emit(L.name, "linear", [b.tensor(a)], L.outputs[:1], attrs, params, shape=(b.shape(a)[0], out_f))


def _bias_param(b, c, out_f, scale=1.0) -> Param:
    cshape = b.shape(c)
    if _prod(cshape) != out_f:
        raise b.unsupported(f"bias of shape {list(cshape)} does not have one value per output ({out_f})")
    if tuple(cshape) != (out_f,):
        b.consts[c] = b.consts[c].derive({"reshape": [out_f]})
    return b.param(c, [] if scale == 1.0 else [{"scale": scale}])


@handles("MatMul")
def _matmul(b: _Builder, L):
    x, w = L.inputs
    if x in b.consts:
        raise b.unsupported("a constant left operand", hint="only x @ W with a constant W becomes nn.Linear")
    if w not in b.consts:
        xs, ws = b.shape(x), b.shape(w)
        out = (*xs[:-1], ws[-1])
        b.emit(L.name, "matmul", [b.tensor(x), b.tensor(w)], L.outputs, {}, shape=out)
        return
    wshape = b.shape(w)
    if len(wshape) != 2:
        raise b.unsupported(f"a {len(wshape)}-d constant right operand")
    in_f, out_f = wshape
    params = {"weight": b.param(w, ["transpose"])}
    out_t = L.outputs[0]
    add = _fusable_bias_add(b, out_t, out_f)
    name = L.name
    if add is not None:
        add_layer, const = add
        params["bias"] = _bias_param(b, const, out_f)
        b.skip.add(add_layer.name)
        out_t = add_layer.outputs[0]
        name = f"{L.name}+{add_layer.name}"
    attrs = {"in_features": int(in_f), "out_features": int(out_f), "bias": "bias" in params}
    b.emit(name, "linear", [b.tensor(x)], [out_t], attrs, params, shape=(*b.shape(x)[:-1], out_f))


def _fusable_bias_add(b, t, out_f, channel_axis=-1, ndim=None):
    """The Add right after a MatMul (Conv) that adds a constant vector of one value per output
    feature (channel), if the MatMul (Conv) feeds only that Add."""
    users = b.consumers.get(t, [])
    if len(users) != 1 or t in b.graph_outputs:
        return None
    add = users[0]
    if add.type != "Add" or len(add.inputs) != 2:
        return None
    other = add.inputs[1] if add.inputs[0] == t else add.inputs[0]
    if other not in b.consts or _prod(b.shape(other)) != out_f:
        return None
    cs = b.shape(other)
    if channel_axis == -1 and cs[-1:] != (out_f,):
        return None
    if channel_axis == 1 and not (len(cs) == ndim and cs[1] == out_f or len(cs) == ndim - 1 and cs[0] == out_f):
        return None
    return add, other


@handles("BatchNormalization")
def _batchnorm(b: _Builder, L):
    if int(_attr(L, "training_mode", 0)):
        raise b.unsupported("training_mode=1")
    x = L.inputs[0]
    xs = b.shape(x)
    scale, bias, mean, var = L.inputs[1:5]
    c = int(b.shape(scale)[0])
    params = {"weight": b.param(scale), "bias": b.param(bias), "running_mean": b.param(mean),
              "running_var": b.param(var)}
    attrs = {"dims": max(len(xs) - 2, 1), "num_features": c, "eps": float(_attr(L, "epsilon", 1e-5)), "affine": True}
    b.emit(L.name, "batchnorm", [b.tensor(x)], L.outputs[:1], attrs, params, shape=xs)


_ACTIVATIONS = {"Relu": "relu", "Sigmoid": "sigmoid", "Tanh": "tanh", "HardSwish": "hard_swish", "Softplus": "softplus",
                "Softsign": "softsign", "Exp": "exp", "Abs": "abs", "Neg": "neg", "Sqrt": "sqrt"}


@handles(*_ACTIVATIONS, "LeakyRelu", "Elu", "HardSigmoid", "Selu", "Gelu")
def _activation(b: _Builder, L):
    op = L.type
    attrs = {"kind": _ACTIVATIONS.get(op)}
    if op == "LeakyRelu":
        attrs = {"kind": "leaky_relu", "negative_slope": float(_attr(L, "alpha", 0.01))}
    elif op == "Elu":
        attrs = {"kind": "elu", "alpha": float(_attr(L, "alpha", 1.0))}
    elif op == "HardSigmoid":
        attrs = {"kind": "hard_sigmoid", "alpha": float(_attr(L, "alpha", 0.2)), "beta": float(_attr(L, "beta", 0.5))}
    elif op == "Selu":
        if not (np.isclose(_attr(L, "alpha", 1.67326319), 1.67326319) and np.isclose(_attr(L, "gamma", 1.05070102),
                                                                                    1.05070102)):
            raise b.unsupported("non-default alpha/gamma", hint="torch's selu has fixed constants")
        attrs = {"kind": "selu"}
    elif op == "Gelu":
        approx = _attr(L, "approximate", "none")
        attrs = {"kind": "gelu", "approximate": approx.decode() if isinstance(approx, bytes) else approx}
    x = L.inputs[0]
    b.emit(L.name, "activation", [b.tensor(x)], L.outputs[:1], attrs, shape=b.shape(x))


@handles("Pow")
def _pow(b: _Builder, L):
    x, e = L.inputs
    exponent = _scalar(b, e)
    if exponent is None or x not in b.runtime:
        raise b.unsupported("an exponent that is not one constant", hint="x ** c with a scalar constant c is ported")
    b.note_folded(e, f"exponent of {L.name}")
    b.emit(L.name, "activation", [x], L.outputs[:1], {"kind": "power", "power": exponent, "scale": 1.0, "shift": 0.0},
           shape=b.shape(x))


@handles("PRelu")
def _prelu(b: _Builder, L):
    x, slope = L.inputs
    xs, ss = b.shape(x), b.shape(slope)
    n = _prod(ss)
    channels = xs[1] if len(xs) > 1 else None
    # a slope per channel: (C,), (C,1,1), (1,C,1,1) ...; or one slope for everything
    squeezed = [d for d in ss if d != 1]
    per_channel = n == channels and len(squeezed) == 1 and len(ss) >= len(xs) - 1 and ss[len(ss) - (len(xs) - 1)] == n
    if not (n == 1 or per_channel):
        raise b.unsupported(f"slope of shape {list(ss)} on an input of shape {list(xs)}",
                            hint="nn.PReLU has one slope or one per channel (axis 1)")
    extra = [] if tuple(ss) == (n,) else [{"reshape": [n]}]
    b.emit(L.name, "prelu", [b.tensor(x)], L.outputs[:1], {"num_parameters": n, "axis": 1},
           {"weight": b.param(slope, extra)}, shape=xs)


@handles("Softmax", "LogSoftmax")
def _softmax(b: _Builder, L):
    x = L.inputs[0]
    xs = b.shape(x)
    nd = len(xs)
    log = L.type == "LogSoftmax"
    if b.opset >= 13:
        axis = _axis(int(_attr(L, "axis", -1)), nd)
    else:
        axis = _axis(int(_attr(L, "axis", 1)), nd)
        if axis != nd - 1:  # coerced to 2-d: softmax over all of axis..end together
            flat = f"{L.outputs[0]}__2d"
            b.emit(f"{L.name}/flatten", "flatten", [b.tensor(x)], [flat], {"start_dim": axis},
                   shape=(*xs[:axis], _prod(xs[axis:]) or b.symbol()))
            soft = f"{L.outputs[0]}__soft"
            b.emit(L.name, "softmax", [flat], [soft], {"axis": axis, "log": log}, shape=b.shape(flat))
            b.emit(f"{L.name}/reshape", "reshape", [soft], L.outputs[:1],
                   {"shape": _torch_shape(b, list(xs), "shape", b.shape(flat))}, shape=xs)
            return
    b.emit(L.name, "softmax", [b.tensor(x)], L.outputs[:1], {"axis": axis, "log": log}, shape=xs)


@handles("MaxPool", "AveragePool")
def _pool(b: _Builder, L):
    if len(L.outputs) > 1 and L.outputs[1] and b.consumers.get(L.outputs[1]):
        raise b.unsupported("the indices output is used")
    x = L.inputs[0]
    xs = b.shape(x)
    kernel = tuple(_attr(L, "kernel_shape"))
    n = len(kernel)
    strides = tuple(_attr(L, "strides") or [1] * n)
    dilations = tuple(_attr(L, "dilations") or [1] * n)
    ceil_mode = bool(_attr(L, "ceil_mode", 0))
    padding = _auto_pad(b, L, xs[2:], kernel, strides, dilations, _attr(L, "pads"))
    kind = "max" if L.type == "MaxPool" else "avg"
    attrs = {"kind": kind, "dims": n, "kernel": kernel, "stride": strides, "padding": padding,
             "ceil_mode": ceil_mode, "dilation": dilations}
    if kind == "avg":
        attrs["count_include_pad"] = bool(_attr(L, "count_include_pad", 0))
        if padding == "same" and attrs["count_include_pad"]:
            raise b.unsupported("auto_pad SAME with count_include_pad=1")
    out = (*xs[:2], *_out_spatial(b, xs[2:], kernel, strides, dilations, padding, ceil_mode))
    b.emit(L.name, "pool", [b.tensor(x)], L.outputs[:1], attrs, shape=out)


@handles("GlobalAveragePool", "GlobalMaxPool")
def _global_pool(b: _Builder, L):
    x = L.inputs[0]
    xs = b.shape(x)
    kind = "avg" if L.type == "GlobalAveragePool" else "max"
    b.emit(L.name, "global_pool", [b.tensor(x)], L.outputs[:1], {"kind": kind, "keepdims": True},
           shape=(*xs[:2], *[1] * (len(xs) - 2)))


def _broadcast(b, shapes):
    nd = max(len(s) for s in shapes)
    out = []
    for i in range(nd):
        dims = [s[i - nd + len(s)] for s in shapes if i - nd + len(s) >= 0]
        known = [d for d in dims if isinstance(d, int) and d != 1]
        sym = [d for d in dims if not isinstance(d, int)]
        out.append(known[0] if known else (sym[0] if sym else 1))
    return tuple(out)


_ELTWISE = {"Add": "add", "Sub": "sub", "Mul": "mul", "Div": "div", "Max": "max", "Min": "min", "Sum": "add"}


@handles(*_ELTWISE)
def _eltwise(b: _Builder, L):
    if all(b.is_const(t) for t in L.inputs) and L.type in ("Add", "Sub", "Mul", "Div"):
        return _fold_arith(b, L)
    if L.type == "Add" and _hard_swish(b, L):
        return
    if L.type == "Div" and _erf_gelu(b, L):
        return
    shapes = [b.shape(t) for t in L.inputs]
    attrs = {"coeffs": None} if _ELTWISE[L.type] == "add" else {}
    b.emit(L.name, _ELTWISE[L.type], [b.tensor(t) for t in L.inputs], L.outputs[:1], attrs,
           shape=_broadcast(b, shapes))


def _scalar(b, t):
    c = b.consts.get(t)
    if c is None or c.source is None or _prod(c.shape) != 1:
        return None
    return float(np.asarray(c.value(b.f)).reshape(-1)[0])


def _only_user(b, t, op):
    users = b.consumers.get(t, [])
    return users[0] if len(users) == 1 and users[0].type == op and t not in b.graph_outputs else None


def _hard_swish(b, L) -> bool:
    """x * clip(x + 3, 0, 6) / 6 (Paddle2ONNX, older torch exports) -> one hard_swish activation."""
    x, three = (L.inputs if _scalar(b, L.inputs[1]) == 3.0 else L.inputs[::-1])
    if _scalar(b, three) != 3.0 or x not in b.runtime:
        return False
    clip = _only_user(b, L.outputs[0], "Clip")
    if clip is None or b.opset < 11 or len(clip.inputs) != 3 or [_scalar(b, t) for t in clip.inputs[1:]] != [0.0, 6.0]:
        return False
    mul = _only_user(b, clip.outputs[0], "Mul")
    if mul is None or sorted(mul.inputs) != sorted([x, clip.outputs[0]]):
        return False
    div = _only_user(b, mul.outputs[0], "Div")
    if div is None or div.inputs[0] != mul.outputs[0] or _scalar(b, div.inputs[1]) != 6.0:
        return False
    for t in (three, *clip.inputs[1:], div.inputs[1]):
        b.note_folded(t, f"a constant of the hard-swish {L.name} .. {div.name}")
    b.skip.update({clip.name, mul.name, div.name})
    b.emit(div.name, "activation", [x], div.outputs[:1], {"kind": "hard_swish"}, source_op="Add+Clip+Mul+Div",
           shape=b.shape(x))
    return True


def _erf_gelu(b, L) -> bool:
    """x * 0.5 * (1 + erf(x / sqrt(2))) (torch.onnx before opset 20, tf2onnx) -> one exact gelu;
    the two final multiplications may come in either order."""
    x, root2 = L.inputs
    if x not in b.runtime or _scalar(b, root2) is None or abs(_scalar(b, root2) - 2 ** 0.5) > 1e-6:
        return False
    erf = _only_user(b, L.outputs[0], "Erf")
    add = erf and _only_user(b, erf.outputs[0], "Add")
    if not add or _scalar(b, next((t for t in add.inputs if t != erf.outputs[0]), "")) != 1.0:
        return False
    first = _only_user(b, add.outputs[0], "Mul")
    second = first and _only_user(b, first.outputs[0], "Mul")
    if not second:
        return False
    operands = {t for t in first.inputs + second.inputs if t not in (add.outputs[0], first.outputs[0])}
    halves = [t for t in operands if t != x]
    if x not in operands or len(halves) != 1 or _scalar(b, halves[0]) != 0.5:
        return False
    for t in (root2, *add.inputs, halves[0]):
        b.note_folded(t, f"a constant of the erf GELU {L.name} .. {second.name}")
    b.skip.update({erf.name, add.name, first.name, second.name})
    b.emit(second.name, "activation", [x], second.outputs[:1], {"kind": "gelu", "approximate": "none"},
           source_op="Div+Erf+Add+Mul+Mul", shape=b.shape(x))
    return True


def _fold_arith(b, L):
    """Integer arithmetic on folded shapes (Shape -> Gather -> Mul ...): computed here."""
    vals = [b.ints(t, "operand") for t in L.inputs]
    if any(not isinstance(v, int) for vs in vals for v in vs) or any(b.consts.get(t) is not None and
                                                                    b.consts[t].dtype.kind == "f" for t in L.inputs):
        raise b.unsupported("arithmetic between constants or unknown dims",
                            hint="fold constants with onnx-simplifier (onnxsim) first")
    a, c = (np.array(v, dtype=np.int64) for v in vals)
    fn = {"Add": np.add, "Sub": np.subtract, "Mul": np.multiply, "Div": np.floor_divide}[L.type]
    b.shapevals[L.outputs[0]] = [int(v) for v in np.atleast_1d(fn(a, c))]


@handles("Concat")
def _concat(b: _Builder, L):
    ins = [t for t in L.inputs if t]
    if all(b.is_const(t) for t in ins) and all(b.shapevals.get(t) is not None or b.consts[t].dtype.kind in "iu"
                                              for t in ins):
        b.shapevals[L.outputs[0]] = [v for t in ins for v in b.ints(t, "shape part")]
        return
    shapes = [b.shape(t) for t in ins]
    nd = len(shapes[0])
    axis = _axis(int(_attr(L, "axis")), nd)
    sizes = [s[axis] for s in shapes]
    total = sum(sizes) if all(isinstance(s, int) for s in sizes) else b.symbol()
    out = tuple(total if i == axis else d for i, d in enumerate(shapes[0]))
    b.emit(L.name, "concat", [b.tensor(t) for t in ins], L.outputs[:1], {"axis": axis}, shape=out)


@handles("Split")
def _split(b: _Builder, L):
    x = L.inputs[0]
    xs = b.shape(x)
    axis = _axis(int(_attr(L, "axis", 0)), len(xs))
    sizes = _attr(L, "split")
    if sizes is None and _opt(L, 1):
        sizes = b.ints(L.inputs[1], "split sizes")
    n = len(L.outputs)
    if sizes is None:
        dim = xs[axis]
        if not isinstance(dim, int):
            raise b.unsupported("equal split of a dim unknown before run time")
        n = int(_attr(L, "num_outputs", n))
        part = -(-dim // n)
        sizes = [min(part, dim - i * part) for i in range(n)]
    sizes = [int(s) for s in sizes]
    b.emit(L.name, "split", [b.tensor(x)], L.outputs, {"axis": axis, "sizes": sizes})
    for o, s in zip(L.outputs, sizes):
        b.shapes[o] = tuple(s if i == axis else d for i, d in enumerate(xs))


@handles("Slice")
def _slice(b: _Builder, L):
    x = L.inputs[0]
    if b.opset < 10:
        starts, ends = _attr(L, "starts"), _attr(L, "ends")
        axes, steps = _attr(L, "axes"), None
    else:
        starts, ends = b.ints(L.inputs[1], "starts"), b.ints(L.inputs[2], "ends")
        axes = b.ints(_opt(L, 3), "axes") if _opt(L, 3) else None
        steps = b.ints(_opt(L, 4), "steps") if _opt(L, 4) else None
    axes = axes if axes is not None else list(range(len(starts)))
    steps = steps if steps is not None else [1] * len(starts)
    if x in b.shapevals:
        vals = b.shapevals[x]
        (s, e, st), = zip(starts, ends, steps)
        b.shapevals[L.outputs[0]] = vals[s:None if e >= _BIG // 4 else e:st]
        return
    xs = list(b.shape(x))
    cur = b.tensor(x)
    for k, (s, e, ax, st) in enumerate(zip(starts, ends, axes, steps)):
        ax = _axis(int(ax), len(xs))
        if st <= 0:
            raise b.unsupported(f"step {st}", hint="torch slicing takes positive steps only")
        stop = None if e >= 2 ** 31 - 1 else int(e)
        if isinstance(xs[ax], int):
            xs[ax] = len(range(*slice(int(s), stop, int(st)).indices(xs[ax])))
        else:
            xs[ax] = b.symbol()
        last = k == len(starts) - 1
        out = L.outputs[0] if last else f"{L.outputs[0]}__{k}"
        b.emit(L.name if last else f"{L.name}/{k}", "slice", [cur], [out],
               {"axis": ax, "start": int(s), "stop": stop, "step": int(st)}, shape=xs)
        cur = out


def _resolve_reshape(b, xs, target, allowzero=False):
    dims = []
    for i, d in enumerate(target):
        if d == 0 and not allowzero:
            dims.append(xs[i])
        else:
            dims.append(d)
    shape = _torch_shape(b, dims, "shape", xs)
    out = list(dims)
    if -1 in shape:  # the inferred dim, when the symbols on both sides cancel out
        sym_in = sorted(d for d in xs if not isinstance(d, int))
        sym_out = sorted(d for i, d in enumerate(dims) if not isinstance(d, int) and shape[i] != -1)
        total = _prod([d for d in xs if isinstance(d, int)])
        known = _prod([d for i, d in enumerate(dims) if isinstance(d, int) and shape[i] != -1])
        out[shape.index(-1)] = total // known if sym_in == sym_out and known else b.symbol()
    return shape, tuple(out)


@handles("Reshape")
def _reshape(b: _Builder, L):
    x = L.inputs[0]
    if b.opset >= 5:
        target = b.ints(L.inputs[1], "target shape")
    else:
        target = list(_attr(L, "shape"))
    if x in b.consts:
        shape, out = _resolve_reshape(b, b.shape(x), target, bool(_attr(L, "allowzero", 0)))
        b.consts[L.outputs[0]] = b.consts[x].derive({"reshape": list(shape)})
        return
    xs = b.shape(x)
    shape, out = _resolve_reshape(b, xs, target, bool(_attr(L, "allowzero", 0)))
    b.emit(L.name, "reshape", [b.tensor(x)], L.outputs[:1], {"shape": shape}, shape=out)


@handles("Flatten")
def _flatten(b: _Builder, L):
    x = L.inputs[0]
    xs = b.shape(x)
    axis = _axis(int(_attr(L, "axis", 1)), len(xs))
    tail = _prod(xs[axis:])
    if axis == 1:
        b.emit(L.name, "flatten", [b.tensor(x)], L.outputs[:1], {"start_dim": 1},
               shape=(xs[0], tail if tail is not None else b.symbol()))
        return
    head = _prod(xs[:axis])
    dims = [head if head is not None else b.symbol(), tail if tail is not None else b.symbol()]
    shape = _torch_shape(b, dims, "flattened shape", xs)
    b.emit(L.name, "reshape", [b.tensor(x)], L.outputs[:1], {"shape": shape}, shape=tuple(dims))


@handles("Transpose")
def _transpose(b: _Builder, L):
    x = L.inputs[0]
    xs = b.shape(x)
    perm = tuple(int(p) for p in (_attr(L, "perm") or range(len(xs) - 1, -1, -1)))
    if x in b.consts:
        b.consts[L.outputs[0]] = b.consts[x].derive({"permute": list(perm)})
        return
    b.emit(L.name, "transpose", [b.tensor(x)], L.outputs[:1], {"perm": perm}, shape=tuple(xs[p] for p in perm))


def _axes_of(b, L, what):
    if b.opset >= 13 and _opt(L, 1):
        return b.ints(L.inputs[1], what)
    return _attr(L, "axes")


@handles("Squeeze")
def _squeeze(b: _Builder, L):
    x = L.inputs[0]
    xs = b.shape(x)
    axes = _axes_of(b, L, "axes")
    if axes is None:
        if any(not isinstance(d, int) for d in xs):
            raise b.unsupported("Squeeze without axes on dims unknown before run time")
        axes = [i for i, d in enumerate(xs) if d == 1]
    axes = sorted(_axis(int(a), len(xs)) for a in axes)
    if x in b.shapevals:
        b.shapevals[L.outputs[0]] = list(b.shapevals[x])
        return
    if x in b.consts:
        c = b.consts[x]
        for a in reversed(axes):
            c = c.derive({"squeeze": a})
        b.consts[L.outputs[0]] = c
        return
    out = tuple(d for i, d in enumerate(xs) if i not in axes)
    b.emit(L.name, "squeeze", [b.tensor(x)], L.outputs[:1], {"axes": tuple(axes)}, shape=out)


@handles("Unsqueeze")
def _unsqueeze(b: _Builder, L):
    x = L.inputs[0]
    xs = b.shape(x)
    axes = sorted(_axis(int(a), len(xs) + len(_axes_of(b, L, "axes"))) for a in _axes_of(b, L, "axes"))
    if x in b.shapevals:
        b.shapevals[L.outputs[0]] = list(b.shapevals[x])
        return
    if x in b.consts:
        c = b.consts[x]
        for a in axes:
            c = c.derive({"unsqueeze": a})
        b.consts[L.outputs[0]] = c
        return
    out = list(xs)
    for a in axes:
        out.insert(a, 1)
    b.emit(L.name, "unsqueeze", [b.tensor(x)], L.outputs[:1], {"axes": tuple(axes)}, shape=out)


@handles("Pad")
def _pad(b: _Builder, L):
    x = L.inputs[0]
    xs = b.shape(x)
    mode = _attr(L, "mode", "constant")
    mode = mode.decode() if isinstance(mode, bytes) else mode
    if mode not in ("constant", "reflect", "edge"):
        raise b.unsupported(f"mode {mode!r}")
    if b.opset < 11:
        pads, value = _attr(L, "pads"), float(_attr(L, "value", 0.0))
    else:
        pads = b.ints(L.inputs[1], "pads")
        value = b.floats(L.inputs[2], "pad value")[0] if _opt(L, 2) else 0.0
    nd = len(xs)
    axes = b.ints(L.inputs[3], "axes") if b.opset >= 18 and _opt(L, 3) else list(range(nd))
    pairs = [(0, 0)] * nd
    for k, a in enumerate(axes):
        pairs[_axis(int(a), nd)] = (int(pads[k]), int(pads[k + len(axes)]))
    if any(p < 0 for pair in pairs for p in pair):
        raise b.unsupported("negative pads (cropping)")
    out = tuple(d + p0 + p1 if isinstance(d, int) else b.symbol() for d, (p0, p1) in zip(xs, pairs))
    b.emit(L.name, "pad", [b.tensor(x)], L.outputs[:1],
           {"pads": tuple(pairs), "mode": {"edge": "replicate"}.get(mode, mode), "value": value}, shape=out)


@handles("Resize", "Upsample")
def _resize(b: _Builder, L):
    x = L.inputs[0]
    xs = b.shape(x)
    nd = len(xs)

    def text(key, default):
        v = _attr(L, key, default)
        return v.decode() if isinstance(v, bytes) else v

    mode = text("mode", "nearest")
    if L.type == "Upsample":
        coord = "asymmetric"
        scales = _attr(L, "scales") or b.floats(L.inputs[1], "scales")
        sizes = None
    else:
        coord = text("coordinate_transformation_mode", "half_pixel" if b.opset >= 11 else "asymmetric")
        if b.opset < 11:
            scales, sizes = b.floats(L.inputs[1], "scales"), None
        else:
            s_in, z_in = _opt(L, 2), _opt(L, 3)
            scales = b.floats(s_in, "scales") if s_in and _prod(b.shape(s_in)) else None
            sizes = b.ints(z_in, "sizes") if z_in else None
        if _opt(L, 1):
            b.note_folded(L.inputs[1], f"roi of {L.name}")
    if scales is not None and (len(scales) != nd or scales[0] != 1 or scales[1] != 1):
        raise b.unsupported(f"scales {scales} (only spatial dims can be resized)")
    if sizes is not None and (len(sizes) != nd or any(isinstance(d, int) and d != z for d, z in zip(xs[:2], sizes))):
        raise b.unsupported(f"sizes {sizes} (only spatial dims can be resized)")
    if mode == "nearest":
        nearest_mode = text("nearest_mode", "round_prefer_floor")
        if L.type == "Upsample" or (coord == "asymmetric" and nearest_mode == "floor"):
            attrs = {"mode": "nearest", "align_corners": False, "half_pixel": False}
        elif coord == "half_pixel" and nearest_mode == "round_prefer_ceil":  # torch's nearest-exact
            attrs = {"mode": "nearest", "align_corners": False, "half_pixel": True}
        else:
            raise b.unsupported(f"nearest with coordinate_transformation_mode {coord!r} and nearest_mode "
                                f"{nearest_mode!r}", hint="torch's nearest is asymmetric + floor, nearest-exact "
                                "half_pixel + round_prefer_ceil")
    elif mode in ("linear", "bilinear") and nd == 4 and L.type == "Resize":
        if coord == "align_corners":
            attrs = {"mode": "bilinear", "align_corners": True, "half_pixel": False}
        elif coord in ("half_pixel", "pytorch_half_pixel"):
            attrs = {"mode": "bilinear", "align_corners": False, "half_pixel": True}
        else:
            raise b.unsupported(f"linear with coordinate_transformation_mode {coord!r}",
                                hint="torch's bilinear is align_corners or half_pixel")
    else:
        raise b.unsupported(f"mode {mode!r} on a {nd}-d input (coordinate mode {coord!r})")
    if text("keep_aspect_ratio_policy", "stretch") != "stretch" or _opt(L, 4):
        raise b.unsupported("keep_aspect_ratio_policy / antialias")
    if sizes is not None:
        attrs.update(scale=None, size=tuple(int(s) for s in sizes[2:]))
        out = tuple(sizes)
    else:
        attrs.update(scale=tuple(float(s) for s in scales[2:]), size=None)
        out = (*xs[:2], *[int(np.floor(d * s)) if isinstance(d, int) else b.symbol()
                          for d, s in zip(xs[2:], scales[2:])])
    b.emit(L.name, "upsample", [b.tensor(x)], L.outputs[:1], attrs, shape=out)


@handles("Clip")
def _clip(b: _Builder, L):
    x = L.inputs[0]
    if b.opset < 11:
        lo, hi = _attr(L, "min"), _attr(L, "max")
    else:
        lo = b.floats(L.inputs[1], "min")[0] if _opt(L, 1) else None
        hi = b.floats(L.inputs[2], "max")[0] if _opt(L, 2) else None
    attrs = {"min": None if lo is None else float(lo), "max": None if hi is None else float(hi)}
    b.emit(L.name, "clip", [b.tensor(x)], L.outputs[:1], attrs, shape=b.shape(x))


@handles("Dropout", "Identity")
def _identity(b: _Builder, L):
    x = L.inputs[0]
    if len(L.outputs) > 1 and L.outputs[1] and b.consumers.get(L.outputs[1]):
        raise b.unsupported("the mask output is used")
    if x in b.consts:
        b.consts[L.outputs[0]] = b.consts[x]
        return
    if x in b.shapevals:
        b.shapevals[L.outputs[0]] = b.shapevals[x]
        return
    b.emit(L.name, "identity", [b.tensor(x)], L.outputs[:1], shape=b.shape(x))


@handles("ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin")
def _reduce(b: _Builder, L):
    x = L.inputs[0]
    xs = b.shape(x)
    axes = _attr(L, "axes")
    input_axes = b.opset >= 18 or (L.type == "ReduceSum" and b.opset >= 13)
    if input_axes and _opt(L, 1):
        axes = b.ints(L.inputs[1], "axes")
    if not axes:
        if input_axes and int(_attr(L, "noop_with_empty_axes", 0)):
            return _identity(b, L)
        axes = list(range(len(xs)))
    axes = tuple(sorted(_axis(int(a), len(xs)) for a in axes))
    keep = bool(_attr(L, "keepdims", 1))
    out = tuple(1 if i in axes else d for i, d in enumerate(xs) if keep or i not in axes)
    b.emit(L.name, "reduce", [b.tensor(x)], L.outputs[:1],
           {"kind": L.type[len("Reduce"):].lower(), "axes": axes, "keepdims": keep}, shape=out)


@handles("Shape")
def _shape(b: _Builder, L):
    dims = list(b.shape(L.inputs[0]))
    start, end = _attr(L, "start", 0), _attr(L, "end")
    b.shapevals[L.outputs[0]] = dims[start:end]


@handles("Gather")
def _gather(b: _Builder, L):
    x, idx = L.inputs
    if not b.is_const(x) or not b.is_const(idx) or int(_attr(L, "axis", 0)) != 0:
        raise b.unsupported("Gather on data computed at run time",
                            hint="only Gather on folded shapes (Shape -> Gather) is ported")
    vals, ids = b.ints(x, "gathered values"), b.ints(idx, "indices")
    b.shapevals[L.outputs[0]] = [vals[i] for i in ids]


@handles("Cast")
def _cast(b: _Builder, L):
    x = L.inputs[0]
    if x in b.shapevals:
        b.shapevals[L.outputs[0]] = list(b.shapevals[x])
        return
    if x in b.consts:
        c = b.consts[x]
        if c.dtype.kind in "iu" or int(_attr(L, "to")) in (6, 7):
            b.shapevals[L.outputs[0]] = b.ints(x, "cast value")
            return
        b.consts[L.outputs[0]] = c.derive({"cast": "float32"}) if int(_attr(L, "to")) == 1 else c
        return
    if int(_attr(L, "to")) != 1:
        raise b.unsupported(f"cast of run-time data to data_type {_attr(L, 'to')}")
    b.emit(L.name, "identity", [b.tensor(x)], L.outputs[:1], shape=b.shape(x))


@handles("ConstantOfShape")
def _constant_of_shape(b: _Builder, L):
    dims = b.ints(L.inputs[0], "shape")
    value = np.asarray(L.params.get("value", np.zeros(1, np.float32)))
    if value.dtype.kind in "iu" and all(isinstance(d, int) for d in dims) and len(dims) == 1:
        b.shapevals[L.outputs[0]] = [int(value.reshape(-1)[0])] * dims[0]
        return
    small = np.full([d if isinstance(d, int) else 1 for d in dims], value.reshape(-1)[0], dtype=value.dtype)
    b.consts[L.outputs[0]] = _Const(tuple(dims), value.dtype, _value=small)  # no source: usable as a zero state


@handles("Constant")
def _constant(b: _Builder, L):
    out = L.outputs[0]
    if out not in b.consts:
        raise b.unsupported("a Constant the reader exposes no array for (sparse or string?)")


@handles("LSTM", "GRU")
def _rnn(b: _Builder, L):
    """ONNX LSTM (gates iofc) / GRU (zrh, linear_before_reset=1) -> nn.LSTM / nn.GRU (seq-first)."""
    lstm = L.type == "LSTM"
    direction = _attr(L, "direction", "forward")
    direction = direction.decode() if isinstance(direction, bytes) else direction
    if direction == "reverse" or _attr(L, "clip") is not None or int(_attr(L, "input_forget", 0)) \
            or int(_attr(L, "layout", 0)) or _attr(L, "activations") not in (None, *_DEFAULT_ACTS[L.type]):
        raise b.unsupported("direction reverse / clip / input_forget / layout 1 / non-default activations")
    if not lstm and not int(_attr(L, "linear_before_reset", 0)):
        raise b.unsupported("linear_before_reset=0", hint="nn.GRU applies the reset gate after the recurrent matmul")
    if _opt(L, 4) or (lstm and _opt(L, 7)):
        raise b.unsupported("sequence_lens / peepholes")
    x, w, r = L.inputs[:3]
    dirs, gates_h, in_size = b.shape(w)
    hidden = int(_attr(L, "hidden_size", gates_h // (4 if lstm else 3)))
    two_way = direction == "bidirectional"
    order = {"from": "iofc", "to": "ifco"} if lstm else {"from": "zrh", "to": "rzh"}
    params = {}
    for d, suffix in enumerate(["", "_reverse"][:dirs]):
        # one array holds both directions (and B both biases): split + take, one table rule per array
        pick = [{"split": {"axis": 0, "parts": dirs}}, {"take": d}] if dirs > 1 else []
        pick += [{"squeeze": 0}]
        params[f"weight_ih_l0{suffix}"] = b.param(w, [*pick, {"gates": order}])
        params[f"weight_hh_l0{suffix}"] = b.param(r, [*pick, {"gates": order}])
        if _opt(L, 3):
            for k, which in enumerate(("ih", "hh")):
                params[f"bias_{which}_l0{suffix}"] = b.param(L.inputs[3], [
                    {"reshape": [2 * dirs, gates_h]}, {"split": {"axis": 0, "parts": 2 * dirs}}, {"take": 2 * d + k},
                    {"squeeze": 0}, {"gates": order}])
        else:
            params[f"bias_ih_l0{suffix}"], params[f"bias_hh_l0{suffix}"] = Param(fill=0.0), Param(fill=0.0)
    states = [_opt(L, 5)] + ([_opt(L, 6)] if lstm else [])
    state_ins = []
    for t in states:
        if t is None:
            continue
        if t in b.consts and not np.any(b.consts[t].value(b.f)):
            b.note_folded(t, f"zero initial state of {L.name}")
            continue
        state_ins.append(b.tensor(t))
    if state_ins and len(state_ins) != len(states):
        raise b.unsupported("an initial state given for only some of h0/c0")
    xs = b.shape(x)
    y_name = L.outputs[0] if L.outputs and L.outputs[0] else None
    state_outs = list(L.outputs[1:3 if lstm else 2])
    if not any(state_outs):
        state_outs = []
    outs = [f"{L.name}__seq"] + [o or f"{L.name}__state{i}" for i, o in enumerate(state_outs)]
    attrs = {"input_size": int(in_size), "hidden_size": hidden, "num_layers": 1, "bidirectional": two_way,
             "batch_first": False, "return_sequences": True, "go_backwards": False, "state_format": "stacked"}
    b.emit(L.name, L.type.lower(), [b.tensor(x), *state_ins], outs, attrs, params, shape=(xs[0], xs[1], dirs * hidden))
    for o in outs[1:]:
        b.shapes[o] = (dirs, xs[1], hidden)
    if y_name:  # ONNX Y is (seq, dirs, batch, hidden); torch's (seq, batch, dirs * hidden)
        split = f"{L.name}__split"
        b.emit(f"{L.name}/split_dirs", "reshape", [outs[0]], [split], {"shape": (0, 0, dirs, hidden)},
               shape=(xs[0], xs[1], dirs, hidden))
        b.emit(f"{L.name}/to_onnx", "transpose", [split], [y_name], {"perm": (0, 2, 1, 3)},
               shape=(xs[0], dirs, xs[1], hidden))


_DEFAULT_ACTS = {"LSTM": (["Sigmoid", "Tanh", "Tanh"], ["Sigmoid", "Tanh", "Tanh"] * 2),
                 "GRU": (["Sigmoid", "Tanh"], ["Sigmoid", "Tanh"] * 2)}
