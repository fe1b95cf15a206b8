"""Finding the first layer where the converted model departs from the source.

Pairs (source layer, torch module) come from the conversion itself: every assignment row names
its source arrays (whose `meta['layer']` is the source layer) and its target tensors (whose module
is the name minus its last component). The table's `parity.layers` adds pairs for layers without
weights (pooling, activations). Forward hooks record every module call of the PyTorch model in
execution order; the oracle returns the source activations of the paired layers ("taps"); pairs
are compared in PyTorch execution order, and the first one over tolerance is the first divergent
layer. Frameworks fuse activations into the layer before (Keras `Conv2D(activation="relu")`,
OpenCV conv + ReLU): a source activation is therefore compared with the paired module's output,
with that output put through the activation the oracle says the layer fuses (a port may apply it
as a function, not a module), and with the outputs of the weight-free or activation modules run
right after it, and the closest one counts.

A differing row is blamed only when it can be: a row whose shapes are a permutation of each other
compares differently laid-out arrays, and a row followed by an agreeing row that depends on it
(found by running the PyTorch model once more with that module's output as the only tensor that
requires grad) did not really diverge; both are reported as undecided ("cannot tell"). A layer
after an undecided one that no later agreeing layer vouches for is not named either: the
divergence may have begun at the undecided one.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from .compare import Tolerance, compare

ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.PReLU, nn.LeakyReLU, nn.ELU, nn.SELU, nn.GELU, nn.SiLU, nn.Sigmoid, nn.Tanh,
               nn.Hardswish, nn.Hardsigmoid, nn.Softmax, nn.LogSoftmax, nn.Identity, nn.Dropout, nn.Dropout2d,
               nn.Mish, nn.Softplus, nn.Hardtanh)
MAX_FOLLOWERS = 3


@dataclass
class Pair:
    source_layer: str
    module: str
    source_type: str = ""
    origin: str = "weights"  # weights (from the conversion) or table (parity.layers)


def pairs_from_conversion(report, arrays, extra: dict | None = None, module_names=None) -> list[Pair]:
    """(source layer, module) pairs: one per module, one per source layer (see `resolve_pairs`)."""
    pairs, seen = [], set()
    for row in getattr(report, "rows", None) or []:
        sources, targets = row.get("sources") or [], row.get("targets") or []
        if not sources or not targets:
            continue
        handle = arrays.get(sources[0]) if arrays is not None else None
        meta = getattr(handle, "meta", {}) or {}
        layer = meta.get("layer")
        if not layer:
            continue
        for t in targets:
            module = t.rsplit(".", 1)[0] if "." in t else ""
            key = (layer, module)
            if key not in seen:
                seen.add(key)
                pairs.append(Pair(layer, module, str(meta.get("layer_type") or "")))
    for layer, module in (extra or {}).items():
        key = (str(layer), str(module))
        if key not in seen:
            seen.add(key)
            pairs.append(Pair(str(layer), str(module), "", "table"))
    if module_names is not None:
        pairs = [p for p in pairs if p.module in module_names]
    return pairs


class ActivationRecorder:
    """Forward hooks on every module: (module name, output) per call, in completion order."""

    def __init__(self, model: nn.Module, names=None):
        self.events: list[tuple[str, torch.Tensor]] = []
        self.handles = []
        self.modules = dict(model.named_modules())
        for name, module in self.modules.items():
            if names is None or name in names or not list(module.children()):
                self.handles.append(module.register_forward_hook(self._hook(name)))

    def _hook(self, name):
        def hook(_module, _inputs, output):
            t = first_tensor(output)
            if t is not None:
                self.events.append((name, t.detach()))
        return hook

    def close(self):
        for h in self.handles:
            h.remove()
        self.handles.clear()

    def last_call(self, name) -> int | None:
        for i in range(len(self.events) - 1, -1, -1):
            if self.events[i][0] == name:
                return i
        return None

    def candidates(self, index: int) -> list[tuple[str, torch.Tensor]]:
        """The module's output, then those of the activation / weight-free leaf modules run next."""
        out = [self.events[index]]
        for name, value in self.events[index + 1:index + 1 + MAX_FOLLOWERS]:
            module = self.modules.get(name)
            if module is None or list(module.children()):
                continue
            weight_free = not any(True for _ in module.parameters(recurse=False))
            if not (isinstance(module, ACTIVATIONS) or weight_free):
                break
            out.append((name, value))
        return out


def first_tensor(value):
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, (tuple, list)):
        for v in value:
            t = first_tensor(v)
            if t is not None:
                return t
    if isinstance(value, dict):
        for v in value.values():
            t = first_tensor(v)
            if t is not None:
                return t
    return None


def resolve_pairs(pairs: list[Pair], recorder: ActivationRecorder, source_order: list[str]) -> list[tuple[Pair, int]]:
    """Keep the pairs whose output both sides can show, one per module and per source layer, in
    PyTorch execution order. A module filled from several source layers (Caffe BatchNorm + Scale)
    is compared with the last of them; a source layer split over several modules (a separable
    convolution) with the module that runs last."""
    rank = {name: i for i, name in enumerate(source_order)}
    called = [(p, recorder.last_call(p.module)) for p in pairs if p.source_layer in rank]
    called = [(p, i) for p, i in called if i is not None]
    by_module: dict[str, tuple[Pair, int]] = {}
    for p, i in called:
        kept = by_module.get(p.module)
        if kept is None or rank[p.source_layer] > rank[kept[0].source_layer]:
            by_module[p.module] = (p, i)
    by_layer: dict[str, tuple[Pair, int]] = {}
    for p, i in by_module.values():
        kept = by_layer.get(p.source_layer)
        if kept is None or i > kept[1]:
            by_layer[p.source_layer] = (p, i)
    return sorted(by_layer.values(), key=lambda pi: pi[1])


def compare_layers(resolved, recorder, source_acts: dict, to_target, tol: Tolerance, fused=None) -> list[dict]:
    """Per-layer metrics in execution order; each row records which module output matched best.
    to_target(source layer, array) carries a source activation to the PyTorch convention; fused
    maps source layers to the activation they apply inside (see module docstring)."""
    rows = []
    for p, index in resolved:
        if p.source_layer not in source_acts:
            continue
        ref = to_target(p.source_layer, np.asarray(source_acts[p.source_layer]))
        best = None
        for name, value in _with_fused(recorder.candidates(index), (fused or {}).get(p.source_layer)):
            m = compare(ref, value.to(torch.float64).cpu().numpy(), tol, name=p.source_layer)
            m["module"], m["compared_with"] = p.module, name
            if best is None or _better(m, best):
                best = m
        best.update(source_type=p.source_type, origin=p.origin,
                    module_type=type(recorder.modules.get(p.module)).__name__)
        rows.append(best)
    return rows


FUSED = {"relu": torch.relu, "relu6": lambda x: torch.clamp(x, 0, 6), "sigmoid": torch.sigmoid, "tanh": torch.tanh,
         "elu": torch.nn.functional.elu, "selu": torch.selu, "softplus": torch.nn.functional.softplus,
         "softsign": torch.nn.functional.softsign, "silu": torch.nn.functional.silu,
         "swish": torch.nn.functional.silu, "gelu": torch.nn.functional.gelu, "exponential": torch.exp,
         "softmax": lambda x: torch.softmax(x, dim=1 if x.dim() > 2 else -1)}


def _with_fused(candidates, activation):
    """The candidates, plus the module's own output through the layer's fused activation."""
    fn = FUSED.get(activation or "")
    if fn is None:
        return candidates
    name, value = candidates[0]
    return candidates + [(f"{name}+{activation}", fn(value.to(torch.float64)))]


def judge_layers(rows: list[dict], model: nn.Module, args, limit: int = 20):
    """(first divergent row or None, undecided rows): see the module docstring. A differing row
    is named only when every row before it agreed, or was shown not to matter by a later agreeing
    row computed from it; an undecided row nothing vouches for leaves the rest undecided too."""
    unsure, pending, checks = [], [], 0
    for i, row in enumerate(rows):
        row.pop("unsure", None)
        if row["passed"]:
            continue
        reason = _laid_out_differently(row)
        agreeing = [r for r in rows[i + 1:] if r["passed"]]
        depends = [None] * len(agreeing)
        if agreeing and checks < limit:
            checks += 1
            depends = downstream_of(model, args, row.get("module", ""),
                                    [r["compared_with"].split("+")[0] for r in agreeing])
        vouched = next((r for r, d in zip(agreeing, depends) if d is True), None)
        doubted = next((r for r, d in zip(agreeing, depends) if d is not False), None)
        if reason is None and doubted is not None:
            reason = f"{doubted['name']}, computed from it, agrees" if vouched else f"{doubted['name']} after it agrees"
        if reason is None and pending:
            row["unsure"] = f"{pending[0]['name']} before it could not be compared"
            return None, unsure + [row]
        if reason is None:
            return row, unsure
        row["unsure"] = reason
        unsure.append(row)
        if vouched is None:
            pending.append(row)
    return None, unsure


def _laid_out_differently(row) -> str | None:
    shape, got = row.get("shape") or [], row.get("got_shape") or []
    if shape != got and sorted(shape) == sorted(got):
        return f"the source activation {shape} and the module's {got} are laid out differently"
    return None


def downstream_of(model: nn.Module, args, module_name: str, later: list[str]) -> list:
    """For each module in `later`: does its (last) output depend on `module_name`'s output? True,
    False, or None when that cannot be found out (the output is not a float tensor, the forward
    fails with grad on)."""
    modules = dict(model.named_modules())
    source = modules.get(module_name.split("+")[0])
    if source is None or not later:
        return [None] * len(later)
    marks: dict[str, bool] = {}

    def mark_source(_m, _i, out):
        if isinstance(out, torch.Tensor) and out.is_floating_point():
            return out.detach().requires_grad_().clone()
        return None

    def recorder(name):
        def hook(_m, _i, out):
            t = first_tensor(out)
            if t is not None:
                marks[name] = bool(t.requires_grad)
        return hook

    frozen = [p for p in model.parameters() if p.requires_grad]
    handles = [source.register_forward_hook(mark_source)]
    handles += [modules[n].register_forward_hook(recorder(n)) for n in dict.fromkeys(later) if n in modules]
    try:
        for p in frozen:
            p.requires_grad_(False)
        with torch.enable_grad():
            model(*args)
    except Exception:  # the question has no answer then; the caller stays undecided
        return [None] * len(later)
    finally:
        for p in frozen:
            p.requires_grad_(True)
        for h in handles:
            h.remove()
    return [marks.get(n) for n in later]


def _better(a: dict, b: dict) -> bool:
    if a["passed"] != b["passed"]:
        return a["passed"]
    if a["max_abs"] is None:
        return False
    if b["max_abs"] is None:
        return True
    return a["max_abs"] / a["scale"] < b["max_abs"] / b["scale"]


# ---- likely causes ------------------------------------------------------------------------------

def likely_causes(row: dict, previous: list[dict], model: nn.Module, source_eps: dict | None = None) -> list[str]:
    """What usually breaks at a layer like this one (design.md, "Facts that decide correctness").
    source_eps: {source BatchNorm layer: the eps its file records} (the conversion report's bn_eps)."""
    module = dict(model.named_modules()).get(row["module"])
    causes = []
    if row.get("got_shape") != row.get("shape"):
        causes.append(f"output shape {row['got_shape']} vs source {row['shape']}: pooling rounding (Caffe ceils, "
                      "PyTorch floors unless ceil_mode=True), padding or stride of this layer or the one before")
    first_weighted = not any(r.get("origin") == "weights" for r in previous)
    if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d)):
        causes.append("kernel layout: a missing or wrong transpose/permute (TF/Keras HWIO -> OIHW is tf_conv; "
                      "height and width swapped)")
        if any(s > 1 for s in getattr(module, "stride", (1,))):
            causes.append("padding: TF/Keras SAME pads the extra pixel bottom/right, PyTorch pads symmetrically "
                          "(stride > 1)")
        else:
            causes.append("padding: the source's padding mode vs the module's padding")
        if first_weighted:
            causes.append("input channel order (RGB vs BGR: flip the first convolution's input channels) and "
                          "input preprocessing (range, mean, std)")
        if getattr(module, "groups", 1) > 1:
            causes.append("depthwise kernel layout (TF (H, W, C, M) -> (C*M, 1, H, W), tf_depthwise) and groups")
    elif isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)):
        causes.append(_eps_cause(module.eps, (source_eps or {}).get(row.get("name"))))
        causes.append("Caffe's BatchNorm scale factor (third blob) not divided out; MXNet fix_gamma=True "
                      "(gamma is 1 whatever the file holds); mean and variance swapped")
    elif isinstance(module, (nn.MaxPool1d, nn.MaxPool2d, nn.AvgPool1d, nn.AvgPool2d, nn.AdaptiveAvgPool2d)):
        causes.append("pooling rounding: Caffe rounds the output size up (ceil_mode=True), PyTorch floors")
        causes.append("average pooling counting padded pixels (count_include_pad) and padding")
    elif isinstance(module, nn.Linear):
        if previous and len(previous[-1].get("shape") or []) > 2:
            causes.append("flatten order: an NHWC flatten orders features (h, w, c), NCHW (c, h, w) - reorder the "
                          "dense kernel's input axis (flatten_order)")
        causes.append("dense kernel orientation: TF/Keras (in, out) needs a transpose (tf_dense); Caffe "
                      "InnerProduct with transpose: true")
    elif isinstance(module, (nn.LSTM, nn.GRU, nn.RNN)):
        causes.append("gate order (PyTorch i,f,g,o / r,z,n; Keras i,f,c,o / z,r,h; ONNX i,o,f,c), bias split "
                      "(bias_ih + bias_hh), GRU reset_after, batch_first")
    elif isinstance(module, nn.PReLU):
        causes.append("PReLU slopes: per-channel vs shared, or a leaky ReLU's fixed slope")
    if not causes or first_weighted and not isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
        causes.append("input conventions: layout (NHWC vs NCHW), channel order, range, mean/std")
    return causes


def _eps_cause(module_eps: float, source_eps) -> str:
    if source_eps is None:
        return (f"BatchNorm eps: the module uses {module_eps:g}; Keras/TF and MXNet symbols default to 1e-3, "
                "Caffe, Gluon and PyTorch to 1e-5")
    if np.isclose(module_eps, source_eps, rtol=1e-6, atol=0):
        return f"BatchNorm eps: the module and the source file agree ({module_eps:g})"
    return (f"BatchNorm eps: the module uses {module_eps:g}, the source file {float(source_eps):g} "
            f"(build the module with eps={float(source_eps):g})")
