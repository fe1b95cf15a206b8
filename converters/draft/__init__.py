"""`convert draft` / `converters.draft(...)`: propose a mapping table from a weight file and a target
module, with the evidence for every rule.

    signals.py  names, kinds, layout presets, shape compatibility
    trace.py    the target's execution order (forward hooks on a dummy input)
    match.py    source layers <-> target modules: ordered alignment, ambiguity, special cases
    emit.py     the YAML table: family regex rules, comments, unmatched lists
    like.py     --like: rules made to reproduce an existing port bit for bit

The draft is checked before it is returned: it must load with `converters.mapping.spec.load`, and
its coverage plan against the target says whether it converts with no edits (`Draft.complete`).

`converters.draft` is both this package and the function: the module is callable
(`converters.draft(source, target)`), so the CLI can import the package without shadowing the API.
"""
from __future__ import annotations

import os
import sys
import tempfile
import types
from dataclasses import dataclass, field


@dataclass
class Draft:
    """A proposed mapping: `.text` (YAML), `.path` (where written, if anywhere), `.matching` (pairs
    with evidence), `.stats`, `.complete` (converts with no edits), `.report` (its coverage plan)."""

    text: str
    path: str | None
    matching: object
    rules: list
    stats: dict
    complete: bool
    report: object = None
    problems: list = field(default_factory=list)

    @property
    def unsure(self) -> list:
        """What the draft is not sure of: low-confidence pairs, ambiguous and unmatched layers. Empty
        means every rule is at least medium confidence and nothing is left open."""
        out = [f"low confidence ({p.confidence:.2f}, decided by {p.decided_by}): {p.source.name} -> {p.target.name}"
               for p in self.matching.pairs if p.confidence < 0.7]
        out += [f"ambiguous: {s.name}" for s, _, _ in self.matching.ambiguous]
        out += [f"unmatched source: {n}" for n, _, _ in self.matching.unmatched_sources]
        out += [f"unmatched target: {n}" for n, _, _ in self.matching.unmatched_targets]
        return out

    def rules_for_module(self, module: str) -> list:
        """The written rules (line, from, to) that fill tensors of `module` (for verify's verdict)."""
        out = []
        for r in self.rules:
            targets = [i for it in r.items for i in it.outputs[:it.n_targets]]
            if any(t == module or t.startswith(module + ".") for t in targets):
                out.append((r.line, r.from_, r.to))
        return out

    def __str__(self) -> str:
        s = self.stats
        lines = [f"draft: {s['matched_sources']}/{s['total_sources']} source arrays matched automatically "
                 f"({s['ignored']} ignored), {s['matched_targets']}/{s['total_targets']} target tensors written "
                 f"by rules, {s['filled']} filled; left for you: {s['unmatched_sources']} source arrays, "
                 f"{s['unmatched_targets']} target tensors, {s['ambiguous']} ambiguous layers; "
                 f"{len(self.rules)} rules; " + ("converts as is" if self.complete else "needs edits")]
        lines += [f"  {p}" for p in self.problems[:10]]
        return "\n".join(lines)


def draft(source, target, *, framework=None, target_kwargs=None, out=None, input_shape=None,
          reader_options=None, force=False, like=None, base=None) -> Draft:
    """Propose a mapping from `source` (path or opened ArrayFile) to `target` (an nn.Module or
    'package.module:callable' built with `target_kwargs`). Writes YAML to `out` when given.
    `like`: an existing port's weight file; every rule is made to reproduce its tensors bit for
    bit where a layout step can (like.py), and says so where none can. `base`: an existing table
    (path or shipped name) whose rules, ignores and fills are kept as they are; only what it leaves
    open is drafted."""
    import torch

    from .. import read
    from ..arrays import ArrayFile
    from ..mapping import spec
    from ..mapping.plan import make_plan
    from ..target import build_model, describe
    from . import emit, match, trace

    arrays = source if isinstance(source, ArrayFile) else read(source, framework, **(reader_options or {}))
    fw = framework or arrays.framework
    if isinstance(target, torch.nn.Module):
        model = target
        target_spec = {"model": f"{type(model).__module__}:{type(model).__qualname__}", "kwargs": target_kwargs or {}}
    else:
        target_spec = {"model": str(target), "kwargs": dict(target_kwargs or {})}
        model = build_model(target_spec)
    if out is not None and os.path.exists(out) and not force:
        from ..errors import OutputExistsError

        raise OutputExistsError("output exists", file=out, hint="pass --force to overwrite it")

    hint, input_section = _input_hint(arrays, fw, input_shape, model)
    tr = trace.trace(model, hint)
    if "shape" not in input_section and tr.input_shape:  # the traced input, in the source's layout
        from .signals import NHWC_FRAMEWORKS

        input_section = {**_section(list(tr.input_shape), fw in NHWC_FRAMEWORKS, model, from_target=True),
                         "_note": "the shape the target was traced with: no input is declared in the source, "
                                  "check it"}
    base_doc, covered = _base(base, arrays, model)
    matching = match.match(arrays, model, tr, fw, exclude=covered)
    if like is not None:
        from .like import apply_like

        apply_like(matching, arrays, like)
    file_index = {n: i for i, n in enumerate(arrays)}
    order = {pr.source: (p.source.position, file_index[pr.source]) for p in matching.pairs for pr in p.proposals}
    rules = emit.build_rules(matching, set(arrays), order)
    outputs, outputs_why = match.output_order(arrays, matching, tr)
    stats = _stats(arrays, model, matching, tr, rules)
    if base_doc:
        input_section = base_doc.get("input") or input_section
    text = emit.write(matching, source_path=str(arrays.path), framework=fw, target_spec=target_spec,
                      input_section=input_section, outputs=outputs, outputs_why=outputs_why, rules=rules, stats=stats,
                      extra_notes=matching.notes,
                      base=base_doc)

    path = _write(text, out)
    try:
        m = spec.load(path)
        plan = make_plan(m, arrays, describe(model))
    finally:
        if out is None:
            os.unlink(path)
    rep = plan.report
    problems = [f"{p.kind}: {p.name} {p.detail}" for p in rep.problems]
    return Draft(text, os.fspath(out) if out is not None else None, matching, rules, stats, rep.ok, rep, problems)


def _base(base, arrays, model):
    """(the base table's YAML data, (source names, target names) it already covers) or (None, None)."""
    if base is None:
        return None, None
    import yaml

    from ..mapping import spec
    from ..mapping.plan import make_plan
    from ..target import describe

    m = spec.load(base)
    plan = make_plan(m, arrays, describe(model))
    sources = {s for a in plan.assignments for s in a.sources} | {n for n, *_ in plan.report.ignored}
    targets = {t for a in plan.assignments for t in a.targets} | {t for t, _ in plan.fills} | {t for t, _ in plan.inits}
    with open(m.path, encoding="utf-8") as fh:
        doc = yaml.safe_load(fh) or {}
    doc["_path"] = m.path
    return doc, (sources, targets)


def _write(text, out) -> str:
    if out is None:
        fd, path = tempfile.mkstemp(suffix=".yaml", prefix="draft-")
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        return path
    tmp = f"{out}.tmp-{os.getpid()}"
    with open(tmp, "w") as fh:
        fh.write(text)
    os.replace(tmp, out)
    return os.fspath(out)


def _input_hint(arrays, framework, input_shape, model=None):
    """(dummy input shape for the trace, in the target's layout, or None; the table's `input:`
    section, in the source's layout). `input_shape` is the target's (NCHW, NCL, (N, L), ...)."""
    from .signals import NHWC_FRAMEWORKS

    nhwc = framework in NHWC_FRAMEWORKS
    if input_shape:
        shape = [int(d) for d in input_shape]
        return tuple(shape), _section(shape, nhwc, model, from_target=True)
    shape = _declared_input(arrays)
    if not shape:
        return None, ({"layout": "NHWC"} if nhwc else {})
    if len(shape) == 3 and shape[0] is not None and shape[1] is None:  # (T, N, C): the batch axis is dynamic
        shape = [shape[0], 1, shape[2]]
        return (tuple(shape) if None not in shape else None), {"shape": shape, "layout": "TNC"}
    if any(d is None for d in shape):
        sec = _section([1 if d is None else d for d in shape], nhwc, model, from_target=False)
        sec.pop("shape", None)
        return None, sec
    sec = _section(shape, nhwc, model, from_target=False)
    return _to_target(shape, sec.get("layout")), sec


def _declared_input(arrays):
    """The input shape the source's graph declares (Keras InputLayer, Caffe input_dim, ONNX
    graph input), None dims kept as None; or None."""
    import ast

    for layer in (getattr(arrays, "layers", {}) or {}).values():
        if layer.type == "InputLayer":
            raw = layer.params.get("batch_shape") or layer.params.get("batch_input_shape")
            raw = ast.literal_eval(raw) if isinstance(raw, str) else raw
            if raw:
                return [1 if i == 0 and d is None else d for i, d in enumerate(raw)]
            return None
    graph = arrays.meta.get("graph")
    graph_inputs = (graph or {}).get("inputs") if isinstance(graph, dict) else None
    if graph_inputs and len(graph_inputs) == 1 and isinstance(graph_inputs[0].get("shape"), (list, tuple)):
        dims = [d if isinstance(d, int) and d > 0 else None for d in graph_inputs[0]["shape"]]  # ONNX
        return [1 if i == 0 and d is None else d for i, d in enumerate(dims)] or None
    raw = arrays.meta.get("input")
    if isinstance(raw, (dict, str)):
        raw = ast.literal_eval(raw) if isinstance(raw, str) else raw
        if isinstance(raw, dict) and len(raw) == 1:
            return [d if isinstance(d, int) and d > 0 else None for d in next(iter(raw.values()))] or None
    return None


def _first_module(model):
    if model is None:
        return None
    return next((m for m in model.modules() if not list(m.children()) and any(True for _ in m.parameters())), None)


def _section(shape, nhwc, model, from_target) -> dict:
    """`input:` for a shape given in the target's (from_target) or the source's layout."""
    from torch import nn

    n = len(shape)
    first = _first_module(model)
    if n == 4:
        if not nhwc:
            return {"shape": list(shape), "layout": "NCHW"}
        return {"shape": [shape[0], shape[2], shape[3], shape[1]] if from_target else list(shape), "layout": "NHWC"}
    if n == 3:
        if isinstance(first, nn.Conv1d):
            if not nhwc:
                return {"shape": list(shape), "layout": "NCL"}
            return {"shape": [shape[0], shape[2], shape[1]] if from_target else list(shape), "layout": "NLC"}
        return {"shape": list(shape), "layout": "NTC"}
    if n == 2:
        return {"shape": list(shape), "layout": "NC"}
    return {"shape": list(shape)}  # 1-d or >= 5-d: no layout the parity inputs know


def _to_target(shape, layout):
    if layout == "NHWC":
        return (shape[0], shape[3], shape[1], shape[2])
    if layout == "NLC":
        return (shape[0], shape[2], shape[1])
    return tuple(shape)


def _stats(arrays, model, matching, tr, rules) -> dict:
    sd = model.state_dict()
    matched_targets = {t for p in matching.pairs for pr in p.proposals for t in pr.targets}
    matched_sources = {pr.source for p in matching.pairs for pr in p.proposals} | {
        w for p in matching.pairs for pr in p.proposals for w in pr.with_}
    return {
        "total_sources": len(arrays), "matched_sources": len(matched_sources), "ignored": len(matching.ignored),
        "unmatched_sources": len(matching.unmatched_sources), "total_targets": len(sd),
        "matched_targets": len(matched_targets), "filled": len({n for n, _, _ in matching.fills}),
        "unmatched_targets": len(matching.unmatched_targets), "ambiguous": len(matching.ambiguous),
        "rules": len(rules),
        "order_source": {"graph": "graph order", "file": "file order",
                         "alphabetical": "alphabetical file order"}[matching.order],
        "order_target": "execution order (" + tr.why + ")" if tr.how == "trace" else "registration order",
    }


class _CallableModule(types.ModuleType):
    """`converters.draft(...)` calls `draft(...)` although `converters.draft` is this package."""

    def __call__(self, *args, **kwargs):
        return draft(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
