"""The MXNet operator handlers of the MXNet frontend: one function per op family, each reading a
symbol node's attributes with MXNet's own defaults and emitting canonical nodes."""
from __future__ import annotations

from ..graph import Node, Param, PortError, UnsupportedOpError
from . import _shapes

_ACTIVATIONS = {"relu": "relu", "sigmoid": "sigmoid", "tanh": "tanh", "softrelu": "softplus", "softsign": "softsign"}
_BINARY = {"add": ("elemwise_add", "_Plus", "_plus", "_add", "broadcast_add", "broadcast_plus"),
           "sub": ("elemwise_sub", "_Minus", "_minus", "_sub", "broadcast_sub", "broadcast_minus"),
           "mul": ("elemwise_mul", "_Mul", "_mul", "broadcast_mul"),
           "div": ("elemwise_div", "_Div", "_div", "broadcast_div"),
           "max": ("_Maximum", "_maximum", "broadcast_maximum"),
           "min": ("_Minimum", "_minimum", "broadcast_minimum")}
_SCALAR = {"_plus_scalar": ("add", False), "_PlusScalar": ("add", False), "_minus_scalar": ("sub", False),
           "_MinusScalar": ("sub", False), "_rminus_scalar": ("sub", True), "_RMinusScalar": ("sub", True),
           "_mul_scalar": ("mul", False), "_MulScalar": ("mul", False), "_div_scalar": ("div", False),
           "_DivScalar": ("div", False), "_rdiv_scalar": ("div", True), "_RDivScalar": ("div", True),
           "_maximum_scalar": ("max", False), "_MaximumScalar": ("max", False),
           "_minimum_scalar": ("min", False), "_MinimumScalar": ("min", False)}
_UNARY = {"relu": "relu", "sigmoid": "sigmoid", "tanh": "tanh", "softsign": "softsign", "exp": "exp",
          "abs": "abs", "negative": "neg", "sqrt": "sqrt"}
_IDENTITY = ("Dropout", "_copy", "identity", "BlockGrad", "stop_gradient", "LinearRegressionOutput",
             "MAERegressionOutput")


def _spatial(a, key, d, default):
    value = a.tuple(key, None)
    return tuple(value) if value else (default,) * d


def _check_layout(b, node, a):
    layout = a.str("layout", "None")
    if layout not in ("None", "NCW", "NCHW", "NCDHW"):
        raise UnsupportedOpError(f"{node['op']} with layout {layout}", node["name"], b.file)


def _weighted_input(b, node, no_bias):
    """(data tensor, {weight[, bias]} params, the weight array's shape, the data's shape or None):
    Convolution, Deconvolution and FullyConnected take data, weight, bias in this order."""
    x = b.tensor(node["inputs"][0])
    params = {"weight": b.weight(node, 1)}
    if not no_bias:
        params["bias"] = b.weight(node, 2)
    return x, params, b.arrays[params["weight"].source].shape, b.shape(x)


def convolution(b, node, a):
    kernel = a.tuple("kernel")
    d = len(kernel)
    _check_layout(b, node, a)
    stride, dilate, pad = _spatial(a, "stride", d, 1), _spatial(a, "dilate", d, 1), _spatial(a, "pad", d, 0)
    groups, out, no_bias = a.int("num_group", 1), a.int("num_filter"), a.bool("no_bias", False)
    x, params, w_shape, s = _weighted_input(b, node, no_bias)
    in_channels = w_shape[1] * groups
    shape = None if s is None else (s[0], out) + tuple(
        _shapes.conv_out(s[2 + i], kernel[i], stride[i], dilate[i], pad[i], pad[i]) for i in range(d))
    b.emit(node["name"], "conv", [x], {"dims": d, "in_channels": in_channels, "out_channels": out, "kernel": kernel,
                                           "stride": stride, "dilation": dilate, "groups": groups,
                                           "padding": tuple((p, p) for p in pad), "bias": not no_bias},
           params, node["op"], shape)


def deconvolution(b, node, a):
    kernel = a.tuple("kernel")
    d = len(kernel)
    _check_layout(b, node, a)
    if a.tuple("target_shape", ()):
        raise UnsupportedOpError("Deconvolution with target_shape (padding decided at run time)", node["name"],
                                 b.file, hint="re-export with explicit pad/adj")
    stride, dilate, pad = _spatial(a, "stride", d, 1), _spatial(a, "dilate", d, 1), _spatial(a, "pad", d, 0)
    adj = _spatial(a, "adj", d, 0)
    groups, out, no_bias = a.int("num_group", 1), a.int("num_filter"), a.bool("no_bias", True)
    x, params, w_shape, s = _weighted_input(b, node, no_bias)
    in_channels = w_shape[0]
    shape = None if s is None else (s[0], out) + tuple(
        None if s[2 + i] is None else
        (s[2 + i] - 1) * stride[i] - 2 * pad[i] + dilate[i] * (kernel[i] - 1) + adj[i] + 1 for i in range(d))
    b.emit(node["name"], "conv_transpose", [x], {
        "dims": d, "in_channels": in_channels, "out_channels": out, "kernel": kernel, "stride": stride,
        "dilation": dilate, "groups": groups, "padding": tuple((p, p) for p in pad), "output_padding": adj,
        "bias": not no_bias},
        params, node["op"], shape)


def fully_connected(b, node, a):
    hidden, no_bias, flatten = a.int("num_hidden"), a.bool("no_bias", False), a.bool("flatten", True)
    x, params, w_shape, s = _weighted_input(b, node, no_bias)
    in_features = w_shape[1]
    if flatten and (s is None or len(s) != 2):
        # MXNet's FullyConnected flattens all but the batch axis itself (flatten=True default)
        x = b.emit(b.fresh(node["name"] + "_flatten"), "flatten", [x], {"start_dim": 1}, {}, node["op"],
                   None if s is None else (s[0], _shapes.numel(s[1:])))
        s = b.shape(x)
    shape = None if s is None else tuple(s[:-1]) + (hidden,)
    b.emit(node["name"], "linear", [x], {"in_features": in_features, "out_features": hidden, "bias": not no_bias},
           params, node["op"], shape)


def batch_norm(b, node, a):
    if a.int("axis", 1) != 1:
        raise UnsupportedOpError(f"BatchNorm over axis {a.int('axis')}", node["name"], b.file)
    if a.bool("output_mean_var", False):
        raise UnsupportedOpError("BatchNorm with output_mean_var", node["name"], b.file)
    x = b.tensor(node["inputs"][0])
    rank = b.rank(x, node, "BatchNorm (1d/2d/3d)")
    fix_gamma = a.bool("fix_gamma", True)
    # fix_gamma=True: MXNet uses gamma = 1 whatever the file holds (the constant shows in the report)
    params = {"weight": b.weight(node, 1, [{"constant": 1.0}] if fix_gamma else []),
              "bias": b.weight(node, 2), "running_mean": b.weight(node, 3), "running_var": b.weight(node, 4)}
    features = b.arrays[params["running_mean"].source].shape[0]
    b.emit(node["name"], "batchnorm", [x], {"dims": max(rank - 2, 1), "num_features": features,
                                                "eps": a.float("eps", 1e-3), "affine": True},
           params, node["op"], b.shape(x))


def activation(b, node, a):
    kind = a.str("act_type")
    if kind not in _ACTIVATIONS:
        raise UnsupportedOpError(f"Activation act_type={kind}", node["name"], b.file)
    _act(b, node, {"kind": _ACTIVATIONS[kind]})


def _act(b, node, attrs):
    x = b.tensor(node["inputs"][0])
    b.emit(node["name"], "activation", [x], attrs, {}, node["op"], b.shape(x))


def leaky_relu(b, node, a):
    kind, slope = a.str("act_type", "leaky"), a.float("slope", 0.25)
    if kind == "prelu":
        x = b.tensor(node["inputs"][0])
        weight = b.weight(node, 1)
        n = b.arrays[weight.source].size
        b.emit(node["name"], "prelu", [x], {"num_parameters": n, "axis": 1}, {"weight": weight}, node["op"],
               b.shape(x))
    elif kind == "leaky":
        _act(b, node, {"kind": "leaky_relu", "negative_slope": slope})
    elif kind == "elu":
        _act(b, node, {"kind": "elu", "alpha": slope})
    elif kind == "selu":
        _act(b, node, {"kind": "selu"})
    elif kind == "gelu":
        _act(b, node, {"kind": "gelu", "approximate": "none"})
    else:
        raise UnsupportedOpError(f"LeakyReLU act_type={kind}", node["name"], b.file)


def unary(b, node, a):
    _act(b, node, {"kind": _UNARY[node["op"]]})


def pooling(b, node, a):
    kind = a.str("pool_type", "max")
    if kind not in ("max", "avg"):
        raise UnsupportedOpError(f"Pooling pool_type={kind}", node["name"], b.file)
    _check_layout(b, node, a)
    x = b.tensor(node["inputs"][0])
    s = b.shape(x)
    if a.bool("global_pool", False):
        shape = None if s is None else tuple(s[:2]) + (1,) * (len(s) - 2)
        b.emit(node["name"], "global_pool", [x], {"kind": kind, "keepdims": True}, {}, node["op"], shape)
        return
    kernel = a.tuple("kernel")
    d = len(kernel)
    stride, pad = _spatial(a, "stride", d, 1), _spatial(a, "pad", d, 0)
    convention = a.str("pooling_convention", "valid")
    if convention not in ("valid", "full"):
        raise UnsupportedOpError(f"Pooling pooling_convention={convention}", node["name"], b.file)
    ceil = convention == "full"
    if any(p > k // 2 for p, k in zip(pad, kernel)):
        raise UnsupportedOpError(f"Pooling pad {pad} larger than half the kernel {kernel}", node["name"], b.file)
    if ceil and any(p > 0 or st > k for p, st, k in zip(pad, stride, kernel)):
        # the only case where PyTorch's ceil_mode drops a window MXNet's `full` keeps: check the sizes
        sizes = b.need_shape(x, node, "`full` pooling with padding or stride > kernel")[2:]
        if any(_shapes.torch_ceil_drops_window(n, k, st, p) for n, k, st, p in zip(sizes, kernel, stride, pad)):
            raise UnsupportedOpError("Pooling `full` whose last window lies in the padding (PyTorch drops it)",
                                     node["name"], b.file)
    shape = None if s is None else tuple(s[:2]) + tuple(
        _shapes.pool_out(s[2 + i], kernel[i], stride[i], pad[i], pad[i], ceil) for i in range(d))
    attrs = {"kind": kind, "dims": d, "kernel": kernel, "stride": stride, "padding": tuple((p, p) for p in pad),
                 "ceil_mode": ceil, "dilation": (1,) * d}
    if kind == "avg":
        attrs["count_include_pad"] = a.bool("count_include_pad", True)
    b.emit(node["name"], "pool", [x], attrs, {}, node["op"], shape)


def binary(b, node, a):
    op = next(k for k, names in _BINARY.items() if node["op"] in names)
    xs = [b.tensor(e) for e in node["inputs"]]
    b.emit(node["name"], op, xs, {"coeffs": None} if op == "add" else {}, {}, node["op"],
           _shapes.broadcast(*(b.shape(x) for x in xs)))


def add_n(b, node, a):
    xs = [b.tensor(e) for e in node["inputs"]]
    b.emit(node["name"], "add", xs, {"coeffs": None}, {}, node["op"], _shapes.broadcast(*(b.shape(x) for x in xs)))


def scalar(b, node, a):
    op, reverse = _SCALAR[node["op"]]
    x = b.tensor(node["inputs"][0])
    value = a.float("scalar")
    const = b.emit(b.fresh(node["name"] + "_scalar"), "constant", [], {"shape": (), "dtype": "float32"},
                   {"value": Param(fill=value)}, node["op"], ())
    xs = [const, x] if reverse else [x, const]
    b.emit(node["name"], op, xs, {"coeffs": None} if op == "add" else {}, {}, node["op"], b.shape(x))


def concat(b, node, a):
    xs = [b.tensor(e) for e in node["inputs"]]
    shapes = [b.shape(x) for x in xs]
    rank = b.rank(xs[0], node, "Concat's axis")
    axis = a.int("dim", 1) % rank
    shape = None
    if all(s is not None for s in shapes):
        total = None if any(s[axis] is None for s in shapes) else sum(s[axis] for s in shapes)
        shape = tuple(total if i == axis else d for i, d in enumerate(shapes[0]))
    b.emit(node["name"], "concat", xs, {"axis": axis}, {}, node["op"], shape)


def slice_channel(b, node, a):
    x = b.tensor(node["inputs"][0])
    s = b.shape(x)
    n, rank = a.int("num_outputs"), b.rank(x, node, "SliceChannel's axis")
    axis, squeeze = a.int("axis", 1) % rank, a.bool("squeeze_axis", False)
    size = b.need_shape(x, node, "SliceChannel (split sizes)")[axis]
    if size is None or size % n:
        raise PortError(f"layer {node['name']!r}: axis {axis} of size {size} does not split into {n}", file=b.file)
    part = tuple(size // n if i == axis else d for i, d in enumerate(s))
    final = [f"{node['name']}:{k}" if k else node["name"] for k in range(n)]
    outs = [f"{t}_unsqueezed" for t in final] if squeeze else final
    b.taken.add(node["name"])
    b.nodes.append(_node(node, "split", [x], outs, {"axis": axis, "sizes": [size // n] * n}))
    for t in outs:
        b.shapes[t] = part
    if squeeze:
        for k, (src, dst) in enumerate(zip(outs, final)):
            b.emit(b.fresh(f"{node['name']}_squeeze{k}"), "squeeze", [src], {"axes": (axis,)}, {}, node["op"],
                   part[:axis] + part[axis + 1:], outputs=[dst])


def _node(node, op, inputs, outputs, attrs):
    return Node(name=node["name"], op=op, inputs=inputs, outputs=outputs, attrs=attrs, source_op=node["op"])


def slice_axis(b, node, a):
    x = b.tensor(node["inputs"][0])
    rank = b.rank(x, node, "slice_axis's axis")
    axis, begin, end = a.int("axis") % rank, a.int("begin"), a.tuple("end", ("None",))
    end = end[0] if end else None
    _emit_slice(b, node, x, [(axis, begin, end, 1)])


def slice_op(b, node, a):
    x = b.tensor(node["inputs"][0])
    begin, end = a.tuple("begin"), a.tuple("end")
    step = a.tuple("step", ()) or (None,) * len(begin)
    cuts = [(i, bg or 0, en, st or 1) for i, (bg, en, st) in enumerate(zip(begin, end, step))
            if (bg or 0) != 0 or en is not None or (st or 1) != 1]
    _emit_slice(b, node, x, cuts or [(0, 0, None, 1)])


def _emit_slice(b, node, x, cuts):
    for k, (axis, start, stop, step) in enumerate(cuts):
        s = b.shape(x)
        shape = None
        if s is not None:
            n = s[axis]
            shape = tuple((None if n is None else len(range(n)[slice(start, stop, step)])) if i == axis else d
                          for i, d in enumerate(s))
        name = node["name"] if k == len(cuts) - 1 else b.fresh(f"{node['name']}_axis{axis}")
        x = b.emit(name, "slice", [x], {"axis": axis, "start": start, "stop": stop, "step": step}, {},
                   node["op"], shape)


def flatten(b, node, a):
    x = b.tensor(node["inputs"][0])
    s = b.shape(x)
    b.emit(node["name"], "flatten", [x], {"start_dim": 1}, {}, node["op"],
           None if s is None else (s[0], _shapes.numel(s[1:])))


def reshape(b, node, a):
    if a.bool("reverse", False) or a.tuple("target_shape", ()):
        raise UnsupportedOpError("Reshape with reverse=True or the legacy target_shape", node["name"], b.file)
    x = b.tensor(node["inputs"][0])
    codes = a.tuple("shape")
    s = b.shape(x)
    out, batch_kept = _mx_reshape(b, node, s, codes)
    shape = out
    if batch_kept and s[0] is not None:
        out = (0,) + out[1:]  # the batch dim is copied: keep it free in the module
    b.emit(node["name"], "reshape", [x], {"shape": tuple(out)}, {}, node["op"], shape)


def _mx_reshape(b, node, s, codes):
    """MXNet's Reshape codes 0 / -1 / -2 / -3 / -4 against the known input shape; (shape, batch kept)."""
    if all(c > 0 or c == -1 for c in codes) and codes.count(-1) <= 1:
        return _shapes.with_minus_one(codes, _shapes.numel(s)), False
    if s is None or any(d is None for d in s):
        b.need_shape(None, node, "Reshape with MXNet's special codes 0/-2/-3/-4")
    out, i, k, kept = [], 0, 0, False
    while k < len(codes):
        c = codes[k]
        if c in (0, -2) and not out and i == 0:
            kept = True
        if c == 0:
            out.append(s[i])
            i += 1
        elif c == -2:
            out.extend(s[i:])
            i = len(s)
        elif c == -3:
            out.append(s[i] * s[i + 1])
            i += 2
        elif c == -4:
            d1, d2 = codes[k + 1], codes[k + 2]
            out.extend([s[i] // d2 if d1 == -1 else d1, s[i] // d1 if d2 == -1 else d2])
            i, k = i + 1, k + 2
        else:
            out.append(c)
            i += 1
        k += 1
    return _shapes.with_minus_one(out, _shapes.numel(s)), kept


def transpose(b, node, a):
    x = b.tensor(node["inputs"][0])
    rank = b.rank(x, node, "transpose")
    perm = a.tuple("axes", ()) or tuple(reversed(range(rank)))
    s = b.shape(x)
    b.emit(node["name"], "transpose", [x], {"perm": tuple(p % rank for p in perm)}, {}, node["op"],
           None if s is None else tuple(s[p] for p in perm))


def softmax_activation(b, node, a):
    x = b.tensor(node["inputs"][0])
    if a.str("mode", "instance") == "channel":
        return _softmax(b, node, x, 1)
    if b.rank(x, node, "SoftmaxActivation mode=instance") == 2:
        return _softmax(b, node, x, 1)
    _softmax_flat(b, node, x)


def softmax(b, node, a):
    if a.float("temperature", None) not in (None, 1.0) or a.bool("use_length", False):
        raise UnsupportedOpError("softmax with temperature or use_length", node["name"], b.file)
    x = b.tensor(node["inputs"][0])
    axis = a.int("axis", -1) % b.rank(x, node, "softmax's axis")
    _softmax(b, node, x, axis, node["op"] == "log_softmax")


def softmax_output(b, node, a):
    """Inference SoftmaxOutput: a softmax; its label input becomes a parity extra input."""
    x = b.tensor(node["inputs"][0])
    rank = b.rank(x, node, "SoftmaxOutput")
    if len(node["inputs"]) > 1:
        label = node["inputs"][1][0]
        s = b.shape(x)
        dims = ["d0"] + ([] if s is None else [d for d in (s[2:] if a.bool("multi_output", False) else ())])
        b.extra_inputs[label] = {"shape": dims, "fill": "zeros"}
    if a.bool("preserve_shape", False):
        return _softmax(b, node, x, rank - 1)
    if a.bool("multi_output", False) or rank == 2:
        return _softmax(b, node, x, 1)
    _softmax_flat(b, node, x)


def _softmax(b, node, x, axis, log=False):
    b.emit(node["name"], "softmax", [x], {"axis": axis, "log": log}, {}, node["op"], b.shape(x))


def _softmax_flat(b, node, x):
    """Softmax over all but the batch axis, the input's shape kept (MXNet's instance softmax)."""
    s = b.need_shape(x, node, "a softmax over all but the batch axis")
    flat = b.emit(b.fresh(node["name"] + "_flatten"), "flatten", [x], {"start_dim": 1}, {}, node["op"],
                  (s[0], _shapes.numel(s[1:])))
    soft = b.emit(b.fresh(node["name"] + "_flat"), "softmax", [flat], {"axis": 1, "log": False}, {}, node["op"],
                  b.shape(flat))
    b.emit(node["name"], "reshape", [soft], {"shape": (0,) + tuple(s[1:])}, {}, node["op"], s)


def logistic_output(b, node, a):
    _act(b, node, {"kind": "sigmoid"})


def identity(b, node, a):
    x = b.tensor(node["inputs"][0])
    b.emit(node["name"], "identity", [x], {}, {}, node["op"], b.shape(x))


def upsampling(b, node, a):
    kind = a.str("sample_type", "nearest")
    if kind != "nearest" or a.int("num_args", 1) != 1:
        raise UnsupportedOpError(f"UpSampling sample_type={kind} num_args={a.int('num_args', 1)}", node["name"],
                                 b.file, hint="bilinear UpSampling is a Deconvolution with a learned weight")
    x = b.tensor(node["inputs"][0])
    scale = a.int("scale")
    s = b.shape(x)
    b.emit(node["name"], "upsample", [x], {"mode": "nearest", "scale": (scale, scale), "size": None,
                                               "align_corners": False, "half_pixel": False}, {}, node["op"],
           None if s is None else tuple(s[:2]) + tuple(None if d is None else d * scale for d in s[2:]))


def crop(b, node, a):
    x = b.tensor(node["inputs"][0])
    s = b.shape(x)
    offset = a.tuple("offset", (0, 0)) or (0, 0)
    if len(node["inputs"]) > 1:
        ref = b.tensor(node["inputs"][1])
        r = b.shape(ref)
        size, inputs = (None if r is None else tuple(r[2:4])), [x, ref]
    else:
        size, inputs = a.tuple("h_w"), [x]
    if a.bool("center_crop", False):
        full, want = b.need_shape(x, node, "center_crop")[2:4], size
        if want is None or None in want:
            b.need_shape(None, node, "center_crop (the reference's size)")
        offset = tuple((f - w) // 2 for f, w in zip(full, want))
    attrs = {"offsets": (None, None) + tuple(offset)}
    if len(inputs) == 1:
        attrs["sizes"] = (None, None) + tuple(size)
    shape = None if s is None or size is None else tuple(s[:2]) + tuple(size)
    b.emit(node["name"], "crop", inputs, attrs, {}, node["op"], shape)


def pad(b, node, a):
    mode = {"constant": "constant", "edge": "replicate", "reflect": "reflect"}[a.str("mode", "constant")]
    width = a.tuple("pad_width")
    x = b.tensor(node["inputs"][0])
    pads = tuple((width[2 * i], width[2 * i + 1]) for i in range(len(width) // 2))
    s = b.shape(x)
    b.emit(node["name"], "pad", [x], {"pads": pads, "mode": mode, "value": a.float("constant_value", 0.0)}, {},
           node["op"], None if s is None else tuple(None if d is None else d + p + q for d, (p, q) in zip(s, pads)))


def clip(b, node, a):
    x = b.tensor(node["inputs"][0])
    b.emit(node["name"], "clip", [x], {"min": a.float("a_min"), "max": a.float("a_max")}, {}, node["op"], b.shape(x))


OPS = {"Convolution": convolution, "Deconvolution": deconvolution, "FullyConnected": fully_connected,
       "BatchNorm": batch_norm, "Activation": activation, "LeakyReLU": leaky_relu, "Pooling": pooling,
       "ElementWiseSum": add_n, "add_n": add_n, "Concat": concat, "concat": concat,
       "SliceChannel": slice_channel, "split": slice_channel, "slice_axis": slice_axis, "slice": slice_op,
       "Flatten": flatten, "flatten": flatten, "Reshape": reshape, "reshape": reshape, "transpose": transpose,
       "SoftmaxActivation": softmax_activation, "softmax": softmax, "log_softmax": softmax,
       "SoftmaxOutput": softmax_output, "Softmax": softmax_output, "LogisticRegressionOutput": logistic_output,
       "UpSampling": upsampling, "Crop": crop, "Pad": pad, "pad": pad, "clip": clip}
OPS.update({name: binary for names in _BINARY.values() for name in names})
OPS.update({name: scalar for name in _SCALAR})
OPS.update({name: unary for name in _UNARY})
OPS.update({name: identity for name in _IDENTITY})


def swap_axis(b, node, a):
    x = b.tensor(node["inputs"][0])
    rank = b.rank(x, node, "SwapAxis")
    d1, d2 = a.int("dim1", 0) % rank, a.int("dim2", 0) % rank
    perm = list(range(rank))
    perm[d1], perm[d2] = perm[d2], perm[d1]
    s = b.shape(x)
    b.emit(node["name"], "transpose", [x], {"perm": tuple(perm)}, {}, node["op"],
           None if s is None else tuple(s[p] for p in perm))


def rnn_param_sources(b, node) -> list:
    """The null nodes the fused RNN's `parameters` input concatenates (through _rnn_param_concat /
    Concat of Reshape(-1)s, what Gluon's rnn layers export), in MXNet's flat order; the nodes in
    between are absorbed into the RNN and not ported."""
    src = b.by_name[node["inputs"][1][0]]
    if src["op"] not in ("_rnn_param_concat", "Concat", "concat"):
        raise UnsupportedOpError("RNN whose parameters are one flat array (not per-gate arrays)", node["name"],
                                 b.file,
                                 hint="export the Gluon rnn layer (net.export), which keeps one array per weight")
    b.absorbed.add(src["name"])
    names = []
    for entry in src["inputs"]:
        part = b.by_name[entry[0]]
        if part["op"] in ("Reshape", "reshape", "Flatten", "flatten"):
            b.absorbed.add(part["name"])
            part = b.by_name[part["inputs"][0][0]]
        if part["op"] != "null" or b.key(part["name"]) is None:
            raise UnsupportedOpError(f"RNN parameter {part['name']!r} computed by the graph", node["name"], b.file)
        names.append(part["name"])
    return names


def rnn(b, node, a):
    """MXNet's fused RNN (mode lstm|gru, TNC): nn.LSTM/nn.GRU with the same gate order, so the
    arrays are copied as they are; the state inputs become the layer's initial states."""
    mode = a.str("mode")
    if mode not in ("lstm", "gru"):
        raise UnsupportedOpError(f"RNN mode={mode}", node["name"], b.file)
    for key, ok in (("projection_size", "None"), ("use_sequence_length", "False"), ("lstm_state_clip_min", "None"),
                    ("lstm_state_clip_max", "None")):
        if a.str(key, ok) != ok:
            raise UnsupportedOpError(f"RNN with {key}={a.str(key)}", node["name"], b.file)
    layers, two_way, hidden = a.int("num_layers", 1), a.bool("bidirectional", False), a.int("state_size")
    names = rnn_param_sources(b, node)
    dirs = ["", "_reverse"] if two_way else [""]
    targets = [f"weight_{g}_l{k}{d}" for k in range(layers) for d in dirs for g in ("ih", "hh")]
    targets += [f"bias_{g}_l{k}{d}" for k in range(layers) for d in dirs for g in ("ih", "hh")]
    if len(names) != len(targets):
        raise PortError(f"layer {node['name']!r}: {len(names)} RNN parameter arrays, {mode} with {layers} layer(s) "
                        f"{'two-way ' if two_way else ''}needs {len(targets)}", file=b.file)
    params = {}
    for target, name in zip(targets, names):
        params[target] = Param(source=b.key(name))
        b.used.add(b.key(name))
    x = b.tensor(node["inputs"][0])
    states = [b.tensor(e) for e in node["inputs"][2:4 if mode == "lstm" else 3]]
    s = b.shape(x)
    n_out = (3 if mode == "lstm" else 2) if a.bool("state_outputs", False) else 1
    outs = [node["name"]] + [f"{node['name']}:{k}" for k in range(1, n_out)]
    b.taken.add(node["name"])
    b.nodes.append(Node(name=node["name"], op=mode, inputs=[x, *states], outputs=outs, params=params,
                        source_op=node["op"], attrs={
                            "input_size": b.arrays[params["weight_ih_l0"].source].shape[1], "hidden_size": hidden,
                            "num_layers": layers, "bidirectional": two_way, "batch_first": False,
                            "return_sequences": True, "go_backwards": False, "state_format": "stacked"}))
    b.shapes[node["name"]] = None if s is None else (s[0], s[1], hidden * len(dirs))
    for t in outs[1:]:
        b.shapes[t] = None if s is None else (layers * len(dirs), s[1], hidden)
    _rnn_layouts(b, x, states, layers * len(dirs), hidden)


def _rnn_layouts(b, x, states, stacked, hidden):
    """The RNN op reads TNC: name the sequence input's layout letters (through one SwapAxis /
    transpose) and declare state inputs (stacked, N, hidden) with the batch of the sequence, so
    verify feeds matching states to both sides."""
    by_tensor = {n.outputs[0]: n for n in b.nodes}
    src, perm = x, (0, 1, 2)
    if x in by_tensor and by_tensor[x].op == "transpose":
        src, perm = by_tensor[x].inputs[0], by_tensor[x].attrs["perm"]
    position = {inp.name: k for k, inp in enumerate(b.inputs)}
    if src in position:
        letters = [""] * 3
        for i, p in enumerate(perm):
            letters[p] = "TNC"[i]
        b.inputs[position[src]].source_layout = "".join(letters)
    for state in states:
        if state in position and position[state] > 0:
            b.inputs[position[state]].source_layout = "LNC"
            b.extra_inputs[state] = {"shape": [stacked, "N", hidden], "fill": "random",
                                     "target_arg": position[state]}


OPS.update({"SwapAxis": swap_axis, "swapaxes": swap_axis, "RNN": rnn})
