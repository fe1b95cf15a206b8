"""Who fills whom: source layers against target modules, with the evidence for every pair.

Units on both sides are layers (a source layer's arrays, a target module's tensors; an RNN module
is one unit per layer and direction). Every pair that could work is one whose kinds agree and
every source array fits a target tensor under a layout preset. Among those, the source's layer
order (graph or file order) is aligned with the target's traced execution order by dynamic
programming; name similarity breaks ties. A pair that is not in *every* best alignment is
ambiguous: it is written down with its candidates, never picked.
"""
from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field

from . import signals as S

# ---- units --------------------------------------------------------------------------------------


@dataclass
class SourceUnit:
    name: str
    type: str | None
    kind: str
    arrays: list  # ArrayHandle, in file order
    position: int
    rnn: tuple | None = None  # (layer index, reverse) for per-direction RNN arrays
    merged: str | None = None  # how arrays of another graph node joined this unit
    graph: dict | None = None  # the source's layers (for walks along the graph)
    as_bias: set = field(default_factory=set)  # arrays the graph shows are this unit's bias

    def slots(self) -> dict:
        return _source_slots(self)


@dataclass
class TargetUnit:
    name: str  # module path (an RNN unit: 'lstm[l1_reverse]')
    module_type: str
    kind: str
    tensors: dict  # local role -> full state-dict name
    shapes: dict  # full name -> shape
    position: int
    module: object = None
    rnn: tuple | None = None


@dataclass
class Proposal:
    """One rule to write: source array(s) -> target tensor(s) through transforms."""

    source: str
    targets: list
    transforms: list
    with_: list = field(default_factory=list)
    why: list = field(default_factory=list)
    notes: list = field(default_factory=list)
    pair: object = None
    unsure: bool = False  # a transform the draft could not confirm (caps the pair's confidence)


@dataclass
class Pair:
    source: SourceUnit
    target: TargetUnit
    decided_by: str
    confidence: float
    evidence: list
    proposals: list = field(default_factory=list)
    fills: list = field(default_factory=list)  # (target name, value, why)


@dataclass
class Matching:
    pairs: list = field(default_factory=list)
    ambiguous: list = field(default_factory=list)  # (source unit, [target unit names], why)
    unmatched_sources: list = field(default_factory=list)  # (array name, why)
    unmatched_targets: list = field(default_factory=list)  # (tensor name, why)
    ignored: list = field(default_factory=list)  # (array name, role, reason)
    fills: list = field(default_factory=list)  # (target name, value, why)
    notes: list = field(default_factory=list)  # file-level remarks (BGR, trace fallback, ...)
    order: str = "graph"  # what the source order is: graph, file or alphabetical (order_kind)
    candidates: dict = field(default_factory=dict)  # ambiguous source unit -> [(target unit, proposal)]


# ---- source side --------------------------------------------------------------------------------

_METRIC = re.compile(r"(?:^|/)(?:keras_api/)?metrics/|(?:^|/)metrics?_(?:total|count)(?:/|$)")
_RNN_ARRAY = re.compile(r"(?P<unit>.*?)(?P<g>[ih])2h[_.]?(?P<t>weight|bias)")


def _rnn_descriptor(unit: str) -> tuple[int, bool]:
    m = re.search(r"(?:^|[._])(?P<d>[lr])(?P<n>\d+)[._]?$", unit)
    if m:
        return int(m.group("n")), m.group("d") == "r"
    m = re.search(r"(?P<n>\d+)\.(?:(?P<d>[lr])_cell\.)?$", unit)
    if m:
        return int(m.group("n")), m.group("d") == "r"
    return 0, False


def source_units(arrays, exclude=()) -> tuple[list, list]:
    """(units in source order, ignored arrays). Training state is set aside by role; `exclude`d
    names (a base table's) are left out."""
    ignored, groups, types = [], {}, {}
    for name, h in arrays.items():
        if name in exclude:
            continue
        if h.meta.get("role") in ("optimizer", "counter") or name.startswith("optimizer/"):
            ignored.append((name, h.meta.get("role") or "optimizer",
                            "training state saved with a compiled model (optimizer slots, iteration counter)"))
            continue
        if _METRIC.search(name):
            ignored.append((name, "metric", "metric state saved with a compiled model (totals, counts)"))
            continue
        if h.meta.get("role") == "constant" and (h.ndim == 0 or h.dtype.kind != "f"):
            ignored.append((name, "constant", "a graph constant (shape, axis or index values), not a weight"))
            continue
        m = _RNN_ARRAY.fullmatch(name) if h.meta.get("layer_type") not in S.SOURCE_KIND else None
        key = ("rnn", m.group("unit")) if m else ("layer", h.meta.get("layer") or _layer_from_name(name))
        groups.setdefault(key, []).append(h)
        types.setdefault(key, h.meta.get("layer_type"))
    order = {n: i for i, n in enumerate(getattr(arrays, "layers", {}) or {})}
    units = []
    for i, ((what, key), hs) in enumerate(groups.items()):
        pos = min(order.get(h.meta.get("layer"), len(order) + i) for h in hs) if order else i
        if what == "rnn":
            kind = _rnn_kind(hs)
            units.append(SourceUnit(key, "RNN", kind, hs, pos, rnn=_rnn_descriptor(key)))
        elif S.tf1_lstm_cell(key, types[(what, key)], hs):
            units.append(SourceUnit(key, "LSTMCell (TF1)", "tf1_lstm", hs, pos))
        else:
            units.append(SourceUnit(key, types[(what, key)], S.source_kind(types[(what, key)], hs), hs, pos))
    units.sort(key=lambda u: (u.position, [arrays_index(arrays, h.name) for h in u.arrays][:1]))
    for u in units:
        u.graph = getattr(arrays, "layers", None) or None
    return _merge_split_bias(_merge_caffe_scale(units), arrays), ignored


_WEIGHTED = ("conv", "depthwise", "dense")


def _merge_split_bias(units: list, arrays) -> list:
    """A bias added by its own graph node (ONNX MatMul + Add from tf2onnx/keras2onnx, TF Conv2D +
    BiasAdd in frozen graphs) joins the weighted layer whose output that node takes: one unit, so
    the real bias is mapped instead of the target's bias being filled with 0."""
    layers = getattr(arrays, "layers", None) or {}
    if not layers:
        return units
    producer = {o.split(":")[0]: name for name, lay in layers.items() for o in (lay.outputs or [name])}
    by_layer = {h.meta.get("layer"): u for u in units for h in u.arrays if h.meta.get("layer")}
    readers: dict = {}
    for lay in layers.values():
        for inp in lay.inputs:
            if not inp.startswith("^"):  # control dependencies read no value
                readers.setdefault(inp.split(":")[0], []).append(lay)
    out = []
    for u in units:
        layer = _adding_node(u, layers, readers)
        host = None
        for inp in (layer.inputs if layer is not None else ()):
            cand = by_layer.get(producer.get(_through_identity(inp, layers)))
            if cand is not None and cand is not u and cand.kind in _WEIGHTED and not any(
                    S.role_of(h) == "bias" for h in cand.arrays):
                host = cand
                break
        if host is None:
            out.append(u)
            continue
        host.arrays = host.arrays + u.arrays
        host.as_bias |= {h.name for h in u.arrays}
        host.merged = f"its bias is added by the next graph node {layer.name} ({layer.type})"
    return out


_ADDS = ("Add", "AddV2", "BiasAdd", "BiasAddV1")


def _adding_node(u, layers, readers):
    """The Add/BiasAdd node that adds unit `u`'s one 1-d float array, when `u` is nothing else."""
    if u.kind != "other" or len(u.arrays) != 1:
        return None
    h = u.arrays[0]
    if h.ndim != 1 or h.dtype.kind != "f" or S.role_of(h) not in ("bias", "constant", "other", None):
        return None
    layer = layers.get(h.meta.get("layer"))
    if layer is not None and layer.type in _ADDS:
        return layer
    name = h.meta.get("layer") or h.name
    for _ in range(4):  # a frozen graph's Const -> Identity -> Add
        users = readers.get(name, [])
        if len(users) != 1:
            return None
        if users[0].type in _ADDS:
            return users[0]
        if users[0].type not in ("Identity", "ReadVariableOp"):
            return None
        name = users[0].name
    return None


def _through_identity(inp, layers):
    name = inp.split(":")[0].lstrip("^")
    for _ in range(4):
        lay = layers.get(name)
        if lay is None or lay.type not in ("Identity",) or len(lay.inputs) != 1:
            return name
        name = lay.inputs[0].split(":")[0].lstrip("^")
    return name


def arrays_index(arrays, name) -> int:
    if not hasattr(arrays, "_draft_index"):
        arrays._draft_index = {n: i for i, n in enumerate(arrays)}
    return arrays._draft_index[name]


def _layer_from_name(name: str) -> str:
    for sep in ("/", "."):
        if sep in name:
            return name.rsplit(sep, 1)[0]
    m = re.fullmatch(r"(.+)_(?:weight|bias|gamma|beta|alpha|running_mean|running_var|moving_mean|moving_var)", name)
    return m.group(1) if m else name


def _rnn_kind(hs) -> str:
    iw = next((h for h in hs if "i2h" in h.name and h.ndim == 2), None)
    hw = next((h for h in hs if "h2h" in h.name and h.ndim == 2), None)
    if iw is None or hw is None or hw.shape[1] == 0:
        return "other"
    return {4: "lstm", 3: "gru", 1: "rnn"}.get(iw.shape[0] // hw.shape[1], "other")


def _merge_caffe_scale(units: list) -> list:
    """Caffe keeps a BatchNorm's gamma and beta in the Scale layer after it: one unit."""
    out = []
    for u in units:
        prev = out[-1] if out else None
        if (u.kind == "scale" and prev is not None and prev.kind == "bn"
                and not any(S.role_of(h) in ("weight", "bias") for h in prev.arrays)):
            prev.arrays = prev.arrays + u.arrays
            prev.name = f"{prev.name}+{u.name}"
            continue
        out.append(u)
    return out


def _source_slots(u: SourceUnit) -> dict:
    """Local target role -> source array(s) of a unit ('weight', 'bias', 'weight_ih', ...)."""
    slots: dict = {}
    if u.kind in ("lstm", "gru", "rnn") and u.rnn is not None:  # Gluon per-direction arrays
        for h in u.arrays:
            m = _RNN_ARRAY.fullmatch(h.name)
            slots[f"{m.group('t')}_{m.group('g')}h"] = h
        return slots
    if u.kind in ("lstm", "gru", "rnn"):  # Keras: kernel, recurrent_kernel, bias
        for h in u.arrays:
            last = re.split(r"[/.]", h.name)[-1].split(":")[0]
            slots[{"kernel": "weight_ih", "recurrent_kernel": "weight_hh", "bias": "bias"}.get(last, last)] = h
        return slots
    for h in u.arrays:
        role = "bias" if h.name in u.as_bias else S.role_of(h)
        if role == "running_stat":
            slots["_factor"] = h
        elif role in ("weight", "bias", "running_mean", "running_var"):
            if role in slots:  # a second weight: SeparableConv2D, or something unknown
                slots[f"{role}#{h.name}"] = h
            else:
                slots[role] = h
        else:
            slots[f"?{h.name}"] = h
    return slots


# ---- target side --------------------------------------------------------------------------------

def target_units(model, order: list, exclude=(), separable=False) -> list:
    """Tensor-owning modules in execution order; an RNN module is one unit per layer and direction.
    `separable` (the source has separable convs): a module made of a depthwise and a 1x1 conv is
    one unit, as a Keras SeparableConv2D holds both kernels."""
    modules = dict(model.named_modules())
    sd = model.state_dict(keep_vars=True)
    units = []
    for name in order:
        mod = modules[name]
        kind = S.target_kind(mod)
        prefix = f"{name}." if name else ""
        local = [n for n, _ in mod.named_parameters(recurse=False)] + \
                [n for n, b in mod.named_buffers(recurse=False) if b is not None]
        if kind in ("lstm", "gru", "rnn") and hasattr(mod, "num_layers"):
            for k in range(mod.num_layers):
                for rev in ([False, True] if mod.bidirectional else [False]):
                    sfx = f"_l{k}" + ("_reverse" if rev else "")
                    tensors = {role: prefix + role + sfx for role in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
                               if role + sfx in local and prefix + role + sfx not in exclude}
                    if not tensors:
                        continue
                    units.append(TargetUnit(f"{name}[l{k}{'_reverse' if rev else ''}]", type(mod).__name__, kind,
                                            tensors, {t: tuple(sd[t].shape) for t in tensors.values()},
                                            len(units), mod, (k, rev)))
            continue
        tensors = {n: prefix + n for n in local if prefix + n in sd and prefix + n not in exclude}
        if not tensors and local:
            continue
        units.append(TargetUnit(name, type(mod).__name__, kind, tensors,
                                {t: tuple(sd[t].shape) for t in tensors.values()}, len(units), mod))
    return _merge_separable(units, modules) if separable else units


def _is_separable(dw, pw) -> bool:
    """A depthwise conv (groups = its input channels) that a 1x1 conv runs right after."""
    a, b = dw.module, pw.module
    return (dw.kind == pw.kind == "conv" and type(a) is type(b) and a.groups > 1 and a.groups == a.in_channels
            and b.groups == 1 and set(b.kernel_size) == {1} and b.in_channels == a.out_channels)


def _merge_separable(units: list, modules: dict) -> list:
    """A module whose only tensor-owning parts are a depthwise conv and the 1x1 conv after it
    becomes one 'separable' unit (its tensors keyed 'depthwise.weight', 'pointwise.weight', ...)."""
    out, k = [], 0
    while k < len(units):
        u = units[k]
        nxt = units[k + 1] if k + 1 < len(units) else None
        parent = u.name.rpartition(".")[0]
        if nxt is not None and parent and nxt.name.rpartition(".")[0] == parent and _is_separable(u, nxt) and \
                sum(1 for v in units if v.name.startswith(parent + ".")) == 2:
            local = lambda v: v.name.rpartition(".")[2]  # noqa: E731
            tensors = {f"{side}.{role}": full for side, v in (("depthwise", u), ("pointwise", nxt))
                       for role, full in v.tensors.items()}
            out.append(TargetUnit(parent, f"{type(modules[parent]).__name__} ({local(u)} + {local(nxt)})",
                                  "separable", tensors, {**u.shapes, **nxt.shapes}, len(out), modules[parent]))
            k += 2
            continue
        u.position = len(out)
        out.append(u)
        k += 1
    return out


# ---- one pair -----------------------------------------------------------------------------------

def propose(s: SourceUnit, t: TargetUnit, framework: str, tr) -> tuple[list, list, list] | None:
    """(proposals, fills, remarks) when every source array of `s` fits a tensor of `t`, else None."""
    if t.kind not in S.COMPATIBLE.get(s.kind, ()):
        return None
    if s.kind in ("lstm", "gru", "rnn"):
        return _propose_rnn(s, t, framework)
    if s.kind == "separable":
        return _propose_separable(s, t, framework)
    if s.kind == "tf1_lstm":
        return _propose_tf1_lstm(s, t)
    slots = s.slots()
    if any(k.startswith("?") or "#" in k for k in slots):
        return None  # arrays this unit kind does not explain (e.g. SeparableConv2D's two kernels)
    props, fills, remarks = [], [], []
    for role, h in slots.items():
        if role == "_factor":
            continue
        tname = t.tensors.get(role)
        if tname is None:
            return None
        found = S.fit(h, framework, s.kind, t.shapes[tname])
        if found is None:
            return None
        chain, why = found
        p = Proposal(h.name, [tname], list(chain), why=[why] if chain else [])
        if len(chain) == 1 and isinstance(chain[0], dict) and "permute" in chain[0]:
            p.notes.append("layout unknown: the axis permutation was inferred from shapes alone")
        if s.kind == "dense" and role == "weight" and framework in S.NHWC_FRAMEWORKS and tr is not None:
            _flatten_step(p, s, t, tr)
        if role in ("running_mean", "running_var") and "_factor" in slots:
            p.with_ = [slots["_factor"].name]
            p.transforms.append("caffe_bn_stat")
            p.why.append("Caffe stores running sums: divided by the scale factor (third blob)")
        props.append(p)
    if (s.kind == "depthwise" and getattr(t.module, "groups", 1) == 1
            and t.shapes.get(t.tensors.get("weight"), (0, 0))[1] != 1):
        return None
    if t.kind == "other":  # a module type the draft has no kind for: names and shapes only
        for p in props:
            p.notes.append(f"the draft does not know what {t.module_type} computes: it is assumed to be the "
                           f"source's {s.type or s.kind} layer with these numbers; verify it")
            p.unsure = True
    covered = {n for p in props for n in p.targets}
    for role, tname in t.tensors.items():
        if tname in covered:
            continue
        if role == "num_batches_tracked":
            fills.append((tname, 0, "a PyTorch-only training counter"))
        elif s.kind == "bn" and role == "weight":
            fills.append((tname, 1, "the source BatchNorm has no gamma (scale=False): gamma = 1"))
            remarks.append("no gamma in the source: filled with 1")
        elif role == "bias" or role.startswith("bias"):
            fills.append((tname, 0, f"the source {s.type or s.kind} layer has no bias: 0"))
            remarks.append("no bias in the source: filled with 0")
        else:
            return None
    return props, fills, remarks


TF1_FORGET_BIAS = 1.0  # LSTMCell, BasicLSTMCell and LSTMBlockCell's default; never stored


def _propose_tf1_lstm(s, t):
    """A TF1 LSTMCell into nn.LSTM / nn.LSTMCell: gates = [x, h] @ kernel + bias in i, j, f, o
    order, with forget_bias added to f at run time. The kernel splits into weight_ih and weight_hh
    (transposed, gates reordered to PyTorch's i, f, j(g), o); the bias, with forget_bias added as an
    explicit step, goes to bias_ih (bias_hh = 0). forget_bias is not in the file: never confident."""
    by_role = {S.role_of(h): h for h in s.arrays}
    k, b = by_role["weight"], by_role["bias"]
    names = {r: t.tensors.get(r) for r in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")}
    if None in names.values():
        return None
    hidden = t.shapes[names["weight_hh"]][1]
    n_in = k.shape[0] - hidden
    if n_in <= 0 or t.shapes[names["weight_ih"]] != (4 * hidden, n_in) or k.shape[1] != 4 * hidden:
        return None
    gates = {"gates": {"from": "ijfo", "to": "ifjo"}}
    kernel = Proposal(k.name, [names["weight_ih"], names["weight_hh"]],
                      ["transpose", {"split": {"axis": 1, "sizes": [n_in, hidden]}}, gates],
                      why=["one kernel over [x, h]: (in + H, 4H) -> (4H, in + H), split into the input part "
                           f"({n_in} columns) and the hidden part ({hidden})",
                           "gate order i, j, f, o (TF1) -> i, f, j, o (PyTorch's i, f, g, o)"])
    bias = Proposal(b.name, [names["bias_ih"], names["bias_hh"]],
                    [{"gate_add": {"gates": "ijfo", "gate": "f", "value": TF1_FORGET_BIAS}}, gates, "bias_ih_hh"],
                    why=[f"forget_bias {TF1_FORGET_BIAS} is added to the f gate at run time, not stored: added here",
                         "gate order i, j, f, o -> i, f, j, o; one bias -> bias_ih, bias_hh = 0"])
    bias.notes.append(f"forget_bias is a constructor argument of the TF1 cell and is NOT in the file: "
                      f"{TF1_FORGET_BIAS} (the default of LSTMCell, BasicLSTMCell, LSTMBlockCell) is assumed; "
                      f"set `value` to the model's forget_bias (CudnnCompatibleLSTMCell: 0)")
    bias.unsure = True
    return [kernel, bias], [], [f"TF1 LSTMCell scope {s.name}: kernel over [x, h], gates i, j, f, o, "
                                f"forget_bias added at run time"]


def _propose_separable(s, t, framework):
    """Keras SeparableConv2D (depthwise_kernel, pointwise_kernel, bias) into a module made of a
    depthwise conv and a 1x1 conv: the bias is added after the pointwise conv."""
    dw = [h for h in s.arrays if "depthwise_kernel" in h.name]
    pw = [h for h in s.arrays if "pointwise_kernel" in h.name]
    bias = [h for h in s.arrays if h not in dw + pw and S.role_of(h) == "bias"]
    known = {"depthwise.weight", "pointwise.weight", "depthwise.bias", "pointwise.bias"}
    if len(dw) != 1 or len(pw) != 1 or len(bias) + 2 != len(s.arrays) or set(t.tensors) - known:
        return None
    props = []
    for h, role, kind in ((dw[0], "depthwise.weight", "depthwise"), (pw[0], "pointwise.weight", "conv")):
        tname = t.tensors.get(role)
        found = S.fit(h, framework, kind, t.shapes[tname]) if tname else None
        if found is None:
            return None
        chain, why = found
        p = Proposal(h.name, [tname], list(chain), why=[f"{role.split('.')[0]} half: {why}"])
        if len(chain) == 1 and isinstance(chain[0], dict) and "permute" in chain[0]:
            p.notes.append("layout unknown: the axis permutation was inferred from shapes alone")
        props.append(p)
    fills = []
    pb, db = t.tensors.get("pointwise.bias"), t.tensors.get("depthwise.bias")
    if bias:
        if pb is None or tuple(bias[0].shape) != t.shapes[pb]:
            return None
        props.append(Proposal(bias[0].name, [pb], [], why=["SeparableConv2D adds its bias after the pointwise conv"]))
    elif pb:
        fills.append((pb, 0, "the source SeparableConv2D has no bias: 0"))
    if db:
        fills.append((db, 0, "nothing is added between a SeparableConv2D's two convs: 0"))
    return props, fills, ["SeparableConv2D: the depthwise and the pointwise kernel into the module's two convs"]


_LETTERS = ("chw", "cwh", "hcw", "hwc", "wch", "whc")


def _sequence(letters: str, chw) -> list:
    """The NCHW flat index of each feature when a (C, H, W) map is flattened in `letters` order."""
    import numpy as np

    c, h, w = chw
    grid = np.arange(c * h * w).reshape(c, h, w)
    return np.transpose(grid, ["chw".index(k) for k in letters]).reshape(-1).tolist()


def source_flatten_letters(s) -> tuple[str | None, str]:
    """The order (a permutation of h, w, c) in which the source flattens the map feeding dense
    unit `s`, from its graph: Flatten after channels-last maps is (h, w, c); Keras Permute layers
    before it reorder that. (None, why) when the graph does not tell."""
    graph = s.graph or {}
    layer = graph.get(s.arrays[0].meta.get("layer")) if s.arrays else None
    if layer is None:
        return "hwc", "assumed (h, w, c): a channels-last Flatten (the file records no graph)"
    letters, cur, steps = None, layer, 0
    while steps < 32:
        steps += 1
        if len(cur.inputs) != 1 or cur.inputs[0] not in graph:
            return None, f"cannot follow the graph back from {layer.name}"
        cur = graph[cur.inputs[0]]
        if cur.params.get("data_format") == "channels_first":
            return None, f"{cur.name} is channels_first"
        if cur.type == "Flatten":
            letters = "hwc"
            continue
        if letters is None and cur.type in ("Dropout", "Activation", "ReLU", "SpatialDropout2D"):
            continue
        if letters is None:
            return None, f"{layer.name} does not follow a Flatten ({cur.name} is a {cur.type})"
        if cur.type == "Permute":
            dims = [int(d) for d in cur.params.get("dims", ())]
            if sorted(dims) != [1, 2, 3]:
                return None, f"{cur.name} permutes {dims}"
            # Permute((2, 1, 3)) on (h, w, c) makes (w, h, c): the letters before it, reordered
            before = "hwc"
            letters = "".join(before[d - 1] for d in dims) if letters == "hwc" else None
            if letters is None:
                return None, "several Permute layers"
            continue
        if cur.type in ("Dropout", "Activation", "ReLU", "SpatialDropout2D", "BatchNormalization"):
            continue
        return letters, f"from the graph: {'Flatten' if letters == 'hwc' else 'Permute + Flatten'} of a " \
                        f"channels-last map flattens ({', '.join(letters)})"
    return None, "graph too deep to follow"


def _flatten_step(p, s, t, tr):
    """Reorder a dense kernel's features when a flattened map feeds it: the source's flatten order
    from its graph, the target's from a traced probe (every permute of the forward counts)."""
    if tr.how != "trace":
        p.notes.append("the target could not be traced: whether a flattened map feeds this layer (and in which "
                       "feature order) was not checked")
        p.unsure = True
        return
    chw = tr.flatten_source(t.name)
    if chw is None:
        return
    c, hh, ww = chw
    src, src_why = source_flatten_letters(s)
    order = tr.feature_order(t.name)
    tgt = next((k for k in _LETTERS if order is not None and _sequence(k, chw) == order), None)
    if src is None or tgt is None:
        guess = "hwc_to_chw"
        p.transforms.append({"flatten_order": {"h": hh, "w": ww, "c": c}})
        p.why.append(f"follows a flatten of a {hh}x{ww}x{c} map; {guess} is a guess")
        p.notes.append("cannot tell the feature order: " + (src_why if src is None else
                       "the traced forward between the map and this layer is not a plain permutation") +
                       "; hwc_to_chw assumed")
        p.unsure = True
        return
    if _sequence(src, chw) == _sequence(tgt, chw):
        p.why.append(f"follows a flatten of a {hh}x{ww}x{c} map: the source flattens ({', '.join(src)}) "
                     f"and the traced target feeds its features in the same order: no reorder")
        return
    spec = {"h": hh, "w": ww, "c": c}
    if f"{src}_to_{tgt}" != "hwc_to_chw":
        spec["order"] = f"{src}_to_{tgt}"
    p.transforms.append({"flatten_order": spec})
    p.why.append(f"follows a flatten of a {hh}x{ww}x{c} map: source {src_why}; the traced target feeds "
                 f"({', '.join(tgt)})")


def _propose_rnn(s, t, framework):
    slots = s.slots()
    props, fills = [], []
    shapes = {role: t.shapes[name] for role, name in t.tensors.items()}
    if s.rnn is not None:  # Gluon/MXNet: same layout and gate order as PyTorch, names differ
        for role, h in slots.items():
            if role not in t.tensors or tuple(h.shape) != shapes[role]:
                return None
            props.append(Proposal(h.name, [t.tensors[role]], [],
                                  why=["MXNet's RNN layout and gate order are PyTorch's"]))
        return props, fills, []
    if framework == "onnx" and s.arrays[0].meta.get("layer_type") in ("LSTM", "GRU"):
        return _propose_onnx_rnn(s, t, shapes)
    gates = s.arrays[0].meta.get("gates") or ("zrh" if s.kind == "gru" else "ifco")
    if s.kind == "gru" and s.arrays[0].meta.get("reset_after") is False:
        return None  # reset_after=False is another network: nn.GRU cannot compute it
    to_pt = {"lstm": "ifco", "gru": "rzh"}.get(s.kind)
    gate_step = [] if gates == to_pt or to_pt is None else [{"gates": {"from": gates, "to": to_pt}}]
    why_gates = [f"gate order {gates} -> {to_pt} (PyTorch)"] if gate_step else [f"gate order {gates} is PyTorch's"]
    for role in ("weight_ih", "weight_hh"):
        h = slots.get(role)
        if h is None or role not in t.tensors:
            return None
        chain = ["transpose", *gate_step]
        if S.transformed_shape(chain, h.shape) != shapes[role]:
            return None
        props.append(Proposal(h.name, [t.tensors[role]], chain, why=["(in, gates*H) -> (gates*H, in)", *why_gates]))
    b = slots.get("bias")
    targets = [t.tensors.get("bias_ih"), t.tensors.get("bias_hh")]
    if b is not None:
        if None in targets:
            return None
        chain = ["keras_gru_bias"] if s.kind == "gru" else ["bias_ih_hh", *gate_step]
        out = S.transformed_shape(chain, b.shape)
        if out != [shapes["bias_ih"], shapes["bias_hh"]]:
            return None
        props.append(Proposal(b.name, targets, chain, why=[
            "Keras' two GRU bias rows -> bias_ih, bias_hh in r, z, n order" if s.kind == "gru" else
            "one Keras bias -> bias_ih; bias_hh = 0 (PyTorch adds the two)"]))
    else:
        fills += [(n, 0, "the source layer has no bias") for n in targets if n]
    if len(slots) > len([k for k in ("weight_ih", "weight_hh", "bias") if k in slots]):
        return None
    return props, fills, []


def _propose_onnx_rnn(s, t, shapes):
    """ONNX LSTM/GRU (W, R, B as inputs 1-3, one direction): gate order iofc / zrh (GRU only with
    linear_before_reset=1, what nn.GRU computes); B holds the input and the hidden bias."""
    by_index = {h.meta.get("index"): h for h in s.arrays}
    w, r, b = by_index.get(1), by_index.get(2), by_index.get(3)
    layer = (s.graph or {}).get(w.meta.get("layer")) if w is not None else None
    if w is None or r is None or set(by_index) - {1, 2, 3} or w.ndim != 3 or w.shape[0] != 1:
        return None  # two directions or extra inputs: written by hand
    if s.kind == "gru" and (layer is None or int(layer.params.get("linear_before_reset", 0)) != 1):
        return None
    src, dst = ("iofc", "ifco") if s.kind == "lstm" else ("zrh", "rzh")
    gate = {"gates": {"from": src, "to": dst}}
    props = []
    for role, h in (("weight_ih", w), ("weight_hh", r)):
        chain = [{"squeeze": 0}, gate]
        if role not in t.tensors or S.transformed_shape(chain, h.shape) != shapes[role]:
            return None
        props.append(Proposal(h.name, [t.tensors[role]], chain, why=[f"ONNX (1, gates*H, in) -> (gates*H, in); gate "
                                                                     f"order {src} -> {dst} (PyTorch)"]))
    targets = [t.tensors.get("bias_ih"), t.tensors.get("bias_hh")]
    fills = []
    if b is not None:
        chain = [{"squeeze": 0}, {"split": {"axis": 0, "parts": 2}}, gate]
        if None in targets or S.transformed_shape(chain, b.shape) != [shapes["bias_ih"], shapes["bias_hh"]]:
            return None
        props.append(Proposal(b.name, targets, chain, why=["ONNX B = [Wb, Rb] -> bias_ih, bias_hh"]))
    else:
        fills += [(n, 0, "the ONNX RNN has no B input: 0") for n in targets if n]
    return props, fills, []


# ---- alignment ----------------------------------------------------------------------------------

def _score(s, t) -> float:
    sim = _sim(s, t)
    return 1000 + round(400 * sim)  # integers: ties must be exact


def _sim(s, t) -> float:
    """Name similarity of a source and a target unit: the best of the source layer's name and the
    layer part of its array names (an ONNX node is named 'Conv:y' but its arrays 'branch.conv.weight')."""
    if s.rnn is not None or t.rnn is not None:
        return S.name_similarity(_unit_name(s), _unit_name(t))
    names = dict.fromkeys([s.name, *(_layer_from_name(h.name) for h in s.arrays)])
    return max(S.name_similarity(n, t.name) for n in names)


def _identify(s, t) -> bool:
    if s.rnn is not None or t.rnn is not None:
        return S.names_identify(_unit_name(s), _unit_name(t))
    names = dict.fromkeys([s.name, *(_layer_from_name(h.name) for h in s.arrays)])
    return any(S.names_identify(n, t.name) for n in names)


def _unit_name(u) -> str:
    if u.rnn is not None:
        k, rev = u.rnn
        return f"{'r' if rev else 'l'}{k}"
    return u.name


def align(src: list, tgt: list, compat: dict) -> tuple[list, set]:
    """Best monotone alignment (max total score) and the set of pairs present in every best one."""
    n, m = len(src), len(tgt)
    NEG = float("-inf")
    f = [[0] * (m + 1) for _ in range(n + 1)]
    cnt = [[1] * (m + 1) for _ in range(n + 1)]
    for i in range(1, n + 1):
        for j in range(1, m + 1):
            best = max(f[i - 1][j], f[i][j - 1])
            sc = compat.get((i - 1, j - 1))
            diag = f[i - 1][j - 1] + sc if sc is not None else NEG
            best = max(best, diag)
            f[i][j] = best
            c = 0
            if f[i - 1][j] == best:
                c += cnt[i - 1][j]
            if f[i][j - 1] == best:
                c += cnt[i][j - 1]
            if f[i - 1][j - 1] == best and f[i - 1][j] == best and f[i][j - 1] == best:
                c -= cnt[i - 1][j - 1]
            if diag == best:
                c += cnt[i - 1][j - 1]
            cnt[i][j] = min(max(c, 1), 10 ** 9)
    # backward table for "is this pair in every optimal alignment"
    g = [[0] * (m + 2) for _ in range(n + 2)]
    gc = [[1] * (m + 2) for _ in range(n + 2)]
    for i in range(n, 0, -1):
        for j in range(m, 0, -1):
            sc = compat.get((i - 1, j - 1))
            diag = g[i + 1][j + 1] + sc if sc is not None else NEG
            best = max(g[i + 1][j], g[i][j + 1], diag)
            g[i][j] = best
            c = 0
            if g[i + 1][j] == best:
                c += gc[i + 1][j]
            if g[i][j + 1] == best:
                c += gc[i][j + 1]
            if g[i + 1][j + 1] == best and g[i + 1][j] == best and g[i][j + 1] == best:
                c -= gc[i + 1][j + 1]
            if diag == best:
                c += gc[i + 1][j + 1]
            gc[i][j] = min(max(c, 1), 10 ** 9)
    total, total_count = f[n][m], cnt[n][m]
    pairs, i, j = [], n, m
    while i > 0 and j > 0:
        sc = compat.get((i - 1, j - 1))
        if sc is not None and f[i][j] == f[i - 1][j - 1] + sc:
            pairs.append((i - 1, j - 1))
            i, j = i - 1, j - 1
        elif f[i][j] == f[i - 1][j]:
            i -= 1
        else:
            j -= 1
    pairs.reverse()
    certain = set()
    for (a, b) in pairs:
        through = f[a][b] + compat[(a, b)] + g[a + 2][b + 2]
        if through == total and cnt[a][b] * gc[a + 2][b + 2] == total_count:
            certain.add((a, b))
    return pairs, certain


# ---- the whole matching ---------------------------------------------------------------------------

def order_kind(arrays) -> str:
    """What the source's order is worth: 'graph' (a recorded graph: a topological order), 'file'
    (the order arrays were written), or 'alphabetical' (sorted names, as TF checkpoint bundles
    always are: no execution order at all)."""
    if getattr(arrays, "layers", None):
        return "graph"
    names = list(arrays)
    return "alphabetical" if len(names) > 2 and names == sorted(names) else "file"


def _natural(name: str) -> list:
    return [(0, int(t), "") if t.isdigit() else (1, 0, t) for t in re.findall(r"\d+|[A-Za-z]+", name.lower())]


def match(arrays, model, tr, framework: str, exclude=None) -> Matching:
    """`exclude`: (source names, target names) a base table already covers: left out of the draft."""
    result = Matching()
    src, ignored = source_units(arrays, exclude[0] if exclude else ())
    result.ignored = ignored
    result.order = order_kind(arrays)
    if result.order == "alphabetical":  # numbers as numbers at least: conv2 before conv10
        src.sort(key=lambda u: _natural(u.name))
        result.notes.append("The file lists arrays alphabetically (no graph): layer order is only guessed from "
                            "the names' numbers, so pairs decided by order alone are low confidence.")
    tgt = target_units(model, tr.order, exclude[1] if exclude else (),
                       separable=any(u.kind == "separable" for u in src))
    proposals, compat = {}, {}
    for i, s in enumerate(src):
        for j, t in enumerate(tgt):
            p = propose(s, t, framework, tr)
            if p is not None:
                proposals[(i, j)] = p
                compat[(i, j)] = _score(s, t)
    used_s, used_t = set(), set()
    for (i, j) in _name_anchors(src, tgt, compat):  # names first: order is only a fallback
        result.pairs.append(_make_pair(src, tgt, i, j, proposals, compat, "name"))
        used_s.add(i)
        used_t.add(j)
    rest = {k: v for k, v in compat.items() if k[0] not in used_s and k[1] not in used_t}
    pairs, certain = align(src, tgt, rest)
    for (i, j) in pairs:
        if (i, j) not in certain:
            continue
        result.pairs.append(_make_pair(src, tgt, i, j, proposals, compat, "order:" + result.order))
        used_s.add(i)
        used_t.add(j)
    feeders = source_feeders(arrays)

    def graph_sweep() -> bool:
        return _dataflow_pass(src, tgt, proposals, compat, used_s, used_t, result, feeders, tr)

    _second_pass(src, tgt, proposals, compat, used_s, used_t, result, graph_sweep)
    _folded_batchnorm(src, tgt, framework, tr, used_s, used_t, result)
    result.pairs.sort(key=lambda p: p.source.position)
    withheld = _withhold_zero_fills(result.pairs, [s for i, s in enumerate(src) if i not in used_s])
    for p in result.pairs:
        result.fills += p.fills
    ambiguous_sources = {a[0].name for a in result.ambiguous}
    for i, s in enumerate(src):
        if i in used_s:
            continue
        why = ("ambiguous: see the candidates above" if s.name in ambiguous_sources else
               _why_unmatched_source(s, tgt, i, compat, used_t, framework))
        result.unmatched_sources += [(h.name, why, s) for h in s.arrays]
    for j, t in enumerate(tgt):
        if j in used_t:
            continue
        if t.kind == "other" and set(t.tensors) <= {"num_batches_tracked"}:
            continue
        why = "no source layer fits it" if not any(b == j for (_, b) in compat) else \
            "its candidates were matched elsewhere or are ambiguous"
        for name in t.tensors.values():
            if name in withheld:
                continue
            if name.endswith("num_batches_tracked"):
                result.fills.append((name, 0, "a PyTorch-only training counter"))
            else:
                result.unmatched_targets.append((name, f"{t.module_type} {list(t.shapes[name])}: {why}", t))
    result.unmatched_targets += [(n, why, pair.target) for n, (why, pair) in withheld.items()]
    _notes(result, framework, tr)
    return result


def _folded_batchnorm(src, tgt, framework, tr, used_s, used_t, result):
    """A target conv + BatchNorm where the source has one conv with a bias (torch.onnx, OpenCV and
    TFLite fold BatchNorm into the conv before export): the conv's weight fills the target conv,
    its bias the BatchNorm's beta (or the conv's bias), and the BatchNorm becomes the identity."""
    by_name = {t.name: j for j, t in enumerate(tgt)}
    owning = [c.name for c in tr.calls if c.owns_tensors]
    for j, bn in enumerate(tgt):
        if j in used_t or bn.kind != "bn" or bn.name not in owning:
            continue
        k = owning.index(bn.name)
        jc = by_name.get(owning[k - 1]) if k else None
        if jc is None or jc in used_t or tgt[jc].kind != "conv":
            continue
        conv = tgt[jc]
        cands = []
        for i, s in enumerate(src):
            if i in used_s or s.kind != "conv":
                continue
            slots = s.slots()
            if set(slots) != {"weight", "bias"}:
                continue
            fit = S.fit(slots["weight"], framework, s.kind, conv.shapes[conv.tensors["weight"]])
            if fit is not None and (slots["bias"].shape[0],) == bn.shapes[bn.tensors["bias"]]:
                cands.append((i, fit))
        if len(cands) != 1:
            continue
        i, (chain, why) = cands[0]
        s = src[i]
        slots = s.slots()
        bias_to = conv.tensors.get("bias") or bn.tensors["bias"]
        props = [Proposal(slots["weight"].name, [conv.tensors["weight"]], list(chain), why=[why] if chain else []),
                 Proposal(slots["bias"].name, [bias_to], [], why=["the folded conv's bias"])]
        eps = getattr(bn.module, "eps", 1e-5)
        fills = [(bn.tensors["weight"], 1, "BatchNorm folded into the source conv: identity gamma"),
                 (bn.tensors["running_mean"], 0, "BatchNorm folded into the source conv: identity mean"),
                 (bn.tensors["running_var"], float(1 - eps), "BatchNorm folded into the source conv: var = 1 - eps "
                                                            "makes it the identity")]
        if bias_to != bn.tensors["bias"]:
            fills.append((bn.tensors["bias"], 0, "BatchNorm folded into the source conv: identity beta"))
        fills += [(n, 0, "a PyTorch-only training counter")
                  for r, n in bn.tensors.items() if r == "num_batches_tracked"]
        unit = dataclasses.replace(conv, name=f"{conv.name}+{bn.name}", shapes={**conv.shapes, **bn.shapes},
                                   tensors={**{f"bn.{k}": v for k, v in bn.tensors.items()}, **conv.tensors})
        pair = Pair(s, unit, "shape (folded BatchNorm)", 0.6, [
            f"kind {s.type or s.kind} -> {conv.module_type} + {bn.module_type}",
            f"the source has no BatchNorm before {bn.name}: folded into its conv; {bn.name} proposed as identity",
            "the only remaining source conv with a bias that fits"], props, fills)
        for p in props:
            p.pair = pair
            p.notes.append(f"BatchNorm folded: {bn.name} is filled as the identity and {bias_to} gets the conv's bias; "
                           f"the PyTorch model computes the same but its BatchNorm holds no trained statistics")
        result.pairs.append(pair)
        used_s.add(i)
        used_t.update({j, jc})


def _withhold_zero_fills(pairs, unmatched_units) -> dict:
    """A target bias the draft would fill with 0 while the file holds an unmatched array of that
    shape is not filled: the array may be that bias (a split layer the graph did not join).
    Returns {target name: (reason, pair)}; the fills are taken off their pairs."""
    spare = [h for u in unmatched_units for h in u.arrays
             if S.role_of(h) in ("bias", "other", "constant", None) and h.ndim == 1 and h.dtype.kind == "f"]
    withheld = {}
    for pair in pairs:
        keep = []
        for name, value, why in pair.fills:
            shape = pair.target.shapes.get(name)
            cands = [h.name for h in spare if value == 0 and shape is not None and tuple(h.shape) == tuple(shape)]
            if cands and not name.endswith("num_batches_tracked"):
                withheld[name] = (f"not filled with 0: unmatched source array(s) of this shape may be its bias "
                                  f"({', '.join(cands[:4])}); map one or fill it on purpose", pair)
                pair.evidence.append(f"{name} left open: the file holds candidate bias arrays")
                pair.confidence = min(pair.confidence, 0.6)
            else:
                keep.append((name, value, why))
        pair.fills = keep
    return withheld


def _name_anchors(src, tgt, compat) -> list:
    """Compatible pairs whose normalised names agree, one-to-one: decided before any order is
    consulted (two same-shaped branches listed in another order must not be crossed)."""
    named = [(i, j) for (i, j) in compat if _identify(src[i], tgt[j])]
    per_s, per_t = {}, {}
    for i, j in named:
        per_s[i] = per_s.get(i, 0) + 1
        per_t[j] = per_t.get(j, 0) + 1
    return sorted((i, j) for i, j in named if per_s[i] == 1 and per_t[j] == 1)


_ORDER_CONFIDENCE = {"graph": 0.6, "file": 0.45, "alphabetical": 0.3}
_ORDER_WHY = {"graph": "source graph order = execution order", "file": "source file order = execution order "
              "(no graph: the file's order may not be the execution order)",
              "alphabetical": "alphabetical file order, numbers sorted as numbers = execution order (a guess)"}


def _make_pair(src, tgt, i, j, proposals, compat, fallback_signal, extra_evidence=()):
    s, t = src[i], tgt[j]
    props, fills, remarks = proposals[(i, j)]
    n_t = sum(1 for (a, _) in compat if a == i)
    n_s = sum(1 for (_, b) in compat if b == j)
    sim = _sim(s, t)
    evidence = [f"kind {s.type or s.kind} -> {t.module_type}"]
    if n_t == 1 and n_s == 1:
        decided, conf = "shape", 0.95
        evidence.append("the only shape-compatible pair")
    elif sim >= 1.0:
        decided, conf = "name", 0.95
        evidence.append(f"names agree ({_unit_name(s)} ~ {_unit_name(t)})")
    elif fallback_signal.startswith("order"):
        kind = fallback_signal.split(":", 1)[1]
        decided = "order"
        conf = _ORDER_CONFIDENCE[kind] + (0.15 if sim >= 0.5 and kind == "graph" else 0.0)
        evidence.append(f"{n_t} target candidate(s) of this shape, {n_s} source candidate(s); {_ORDER_WHY[kind]}")
        if sim > 0:
            evidence.append(f"names partly agree ({sim:.2f})")
    else:
        decided, conf = fallback_signal, 0.6
        evidence.append(f"{n_t} target candidate(s) of this shape, {n_s} source candidate(s); {fallback_signal}")
        if sim > 0:
            evidence.append(f"names partly agree ({sim:.2f})")
    if s.merged:
        evidence.append(s.merged)
    evidence += list(extra_evidence) + remarks
    if any(p.notes for p in props):
        conf -= 0.2
    if any(p.unsure for p in props):
        conf = min(conf, 0.5)
    pair = Pair(s, t, decided, round(conf, 2), evidence, props, fills)
    for p in props:
        p.pair = pair
    return pair


def source_feeders(arrays) -> dict:
    """Layer name -> the weighted layer whose output it reads (its first input, through layers
    that hold no arrays), from the source graph. In-place layers (Caffe's BatchNorm/ReLU writing
    their input blob) are followed in layer order: the last writer before the reader counts."""
    layers = getattr(arrays, "layers", None) or {}
    weighted = {h.meta.get("layer") for h in arrays.values()}
    last_writer, reads = {}, {}
    for name, lay in layers.items():
        inputs = [i.split(":")[0] for i in lay.inputs if not i.startswith("^")]
        reads[name] = last_writer.get(inputs[0]) if inputs else None
        for o in (lay.outputs or [name]):
            last_writer[o.split(":")[0]] = name
    out = {}
    for name in layers:
        cur, steps = reads.get(name), 0
        while cur is not None and cur not in weighted and steps < 16:
            cur = reads.get(cur) if len([i for i in layers[cur].inputs if not i.startswith("^")]) == 1 else None
            steps += 1
        out[name] = cur if cur in weighted else None
    return out


def _dataflow(s, t, by_layer, feeders, tr):
    """(agrees, the pair s's producer belongs to): True when the source layer reads a paired
    layer's output and the traced target module reads that pair's target module's output; False
    when both are known and differ; None when either side cannot tell."""
    layer = s.arrays[0].meta.get("layer") if s.arrays else None
    producer = by_layer.get(feeders.get(layer))
    fed_by = tr.feeder(t.name) if tr is not None and tr.how == "trace" else None
    if producer is None or fed_by is None:
        return None, producer
    own = producer.target.name
    return fed_by == own or fed_by.startswith(own + ".") or fed_by in own.split("+"), producer  # a+b: folded BN


def _dataflow_pass(src, tgt, proposals, compat, used_s, used_t, result, feeders, tr) -> bool:
    """The graph as evidence: a layer that reads the output of a paired layer (a BatchNorm after
    its conv) pairs with the target module that reads the paired module's output in the trace.
    Settles parallel branches (a residual shortcut's BatchNorm and the main path's) that order
    cannot, and confirms or contradicts pairs order alone decided. True when it paired a unit."""
    if not any(feeders.values()):
        return False
    changed, any_change = True, False
    while changed:
        changed = False
        by_layer = {h.meta.get("layer"): p for p in result.pairs for h in p.source.arrays}
        index = {id(u): k for k, u in enumerate(src)}
        for p in result.pairs:
            if p.decided_by == "order" and not any("the graph" in e for e in p.evidence):
                agrees, prod = _dataflow(p.source, p.target, by_layer, feeders, tr)
                others = [tgt[j] for (a, j) in compat if a == index.get(id(p.source)) and tgt[j] is not p.target]
                unique = not any(_dataflow(p.source, t, by_layer, feeders, tr)[0] for t in others)
                if agrees is True and unique and prod.confidence >= 0.9:
                    p.decided_by, p.confidence = "order + graph", max(p.confidence, 0.9)
                    p.evidence.append(f"the graph agrees: it reads {prod.source.name}'s output, as "
                                      f"{p.target.name} reads {prod.target.name}'s in the trace")
                elif agrees is False:
                    p.confidence = min(p.confidence, 0.45)
                    p.evidence.append(f"the graph disagrees: it reads {prod.source.name}'s output, but "
                                      f"{p.target.name} does not read {prod.target.name}'s")
        for i, s in enumerate(src):
            if i in used_s:
                continue
            cands = [j for (a, j) in compat if a == i and j not in used_t]
            follows = [(j, prod) for j in cands for agrees, prod in [_dataflow(s, tgt[j], by_layer, feeders, tr)]
                       if agrees]
            if len(follows) != 1:
                continue
            j, prod = follows[0]
            rivals = [a for (a, b) in compat if b == j and a not in used_s and a != i
                      and _dataflow(src[a], tgt[j], by_layer, feeders, tr)[0]]
            if rivals:
                continue
            pair = _make_pair(src, tgt, i, j, proposals, compat, "graph", [
                f"the graph: it reads {prod.source.name}'s output, as {tgt[j].name} reads {prod.target.name}'s "
                f"in the trace"])
            if pair.decided_by == "graph":
                pair.confidence = round(min(0.9, prod.confidence, pair.confidence + 0.3), 2)
            result.pairs.append(pair)
            used_s.add(i)
            used_t.add(j)
            changed = any_change = True
    return any_change


def _second_pass(src, tgt, proposals, compat, used_s, used_t, result, graph_sweep=None):
    """Units the ordered alignment left: match a pair that the graph (`graph_sweep`), names or a
    unique shape single out; write the rest down as ambiguous with their candidates."""
    changed = True
    while changed:
        changed = bool(graph_sweep and graph_sweep())
        for i, s in enumerate(src):
            if i in used_s:
                continue
            cands = [j for (a, j) in compat if a == i and j not in used_t]
            if not cands:
                continue
            named = [j for j in cands if _sim(s, tgt[j]) >= 1.0]
            rivals = lambda j: [a for (a, b) in compat if b == j and a not in used_s]  # noqa: E731
            pick, how = None, None
            if len(named) == 1 and len([a for a in rivals(named[0])
                                        if _sim(src[a], tgt[named[0]]) >= 1.0]) == 1:
                pick, how = named[0], "name"
            elif len(cands) == 1 and rivals(cands[0]) == [i]:
                pick, how = cands[0], "shape (out of order)"
            if pick is not None:
                result.pairs.append(_make_pair(src, tgt, i, pick, proposals, compat, how,
                                               ["not where the layer order puts it"]))
                used_s.add(i)
                used_t.add(pick)
                changed = True
                break  # the graph first: the new pair may be the producer another unit reads
    for i, s in enumerate(src):
        if i in used_s:
            continue
        cands = [j for (a, j) in compat if a == i and j not in used_t]
        if len(cands) >= 1:
            result.candidates[s.name] = [(tgt[j], proposals[(i, j)]) for j in cands]
            result.ambiguous.append((s, [tgt[j].name for j in cands],
                                     "several targets fit by kind and shape and neither order nor names single "
                                     "one out"))


def _why_unmatched_source(s, tgt, i, compat, used_t, framework) -> str:
    if not any(a == i for (a, _) in compat):
        same_kind = [t for t in tgt if t.kind in S.COMPATIBLE.get(s.kind, ())]
        if s.kind in ("other", "scale"):
            return f"no rule kind for a {s.type or s.kind} layer yet"
        if s.kind == "separable" and not same_kind:
            return "the target has no module made of just a depthwise conv and the 1x1 conv after it"
        if not same_kind:
            return f"the target has no {s.kind} module"
        return _why_no_fit(s, same_kind, framework)
    return "its candidates were matched to other layers"


def _why_no_fit(s, same_kind, framework) -> str:
    """The true reason no module of the right kind takes unit `s`: same sizes in an order no
    preset gives (ambiguous layout), a tensor the target lacks, or really no such shapes."""
    import itertools

    slots = {k: h for k, h in s.slots().items() if not k.startswith("_")}
    for t in same_kind:
        missing = [k for k in slots if k not in t.tensors]
        w, tw = slots.get("weight"), t.tensors.get("weight")
        if w is None or tw is None:
            continue
        shape = t.shapes[tw]
        if sorted(w.shape) == sorted(shape) and tuple(w.shape) != tuple(shape):
            perms = [p for p in itertools.permutations(range(w.ndim)) if tuple(w.shape[i] for i in p) == tuple(shape)]
            if len(perms) > 1:
                return (f"ambiguous layout: {w.name} {list(w.shape)} fits {t.name} {list(shape)} under "
                        f"{len(perms)} axis orders and no layout preset says which")
        if missing and S.fit(w, framework, s.kind, shape) is not None:
            return f"{t.name} ({t.module_type}) fits its weight but has no {', '.join(missing)} for " + \
                   ", ".join(slots[k].name for k in missing)
    return f"no {s.kind} module of the target has these shapes"


def output_order(arrays, result, tr) -> tuple[list | None, str]:
    """(source output names in the order the target returns its outputs, how they were paired), or
    (None, ''): by the channel count of each source output's last weighted layer, else by size
    (the blobs a weight-free decoder head reads, e.g. SSD's DetectionOutput)."""
    order = _outputs_by_channels(arrays, result, tr)
    if order:
        return order, "paired by channel count"
    order, head = _outputs_by_size(arrays, result, tr)
    if order:
        return order, (f"the inputs of {head}, which holds no weights and is not in the target, paired with the "
                       f"target's outputs by size per sample (traced)")
    return None, ""


# Caffe/MXNet layer types that keep the number of values per sample (and so the size of a blob).
_SIZE_KEEPING = {"Permute", "Flatten", "Reshape", "Softmax", "Sigmoid", "TanH", "ReLU", "PReLU", "Dropout",
                 "Power", "Activation", "transpose", "reshape", "softmax"}


def _outputs_by_size(arrays, result, tr) -> tuple[list | None, str | None]:
    """Source blobs whose values per sample are known from the traced target (a paired layer's
    output) and kept or summed (Concat) by weight-free layers; the outputs the graph does not
    consume, or the inputs of such a head when it has no known size, each paired with the one
    target output of its size."""
    layers = getattr(arrays, "layers", {}) or {}
    if len(tr.outputs) < 2 or not layers:
        return None, None
    first = {}
    for c in tr.calls:
        first.setdefault(c.name, c.out_shape)
    per_sample = lambda shape: _prod(shape[1:]) if shape and len(shape) > 1 else None  # noqa: E731
    paired = {h.meta.get("layer"): per_sample(first.get(p.target.name)) for p in result.pairs for h in p.source.arrays}
    tops = arrays.framework == "caffe"
    size, consumed = {}, set()
    for lay in layers.values():
        made = (lay.outputs or [lay.name]) if tops else [lay.name]
        ins = [size.get(i) for i in lay.inputs]
        consumed.update(i for i in lay.inputs if i not in made)
        if lay.name in paired:
            n = paired[lay.name]
        elif lay.type in _SIZE_KEEPING and len(ins) == 1:
            n = ins[0]
        elif lay.type == "Concat" and ins and None not in ins:
            n = sum(ins)
        else:
            n = None
        for o in made:
            size[o] = n
    made_by = {o: lay for lay in layers.values() for o in ((lay.outputs or [lay.name]) if tops else [lay.name])}
    heads = [o for o in made_by if o not in consumed]
    head = None
    if len(heads) == 1 and size.get(heads[0]) is None:
        producer = made_by[heads[0]]
        if not producer.arrays:
            head, heads = f"{producer.name} ({producer.type})", list(producer.inputs)
    wanted = [per_sample(shape) for shape in tr.outputs]
    order = []
    for n in wanted:
        fits = [o for o in heads if n is not None and size.get(o) == n]
        if len(fits) != 1 or fits[0] in order:
            return None, None
        order.append(fits[0])
    return order, head or "the graph's outputs"


def _prod(dims) -> int:
    n = 1
    for d in dims:
        n *= d
    return n


def _outputs_by_channels(arrays, result, tr) -> list | None:
    layers = list((getattr(arrays, "layers", {}) or {}).values())
    if len(tr.outputs) < 2 or not layers:
        return None
    producer, consumed = {}, set()
    tops = arrays.framework == "caffe"  # Caffe layers list the blobs they write; MXNet their consumers
    for layer in layers:
        made = (layer.outputs or [layer.name]) if tops else [layer.name]
        consumed.update(i for i in layer.inputs if i not in made)
        for o in made:
            producer[o] = layer
    heads = [(o, lay) for o, lay in producer.items() if o not in consumed and lay.type not in ("Input", "null")]
    by_layer = {p.source.name.split("+")[0]: p for p in result.pairs}
    channels = {}
    for out, lay in heads:
        seen, cur = set(), lay
        while cur is not None and cur.name not in by_layer and cur.name not in seen:
            seen.add(cur.name)
            cur = next((producer.get(i) for i in cur.inputs if i in producer and producer[i] is not cur), None)
        if cur is None or cur.name not in by_layer:
            return None
        pair = by_layer[cur.name]
        w = pair.target.shapes.get(pair.target.tensors.get("weight"))
        if not w:
            return None
        channels[out] = w[0]
    order = []
    for shape in tr.outputs:
        fits = [o for o, c in channels.items() if len(shape) > 1 and shape[1] == c and o not in order]
        if len(fits) != 1:
            return None
        order.append(fits[0])
    return order if len(order) == len(channels) else None


def _notes(result, framework, tr):
    if tr.how != "trace":
        result.notes.append(f"execution order: {tr.why}")
    first_conv = next((p for p in result.pairs if p.source.kind == "conv"), None)
    if first_conv is not None:
        w = next((p for p in first_conv.proposals if p.targets[0].endswith(".weight")), None)
        shape = first_conv.target.shapes.get(w.targets[0]) if w else None
        if shape and len(shape) >= 3 and shape[1] == 3:
            w.notes.append("input channel order (RGB or BGR) cannot be told from weights; if the source was fed "
                           "BGR (Caffe, OpenCV, MXNet ports of Caffe models, keras 'caffe' preprocessing) and the "
                           "PyTorch model will get RGB, add `flip: {axis: 1}` here; otherwise keep it and write "
                           "`input.channels`")
            first_conv.confidence = min(first_conv.confidence, 0.9)
