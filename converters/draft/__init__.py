"""`convert draft` / `converters.draft(...)`: propose a mapping table from a weight file and a target
module, with the evidence for every rule.

    signals.py  names, kinds, layout presets, shape compatibility
    trace.py    the target's execution order (forward hooks on a dummy input)
    match.py    source layers <-> target modules: ordered alignment, ambiguity, special cases
    emit.py     the YAML table: family regex rules, comments, unmatched lists

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
          reader_options=None, force=False) -> Draft:
    """Propose a mapping from `source` (path or opened ArrayFile) to `target` (an nn.Module or
    'package.module:callable' built with `target_kwargs`). Writes YAML to `out` when given."""
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

    hint, input_section = _input_hint(arrays, fw, input_shape)
    tr = trace.trace(model, hint)
    if "shape" not in input_section and tr.input_shape and len(tr.input_shape) == 4 and fw not in ("keras", "tensorflow"):
        input_section = {"shape": list(tr.input_shape), "layout": "NCHW"}  # the traced input (NCHW source)
    matching = match.match(arrays, model, tr, fw)
    file_index = {n: i for i, n in enumerate(arrays)}
    order = {pr.source: (p.source.position, file_index[pr.source]) for p in matching.pairs for pr in p.proposals}
    rules = emit.build_rules(matching, set(arrays), order)
    outputs = match.output_order(arrays, matching, tr)
    stats = _stats(arrays, model, matching, tr, rules)
    text = emit.write(matching, source_path=str(arrays.path), framework=fw, target_spec=target_spec,
                      input_section=input_section, outputs=outputs, rules=rules, stats=stats, extra_notes=matching.notes)

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


def _input_hint(arrays, framework, input_shape):
    """(dummy NCHW/NTC shape for the trace or None, the table's `input:` section)."""
    import ast

    from .signals import NHWC_FRAMEWORKS

    shape = None
    if input_shape:
        shape = [int(d) for d in input_shape]
    else:
        for layer in (getattr(arrays, "layers", {}) or {}).values():
            if layer.type == "InputLayer":
                raw = layer.params.get("batch_shape") or layer.params.get("batch_input_shape")
                raw = ast.literal_eval(raw) if isinstance(raw, str) else raw
                if raw:
                    shape = [1 if d is None else d for d in raw]
                break
        if shape is None and isinstance(arrays.meta.get("input"), (dict, str)):
            raw = arrays.meta["input"]
            raw = ast.literal_eval(raw) if isinstance(raw, str) else raw
            if isinstance(raw, dict) and len(raw) == 1:
                shape = list(next(iter(raw.values())))
    section = {}
    nhwc = framework in NHWC_FRAMEWORKS
    if shape and len(shape) == 4:
        section = {"shape": shape, "layout": "NHWC" if nhwc and not input_shape else "NCHW"}
        if any(d is None for d in shape):
            return None, {"layout": section["layout"]}
        hint = (shape[0], shape[3], shape[1], shape[2]) if section["layout"] == "NHWC" else tuple(shape)
        return hint, section
    if shape and len(shape) == 3:
        if any(d is None for d in shape):
            return None, {"layout": "NTC"}
        return tuple(shape), {"layout": "NTC"}
    return None, ({"layout": "NHWC"} if nhwc else {})


def _stats(arrays, model, matching, tr, rules) -> dict:
    sd = model.state_dict()
    matched_targets = {t for p in matching.pairs for pr in p.proposals for t in pr.targets}
    matched_sources = {pr.source for p in matching.pairs for pr in p.proposals} | {
        w for p in matching.pairs for pr in p.proposals for w in pr.with_}
    has_graph = bool(getattr(arrays, "layers", None))
    return {
        "total_sources": len(arrays), "matched_sources": len(matched_sources), "ignored": len(matching.ignored),
        "unmatched_sources": len(matching.unmatched_sources), "total_targets": len(sd),
        "matched_targets": len(matched_targets), "filled": len({n for n, _, _ in matching.fills}),
        "unmatched_targets": len(matching.unmatched_targets), "ambiguous": len(matching.ambiguous),
        "rules": len(rules),
        "order_source": "graph order" if has_graph else "file order",
        "order_target": "execution order (" + tr.why + ")" if tr.how == "trace" else "registration order",
    }


class _CallableModule(types.ModuleType):
    """`converters.draft(...)` calls `draft(...)` although `converters.draft` is this package."""

    def __call__(self, *args, **kwargs):
        return draft(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule

from . import cli as _cli  # noqa: E402,F401  (registers the `draft` subcommand)
