"""Who fills whom: source layers against target modules, with the evidence for every pair.

Units on both sides are layers (a source layer's arrays, a target module's tensors; an RNN module
is one unit per layer and direction). Every pair that could work is one whose kinds agree and
every source array fits a target tensor under a layout preset. Among those, the source's layer
order (graph or file order) is aligned with the target's traced execution order by dynamic
programming; name similarity breaks ties. A pair that is not in *every* best alignment is
ambiguous: it is written down with its candidates, never picked.
"""
from __future__ import annotations

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


# ---- source side --------------------------------------------------------------------------------

_RNN_ARRAY = re.compile(r"(?P<unit>.*?)(?P<g>[ih])2h[_.]?(?P<t>weight|bias)")


def _rnn_descriptor(unit: str) -> tuple[int, bool]:
    m = re.search(r"(?:^|[._])(?P<d>[lr])(?P<n>\d+)[._]?$", unit)
    if m:
        return int(m.group("n")), m.group("d") == "r"
    m = re.search(r"(?P<n>\d+)\.(?:(?P<d>[lr])_cell\.)?$", unit)
    if m:
        return int(m.group("n")), m.group("d") == "r"
    return 0, False


def source_units(arrays) -> tuple[list, list]:
    """(units in source order, ignored arrays). Training state is set aside by role."""
    ignored, groups, types = [], {}, {}
    for name, h in arrays.items():
        if h.meta.get("role") in ("optimizer", "counter") or name.startswith("optimizer/"):
            ignored.append((name, h.meta.get("role") or "optimizer",
                            "training state saved with a compiled model (optimizer slots, iteration counter)"))
            continue
        m = _RNN_ARRAY.fullmatch(name) if not h.meta.get("layer_type") in S.SOURCE_KIND else None
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
        else:
            units.append(SourceUnit(key, types[(what, key)], S.source_kind(types[(what, key)], hs), hs, pos))
    units.sort(key=lambda u: (u.position, [arrays_index(arrays, h.name) for h in u.arrays][:1]))
    return _merge_caffe_scale(units), ignored


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
        role = S.role_of(h)
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

def target_units(model, order: list) -> list:
    modules = dict(model.named_modules())
    sd = model.state_dict(keep_vars=True)
    units = []
    for name in order:
        mod = modules[name]
        kind = S.target_kind(mod)
        prefix = f"{name}." if name else ""
        local = [n for n, _ in mod.named_parameters(recurse=False)] + \
                [n for n, b in mod.named_buffers(recurse=False) if b is not None]
        if kind in ("lstm", "gru", "rnn"):
            for k in range(mod.num_layers):
                for rev in ([False, True] if mod.bidirectional else [False]):
                    sfx = f"_l{k}" + ("_reverse" if rev else "")
                    tensors = {role: prefix + role + sfx for role in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
                               if role + sfx in local}
                    units.append(TargetUnit(f"{name}[l{k}{'_reverse' if rev else ''}]", type(mod).__name__, kind,
                                            tensors, {t: tuple(sd[t].shape) for t in tensors.values()},
                                            len(units), mod, (k, rev)))
            continue
        tensors = {n: prefix + n for n in local if prefix + n in sd}
        units.append(TargetUnit(name, type(mod).__name__, kind, tensors,
                                {t: tuple(sd[t].shape) for t in tensors.values()}, len(units), mod))
    return units


# ---- one pair -----------------------------------------------------------------------------------

def propose(s: SourceUnit, t: TargetUnit, framework: str, tr) -> tuple[list, list, list] | None:
    """(proposals, fills, remarks) when every source array of `s` fits a tensor of `t`, else None."""
    if t.kind not in S.COMPATIBLE.get(s.kind, ()):
        return None
    if s.kind in ("lstm", "gru", "rnn"):
        return _propose_rnn(s, t, framework)
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
            chw = tr.flatten_source(t.name)
            if chw is not None:
                c, hh, ww = chw
                p.transforms.append({"flatten_order": {"h": hh, "w": ww, "c": c}})
                p.why.append(f"follows a flatten of a {hh}x{ww}x{c} map: NHWC (h, w, c) -> NCHW (c, h, w) "
                             f"feature order")
        if role in ("running_mean", "running_var") and "_factor" in slots:
            p.with_ = [slots["_factor"].name]
            p.transforms.append("caffe_bn_stat")
            p.why.append("Caffe stores running sums: divided by the scale factor (third blob)")
        props.append(p)
    if s.kind == "depthwise" and getattr(t.module, "groups", 1) == 1 and t.shapes.get(t.tensors.get("weight"), (0, 0))[1] != 1:
        return None
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


def _propose_rnn(s, t, framework):
    slots = s.slots()
    props, fills = [], []
    shapes = {role: t.shapes[name] for role, name in t.tensors.items()}
    if s.rnn is not None:  # Gluon/MXNet: same layout and gate order as PyTorch, names differ
        for role, h in slots.items():
            if role not in t.tensors or tuple(h.shape) != shapes[role]:
                return None
            props.append(Proposal(h.name, [t.tensors[role]], [], why=["MXNet's RNN layout and gate order are PyTorch's"]))
        return props, fills, []
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


# ---- alignment ----------------------------------------------------------------------------------

def _score(s, t) -> float:
    sim = S.name_similarity(_unit_name(s), _unit_name(t))
    return 1000 + round(400 * sim)  # integers: ties must be exact


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

def match(arrays, model, tr, framework: str) -> Matching:
    result = Matching()
    src, ignored = source_units(arrays)
    result.ignored = ignored
    tgt = target_units(model, tr.order)
    proposals, compat = {}, {}
    for i, s in enumerate(src):
        for j, t in enumerate(tgt):
            p = propose(s, t, framework, tr)
            if p is not None:
                proposals[(i, j)] = p
                compat[(i, j)] = _score(s, t)
    pairs, certain = align(src, tgt, compat)
    used_s, used_t = set(), set()
    for (i, j) in pairs:
        if (i, j) not in certain:
            continue
        result.pairs.append(_make_pair(src, tgt, i, j, proposals, compat, "order"))
        used_s.add(i)
        used_t.add(j)
    _second_pass(src, tgt, proposals, compat, used_s, used_t, result)
    result.pairs.sort(key=lambda p: p.source.position)
    for p in result.pairs:
        result.fills += p.fills
    ambiguous_sources = {a[0].name for a in result.ambiguous}
    for i, s in enumerate(src):
        if i in used_s:
            continue
        why = ("ambiguous: see the candidates above" if s.name in ambiguous_sources else
               _why_unmatched_source(s, tgt, i, compat, used_t))
        result.unmatched_sources += [(h.name, why, s) for h in s.arrays]
    for j, t in enumerate(tgt):
        if j in used_t:
            continue
        if t.kind == "other" and set(t.tensors) <= {"num_batches_tracked"}:
            continue
        why = "no source layer fits it" if not any(b == j for (_, b) in compat) else \
            "its candidates were matched elsewhere or are ambiguous"
        for name in t.tensors.values():
            if name.endswith("num_batches_tracked"):
                result.fills.append((name, 0, "a PyTorch-only training counter"))
            else:
                result.unmatched_targets.append((name, f"{t.module_type} {list(t.shapes[name])}: {why}", t))
    _notes(result, framework, tr)
    return result


def _make_pair(src, tgt, i, j, proposals, compat, fallback_signal, extra_evidence=()):
    s, t = src[i], tgt[j]
    props, fills, remarks = proposals[(i, j)]
    n_t = sum(1 for (a, _) in compat if a == i)
    n_s = sum(1 for (_, b) in compat if b == j)
    sim = S.name_similarity(_unit_name(s), _unit_name(t))
    evidence = [f"kind {s.type or s.kind} -> {t.module_type}"]
    if n_t == 1 and n_s == 1:
        decided, conf = "shape", 0.95
        evidence.append("the only shape-compatible pair")
    elif sim >= 1.0:
        decided, conf = "name", 0.95
        evidence.append(f"names agree ({_unit_name(s)} ~ {_unit_name(t)})")
    else:
        decided = fallback_signal
        conf = 0.85 if fallback_signal == "order" else 0.6
        evidence.append(f"{n_t} target candidate(s) of this shape, {n_s} source candidate(s); "
                        f"{'source order = execution order' if fallback_signal == 'order' else fallback_signal}")
        if sim > 0:
            evidence.append(f"names partly agree ({sim:.2f})")
    evidence += list(extra_evidence) + remarks
    if any(p.notes for p in props):
        conf -= 0.2
    pair = Pair(s, t, decided, round(conf, 2), evidence, props, fills)
    for p in props:
        p.pair = pair
    return pair


def _second_pass(src, tgt, proposals, compat, used_s, used_t, result):
    """Units the ordered alignment left: match a pair that names or a unique shape single out;
    write the rest down as ambiguous with their candidates."""
    changed = True
    while changed:
        changed = False
        for i, s in enumerate(src):
            if i in used_s:
                continue
            cands = [j for (a, j) in compat if a == i and j not in used_t]
            if not cands:
                continue
            named = [j for j in cands if S.name_similarity(_unit_name(s), _unit_name(tgt[j])) >= 1.0]
            rivals = lambda j: [a for (a, b) in compat if b == j and a not in used_s]  # noqa: E731
            pick, how = None, None
            if len(named) == 1 and len([a for a in rivals(named[0])
                                        if S.name_similarity(_unit_name(src[a]), _unit_name(tgt[named[0]])) >= 1.0]) == 1:
                pick, how = named[0], "name"
            elif len(cands) == 1 and rivals(cands[0]) == [i]:
                pick, how = cands[0], "shape (out of order)"
            if pick is not None:
                result.pairs.append(_make_pair(src, tgt, i, pick, proposals, compat, how,
                                               ["not where the layer order puts it"]))
                used_s.add(i)
                used_t.add(pick)
                changed = True
    for i, s in enumerate(src):
        if i in used_s:
            continue
        cands = [j for (a, j) in compat if a == i and j not in used_t]
        if len(cands) >= 1:
            result.ambiguous.append((s, [tgt[j].name for j in cands],
                                     "several targets fit by kind and shape and neither order nor names single "
                                     "one out"))


def _why_unmatched_source(s, tgt, i, compat, used_t) -> str:
    if not any(a == i for (a, _) in compat):
        same_kind = [t for t in tgt if t.kind in S.COMPATIBLE.get(s.kind, ())]
        if s.kind in ("separable", "other", "scale"):
            return f"no rule kind for a {s.type or s.kind} layer yet"
        if not same_kind:
            return f"the target has no {s.kind} module"
        return f"no {s.kind} module of the target has these shapes"
    return "its candidates were matched to other layers"


def output_order(arrays, result, tr) -> list | None:
    """Source output names in the order the target returns its outputs, when each source output's
    last weighted layer has a channel count that singles out one target output; else None."""
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
