"""`converters.convert` and the `convert --from F --map TABLE IN OUT` command.

Order of work: open the source lazily, load the table, describe the target (a meta-device model:
no memory), plan and check coverage, and only then read, transform and write the arrays.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np
import torch

from . import provenance as provenance_of
from .arrays import ArrayFile
from .errors import ConvertersError, CoverageError, OutputExistsError
from .initializers import init_tensor
from .mapping import spec as mapping_spec
from .mapping.materialise import produce
from .mapping.plan import make_plan
from .target import build_model, describe, load_factory, to_torch
from .writer import output_kind, save_pth, stream_safetensors


def _progress(total, enabled, desc):
    if not enabled:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return None
    return tqdm(total=total, desc=desc, unit="tensor", leave=False)


def convert(source, mapping, target=None, out=None, *, framework=None, target_kwargs=None,
            allow_unused=False, allow_missing=False, dry_run=False, force=False, progress=None,
            reader_options=None):
    """Convert `source` (path or opened ArrayFile) with `mapping` (path, shipped name or Mapping).

    target: an nn.Module to fill, 'package.module:callable', or None for the table's own target.
    out: None to fill the module (returned) or build a state dict (returned when no target);
         a `.pth` / `.safetensors` path to write (the path is returned).
    Returns (result, report). Raises CoverageError (with `.report`) when anything would be
    dropped or left unfilled, unless allowed.
    """
    m = mapping if isinstance(mapping, mapping_spec.Mapping) else mapping_spec.load(mapping)
    arrays = source if isinstance(source, ArrayFile) else _open(source, framework or m.source, reader_options)
    target_spec = _target_spec(target, m, target_kwargs)
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

    provenance = provenance_of.start(arrays, m) if out is not None else None
    bar = _progress(len(plan.assignments) + len(plan.fills) + len(plan.inits), progress, "converting")
    try:
        if out is None:
            result = _fill_module(plan, arrays, model, bar) if model is not None else _state_dict(plan, arrays, bar)
        elif output_kind(out) == "safetensors":
            stream_safetensors(_entries(plan, arrays, targets), out, provenance, force, bar)
            result = out
        else:
            if model is not None and not _is_meta(model):
                sd, meta = _fill_module(plan, arrays, model, bar).state_dict(), None
            else:
                sd, meta = {}, None
                for name, shape, dtype, make in _entries(plan, arrays, targets):
                    sd[name] = to_torch(make())
                    if bar is not None:
                        bar.update(1)
            save_pth(sd, out, provenance_of.resolve(provenance), force, meta)
            result = out
    finally:
        if bar is not None:
            bar.close()
    rep.output = os.fspath(out) if out is not None else None
    return result, rep


def _open(source, framework, options):
    from . import read

    return read(source, framework, **(options or {}))


def _target_spec(target, m, kwargs):
    if isinstance(target, torch.nn.Module):
        return None
    if isinstance(target, str):
        load_factory(target)  # fail early on a bad name
        return {"model": target, "kwargs": kwargs or {}}
    if m.target:
        spec = dict(m.target)
        if kwargs:
            spec["kwargs"] = {**(spec.get("kwargs") or {}), **kwargs}
        return spec
    return None


def _is_meta(model) -> bool:
    return any(t.is_meta for t in model.state_dict().values())


def _entries(plan, arrays, targets):
    """(name, shape, dtype, produce) for every output tensor, in target order when known."""
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


# ---- CLI ----------------------------------------------------------------------------------------

def cmd_convert(argv) -> int:
    from .readers import FRAMEWORKS

    p = argparse.ArgumentParser(prog="convert", description="Convert a weight file with a mapping table.")
    p.add_argument("input")
    p.add_argument("output", nargs="?", help=".pth/.pt or .safetensors (omit with --dry-run)")
    p.add_argument("--from", dest="framework", choices=FRAMEWORKS)
    p.add_argument("--map", required=True, help="mapping table: a path or a shipped name (see `convert maps`)")
    p.add_argument("--target", help="package.module:callable (overrides the table's target)")
    p.add_argument("--target-kwargs", type=json.loads, default=None, help="JSON object of keyword arguments")
    p.add_argument("--dry-run", action="store_true", help="print the plan, check shapes, read no data")
    p.add_argument("--force", action="store_true", help="overwrite an existing output")
    p.add_argument("--allow-unused", action="store_true", help="accept source arrays no rule uses")
    p.add_argument("--allow-missing", action="store_true", help="accept target tensors nothing fills")
    p.add_argument("--report", metavar="JSON", help="write the coverage report as JSON")
    p.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                   help="reader option, e.g. prototxt=deploy.prototxt or symbol=net-symbol.json")
    p.add_argument("--verify", action="store_true",
                   help="after writing, run the source framework and the written model on the same inputs "
                        "(convert verify); exit 1 when they differ")
    p.add_argument("--source-python", metavar="PATH", help="with --verify: interpreter with the source framework")
    p.add_argument("--architecture", help="with --verify: the file the source framework needs (prototxt, symbol)")
    p.add_argument("-q", "--quiet", action="store_true")
    args = p.parse_args(argv)
    if args.verify and args.dry_run:
        p.error("--verify needs a written output, not --dry-run")
    if not args.dry_run and not args.output:
        p.error("give an output path (or --dry-run)")
    options = dict(o.split("=", 1) for o in args.option if "=" in o)
    rep = None
    try:
        _, rep = convert(args.input, args.map, args.target, None if args.dry_run else args.output,
                         framework=args.framework, target_kwargs=args.target_kwargs,
                         allow_unused=args.allow_unused, allow_missing=args.allow_missing, dry_run=args.dry_run,
                         force=args.force, progress=not args.quiet and sys.stderr.isatty(), reader_options=options)
    except CoverageError as e:
        rep = e.report
        print(rep.problem_table(), file=sys.stderr)
        raise
    finally:
        if args.report and rep is not None:
            with open(args.report, "w") as fh:
                json.dump(rep.to_dict(), fh, indent=1)
    if args.dry_run:
        print(rep.plan_table())
    if not args.quiet:
        print(str(rep) if not args.dry_run else f"dry run: {rep.summary()}")
        if rep.output:
            print(f"wrote {rep.output}")
    if args.verify:
        return _verify_written(args, options)
    return 0


def _verify_written(args, options) -> int:
    """`--verify`: the written file, loaded into the target, against the source framework."""
    from .parity.verify import emit, load_converted, verify

    model = load_converted(args.output, args.map, args.target, args.target_kwargs)
    rep = verify(args.input, args.map, args.target, framework=args.framework, model=model, reader_options=options,
                 source_python=args.source_python, architecture=args.architecture)
    emit(rep, args)
    return rep.exit_code


def cmd_maps(argv) -> int:
    argparse.ArgumentParser(prog="convert maps", description="List the shipped mapping tables.").parse_args(argv)
    for name, path in mapping_spec.shipped_tables().items():
        try:
            m = mapping_spec.load(path)
            desc = (m.description or "").strip().splitlines()[0] if m.description else ""
            print(f"{name:32s} {m.source or '?':11s} -> {(m.target or {}).get('model', '(state dict)'):40s} {desc}")
        except ConvertersError as e:
            print(f"{name:32s} BROKEN: {e}")
    return 0
