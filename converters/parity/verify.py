"""`converters.verify` and `convert verify`: the source model in its own framework against the
converted PyTorch model, on the same inputs.

    report = verify("net.onnx", "my_table.yaml")
    report.passed, report.outputs, report.first_divergent, report.layers
    print(report); report.to_json("parity.json"); report.plot("layers.png")

Order of work: load the table; convert in memory (or take `model=`); build the oracle (or take
`oracle=`; `reference=` replays a reference .npz instead of running the source framework); make
inputs in the PyTorch convention and carry them to the source's (converters.parity.inputs); run
both sides (eval mode, no_grad); carry the source outputs to the PyTorch convention and compare
each (converters.parity.compare). When an output differs and `localise` is on, run both again
with activation taps and name the first divergent layer (converters.parity.localise).

Outputs are matched by name when the PyTorch model returns a dict, else by order: the table's
`parity.outputs` lists the source outputs in the order the PyTorch model returns them (default:
the source's own order). Nested tuples are flattened ((out, (h, c)) -> out, h, c).

Exit codes of `convert verify`: 0 pass, 1 parity failure, 2 usage error, oracle unavailable or
the source framework crashed (its last lines are printed).
"""
from __future__ import annotations

import argparse
import copy
import importlib
import json
import os
import sys
import time

import numpy as np
import torch

from ..errors import ConvertersError, MappingError
from ..mapping import spec as mapping_spec
from . import inputs as I
from .compare import Tolerance, compare
from .localise import ActivationRecorder, compare_layers, likely_causes, pairs_from_conversion, resolve_pairs
from .oracles import ORACLES
from .oracles.base import Oracle, OracleUnavailable, SourceModel
from .report import ParityReport

ARCHITECTURE_OPTIONS = ("prototxt", "symbol", "architecture")


def verify(source, mapping, target=None, *, framework=None, architecture=None, inputs=None, n=2, seed=0,
           tolerance=None, localise=True, source_python=None, reference=None, dtype="float32", model=None,
           oracle=None, target_kwargs=None, reader_options=None, input_shape=None, inputs_convention="source",
           oracle_options=None, extra_inputs=None) -> ParityReport:
    """Run the source model and the converted model on the same inputs and compare (module docstring).

    source: the weight file the conversion reads. mapping: path, shipped name or Mapping.
    target: as for converters.convert. framework: the source framework (default: the table's).
    architecture: the file the framework needs beside the weights (prototxt, -symbol.json).
    inputs: None (random, `n` samples from `seed`), an .npz path, or a dict/list of arrays, in
        the source's convention (inputs_convention="target": the PyTorch model's).
    tolerance: None (defaults), a number (atol) or {atol, rtol, cosine, topk}; overrides the
        table's parity.tolerance key by key.
    localise: True (when an output differs), "always", or False.
    reference: a reference .npz (convert reference) replayed instead of running the framework.
    dtype: "float32", or "float64" to run the PyTorch side in double precision.
    model: an already converted module (its weights are not touched); oracle: an Oracle to use.
    input_shape: the input shape in the layout of the table's `input:` (when the table has none).
    extra_inputs: {source input name: {shape, fill, target_arg}}: source inputs beyond the main one
        (initial RNN states), made from a fill and fed to the source only, or also to the PyTorch
        model at position `target_arg`; overrides the table's parity.extra_inputs input by input.
    """
    t_start = time.perf_counter()
    m = mapping if isinstance(mapping, mapping_spec.Mapping) else mapping_spec.load(mapping)
    framework = framework or m.source
    reader_options = dict(reader_options or {})
    rep = ParityReport(source=os.fspath(source) if not hasattr(source, "path") else source.path,
                       mapping=os.path.basename(m.path), framework=framework or "")
    tol = Tolerance.from_any((m.parity or {}).get("tolerance")).merged(
        Tolerance.from_any(tolerance).to_dict() if tolerance is not None else None)
    rep.tolerance = tol.to_dict()
    conv = I.Conventions.from_mapping(m)
    rep.conventions = conv.describe()
    if dtype not in ("float32", "float64"):
        raise ConvertersError(f"dtype is float32 or float64, not {dtype!r}")

    # the oracle first: an unavailable framework stops before a long conversion
    own_oracle = oracle is None
    if oracle is None:
        if reference is not None:
            from .oracles.reference import ReferenceOracle

            oracle = ReferenceOracle(SourceModel("reference", weights=os.fspath(reference)))
        else:
            oracle = build_oracle(framework, source if not hasattr(source, "path") else source.path,
                                  architecture or _architecture_from(reader_options),
                                  {"source_python": source_python, **(oracle_options or {})})
    # the converted model, and the conversion report that pairs source layers with modules
    t0 = time.perf_counter()
    try:
        arrays, model, conv_report = _converted(source, m, target, model, framework, target_kwargs, reader_options)
    except BaseException:
        if own_oracle:
            oracle.close()
        raise
    rep.timings["convert"] = time.perf_counter() - t0
    model = model.eval()
    if dtype == "float64":
        model = copy.deepcopy(model).double()
    try:
        extra = I.merged_extra_inputs((m.parity or {}).get("extra_inputs"), extra_inputs)
        _run(rep, m, conv, model, oracle, arrays, conv_report, tol, inputs, n, seed, dtype, localise,
             input_shape, inputs_convention, extra)
    finally:
        if own_oracle:
            oracle.close()
    rep.timings["total"] = time.perf_counter() - t_start
    return rep


def _converted(source, m, target, model, framework, target_kwargs, reader_options):
    """(source arrays, converted model, conversion report); with `model`, a dry run for the report."""
    from ..convert import _open, convert

    arrays = source if hasattr(source, "values") and hasattr(source, "path") else _open(source, framework, reader_options)
    if model is None:
        model, conv_report = convert(arrays, m, target, framework=framework, target_kwargs=target_kwargs)
        if not isinstance(model, torch.nn.Module):
            raise ConvertersError("verify needs a PyTorch module: the table names no target model", rule=m.path,
                                  hint="give target='package.module:callable' (--target)")
    else:
        _, conv_report = convert(arrays, m, model, framework=framework, dry_run=True,
                                 allow_unused=True, allow_missing=True)
    return arrays, model, conv_report


def _architecture_from(options: dict):
    for key in ARCHITECTURE_OPTIONS:
        if options.get(key):
            return options[key]
    return None


def build_oracle(framework: str, weights, architecture=None, options=None) -> Oracle:
    """The registry's oracle for `framework` (converters.parity.oracles.ORACLES -> module.create)."""
    if not framework:
        raise ConvertersError("the source framework is not known", hint="give --from (framework=...)")
    name = ORACLES.get(framework)
    if name is None:
        raise OracleUnavailable(f"no oracle runs {framework!r} models",
                                hint=f"oracles: {', '.join(sorted(ORACLES))}; or verify against a reference "
                                     "file (--reference ref.npz) written where the framework runs")
    try:
        module = importlib.import_module(name)
    except ModuleNotFoundError as e:
        raise OracleUnavailable(f"the {framework} oracle cannot be imported here: {e}",
                                hint="pip install 'converters[parity]'") from e
    options = {k: v for k, v in (options or {}).items() if v is not None}
    return module.create(SourceModel(framework, weights=os.fspath(weights),
                                     architecture=os.fspath(architecture) if architecture else None, options=options))


# ---- the run ------------------------------------------------------------------------------------

def _run(rep, m, conv, model, oracle, arrays, conv_report, tol, inputs, n, seed, dtype, localise, input_shape,
         inputs_convention, extra=None):
    names = oracle.input_names()
    extra = extra or {}
    if inputs is None and hasattr(oracle, "stored_inputs"):  # a reference file answers for its own inputs only
        stored = oracle.target_inputs()
        inputs, inputs_convention = (stored, "target") if stored else (oracle.stored_inputs(), "source")
    src_in, tgt_in = all_inputs(conv, names, extra, model, inputs, n, seed, dtype, input_shape, inputs_convention)
    main = [k for k in names if k not in extra]
    rep.inputs = {k: {"shape": list(tgt_in[k].shape), "source_shape": list(src_in[k].shape),
                      "dtype": str(tgt_in[k].dtype)} for k in names}
    for k, item in extra.items():
        rep.inputs[k].update(fill=item["fill"], fed_to="both" if item["target_arg"] is not None else "source")
    args = _tensors(I.target_args(main, extra, tgt_in))

    t0 = time.perf_counter()
    src_out = oracle.run(src_in, output_taps(m, oracle))
    rep.timings["source"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    with torch.no_grad():
        out = model(*args)
    rep.timings["target"] = time.perf_counter() - t0

    pairs = match_outputs(out, src_out, (m.parity or {}).get("outputs") or oracle.output_names(), rep.notes)
    for name, ref, got in pairs:
        rep.outputs.append(compare(I.to_target(conv.activations, ref), got, tol, name=name))
    if not rep.outputs:
        raise ConvertersError("no output to compare: the PyTorch model returned nothing the source outputs match",
                              hint="list the source outputs in the table's parity.outputs")
    rep.passed = all(o["passed"] for o in rep.outputs)
    if localise and (localise == "always" or not rep.passed):
        t0 = time.perf_counter()
        _localise(rep, m, conv, model, oracle, arrays, conv_report, tol, src_in, args)
        rep.timings["localise"] = time.perf_counter() - t0


def output_taps(m, oracle) -> list:
    """The table's parity.outputs that are not outputs of the source graph, read as taps: a net
    whose last layer is not learned (SSD's DetectionOutput) is compared at the layers before it."""
    declared = set(oracle.output_names())
    return [name for name in (m.parity or {}).get("outputs") or [] if name not in declared]


def _tensors(args):
    return [tuple(_tensors(a)) if isinstance(a, tuple) else torch.from_numpy(np.ascontiguousarray(a)) for a in args]


def all_inputs(conv, names, extra, model, inputs, n, seed, dtype, input_shape=None, convention="source"):
    """make_inputs for the main inputs, plus the declared extra inputs (parity.extra_inputs): taken
    from `inputs` when it holds every input, else made from their fill. Both dicts hold them all."""
    unknown = [k for k in extra if k not in names]
    if unknown:
        raise MappingError(f"parity.extra_inputs names {unknown}, which the source model does not take; "
                           f"its inputs are {names}")
    main = [k for k in names if k not in extra]
    given_extra = None
    if inputs is not None and extra:
        try:
            every = I.load_inputs(inputs, names)
        except ConvertersError:
            every = None
        if every is not None:
            given_extra = {k: every[k] for k in extra}
            inputs = {k: every[k] for k in main}
    src, tgt = make_inputs(conv, main, inputs, n, seed, dtype, input_shape, convention)
    if extra:
        if given_extra is None:
            first = src[main[0]].shape if main else None
            given_extra = I.make_extra_inputs(extra, I.shape_names(model, first, conv.source.get("layout")), seed)
        for k, v in given_extra.items():
            src[k] = np.ascontiguousarray(v, np.float32)
            tgt[k] = np.ascontiguousarray(v, np.float64 if dtype == "float64" else np.float32)
    return src, tgt


def make_inputs(conv, names, inputs, n, seed, dtype, input_shape=None, convention="source"):
    """(source-convention inputs, target-convention inputs), both {input name: array}."""
    if inputs is None:
        if len(names) != 1:
            raise ConvertersError(f"the model takes {len(names)} inputs {names}; random inputs are made for one",
                                  hint="give the inputs (--inputs file.npz), or declare the source-only ones "
                                       "(initial states) in the table's parity.extra_inputs")
        x = conv_target = I.make_target_input(conv, n, seed, "float32", input_shape)
        tgt = {names[0]: conv_target}
        src = {names[0]: I.to_source(conv.source_input, x)}
    else:
        given = I.load_inputs(inputs, names)
        if convention == "target":
            tgt = {k: np.asarray(v, np.float32) for k, v in given.items()}
            src = {k: I.to_source(conv.source_input, v) for k, v in tgt.items()}
        elif convention == "source":
            src = {k: np.asarray(v, np.float32) for k, v in given.items()}
            tgt = {k: I.from_source(conv.source_input, v) for k, v in src.items()}
        else:
            raise ConvertersError(f"inputs_convention is 'source' or 'target', not {convention!r}")
    src = {k: np.ascontiguousarray(v, np.float32) for k, v in src.items()}
    tgt = {k: np.ascontiguousarray(v, np.float64 if dtype == "float64" else np.float32) for k, v in tgt.items()}
    return src, tgt


def flatten_outputs(out) -> list:
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, (tuple, list)):
        return [t for o in out for t in flatten_outputs(o)]
    if out is None:
        return []
    if hasattr(out, "keys"):
        return [t for o in out.values() for t in flatten_outputs(o)]
    raise ConvertersError(f"the PyTorch model returned a {type(out).__name__}; verify compares tensors")


def match_outputs(out, src_out: dict, order: list, notes: list) -> list:
    """[(name, source array, torch array)]: by name for a dict, else by position in `order`."""
    missing = [n for n in order if n not in src_out]
    if missing:
        raise MappingError(f"source output(s) {missing} not among the source's outputs {list(src_out)}",
                           hint="fix parity.outputs in the table")
    if isinstance(out, dict):
        pairs = [(k, src_out[k], _np(v)) for k, v in out.items() if k in src_out]
        extra = [k for k in out if k not in src_out]
        if extra:
            notes.append(f"PyTorch outputs {extra} have no source output of the same name")
        return pairs
    got = flatten_outputs(out)
    pairs = [(name, src_out[name], _np(t)) for name, t in zip(order, got)]
    if len(got) > len(order):
        notes.append(f"the PyTorch model returns {len(got)} outputs, the source {len(order)}: "
                     f"the first {len(order)} were compared")
    elif len(order) > len(got):
        notes.append(f"source outputs {order[len(got):]} have no PyTorch counterpart and were not compared")
    return pairs


def _np(t):
    return t.detach().to(torch.float64).cpu().numpy() if isinstance(t, torch.Tensor) else np.asarray(t)


def _localise(rep, m, conv, model, oracle, arrays, conv_report, tol, src_in, args):
    pairs = pairs_from_conversion(conv_report, arrays, (m.parity or {}).get("layers"),
                                  dict(model.named_modules()))
    source_order = list(oracle.layer_order())
    unknown = sorted({p.source_layer for p in pairs} - set(source_order))
    if unknown:
        rep.notes.append(f"{len(unknown)} paired source layer(s) the {oracle.framework} oracle cannot tap: "
                         + ", ".join(unknown[:8]) + (" ..." if len(unknown) > 8 else ""))
    recorder = ActivationRecorder(model, {p.module for p in pairs})
    try:
        with torch.no_grad():
            model(*args)
        resolved = resolve_pairs(pairs, recorder, source_order)
        if not resolved:
            rep.notes.append("no (source layer, module) pair could be tapped on both sides: nothing localised")
            return
        acts = oracle.run(src_in, [p.source_layer for p, _ in resolved])
        rep.layers = compare_layers(resolved, recorder, acts, lambda a: I.to_target(conv.activations, a), tol)
    finally:
        recorder.close()
    rep.localised = True
    for i, row in enumerate(rep.layers):
        if not row["passed"]:
            rep.first_divergent = {"source_layer": row["name"], "module": row["module"], "metrics": row,
                                   "likely_causes": likely_causes(row, rep.layers[:i], model)}
            break


# ---- CLI ----------------------------------------------------------------------------------------

def add_common_arguments(p):
    from ..readers import FRAMEWORKS

    p.add_argument("input", help="the source weight file (what the conversion reads)")
    p.add_argument("--from", dest="framework", choices=sorted(set(FRAMEWORKS) | set(ORACLES)))
    p.add_argument("--map", required=True, help="mapping table: a path or a shipped name (see `convert maps`)")
    p.add_argument("--architecture", help="the file the source framework needs beside the weights "
                                          "(deploy.prototxt, net-symbol.json)")
    p.add_argument("--option", action="append", default=[], metavar="KEY=VALUE", help="reader option")
    p.add_argument("--source-python", metavar="PATH",
                   help="Python interpreter with the source framework (MXNet); default $CONVERTERS_SOURCE_PYTHON "
                        "or .venv-mxnet/bin/python")
    p.add_argument("--inputs", metavar="NPZ", help="inputs (.npz, named after the model's inputs or in order)")
    p.add_argument("--inputs-convention", choices=("source", "target"), default="source",
                   help="the --inputs arrays are laid out for the source model (default) or the PyTorch model")
    p.add_argument("-n", type=int, default=2, help="random inputs: batch size (default 2)")
    p.add_argument("--seed", type=int, default=0, help="random inputs: seed (default 0)")
    p.add_argument("--input-shape", type=lambda s: [int(v) for v in s.replace("x", ",").split(",")],
                   help="input shape in the table's input layout, e.g. 1,224,224,3")


def cmd_verify(argv) -> int:
    p = argparse.ArgumentParser(prog="convert verify", description="Run the source model in its framework and the "
                                "converted PyTorch model on the same inputs; compare every output. Exit 0 pass, "
                                "1 parity failure, 2 usage error or source framework unavailable/crashed.")
    add_common_arguments(p)
    p.add_argument("--target", help="package.module:callable (overrides the table's target)")
    p.add_argument("--target-kwargs", type=json.loads, default=None, help="JSON object of keyword arguments")
    p.add_argument("--converted", metavar="PTH", help="verify this converted .pth/.safetensors instead of "
                                                      "converting in memory")
    p.add_argument("--reference", metavar="NPZ", help="replay a reference file (convert reference) instead of "
                                                      "running the source framework")
    p.add_argument("--atol", type=float)
    p.add_argument("--rtol", type=float)
    p.add_argument("--cosine", type=float)
    p.add_argument("--topk", type=int)
    p.add_argument("--float64", action="store_true", help="run the PyTorch side in float64")
    p.add_argument("--localise", choices=("auto", "always", "never"), default="auto",
                   help="compare intermediate activations when an output differs (auto), always, or never")
    p.add_argument("--json", metavar="PATH", help="write the report as JSON ('-' for stdout)")
    p.add_argument("--html", metavar="PATH", help="write the report as HTML")
    p.add_argument("--plot", metavar="PNG", help="write the per-layer error plot (needs matplotlib)")
    p.add_argument("-q", "--quiet", action="store_true", help="print only the verdict line")
    args = p.parse_args(argv)
    rep = run_from_args(args)
    return rep.exit_code


def run_from_args(args, model=None) -> ParityReport:
    options = _options(args.option)
    tolerance = {k: getattr(args, k, None) for k in ("atol", "rtol", "cosine", "topk")}
    tolerance = {k: v for k, v in tolerance.items() if v is not None} or None
    if model is None and getattr(args, "converted", None):
        model = load_converted(args.converted, args.map, getattr(args, "target", None), getattr(args, "target_kwargs", None))
    localise = {"auto": True, "always": "always", "never": False}[getattr(args, "localise", "auto")]
    rep = verify(args.input, args.map, getattr(args, "target", None), framework=args.framework,
                 architecture=args.architecture, inputs=args.inputs, n=args.n, seed=args.seed, tolerance=tolerance,
                 localise=localise, source_python=args.source_python, reference=getattr(args, "reference", None),
                 dtype="float64" if getattr(args, "float64", False) else "float32", model=model,
                 target_kwargs=getattr(args, "target_kwargs", None), reader_options=options,
                 input_shape=args.input_shape, inputs_convention=args.inputs_convention)
    emit(rep, args)
    return rep


def emit(rep: ParityReport, args) -> None:
    if getattr(args, "json", None):
        if args.json == "-":
            print(rep.to_json())
        else:
            rep.to_json(args.json)
    if getattr(args, "html", None):
        with open(args.html, "w") as fh:
            fh.write(rep._repr_html_())
    if getattr(args, "plot", None):
        rep.plot(args.plot)
    if getattr(args, "json", None) != "-":
        text = str(rep) if not getattr(args, "quiet", False) else str(rep).splitlines()[0]
        print(text, file=sys.stdout if rep.passed else sys.stderr)


def _options(pairs) -> dict:
    bad = [o for o in pairs if "=" not in o]
    if bad:
        raise ConvertersError(f"--option takes KEY=VALUE, not {bad[0]!r}")
    return dict(o.split("=", 1) for o in pairs)


def load_converted(path, mapping, target=None, target_kwargs=None) -> torch.nn.Module:
    """The target module holding a converted .pth / .safetensors (weights only, no pickled code)."""
    from ..convert import _target_spec
    from ..target import build_model

    m = mapping_spec.load(mapping)
    spec = _target_spec(target, m, target_kwargs)
    if spec is None:
        raise ConvertersError("the table names no target model to load the converted weights into",
                              hint="give --target package.module:callable")
    model = build_model(spec)
    path = os.fspath(path)
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        sd = load_file(path)
    else:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    missing, unexpected = model.load_state_dict(sd, strict=False)
    if missing or unexpected:
        raise ConvertersError(f"the converted file does not fit the target: missing {missing[:5]}, "
                              f"unexpected {unexpected[:5]}", file=path)
    return model
