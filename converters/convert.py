"""`converters.convert`: a weight file and a mapping table in, a filled module or a written file out
(the command line is converters/cli/convert.py).

Order of work: open the source lazily, load the table, describe the target (a meta-device model:
no memory), plan and check coverage, and only then read, transform and write the arrays.
"""
from __future__ import annotations

import contextlib
import os

import numpy as np
import torch

from . import provenance as provenance_of
from .arrays import ArrayFile
from .errors import ConvertersError, CoverageError, OutputExistsError
from .initializers import init_tensor
from .mapping import spec as mapping_spec
from .mapping.materialise import outputs, produce
from .mapping.plan import make_plan
from .mapping.source_checks import source_warnings
from .target import build_model, describe, resolve_target, to_torch
from .writers import output_kind, save_pth, stream_pth, stream_safetensors


def _progress(total, enabled, desc):
    if not enabled:
        return None
    from tqdm.auto import tqdm  # a core dependency (in a notebook, its widget)

    return tqdm(total=total, desc=desc, unit="tensor", leave=False)


def convert(source, mapping, target=None, out=None, *, framework=None, target_kwargs=None,
            allow_unused=False, allow_missing=False, dry_run=False, force=False, progress=None,
            reader_options=None, fsync=True, hash_source=True):
    """Convert `source` (path or opened ArrayFile) with `mapping` (path, shipped name or Mapping).

    target: an nn.Module to fill, 'package.module:callable', or None for the table's own target.
    out: None to fill the module (returned) or build a state dict (returned when no target);
         a `.pth` / `.safetensors` path to write (the path is returned), streamed one tensor at a time.
    fsync: flush the output to disk before renaming it into place (False: faster, not power-loss safe).
    hash_source: record the source files' sha256 in the output's provenance (False: an empty
         `source_sha256`; the hash costs ~0.9 s/GB of CPU, about twice a page-cache copy of the file).
    Returns (result, report). Raises CoverageError (with `.report`) when anything would be
    dropped or left unfilled, unless allowed.
    """
    m = mapping if isinstance(mapping, mapping_spec.Mapping) else mapping_spec.load(mapping)
    arrays = source if isinstance(source, ArrayFile) else _open(source, framework or m.source, reader_options)
    target_spec = resolve_target(target, m, target_kwargs)
    if out is not None:
        output_kind(out)
        if os.path.exists(out) and not force:  # fail before any work; the writer checks again
            raise OutputExistsError("output exists", file=out, hint="pass --force to overwrite it")
    model = target if isinstance(target, torch.nn.Module) else None
    if model is None and target_spec is not None:
        # a real module only when we fill it in memory; otherwise its shapes are enough
        model = build_model(target_spec, meta=out is not None or dry_run)
    targets = describe(model) if model is not None else None

    plan = make_plan(m, arrays, targets)
    rep = plan.report
    rep.target = target_spec["model"] if target_spec else (type(model).__name__ if model is not None else "")
    if allow_unused:
        rep.allowed.add("unused_source")
    if allow_missing:
        rep.allowed.add("missing_target")
    if not rep.ok:
        raise CoverageError(f"conversion stopped: {rep.summary()}", file=arrays.path, report=rep,
                            hint="fix the table, or pass --allow-unused / --allow-missing to accept this on purpose")
    if dry_run:
        return None, rep
    rep.warnings.extend(source_warnings(plan, arrays))  # reads the few arrays it checks (MXNet fix_gamma)

    provenance = provenance_of.start(arrays, m, hash_source) if out is not None else None
    bar = _progress(len(plan.assignments) + len(plan.fills) + len(plan.inits), progress, "converting")
    try:
        if out is None:
            result = _fill_module(plan, arrays, model, bar) if model is not None else _state_dict(plan, arrays, bar)
        elif output_kind(out) == "safetensors":
            stream_safetensors(_entries(plan, arrays, targets), out, provenance, force, bar, fsync=fsync)
            result = out
        elif model is not None and not _is_meta(model):  # a module passed in: write what it holds
            save_pth(_fill_module(plan, arrays, model, bar).state_dict(), out, provenance, force, fsync=fsync)
            result = out
        else:
            meta = getattr(model.state_dict(), "_metadata", None) if model is not None else None
            stream_pth(_entries(plan, arrays, targets), out, provenance, force, bar, metadata=meta, fsync=fsync)
            result = out
    finally:
        if bar is not None:
            bar.close()
    rep.output = os.fspath(out) if out is not None else None
    return result, rep


def _open(source, framework, options):
    from . import read

    return read(source, framework, **(options or {}))


def _is_meta(model) -> bool:
    return any(t.is_meta for t in model.state_dict().values())


def _entries(plan, arrays, targets):
    """(name, shape, dtype, produce[, source]) for every output tensor (see writers.stream), in
    target order when known. Single-output rules also hand the writer their unmaterialised output,
    so that the one copy that makes it contiguous goes straight into the file."""
    entries = []
    for a in plan.assignments:
        cache = {}

        def output(i, a=a, cache=cache):
            """Output i of a rule; the rule runs once and its outputs are dropped once all are taken."""
            if "v" not in cache:
                cache["v"], cache["left"] = produce(a, arrays), len(a.targets)
            v = cache["v"][i]
            cache["left"] -= 1
            if not cache["left"]:
                cache.clear()
            return v
        if len(a.targets) == 1:
            entries.append((a.targets[0], a.out_shapes[0], a.out_dtypes[0], lambda output=output: output(0),
                            lambda a=a: _single_output(a, arrays)))
            continue
        for i, (t, shape, dtype) in enumerate(zip(a.targets, a.out_shapes, a.out_dtypes)):
            entries.append((t, shape, dtype, lambda i=i, output=output: output(i)))
    for name, value in plan.fills:
        spec = targets[name]
        entries.append((name, spec.shape, spec.dtype, lambda s=spec, v=value: np.full(s.shape, v, s.dtype)))
    for name, fill in plan.inits:
        spec = targets[name]
        entries.append((name, spec.shape, spec.dtype, lambda n=name, s=spec, f=fill: _init_array(n, s, f)))
    if targets is not None:
        order = {n: i for i, n in enumerate(targets)}
        entries.sort(key=lambda e: order.get(e[0], len(order)))
    return entries


@contextlib.contextmanager
def _single_output(assignment, arrays):
    """The rule's output as the chain leaves it; for a rule that copies one array unchanged, where
    its bytes lie in the source file (the writer copies them file to file)."""
    if not assignment.rule.transforms and len(assignment.sources) == 1:
        span = arrays[assignment.sources[0]].stored_span()
        if span is not None:
            yield span
            return
    with outputs(assignment, arrays) as outs:
        yield outs[0]


def _init_array(name, spec, fill):
    if fill.scheme == "pytorch":
        raise ConvertersError(f"init scheme 'pytorch' needs the real module; write {name} with out=None or pick "
                              "an explicit scheme", rule=fill.where)
    t = torch.empty(spec.shape, dtype=torch.float32)
    init_tensor(t, fill.scheme, name=name, **fill.args)
    return t.numpy().astype(spec.dtype)


@torch.no_grad()
def _fill_module(plan, arrays, model, bar):
    sd = model.state_dict(keep_vars=True)
    for a in plan.assignments:
        for t, v in zip(a.targets, produce(a, arrays)):
            sd[t].copy_(to_torch(v))
        if bar is not None:
            bar.update(1)
    for name, value in plan.fills:
        sd[name].fill_(value)
    for name, fill in plan.inits:
        if fill.scheme != "pytorch":  # 'pytorch' keeps what the module's constructor chose
            init_tensor(sd[name].data, fill.scheme, name=name, **fill.args)
    return model


def _state_dict(plan, arrays, bar):
    sd = {}
    for a in plan.assignments:
        for t, v in zip(a.targets, produce(a, arrays)):
            sd[t] = to_torch(v)
        if bar is not None:
            bar.update(1)
    return sd
