"""The TensorFlow op handlers of the TensorFlow frontend: one function per op family. Shapes are
tracked in TF's own axis order (NHWC); `_Value.cf` says whether the module holds a 4-d tensor as
its NCHW permutation (see tensorflow.py)."""
from __future__ import annotations

import numpy as np

from ..graph import Param, UnsupportedOpError, nhwc_axis
from . import _shapes

_ACT = {"Relu": {"kind": "relu"}, "Relu6": {"kind": "relu6"}, "Elu": {"kind": "elu", "alpha": 1.0},
        "Selu": {"kind": "selu"}, "Sigmoid": {"kind": "sigmoid"}, "Tanh": {"kind": "tanh"},
        "Softplus": {"kind": "softplus"}, "Softsign": {"kind": "softsign"}, "Exp": {"kind": "exp"},
        "Abs": {"kind": "abs"}, "Neg": {"kind": "neg"}, "Sqrt": {"kind": "sqrt"}}
_BINARY = {"Add": "add", "AddV2": "add", "BiasAdd": "add", "BiasAddV1": "add", "Sub": "sub", "Mul": "mul",
           "RealDiv": "div", "Maximum": "max", "Minimum": "min"}
_FOLD = {"add": np.add, "sub": np.subtract, "mul": np.multiply, "div": np.divide, "max": np.maximum,
         "min": np.minimum}
_BIAS_OPS = ("BiasAdd", "BiasAddV1", "Add", "AddV2")


class _Value:
    """A TF tensor as the port holds it: a module tensor (`ir`, with its TF-order `shape` and
    whether it is stored channels-first) or a constant known at port time (`array` = the reader's
    array name when it is a stored Const, `value` loaded on demand)."""

    __slots__ = ("_load", "_value", "array", "cf", "ir", "shape", "transforms")

    def __init__(self, ir=None, shape=None, cf=False, array=None, value=None, load=None, transforms=()):
        if shape is None and value is not None:
            shape = tuple(np.shape(value))
        self.ir, self.shape, self.cf, self.array = ir, shape, cf, array
        self.transforms = list(transforms)   # table transforms from the stored array to this value
        self._value, self._load = value, load

    @property
    def is_const(self) -> bool:
        return self.ir is None

    def value(self) -> np.ndarray:
        if self._value is None:
            self._value = self._load()
        return self._value


def _new(b, **kw):
    return _Value(**kw)


def _nhwc(b, layer):
    fmt = layer.params.get("data_format", "NHWC")
    if fmt not in ("NHWC", b"NHWC"):
        raise UnsupportedOpError(f"{layer.type} with data_format={fmt}", layer.name, b.file,
                                 hint="only NHWC graphs are ported (what TF on CPU runs)")


def _tensor(b, layer, i=0):
    v = b.value(layer.inputs[i])
    if v.is_const:
        raise UnsupportedOpError(f"{layer.type} of a constant input {i}", layer.name, b.file)
    return v


def _spatial_padding(b, layer, kernel, stride, dilation, shape):
    """IR padding ("same" or per-dim pairs) and the output's spatial sizes."""
    kind = layer.params.get("padding", "VALID")
    size = [None, None] if shape is None else list(shape[1:3])
    if kind == "SAME":
        return "same", [_shapes.same_out(n, s) for n, s in zip(size, stride)]
    if kind == "VALID":
        pads = ((0, 0), (0, 0))
    elif kind == "EXPLICIT":
        e = [int(v) for v in layer.params.get("explicit_paddings", [])]
        if len(e) != 8 or any(e[:2]) or any(e[6:]):
            raise UnsupportedOpError(f"{layer.type} explicit_paddings {e}", layer.name, b.file)
        pads = ((e[2], e[3]), (e[4], e[5]))
    else:
        raise UnsupportedOpError(f"{layer.type} padding={kind}", layer.name, b.file)
    return pads, [_shapes.conv_out(n, k, s, d, p, q)
                  for n, k, s, d, (p, q) in zip(size, kernel, stride, dilation, pads)]


def _fused_bias(b, layer, channels):
    """(bias Param, the layer whose output the fused node produces): a BiasAdd (or Add of a 1-d
    constant) that is the only reader of this conv/MatMul takes the bias into it."""
    nxt = b.only_consumer(layer, _BIAS_OPS)
    if nxt is None or f"{layer.name}:0" in b.graph_outputs:
        return None, layer
    other = [i for i in nxt.inputs if not i.startswith("^") and i.split(":")[0] != layer.name]
    if len(other) != 1 or nxt.inputs[0].split(":")[0] != layer.name and nxt.type.startswith("BiasAdd"):
        return None, layer
    v = b.ensure(other[0])
    if v is None or not v.is_const or v.array is None or v.array in b.extra or tuple(v.shape) != (channels,):
        return None, layer
    if nxt.type.startswith("BiasAdd"):
        _nhwc(b, nxt)
    b.fused.add(nxt.name)
    return b.param(other[0], what="bias"), nxt


def conv2d(b, layer):
    _nhwc(b, layer)
    x, w = _tensor(b, layer), b.value(layer.inputs[1])
    kh, kw, cin, cout = w.shape
    depthwise = layer.type == "DepthwiseConv2dNative"
    stride = tuple(int(s) for s in layer.params.get("strides", [1, 1, 1, 1])[1:3])
    dilation = tuple(int(s) for s in layer.params.get("dilations", [1, 1, 1, 1])[1:3])
    padding, spatial = _spatial_padding(b, layer, (kh, kw), stride, dilation, x.shape)
    channels = x.shape[3] if x.shape is not None else None
    if depthwise:
        in_channels, out_channels, groups, transform = cin, cin * cout, cin, "tf_depthwise"
    else:
        if channels is None:
            channels = cin
        if channels % cin:
            raise UnsupportedOpError(f"Conv2D of {channels} channels with a {cin}-channel filter", layer.name, b.file)
        in_channels, out_channels, groups, transform = channels, cout, channels // cin, "tf_conv"
    params = {"weight": b.param(layer.inputs[1], [transform])}
    bias, last = _fused_bias(b, layer, out_channels)
    if bias is not None:
        params["bias"] = bias
    ir = b.emit(last.name, "conv", [b.cf(x, layer)], {
        "dims": 2, "in_channels": in_channels, "out_channels": out_channels, "kernel": (kh, kw), "stride": stride,
        "dilation": dilation, "groups": groups, "padding": padding, "bias": bias is not None},
        params, source_op=layer.type if last is layer else f"{layer.type}+{last.type}")
    shape = None if x.shape is None else (x.shape[0], *spatial, out_channels)
    value = _new(b, ir=ir, shape=shape, cf=True)
    b.set(layer, value)
    b.set(last, value)


def conv2d_transpose(b, layer):
    """Conv2DBackpropInput (tf.nn.conv2d_transpose, Keras Conv2DTranspose): a ConvTranspose2d
    whose output is cropped to TF's output_shape (SAME: the odd row goes to the end)."""
    _nhwc(b, layer)
    if (layer.params.get("padding") not in ("SAME", "VALID")
            or any(d != 1 for d in layer.params.get("dilations", [1] * 4))):
        raise UnsupportedOpError(f"Conv2DBackpropInput padding={layer.params.get('padding')} or dilated", layer.name,
                                 b.file)
    out_shape = [int(d) for d in b.const(layer.inputs[0], "conv2d_transpose output_shape")]
    w, x = b.value(layer.inputs[1]), _tensor(b, layer, 2)
    kh, kw, cout, cin = w.shape
    stride = tuple(int(v) for v in layer.params.get("strides", [1, 1, 1, 1])[1:3])
    sizes = x.shape[1:3] if x.shape is not None else (None, None)
    if None in sizes:
        raise UnsupportedOpError("Conv2DBackpropInput of an input of unknown size", layer.name, b.file,
                                 hint="pass --input-shape")
    pads, extra = [], []
    for n, k, st, o in zip(sizes, (kh, kw), stride, out_shape[1:3]):
        total = max((n - 1) * st + k - o, 0) if layer.params["padding"] == "SAME" else 0
        full = (n - 1) * st + k
        begin = total // 2
        end = full - begin - o
        pads.append((begin, max(end, 0)))
        extra.append(max(-end, 0))
    if any(e >= st for e, st in zip(extra, stride)):
        raise UnsupportedOpError(f"Conv2DBackpropInput output_shape {out_shape} (more than stride-1 extra rows)",
                                 layer.name, b.file)
    params = {"weight": b.param(layer.inputs[1], [{"permute": {"axes": [3, 2, 0, 1]}}])}
    bias, last = _fused_bias(b, layer, cout)
    if bias is not None:
        params["bias"] = bias
    ir = b.emit(last.name, "conv_transpose", [b.cf(x, layer)], {
        "dims": 2, "in_channels": cin, "out_channels": cout, "kernel": (kh, kw), "stride": stride, "dilation": (1, 1),
        "groups": 1, "padding": tuple(pads), "output_padding": tuple(extra), "bias": bias is not None}, params,
        source_op=layer.type if last is layer else f"{layer.type}+{last.type}")
    value = _new(b, ir=ir, shape=(x.shape[0], out_shape[1], out_shape[2], cout), cf=True)
    b.set(layer, value)
    b.set(last, value)


def matmul(b, layer):
    if layer.params.get("transpose_a"):
        raise UnsupportedOpError("MatMul with transpose_a", layer.name, b.file)
    x, w = _tensor(b, layer), b.value(layer.inputs[1])
    if x.shape is not None and len(x.shape) != 2:
        raise UnsupportedOpError(f"MatMul of a rank-{len(x.shape)} tensor", layer.name, b.file)
    if not w.is_const:
        ir = b.emit(layer.name, "matmul", [b.source(x, layer), b.source(w, layer)], {}, source_op="MatMul")
        shape = None if x.shape is None or w.shape is None else (x.shape[0], w.shape[1])
        return b.set(layer, _new(b, ir=ir, shape=shape))
    transpose_b = bool(layer.params.get("transpose_b"))
    out, inp = (w.shape[0], w.shape[1]) if transpose_b else (w.shape[1], w.shape[0])
    params = {"weight": b.param(layer.inputs[1], [] if transpose_b else ["tf_dense"])}
    bias, last = _fused_bias(b, layer, out)
    if bias is not None:
        params["bias"] = bias
    ir = b.emit(last.name, "linear", [b.source(x, layer)], {"in_features": inp, "out_features": out,
                                                              "bias": bias is not None}, params,
                source_op="MatMul" if last is layer else f"MatMul+{last.type}")
    value = _new(b, ir=ir, shape=None if x.shape is None else (x.shape[0], out))
    b.set(layer, value)
    b.set(last, value)


def fused_batch_norm(b, layer):
    _nhwc(b, layer)
    if layer.params.get("is_training", False):
        raise UnsupportedOpError("FusedBatchNorm with is_training=True (batch statistics)", layer.name, b.file)
    x = _tensor(b, layer)
    names = ("weight", "bias", "running_mean", "running_var")
    params = {k: b.param(layer.inputs[i + 1], what=k) for i, k in enumerate(names)}
    features = b.value(layer.inputs[1]).shape[0]
    if any(tuple(b.value(layer.inputs[i]).shape) != (features,) for i in (2, 3, 4)):
        raise UnsupportedOpError("FusedBatchNorm without stored mean/variance", layer.name, b.file)
    ir = b.emit(layer.name, "batchnorm", [b.cf(x, layer)], {"dims": 2, "num_features": features,
                                                              "eps": float(layer.params.get("epsilon", 1e-4)),
                                                              "affine": True}, params, source_op=layer.type)
    b.set(layer, _new(b, ir=ir, shape=x.shape, cf=True))


def activation(b, layer):
    x = _tensor(b, layer)
    attrs = dict(_ACT.get(layer.type) or {"kind": "leaky_relu",
                                          "negative_slope": float(layer.params.get("alpha", 0.2))})
    ir = b.emit(layer.name, "activation", [x.ir], attrs, source_op=layer.type)
    b.set(layer, _new(b, ir=ir, shape=x.shape, cf=x.cf))


def softmax(b, layer):
    x = _tensor(b, layer)
    rank = len(x.shape) if x.shape is not None else None
    if rank is None:
        raise UnsupportedOpError("Softmax of a tensor of unknown rank", layer.name, b.file)
    axis = 1 if x.cf else rank - 1
    ir = b.emit(layer.name, "softmax", [x.ir], {"axis": axis, "log": layer.type == "LogSoftmax"}, source_op=layer.type)
    b.set(layer, _new(b, ir=ir, shape=x.shape, cf=x.cf))


def pool(b, layer):
    _nhwc(b, layer)
    x = _tensor(b, layer)
    ksize = layer.params.get("ksize", [1, 1, 1, 1])
    strides = layer.params.get("strides", [1, 1, 1, 1])
    if ksize[0] != 1 or ksize[3] != 1 or strides[0] != 1 or strides[3] != 1:
        raise UnsupportedOpError(f"{layer.type} over the batch or channel axis", layer.name, b.file)
    kernel, stride = (int(ksize[1]), int(ksize[2])), (int(strides[1]), int(strides[2]))
    padding, spatial = _spatial_padding(b, layer, kernel, stride, (1, 1), x.shape)
    kind = "max" if layer.type == "MaxPool" else "avg"
    attrs = {"kind": kind, "dims": 2, "kernel": kernel, "stride": stride, "padding": padding, "ceil_mode": False,
                 "dilation": (1, 1)}
    if kind == "avg":
        attrs["count_include_pad"] = False   # TF's SAME average excludes the padding
    ir = b.emit(layer.name, "pool", [b.cf(x, layer)], attrs, source_op=layer.type)
    b.set(layer, _new(b, ir=ir, shape=None if x.shape is None else (x.shape[0], *spatial, x.shape[3]), cf=True))


def _order_kept(kept_tf_axes) -> bool:
    """Whether dropping the other axes of a channels-first 4-d leaves the kept ones in TF's order."""
    ir = [nhwc_axis(a, 4) for a in kept_tf_axes]
    return ir == sorted(ir)


def reduce(b, layer):
    x = _tensor(b, layer)
    rank = len(x.shape)
    axes = sorted({int(a) % rank for a in np.atleast_1d(b.const(layer.inputs[1], "reduction axes"))})
    keep = bool(layer.params.get("keep_dims", False))
    kind = {"Mean": "mean", "Sum": "sum", "Max": "max", "Min": "min"}[layer.type]
    shape = tuple(1 if i in axes else d for i, d in enumerate(x.shape)) if keep else tuple(
        d for i, d in enumerate(x.shape) if i not in axes)
    kept = [i for i in range(rank) if i not in axes]
    if x.cf and (keep or _order_kept(kept)):
        if axes == [1, 2] and kind in ("mean", "max"):
            ir = b.emit(layer.name, "global_pool", [x.ir], {"kind": "avg" if kind == "mean" else "max",
                                                            "keepdims": keep}, source_op=layer.type)
        else:
            ir = b.emit(layer.name, "reduce", [x.ir], {"kind": kind, "axes": tuple(nhwc_axis(a, 4) for a in axes),
                                                       "keepdims": keep}, source_op=layer.type)
        return b.set(layer, _new(b, ir=ir, shape=shape, cf=keep))
    ir = b.emit(layer.name, "reduce", [b.source(x, layer)], {"kind": kind, "axes": tuple(axes), "keepdims": keep},
                source_op=layer.type)
    b.set(layer, _new(b, ir=ir, shape=shape))


def _inputs(layer):
    return [i for i in layer.inputs if not i.startswith("^")]


def _stored(b, name, channels=None):
    """The tensor name when it is a stored (variable / Const) 1-d array, else None."""
    v = b.ensure(name)
    if v is None or not v.is_const or v.array is None or v.array in b.extra or len(v.shape) != 1:
        return None
    return name if channels is None or v.shape[0] == channels else None


def _bn_scale(b, layer):
    """rsqrt(var + eps) [* gamma] -> (gamma or None, var, eps input), else None."""
    gamma, rsqrt = None, layer
    if layer is not None and layer.type == "Mul":
        parts = [b.layers.get(i.split(":")[0]) for i in _inputs(layer)]
        k = next((j for j, p in enumerate(parts) if p is not None and p.type == "Rsqrt"), None)
        if k is None:
            return None
        rsqrt, gamma = parts[k], _stored(b, _inputs(layer)[1 - k])
        if gamma is None:
            return None
    if rsqrt is None or rsqrt.type != "Rsqrt":
        return None
    add = b.layers.get(_inputs(rsqrt)[0].split(":")[0])
    if add is None or add.type not in ("AddV2", "Add"):
        return None
    var, eps = _inputs(add)
    if _stored(b, var) is None or b.ensure(eps) is None or np.size(b.ensure(eps).value()) != 1:
        return None
    return gamma, var, eps


def _batchnorm_pattern(b, layer) -> bool:
    """tf.nn.batch_normalization as TF writes it unfused (TF1 graphs, Keras 3 exports):
    x * s + (beta - mean * s) with s = rsqrt(var + eps) [* gamma] -> one batchnorm node."""
    ins = _inputs(layer)
    for xi in (0, 1):
        scale_layer = b.layers.get(ins[1 - xi].split(":")[0])
        parsed = _bn_scale(b, scale_layer)
        if parsed:
            break
    else:
        return False
    gamma, var, eps = parsed
    add = b.only_consumer(layer, ("AddV2", "Add"))
    other = [i for i in _inputs(add) if i.split(":")[0] != layer.name] if add is not None else []
    shift = b.layers.get(other[0].split(":")[0]) if len(other) == 1 else None
    if shift is None or shift.type not in ("Sub", "Neg"):
        return False
    beta = _stored(b, _inputs(shift)[0]) if shift.type == "Sub" else None
    m2 = b.layers.get(_inputs(shift)[-1].split(":")[0])
    if m2 is None or m2.type != "Mul" or (shift.type == "Sub" and beta is None):
        return False
    mean = [i for i in _inputs(m2) if i.split(":")[0] != scale_layer.name]
    if len(mean) != 1 or _stored(b, mean[0]) is None:
        return False
    x = _tensor(b, layer, xi)
    features = b.value(var).shape[0]
    params = {"weight": b.param(gamma) if gamma else Param(fill=1.0),
              "bias": b.param(beta) if beta else Param(fill=0.0),
              "running_mean": b.param(mean[0]), "running_var": b.param(var)}
    four = x.shape is not None and len(x.shape) == 4
    if not four and (x.shape is None or len(x.shape) != 2):
        return False
    ir = b.emit(add.name, "batchnorm", [b.cf(x, layer) if four else x.ir], {
        "dims": 2 if four else 1, "num_features": features,
        "eps": float(np.asarray(b.const(eps, "epsilon")).reshape(-1)[0]), "affine": True}, params,
        source_op="batch_normalization (unfused)")
    b.fused.add(add.name)
    value = _new(b, ir=ir, shape=x.shape, cf=four)
    b.set(layer, value)
    b.set(add, value)
    return True


def binary(b, layer):
    op = _BINARY[layer.type]
    if layer.type == "Mul" and _batchnorm_pattern(b, layer):
        return
    if layer.type.startswith("BiasAdd"):
        _nhwc(b, layer)
    vs = [b.value(i) for i in layer.inputs if not i.startswith("^")]
    if all(v.is_const for v in vs):
        return b.set(layer, _new(b, value=_FOLD[op](vs[0].value(), vs[1].value())))
    tensors = [v for v in vs if not v.is_const]
    four = any(v.shape is not None and len(v.shape) == 4 for v in tensors)
    if four and any(v.shape is None or len(v.shape) not in (4,) for v in tensors):
        raise UnsupportedOpError(f"{layer.type} of a 4-d tensor with a lower-rank tensor", layer.name, b.file)
    ins = [b.cf(v, layer) if four else b.source(v, layer) for v in vs]
    shapes = [tuple(v.shape) if v.shape is not None else None for v in vs]
    ir = b.emit(layer.name, op, ins, {"coeffs": None} if op == "add" else {}, source_op=layer.type)
    b.set(layer, _new(b, ir=ir, shape=_shapes.broadcast(*shapes), cf=four))


def add_n(b, layer):
    vs = [_tensor(b, layer, i) for i in range(len([i for i in layer.inputs if not i.startswith("^")]))]
    four = all(v.shape is not None and len(v.shape) == 4 for v in vs)
    ins = [b.cf(v, layer) if four else b.source(v, layer) for v in vs]
    ir = b.emit(layer.name, "add", ins, {"coeffs": None}, source_op=layer.type)
    b.set(layer, _new(b, ir=ir, shape=vs[0].shape, cf=four))


def concat(b, layer):
    data = [i for i in layer.inputs if not i.startswith("^")]
    axis_in = data[-1] if layer.type == "ConcatV2" else data[0]
    parts = data[:-1] if layer.type == "ConcatV2" else data[1:]
    vs = [b.value(i) for i in parts]
    axis = int(b.const(axis_in, "concat axis"))
    if all(v.is_const for v in vs):
        return b.set(layer, _new(b, value=np.concatenate([v.value() for v in vs], axis)))
    rank = len(next(v.shape for v in vs if not v.is_const))
    axis %= rank
    four = rank == 4
    ins = [b.cf(v, layer) if four else b.source(v, layer) for v in vs]
    shape = list(vs[0].shape)
    shape[axis] = None if any(v.shape[axis] is None for v in vs) else sum(v.shape[axis] for v in vs)
    ir = b.emit(layer.name, "concat", ins, {"axis": nhwc_axis(axis, 4) if four else axis}, source_op=layer.type)
    b.set(layer, _new(b, ir=ir, shape=tuple(shape), cf=four))


def reshape(b, layer):
    v = b.value(layer.inputs[0])
    target = [int(d) for d in np.atleast_1d(b.const(layer.inputs[1], "Reshape shape"))]
    if v.is_const:
        return b.set(layer, _reshaped(v, v.value().reshape(target)))
    shape = _shapes.with_minus_one(target, _shapes.numel(v.shape))
    if v.shape is not None and v.shape[0] is not None and target[0] == v.shape[0] and -1 not in target[1:]:
        target[0] = 0      # the batch dim copied: the module keeps it free
    ir = b.emit(layer.name, "reshape", [b.source(v, layer)], {"shape": tuple(target)}, source_op="Reshape")
    b.set(layer, _new(b, ir=ir, shape=tuple(None if d == -1 else d for d in shape)))


def _reshaped(v, out):
    """A stored constant reshaped at port time keeps its array, the reshape becoming a transform."""
    if v.array is None:
        return _Value(value=out)
    return _Value(array=v.array, value=out, transforms=v.transforms + [{"reshape": {"shape": list(out.shape)}}])


def squeeze(b, layer):
    v = b.value(layer.inputs[0])
    if v.is_const:
        dims = layer.params.get("squeeze_dims") or None
        return b.set(layer, _reshaped(v, np.squeeze(v.value(), tuple(dims) if dims else None)))
    x = _tensor(b, layer)
    rank = len(x.shape)
    dims = layer.params.get("squeeze_dims") or [i for i, d in enumerate(x.shape) if d == 1]
    axes = sorted({int(a) % rank for a in dims})
    shape = tuple(d for i, d in enumerate(x.shape) if i not in axes)
    if x.cf and _order_kept([i for i in range(rank) if i not in axes]):
        ir = b.emit(layer.name, "squeeze", [x.ir], {"axes": tuple(nhwc_axis(a, 4) for a in axes)}, source_op="Squeeze")
    else:
        ir = b.emit(layer.name, "squeeze", [b.source(x, layer)], {"axes": tuple(axes)}, source_op="Squeeze")
    b.set(layer, _new(b, ir=ir, shape=shape))


def expand_dims(b, layer):
    v = b.value(layer.inputs[0])
    axis = int(b.const(layer.inputs[1], "ExpandDims axis"))
    if v.is_const:
        return b.set(layer, _reshaped(v, np.expand_dims(v.value(), axis)))
    axis %= len(v.shape) + 1
    ir = b.emit(layer.name, "unsqueeze", [b.source(v, layer)], {"axes": (axis,)}, source_op="ExpandDims")
    b.set(layer, _new(b, ir=ir, shape=v.shape[:axis] + (1,) + v.shape[axis:]))


def transpose(b, layer):
    v = b.value(layer.inputs[0])
    perm = [int(p) for p in b.const(layer.inputs[1], "Transpose perm")]
    if v.is_const:
        return b.set(layer, _new(b, value=np.transpose(v.value(), perm)))
    ir_in = v.ir
    ir_perm = [(0, 2, 3, 1)[p] for p in perm] if v.cf else perm   # cf -> TF order folded into one perm
    ir = b.emit(layer.name, "transpose", [ir_in], {"perm": tuple(ir_perm)}, source_op="Transpose")
    b.set(layer, _new(b, ir=ir, shape=tuple(v.shape[p] for p in perm)))


def pad(b, layer):
    x = _tensor(b, layer)
    pads = [tuple(int(v) for v in row) for row in b.const(layer.inputs[1], "paddings")]
    if layer.type == "MirrorPad":
        mode = {"REFLECT": "reflect"}.get(layer.params.get("mode"))
        if mode is None:
            raise UnsupportedOpError(f"MirrorPad mode={layer.params.get('mode')}", layer.name, b.file)
        value = 0.0
    else:
        mode = "constant"
        value = float(b.const(layer.inputs[2], "pad value")) if layer.type == "PadV2" else 0.0
    shape = tuple(None if d is None else d + p + q for d, (p, q) in zip(x.shape, pads))
    if len(x.shape) == 4:
        ins, pads, cf = [b.cf(x, layer)], [pads[i] for i in (0, 3, 1, 2)], True
    else:
        ins, cf = [b.source(x, layer)], False
    ir = b.emit(layer.name, "pad", ins, {"pads": tuple(pads), "mode": mode, "value": value}, source_op=layer.type)
    b.set(layer, _new(b, ir=ir, shape=shape, cf=cf))


def resize(b, layer):
    x = _tensor(b, layer)
    size = tuple(int(s) for s in b.const(layer.inputs[1], "resize size"))
    align, half = bool(layer.params.get("align_corners")), bool(layer.params.get("half_pixel_centers"))
    if layer.type == "ResizeBilinear":
        if not align and not half:
            raise UnsupportedOpError("ResizeBilinear with align_corners=False and half_pixel_centers=False "
                                     "(TF1's asymmetric sampling has no PyTorch mode)", layer.name, b.file)
        attrs = {"mode": "bilinear", "scale": None, "size": size, "align_corners": align, "half_pixel": not align}
    else:
        if align:
            raise UnsupportedOpError("ResizeNearestNeighbor with align_corners=True (rounds; PyTorch floors)",
                                     layer.name, b.file)
        attrs = {"mode": "nearest", "scale": None, "size": size, "align_corners": False, "half_pixel": half}
    ir = b.emit(layer.name, "upsample", [b.cf(x, layer)], attrs, source_op=layer.type)
    b.set(layer, _new(b, ir=ir, shape=(x.shape[0], *size, x.shape[3]), cf=True))


def _strided_spec(b, layer, rank):
    """TF StridedSlice (begin, end, strides + masks) -> per-axis (start, stop, step) and shrunk axes."""
    begin, end, strides = (np.atleast_1d(b.const(layer.inputs[i], "StridedSlice bounds")).tolist() for i in (1, 2, 3))
    p = {k: int(layer.params.get(k, 0)) for k in ("begin_mask", "end_mask", "ellipsis_mask", "new_axis_mask",
                                                  "shrink_axis_mask")}
    if p["new_axis_mask"]:
        raise UnsupportedOpError("StridedSlice with new_axis_mask", layer.name, b.file)
    cuts, shrink, axis = [], [], 0
    for i in range(len(begin)):
        bit = 1 << i
        if p["ellipsis_mask"] & bit:
            axis += rank - (len(begin) - 1)
            continue
        if p["shrink_axis_mask"] & bit:
            start = int(begin[i])
            cuts.append((axis, start, None if start == -1 else start + 1, 1))
            shrink.append(axis)
        else:
            start = None if p["begin_mask"] & bit else int(begin[i])
            stop = None if p["end_mask"] & bit else int(end[i])
            cuts.append((axis, start, stop, int(strides[i])))
        axis += 1
    return [c for c in cuts if not (c[1] in (None, 0) and c[2] is None and c[3] == 1)], shrink


def strided_slice(b, layer):
    v = b.value(layer.inputs[0])
    if v.is_const:
        value = v.value()
        cuts, shrink = _strided_spec(b, layer, value.ndim)
        index = [slice(None)] * value.ndim
        for axis, start, stop, step in cuts:
            index[axis] = slice(start, stop, step)
        out = value[tuple(index)]
        return b.set(layer, _new(b, value=out.squeeze(tuple(shrink)) if shrink else out))
    rank = len(v.shape)
    cuts, shrink = _strided_spec(b, layer, rank)
    kept = [i for i in range(rank) if i not in shrink]
    cf = v.cf and (not shrink or _order_kept(kept))
    ir = v.ir if cf else b.source(v, layer)
    shape = list(v.shape)
    for k, (axis, start, stop, step) in enumerate(cuts):
        n = shape[axis]
        shape[axis] = None if n is None else len(range(n)[slice(start, stop, step)])
        name = layer.name if k == len(cuts) - 1 and not shrink else b.fresh(f"{layer.name}_axis{axis}")
        ir = b.emit(name, "slice", [ir], {"axis": nhwc_axis(axis, 4) if cf else axis, "start": start or 0,
                                          "stop": stop, "step": step}, source_op="StridedSlice")
    if shrink:
        ir = b.emit(layer.name, "squeeze", [ir], {"axes": tuple(nhwc_axis(a, 4) if cf else a for a in shrink)},
                    source_op="StridedSlice")
    elif not cuts:
        ir = b.emit(layer.name, "identity", [ir], {}, source_op="StridedSlice")
    b.set(layer, _new(b, ir=ir, shape=tuple(d for i, d in enumerate(shape) if i not in shrink),
                      cf=cf and not shrink))


def rsqrt(b, layer):
    """Folded on constants only (the unfused BatchNorm pattern's rsqrt(var + eps))."""
    v = b.value(layer.inputs[0])
    if not v.is_const:
        raise UnsupportedOpError("Rsqrt of a run-time tensor", layer.name, b.file)
    b.set(layer, _new(b, value=1.0 / np.sqrt(v.value())))


def shape_op(b, layer):
    v = b.value(layer.inputs[0])
    shape = v.value().shape if v.is_const else v.shape
    if shape is None or any(d is None for d in shape):
        raise UnsupportedOpError("Shape of a tensor whose size is not known at port time", layer.name, b.file,
                                 hint="pass --input-shape with a fixed batch size")
    b.set(layer, _new(b, value=np.array(shape, dtype=np.int32)))


def pack(b, layer):
    vs = [b.value(i) for i in layer.inputs if not i.startswith("^")]
    if not all(v.is_const for v in vs):
        raise UnsupportedOpError("Pack of run-time tensors", layer.name, b.file)
    b.set(layer, _new(b, value=np.stack([v.value() for v in vs], int(layer.params.get("axis", 0)))))


def cast(b, layer):
    v = b.value(layer.inputs[0])
    dst = layer.params.get("DstT")
    if v.is_const:
        if v.value().dtype == np.dtype(dst or "float32"):
            return b.set(layer, v)   # no change: the stored array stays the source
        return b.set(layer, _new(b, value=v.value().astype(dst or "float32")))
    if dst not in (None, "float32") or layer.params.get("SrcT") not in (None, "float32"):
        raise UnsupportedOpError(f"Cast to {dst}", layer.name, b.file)
    b.set(layer, v)


OPS = {"Conv2D": conv2d, "DepthwiseConv2dNative": conv2d, "MatMul": matmul,
       "FusedBatchNorm": fused_batch_norm, "FusedBatchNormV2": fused_batch_norm, "FusedBatchNormV3": fused_batch_norm,
       "LeakyRelu": activation, "Softmax": softmax, "LogSoftmax": softmax, "MaxPool": pool, "AvgPool": pool,
       "Mean": reduce, "Sum": reduce, "Max": reduce, "Min": reduce, "AddN": add_n,
       "ConcatV2": concat, "Concat": concat, "Reshape": reshape, "Squeeze": squeeze, "ExpandDims": expand_dims,
       "Transpose": transpose, "Pad": pad, "PadV2": pad, "MirrorPad": pad, "ResizeBilinear": resize,
       "ResizeNearestNeighbor": resize, "StridedSlice": strided_slice, "Shape": shape_op, "Pack": pack,
       "Cast": cast, "Rsqrt": rsqrt, "Conv2DBackpropInput": conv2d_transpose}
OPS.update({op: activation for op in _ACT})
OPS.update({op: binary for op in _BINARY})
