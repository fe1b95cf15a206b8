"""One function per Caffe layer type: a reader Layer -> canonical Node(s) (frontends/caffe.py)."""
from __future__ import annotations

import math

from ..graph import Node, Param
from . import registry

TRANSLATORS = {}
layer_type = registry(TRANSLATORS)


def translate(st, layers, i) -> int:
    """Translate layers[i] (and a Scale it absorbs); returns the index of the next layer."""
    from .caffe import unsupported

    layer = layers[i]
    fn = TRANSLATORS.get(layer.type)
    if fn is None:
        raise unsupported(st, layer)
    if layer.type == "BatchNorm" and i + 1 < len(layers) and _folds(st, layer, layers[i + 1], layers[i + 2:]):
        _batchnorm(st, layer, layers[i + 1])
        return i + 2
    fn(st, layer)
    return i + 1


def _ins(st, layer, n=None):
    missing = [b for b in layer.inputs if b not in st.current]
    if missing:
        raise st.error(layer, f"reads blob {missing[0]!r}, which no earlier layer produces")
    if n is not None and len(layer.inputs) != n:
        raise st.error(layer, f"has {len(layer.inputs)} bottoms, expected {n}")
    return [st.current[b] for b in layer.inputs]


def _add(st, layer, op, ins, attrs=None, params=None, name=None, outs=None, channels="same", rank="same",
         spatial="same"):
    """Append a node; `channels` / `rank` / `spatial` (H, W, ...) of its outputs: "same" as the first
    input, a value, or None (unknown)."""
    outs = outs if outs is not None else [st.new_tensor(t, layer.name) for t in layer.outputs]
    node = Node(name or layer.name, op, list(ins), outs, dict(attrs or {}), dict(params or {}), layer.type)
    st.nodes.append(node)
    for t in outs:
        for known, value in ((st.channels, channels), (st.rank, rank), (st.spatial, spatial)):
            if value == "same":
                value = known.get(ins[0]) if ins else None
            if value is None:
                known.pop(t, None)
            else:
                known[t] = value
    return node


def _arrays(st, layer, n_min, n_max=None):
    if not (n_min <= len(layer.arrays) <= (n_max if n_max is not None else n_min)):
        want = str(n_min) if n_max in (None, n_min) else f"{n_min}-{n_max}"
        raise st.error(layer, f"has {len(layer.arrays)} weight blob(s) in the caffemodel, its definition needs {want}")
    return list(layer.arrays)


def _conv_size(size, kernel, stride, pad, dilation, transpose):
    if size is None or len(size) != len(kernel):
        return None
    if transpose:
        return tuple((n - 1) * s - 2 * p + d * (k - 1) + 1
                     for n, k, s, p, d in zip(size, kernel, stride, pad, dilation))
    return tuple((n + 2 * p - d * (k - 1) - 1) // s + 1 for n, k, s, p, d in zip(size, kernel, stride, pad, dilation))


def _pool_size(size, kernel, stride, pad, ceil):
    """Caffe's pooled size: rounded up (a last window starting in the padding dropped) or down."""
    if size is None or len(size) != len(kernel):
        return None
    out = []
    for n, k, s, p in zip(size, kernel, stride, pad):
        m = -(-(n + 2 * p - k) // s) + 1 if ceil else (n + 2 * p - k) // s + 1
        if p and (m - 1) * s >= n + p:
            m -= 1
        out.append(m)
    return tuple(out)


def _check_features(st, layer, x, axis, expected):
    """An InnerProduct's input features against channels x spatial size, where both are known."""
    c, size = st.channels.get(x), st.spatial.get(x)
    if axis != 1 or c is None or size is None or st.rank.get(x) != 2 + len(size):
        return
    have = c * math.prod(size)
    if have != expected:
        raise st.error(layer, f"its weight takes {expected} input features, but the prototxt's earlier layers give "
                              f"{c}x{'x'.join(map(str, size))} = {have}: the prototxt does not describe these weights")


def _check_channels(st, layer, tensor, expected, what):
    have = st.channels.get(tensor)
    if have is not None and have != expected:
        raise st.error(layer, f"{what} expects {expected} input channels, but {have} reach it from the prototxt's "
                              "earlier layers: the prototxt does not describe these weights")


def _vector(st, layer, name, n, what) -> list:
    """Transforms making a per-channel blob (n,): legacy (1, 1, 1, n) / scalar shapes reshaped."""
    shape = st.shape(name)
    if math.prod(shape) != n:
        raise st.error(layer, f"blob {name} has shape {shape}, expected {n} values for {what}")
    return [] if shape == (n,) else [{"reshape": [n]}]


# ------------------------------------------------------------------------------ weighted layers

@layer_type("Convolution", "Deconvolution")
def _conv(st, layer):
    p = layer.params
    cp = p.get("convolution_param") or {}
    if int(cp.get("axis", 1)) != 1:
        raise st.error(layer, f"convolution along axis {cp.get('axis')} is not supported")
    (x,) = _ins(st, layer, 1)
    bias = bool(cp.get("bias_term", True))
    names = _arrays(st, layer, 2 if bias else 1)
    w = st.shape(names[0])
    kernel, stride, pad, dil = (list(p.get(k) or []) for k in ("kernel", "stride", "pad", "dilation"))
    dims = len(kernel)
    groups = int(cp.get("group", 1))
    num_output = int(cp.get("num_output", 0))
    transpose = layer.type == "Deconvolution"
    if len(w) != 2 + dims or tuple(w[2:]) != tuple(kernel):
        raise st.error(layer, f"weight {names[0]} has shape {w}, the prototxt gives kernel {tuple(kernel)}")
    cout = w[1] * groups if transpose else w[0]
    cin = w[0] if transpose else w[1] * groups
    if cout != num_output:
        raise st.error(layer, f"weight {names[0]} has shape {w}: {cout} outputs, the prototxt says "
                              f"num_output {num_output}")
    _check_channels(st, layer, x, cin, "its weight")
    params = {"weight": Param(names[0])}
    if bias:
        params["bias"] = Param(names[1], _vector(st, layer, names[1], num_output, "the bias"))
    attrs = {"dims": dims, "in_channels": cin, "out_channels": cout, "kernel": tuple(kernel), "stride": tuple(stride),
             "dilation": tuple(dil or [1] * dims), "groups": groups, "padding": [(q, q) for q in pad], "bias": bias}
    if transpose:
        attrs["output_padding"] = (0,) * dims
    _add(st, layer, "conv_transpose" if transpose else "conv", [x], attrs, params, channels=cout,
         spatial=_conv_size(st.spatial.get(x), kernel, stride, pad, dil or [1] * dims, transpose))


@layer_type("InnerProduct")
def _inner_product(st, layer):
    ip = layer.params.get("inner_product_param") or {}
    (x,) = _ins(st, layer, 1)
    bias = bool(ip.get("bias_term", True))
    names = _arrays(st, layer, 2 if bias else 1)
    out = int(ip.get("num_output", 0))
    w = st.shape(names[0])
    transposed = bool(ip.get("transpose", False))
    core = tuple(d for d in w if d != 1) if len(w) > 2 else tuple(w)
    if len(w) > 2 and len(core) == 2 and w[:len(w) - 2] == (1,) * (len(w) - 2):
        transforms, core = [{"reshape": list(w[-2:])}], tuple(w[-2:])
    elif len(w) == 2:
        transforms = []
    else:
        raise st.error(layer, f"weight {names[0]} has shape {w}, expected a matrix")
    if transposed:
        transforms.append("transpose")
        core = (core[1], core[0])
    if core[0] != out:
        raise st.error(layer, f"weight {names[0]} has {core[0]} outputs, the prototxt says num_output {out}")
    axis = int(ip.get("axis", 1))
    rank = st.rank.get(x)
    if axis < 0 and rank is None:
        raise st.error(layer, f"InnerProduct along axis {axis} of an input of unknown rank")
    axis = axis % rank if rank is not None else axis
    if rank == 2 and axis == 1:
        _check_channels(st, layer, x, core[1], "its weight")
    if rank != axis + 1:  # Caffe flattens from `axis` on; nn.Linear works on the last dim
        _check_features(st, layer, x, axis, core[1])
        x = _add(st, layer, "flatten", [x], {"start_dim": axis}, name=f"{layer.name}/flatten", spatial=None,
                 outs=[st.new_tensor(f"{layer.name}_flat", layer.name)], channels=None if axis <= 1 else "same",
                 rank=axis + 1).outputs[0]
    params = {"weight": Param(names[0], transforms)}
    if bias:
        params["bias"] = Param(names[1], _vector(st, layer, names[1], out, "the bias"))
    _add(st, layer, "linear", [x], {"in_features": core[1], "out_features": out, "bias": bias}, params,
         channels=out if axis == 1 else "same", rank=axis + 1, spatial=None)


def _folds(st, bn, scale, rest) -> bool:
    """A Scale right after a BatchNorm that reads only its output, which nothing else reads first."""
    if scale.type != "Scale" or len(scale.inputs) != 1 or scale.inputs != bn.outputs:
        return False
    if bn.name in st.keep or (bn.outputs[0] in st.keep and bn.outputs != bn.inputs):
        return False  # its own output is asked for (--outputs): kept apart from the Scale
    sp = scale.params.get("scale_param") or {}
    return int(sp.get("axis", 1)) == 1 and int(sp.get("num_axes", 1)) == 1


def _bn_stats(st, layer):
    bp = layer.params.get("batch_norm_param") or {}
    names = _arrays(st, layer, 2, 3)
    n = 1
    for d in st.shape(names[0]):
        n *= d
    stat = (lambda i: Param(names[i], ["caffe_bn_stat", *_vector(st, layer, names[i], n, "a statistic")],
                            with_=[names[2]])) if len(names) == 3 else \
        (lambda i: Param(names[i], _vector(st, layer, names[i], n, "a statistic")))
    return n, float(bp.get("eps", 1e-5)), {"running_mean": stat(0), "running_var": stat(1)}


@layer_type("BatchNorm")
def _batchnorm_alone(st, layer):
    _batchnorm(st, layer, None)


def _batchnorm(st, layer, scale):
    (x,) = _ins(st, layer, 1)
    n, eps, params = _bn_stats(st, layer)
    _check_channels(st, layer, x, n, "its statistics")
    affine = scale is not None
    if affine:
        sp = scale.params.get("scale_param") or {}
        bias = bool(sp.get("bias_term", False))
        names = _arrays(st, scale, 2 if bias else 1)
        params["weight"] = Param(names[0], _vector(st, scale, names[0], n, "the scale"))
        params["bias"] = Param(names[1], _vector(st, scale, names[1], n, "the bias")) if bias else Param(fill=0.0)
    dims = max(1, st.rank.get(x, 4) - 2)
    node = _add(st, layer, "batchnorm", [x], {"dims": dims, "num_features": n, "eps": eps, "affine": affine}, params)
    if affine:  # the Scale's output is the folded node's: its blob now points there too
        node.source_op = "BatchNorm+Scale"
        for t in scale.outputs:
            st.current[t] = node.outputs[0]
        st.producer[node.outputs[0]] = scale.name


def _scale_by_blob(st, layer):
    """Scale with the factor as a second bottom (SE attention): y = x * s, s's dims aligned at axis."""
    sp = layer.params.get("scale_param") or {}
    x, s = _ins(st, layer, 2)
    axis, rx, rs = int(sp.get("axis", 1)), st.rank.get(x), st.rank.get(s)
    if sp.get("bias_term") or layer.arrays or rx is None or rs is None or axis < 0 or axis + rs > rx:
        raise st.error(layer, "Scale by a second bottom is supported without bias, for inputs of known rank")
    if axis == 0:
        shape = (0,) * rs + (1,) * (rx - rs)
    elif rs == 1:
        shape = (1,) * axis + (-1,) + (1,) * (rx - axis - 1)
    else:
        raise st.error(layer, f"Scale by a {rs}-d second bottom at axis {axis} is not supported")
    shaped = _add(st, layer, "reshape", [s], {"shape": shape}, name=f"{layer.name}/factor",
                  outs=[st.new_tensor(f"{layer.name}_factor", layer.name)], channels=None, rank=rx,
                  spatial=None).outputs[0]
    _add(st, layer, "mul", [x, shaped])


@layer_type("Scale", "Bias")
def _scale(st, layer):
    if len(layer.inputs) == 2 and layer.type == "Scale":
        return _scale_by_blob(st, layer)
    if len(layer.inputs) != 1:
        raise st.error(layer, f"{layer.type} with its bias as a second bottom is not supported")
    (x,) = _ins(st, layer)
    if layer.type == "Bias":
        bp = layer.params.get("bias_param") or {}
        axis, num_axes, bias = int(bp.get("axis", 1)), int(bp.get("num_axes", 1)), True
        names = _arrays(st, layer, 1)
        n = math.prod(st.shape(names[0]))
        params = {"weight": Param(fill=1.0), "bias": Param(names[0], _vector(st, layer, names[0], n, "the bias"))}
    else:
        sp = layer.params.get("scale_param") or {}
        axis, num_axes, bias = int(sp.get("axis", 1)), int(sp.get("num_axes", 1)), bool(sp.get("bias_term", False))
        names = _arrays(st, layer, 2 if bias else 1)
        n = math.prod(st.shape(names[0]))
        params = {"weight": Param(names[0], _vector(st, layer, names[0], n, "the scale"))}
        if bias:
            params["bias"] = Param(names[1], _vector(st, layer, names[1], n, "the bias"))
    if axis != 1 or num_axes != 1:
        raise st.error(layer, f"{layer.type} over axis {axis}, num_axes {num_axes} is not supported (only per channel)")
    _check_channels(st, layer, x, n, "its blob")
    _add(st, layer, "scale", [x], {"num_features": n, "bias": bias, "axis": 1}, params)


def _fork_params(st, layer, key) -> dict:
    """An SSD-fork layer's parameters: a prototxt keeps them as written; a caffemodel stores them in
    fields BVLC's schema cannot name, which the reader skips, so the defaults would be a guess."""
    if key in layer.params or st.from_prototxt:
        return layer.params.get(key) or {}
    raise st.error(layer, f"its {key} is in a field of a forked caffe.proto that the caffemodel reader cannot "
                          "decode: give the deploy prototxt")


@layer_type("PReLU")
def _prelu(st, layer):
    (x,) = _ins(st, layer, 1)
    shared = bool((layer.params.get("prelu_param") or {}).get("channel_shared", False))
    (name,) = _arrays(st, layer, 1)
    n = 1 if shared else math.prod(st.shape(name))
    if not shared:
        _check_channels(st, layer, x, n, "its slopes")
    _add(st, layer, "prelu", [x], {"num_parameters": n, "axis": 1},
         {"weight": Param(name, _vector(st, layer, name, n, "the slopes"))})


@layer_type("Normalize")
def _normalize(st, layer):
    (x,) = _ins(st, layer, 1)
    npar = _fork_params(st, layer, "norm_param")
    # SSD's caffe.proto defaults: across_spatial true, channel_shared true, eps 1e-10
    across, shared = bool(npar.get("across_spatial", True)), bool(npar.get("channel_shared", True))
    (name,) = _arrays(st, layer, 1)
    n = math.prod(st.shape(name))
    if shared and n != 1:
        raise st.error(layer, f"channel_shared Normalize has {n} scales in {name}")
    channels = st.channels.get(x, n)
    if not shared:
        _check_channels(st, layer, x, n, "its scales")
    _add(st, layer, "normalize", [x], {"num_features": channels, "across_spatial": across, "channel_shared": shared,
                                       "eps": float(npar.get("eps", 1e-10))},
         {"weight": Param(name, _vector(st, layer, name, n, "the scales"))})


# ------------------------------------------------------------------------- weight-free layers

@layer_type("ReLU")
def _relu(st, layer):
    slope = float((layer.params.get("relu_param") or {}).get("negative_slope", 0.0))
    attrs = {"kind": "relu"} if slope == 0 else {"kind": "leaky_relu", "negative_slope": slope}
    _add(st, layer, "activation", _ins(st, layer, 1), attrs)


@layer_type("Sigmoid", "TanH", "AbsVal", "BNLL", "ELU")
def _simple_activation(st, layer):
    kind = {"Sigmoid": "sigmoid", "TanH": "tanh", "AbsVal": "abs", "BNLL": "softplus", "ELU": "elu"}[layer.type]
    attrs = {"kind": kind}
    if kind == "elu":
        attrs["alpha"] = float((layer.params.get("elu_param") or {}).get("alpha", 1.0))
    _add(st, layer, "activation", _ins(st, layer, 1), attrs)


@layer_type("Power")
def _power(st, layer):
    pp = layer.params.get("power_param") or {}
    _add(st, layer, "activation", _ins(st, layer, 1), {"kind": "power", "power": float(pp.get("power", 1.0)),
                                                      "scale": float(pp.get("scale", 1.0)),
                                                      "shift": float(pp.get("shift", 0.0))})


@layer_type("Dropout")
def _dropout(st, layer):
    _add(st, layer, "identity", _ins(st, layer, 1))


@layer_type("Split")
def _split(st, layer):
    (x,) = _ins(st, layer, 1)
    for t in layer.outputs:  # every top is the bottom itself
        st.current[t] = x


@layer_type("Softmax")
def _softmax(st, layer):
    axis = int((layer.params.get("softmax_param") or {}).get("axis", 1))
    _add(st, layer, "softmax", _ins(st, layer, 1), {"axis": axis})


@layer_type("Pooling")
def _pooling(st, layer):
    p = layer.params
    pp = p.get("pooling_param") or {}
    kind = {"MAX": "max", "AVE": "avg"}.get(pp.get("pool", "MAX"))
    if kind is None:
        raise st.error(layer, f"{pp.get('pool')} pooling is not supported (no exact PyTorch equivalent)")
    (x,) = _ins(st, layer, 1)
    if pp.get("global_pooling"):
        _add(st, layer, "global_pool", [x], {"kind": kind, "keepdims": True},
             spatial=(1,) * len(st.spatial[x]) if x in st.spatial else None)
        return
    kernel, stride, pad = (tuple(p.get(k) or ()) for k in ("kernel", "stride", "pad"))
    size = _pool_size(st.spatial.get(x), kernel, stride, pad, bool(p.get("ceil_mode", True)))
    _add(st, layer, "pool", [x], {"kind": kind, "dims": len(kernel), "kernel": kernel, "stride": stride,
                                  "padding": [(q, q) for q in pad], "ceil_mode": bool(p.get("ceil_mode", True)),
                                  "count_include_pad": True, "dilation": (1,) * len(kernel)}, spatial=size)


@layer_type("Eltwise")
def _eltwise(st, layer):
    ep = layer.params.get("eltwise_param") or {}
    op = {"SUM": "add", "PROD": "mul", "MAX": "max"}.get(ep.get("operation", "SUM"))
    if op is None:
        raise st.error(layer, f"Eltwise operation {ep.get('operation')} is not supported")
    ins = _ins(st, layer)
    coeffs = [float(c) for c in ep.get("coeff") or []]
    if coeffs and len(coeffs) != len(ins):
        raise st.error(layer, f"{len(coeffs)} coefficients for {len(ins)} bottoms")
    attrs = {"coeffs": coeffs} if op == "add" and coeffs and any(c != 1.0 for c in coeffs) else {}
    _add(st, layer, op, ins, attrs)


def _axis(param, legacy_key):
    """`axis` (default 1), or the deprecated `concat_dim` / `slice_dim` where only that is set."""
    axis = int(param.get("axis", 1))
    if axis == 1 and int(param.get(legacy_key, 1)) != 1:
        axis = int(param[legacy_key])
    return axis


@layer_type("Concat")
def _concat(st, layer):
    axis = _axis(layer.params.get("concat_param") or {}, "concat_dim")
    ins = _ins(st, layer)
    ch = [st.channels.get(t) for t in ins]
    _add(st, layer, "concat", ins, {"axis": axis}, channels=sum(ch) if axis == 1 and None not in ch else None,
         spatial="same" if axis == 1 else None)


@layer_type("Slice")
def _slice(st, layer):
    sp = layer.params.get("slice_param") or {}
    axis = _axis(sp, "slice_dim")
    (x,) = _ins(st, layer, 1)
    points = [int(v) for v in sp.get("slice_point") or []]
    n = len(layer.outputs)
    if not points:
        total = st.channels.get(x) if axis == 1 else None
        if total is None or total % n:
            raise st.error(layer, "an even Slice without slice_point needs the channel count, unknown here")
        points = [total // n * k for k in range(1, n)]
    if len(points) != n - 1:
        raise st.error(layer, f"{len(points)} slice points for {n} tops")
    bounds = [0, *points, None]
    for k, top in enumerate(layer.outputs):
        out = st.new_tensor(top, layer.name if k == 0 else top)  # OpenCV taps only top 0 by layer name
        size = None if bounds[k + 1] is None else bounds[k + 1] - bounds[k]
        _add(st, layer, "slice", [x], {"axis": axis, "start": bounds[k], "stop": bounds[k + 1], "step": 1},
             name=layer.name if k == 0 else f"{layer.name}/{k}", outs=[out],
             channels=size if axis == 1 else "same", spatial="same" if axis == 1 else None)


@layer_type("Flatten")
def _flatten(st, layer):
    fp = layer.params.get("flatten_param") or {}
    (x,) = _ins(st, layer, 1)
    start, end = int(fp.get("axis", 1)), int(fp.get("end_axis", -1))  # torch reads negative axes as Caffe does
    rank = st.rank.get(x)
    if rank is not None:
        out_rank = rank - ((end % rank) - (start % rank))
    else:
        out_rank = start + 1 if end == -1 and start >= 0 else None
    _add(st, layer, "flatten", [x], {"start_dim": start, "end_dim": end}, channels=None, rank=out_rank,
         spatial=None)


@layer_type("Reshape")
def _reshape(st, layer):
    rp = layer.params.get("reshape_param") or {}
    if int(rp.get("axis", 0)) != 0 or int(rp.get("num_axes", -1)) != -1:
        raise st.error(layer, "Reshape of part of the axes (axis / num_axes) is not supported")
    shape = rp.get("shape") or {}
    dims = [int(d) for d in (shape.get("dim") if isinstance(shape, dict) else shape) or []]
    _add(st, layer, "reshape", _ins(st, layer, 1), {"shape": tuple(dims)}, channels=None, rank=len(dims),
         spatial=None)


@layer_type("Permute")
def _permute(st, layer):
    (x,) = _ins(st, layer, 1)
    order = [int(v) for v in _fork_params(st, layer, "permute_param").get("order") or []]
    rank = st.rank.get(x, 4)
    order += [a for a in range(rank) if a not in order]  # Caffe completes a partial order
    _add(st, layer, "transpose", [x], {"perm": tuple(order)}, channels=None, rank=len(order),
         spatial=None)


@layer_type("Crop")
def _crop(st, layer):
    cp = layer.params.get("crop_param") or {}
    x, ref = _ins(st, layer, 2)
    axis = int(cp.get("axis", 2))
    rank = st.rank.get(x, 4)
    axis %= rank
    offsets = [int(v) for v in cp.get("offset") or [0]]
    per_dim = [None] * axis + [offsets[0] if len(offsets) == 1 else offsets[k] for k in range(rank - axis)]
    if len(offsets) not in (1, rank - axis):
        raise st.error(layer, f"{len(offsets)} offsets for {rank - axis} cropped axes")
    _add(st, layer, "crop", [x, ref], {"offsets": per_dim}, spatial=st.spatial.get(ref) if axis == 2 else None)


@layer_type("LRN")
def _lrn(st, layer):
    lp = layer.params.get("lrn_param") or {}
    if lp.get("norm_region", "ACROSS_CHANNELS") != "ACROSS_CHANNELS":
        raise st.error(layer, f"LRN norm_region {lp.get('norm_region')} is not supported (only ACROSS_CHANNELS)")
    _add(st, layer, "lrn", _ins(st, layer, 1), {"size": int(lp.get("local_size", 5)),
                                                "alpha": float(lp.get("alpha", 1.0)),
                                                "beta": float(lp.get("beta", 0.75)), "k": float(lp.get("k", 1.0))})


@layer_type("Interp")
def _interp(st, layer):
    """PSPNet's Interp: bilinear with corners aligned, to a fixed height x width (OpenCV agrees)."""
    ip = _fork_params(st, layer, "interp_param")
    (x,) = _ins(st, layer, 1)
    h, w = int(ip.get("height", 0) or 0), int(ip.get("width", 0) or 0)
    if int(ip.get("pad_beg", 0) or 0) or int(ip.get("pad_end", 0) or 0) or not (h and w):
        raise st.error(layer, "Interp is supported with height and width (zoom/shrink factors and pad_beg/pad_end "
                              "size the output from the input at run time, which the port does not express)")
    _add(st, layer, "upsample", [x], {"mode": "bilinear", "scale": None, "size": (h, w), "align_corners": True,
                                      "half_pixel": False}, spatial=(h, w))
