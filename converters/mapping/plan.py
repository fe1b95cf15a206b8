"""Match source arrays to rules and check the result against the target, before reading data.

Every source array ends in exactly one place: a rule (as its matched array or a `with:` extra),
an ignore entry, or the report's unused list. Every target tensor is written by exactly one rule,
filled, initialised, or reported missing. Shapes and dtypes are checked through the transforms'
shape rules, so a dry run needs only the file's headers and the target's shapes.
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass, field

import numpy as np

from ..errors import MappingError
from ..frameworks import default_bn_eps
from .report import Problem, Report
from .templates import render
from .transforms import chain_shape


@dataclass
class TargetTensor:
    shape: tuple
    dtype: np.dtype
    module_type: str = ""
    eps: float | None = None


@dataclass
class Assignment:
    targets: list
    sources: list
    rule: object
    out_shapes: list
    out_dtypes: list


@dataclass
class Plan:
    assignments: list = field(default_factory=list)
    fills: list = field(default_factory=list)  # (target, value)
    inits: list = field(default_factory=list)  # (target, TargetFill)
    report: Report = field(default_factory=Report)


_BN_TYPES = ("BatchNorm", "BatchNormalization", "FusedBatchNorm", "FusedBatchNormV3")


def make_plan(mapping, arrays, targets: dict | None) -> Plan:
    plan = Plan()
    rep = plan.report
    rep.source, rep.mapping = arrays.path, mapping.path
    consumed_by_with: set = set()
    written: dict = {}
    for name, _handle in arrays.items():
        hits = [(r, m) for r in mapping.rules if (m := r.pattern.fullmatch(name))]
        if len(hits) > 1:
            rep.problems.append(Problem("source_twice", name, "matched by " + ", ".join(r.where for r, _ in hits),
                                        hits[0][0].where))
            continue
        if not hits:
            continue
        rule, match = hits[0]
        caps = match.groupdict()
        targets_named = [render(t, caps, rule=rule.where, template=s) for t, s in zip(rule.to, rule.to_text)]
        extra = [render(t, caps, rule=rule.where, template=s) for t, s in zip(rule.with_, rule.with_text)]
        missing_extra = [x for x in extra if x not in arrays]
        if missing_extra:
            for x in missing_extra:
                rep.problems.append(Problem("missing_with", x, f"needed with {name}", rule.where,
                                            difflib.get_close_matches(x, list(arrays), n=2)))
            continue
        consumed_by_with.update(extra)
        sources = [name, *extra]
        in_shapes = [arrays[s].shape for s in sources]
        in_dtypes = [arrays[s].dtype for s in sources]
        shape_in = list(in_shapes) if len(sources) > 1 else in_shapes[0]
        try:
            out_shape, out_dtype = chain_shape(rule.transforms, shape_in, in_dtypes[0])
        except MappingError as e:
            raise MappingError(f"{e.message} on array {name!r} {[list(s) for s in in_shapes]}",
                               rule=rule.where, file=arrays.path, array=name) from None
        out_shapes = out_shape if isinstance(out_shape, list) else [out_shape]
        if len(out_shapes) != len(targets_named):
            raise MappingError(f"the transforms leave {len(out_shapes)} array(s) for {len(targets_named)} "
                               f"target(s) {targets_named}", rule=rule.where, file=arrays.path, array=name)
        a = Assignment(targets_named, sources, rule, [tuple(s) for s in out_shapes],
                       [np.dtype(out_dtype)] * len(out_shapes))
        plan.assignments.append(a)
        rep.rows.append({"sources": sources, "targets": targets_named, "rule": rule.where,
                         "transforms": [repr(t) for t in rule.transforms],
                         "in_shapes": [list(s) for s in in_shapes], "out_shapes": [list(s) for s in a.out_shapes]})
        for t in targets_named:
            if t in written:
                rep.problems.append(Problem("target_twice", t, f"from {written[t][0]} and {name}", rule.where))
            else:
                written[t] = (name, a)

    matched = {s for a in plan.assignments for s in a.sources[:1]} | consumed_by_with
    twice = {p.name for p in rep.problems if p.kind == "source_twice"}
    for name, handle in arrays.items():
        if name in matched or name in twice:
            continue
        ign = next((i for i in mapping.ignore if i.matches(handle)), None)
        if ign is not None:
            rep.ignored.append((name, ign.reason, ign.where))
        else:
            rep.problems.append(Problem("unused_source", name, _describe(handle), None,
                                        _near_rules(name, mapping)))

    if targets is not None:
        _check_targets(plan, mapping, targets)
    elif mapping.fill or mapping.init:
            rep.warnings.append("fill:/init: entries need a target model to know which tensors they cover; skipped")
    _bn_eps_warnings(plan, arrays, targets)
    return plan


def _check_targets(plan, mapping, targets):
    rep = plan.report
    for a in plan.assignments:
        for t, shape, dtype in zip(a.targets, a.out_shapes, a.out_dtypes):
            spec = targets.get(t)
            if spec is None:
                rep.problems.append(Problem("unknown_target", t, f"from {a.sources[0]}", a.rule.where,
                                            difflib.get_close_matches(t, list(targets), n=3)))
            elif tuple(spec.shape) != tuple(shape):
                rep.problems.append(Problem("shape_mismatch", t, f"{a.sources[0]} gives {list(shape)}, target has "
                                            f"{list(spec.shape)}", a.rule.where))
            elif np.dtype(spec.dtype) != dtype:
                rep.problems.append(Problem("dtype_mismatch", t, f"{a.sources[0]} gives {dtype}, target has "
                                            f"{np.dtype(spec.dtype)}", a.rule.where))
    attach_fills(plan, mapping, targets)


def attach_fills(plan, mapping, targets):
    """Give every target no rule writes to the first fill/init entry that covers it, or report it."""
    rep = plan.report
    written = {t for a in plan.assignments for t in a.targets}
    for name in targets:
        if name in written:
            continue
        fill = next((f for f in mapping.fill if f.pattern.fullmatch(name)), None)
        if fill is not None:
            plan.fills.append((name, fill.value))
            rep.filled.append((name, fill.value, fill.where))
            continue
        init = next((f for f in mapping.init if f.pattern.fullmatch(name)), None)
        if init is not None:
            plan.inits.append((name, init))
            rep.initialised.append((name, init.scheme, init.where))
            continue
        unused = [p.name for p in rep.problems if p.kind == "unused_source"]
        rep.problems.append(Problem("missing_target", name,
                                    f"{list(targets[name].shape)} {np.dtype(targets[name].dtype)}",
                                    None, difflib.get_close_matches(name, unused, n=2, cutoff=0.4)))


def _describe(handle) -> str:
    parts = ["x".join(map(str, handle.shape)) or "scalar", str(handle.dtype)]
    if handle.meta.get("role"):
        parts.append(handle.meta["role"])
    if handle.meta.get("layer_type"):
        parts.append(handle.meta["layer_type"])
    return " ".join(parts)


def _near_rules(name, mapping) -> list:
    pats = [r.pattern.pattern for r in mapping.rules]
    return [f"rule {p!r}" for p in difflib.get_close_matches(name, pats, n=1, cutoff=0.5)]


def _bn_eps_warnings(plan, arrays, targets):
    """Carry each source BatchNorm layer's eps into the report (`bn_eps`), and warn, once per
    (source eps, target eps) pair, where the target modules use another."""
    rep = plan.report
    differing: dict = {}
    for a in plan.assignments:
        layer = arrays[a.sources[0]].meta.get("layer")
        info = getattr(arrays, "layers", {}).get(layer) if layer else None
        if info is None or info.type not in _BN_TYPES and "BatchNorm" not in str(info.type):
            continue
        eps = _source_eps(info, arrays.framework)
        if eps is None or layer in rep.bn_eps:
            continue
        rep.bn_eps[layer] = eps
        for t in a.targets:
            spec = (targets or {}).get(t)
            if spec is not None and spec.eps is not None and not np.isclose(spec.eps, eps, rtol=1e-6, atol=0):
                differing.setdefault((eps, spec.eps), []).append(layer)
                break
    for (src, tgt), layers in differing.items():
        named = ", ".join(layers[:3]) + (f" and {len(layers) - 3} more" if len(layers) > 3 else "")
        rep.warnings.append(f"BatchNorm eps differs on {len(layers)} layer(s) ({named}): the source uses {src:g}, "
                            f"the target modules {tgt:g} (build the target with eps={src:g})")




def _source_eps(info, framework) -> float | None:
    p = info.params or {}
    p = {**p, **(p.get("batch_norm_param") or {})}  # Caffe keeps it in the layer's param message
    for key in ("eps", "epsilon"):
        if key in p:
            try:
                return float(p[key])
            except (TypeError, ValueError):
                return None
    return default_bn_eps(framework)  # the layer records none: the framework's default
