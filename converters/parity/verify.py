"""`converters.verify`: the source model in its own framework against the
converted PyTorch model, on the same inputs.

    report = verify("net.onnx", "my_table.yaml")
    report.passed, report.outputs, report.first_divergent, report.layers
    print(report); report.to_json("parity.json"); report.plot("layers.png")

Order of work: resolve the set-up (converters.parity.setup: table, target, inputs, conventions,
tolerances); build the oracle (or take `oracle=`; `reference=` replays a reference .npz instead
of running the source framework); convert in memory (or take `model=`); make inputs in the
PyTorch convention and carry them to the source's (converters.parity.inputs); run both sides
(eval mode, no_grad); carry the source outputs to the PyTorch convention and compare each
(converters.parity.compare). When an output differs and `localise` is on, run both again with
activation taps and name the first divergent layer (converters.parity.localise).

Outputs are matched by name when the PyTorch model returns a dict whose keys are source output
names, else by order: the table's `parity.outputs` lists the source outputs in the order the
PyTorch model returns them (default: the source's own order; a dict's values count in its order).
Nested tuples are flattened ((out, (h, c)) -> out, h, c).

Exit codes of `convert verify` (converters/cli/verify.py): 0 pass, 1 parity failure, 2 usage error, oracle
unavailable, the source framework or the PyTorch model's forward crashed (its last lines are printed).
"""
from __future__ import annotations

import copy
import importlib
import os
import time

import numpy as np
import torch

from ..errors import ConvertersError, MappingError
from . import inputs as I
from .compare import compare
from .localise import (
    ActivationRecorder,
    compare_layers,
    judge_layers,
    likely_causes,
    pairs_from_conversion,
    resolve_pairs,
)
from .oracles import ORACLES
from .oracles.base import Oracle, OracleUnavailable, SourceModel
from .report import ParityReport
from .setup import ParitySetup


class TargetCrashed(ConvertersError):
    """The PyTorch model's forward raised: a broken model or inputs it cannot take, not a parity
    failure (exit 2, one line)."""


def verify(source, mapping, target=None, *, framework=None, architecture=None, inputs=None, n=None, seed=0,
           tolerance=None, localise=True, source_python=None, reference=None, dtype="float32", model=None,
           oracle=None, target_kwargs=None, reader_options=None, input_shape=None, inputs_convention="source",
           oracle_options=None, extra_inputs=None) -> ParityReport:
    """Run the source model and the converted model on the same inputs and compare (module docstring).

    source: the weight file the conversion reads. mapping: path, shipped name or Mapping.
    target: as for converters.convert. framework: the source framework (default: the table's).
    architecture: the file the framework needs beside the weights (prototxt, -symbol.json, a Keras
        model config or full model file for a weights-only Keras file).
    inputs: None (random, `n` samples from `seed`; n default: the table's parity.batch, else 2), an .npz
        path, or a dict/list of arrays, in the source's convention (inputs_convention="target": the
        PyTorch model's).
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
    setup = ParitySetup.create(source, mapping, target, framework=framework, architecture=architecture,
                               inputs=inputs, n=n, seed=seed, tolerance=tolerance, source_python=source_python,
                               dtype=dtype, target_kwargs=target_kwargs, reader_options=reader_options,
                               input_shape=input_shape, inputs_convention=inputs_convention,
                               oracle_options=oracle_options, extra_inputs=extra_inputs)
    return verify_setup(setup, model=model, oracle=oracle, reference=reference, localise=localise)


def verify_setup(setup: ParitySetup, *, model=None, oracle=None, reference=None, localise=True) -> ParityReport:
    """`verify` for a resolved set-up (the same keywords for what is not part of it)."""
    t_start = time.perf_counter()
    rep = ParityReport(source=setup.source_path, mapping=os.path.basename(setup.mapping.path),
                       framework=setup.framework)
    rep.tolerance = setup.tolerance.to_dict()
    rep.conventions = setup.conventions.describe()
    # the oracle first: an unavailable framework stops before a long conversion
    own_oracle = oracle is None
    if oracle is None:
        oracle = reference_oracle(reference) if reference is not None else oracle_for(setup.source_model())
    try:
        t0 = time.perf_counter()
        arrays, model, conv_report = _converted(setup, model)
        rep.timings["convert"] = time.perf_counter() - t0
        model = model.eval()
        if setup.inputs.dtype == "float64":
            model = copy.deepcopy(model).double()
        _run(rep, setup, model, oracle, arrays, conv_report, localise)
    finally:
        if own_oracle:
            oracle.close()
    rep.timings["total"] = time.perf_counter() - t_start
    return rep


def _converted(setup: ParitySetup, model):
    """(source arrays, converted model, conversion report); with `model`, a dry run for the report."""
    from ..convert import convert

    arrays = setup.open_arrays()
    m, framework = setup.mapping, setup.framework or None
    if model is None:
        model, conv_report = convert(arrays, m, setup.target, framework=framework, target_kwargs=setup.target_kwargs)
        if not isinstance(model, torch.nn.Module):
            raise ConvertersError("verify needs a PyTorch module: the table names no target model", rule=m.path,
                                  hint="give target='package.module:callable' (--target)")
    else:
        _, conv_report = convert(arrays, m, model, framework=framework, dry_run=True,
                                 allow_unused=True, allow_missing=True)
    return arrays, model, conv_report


def reference_oracle(path) -> Oracle:
    from .oracles.reference import ReferenceOracle

    return ReferenceOracle(SourceModel("reference", weights=os.fspath(path)))


def oracle_for(model: SourceModel) -> Oracle:
    """The registry's oracle for `model.framework` (converters.parity.oracles.ORACLES -> module.create)."""
    framework = model.framework
    name = ORACLES.get(framework)
    if name is None:
        raise OracleUnavailable(f"no oracle runs {framework!r} models",
                                hint=f"oracles: {', '.join(sorted(ORACLES))}; or verify against a reference "
                                     "file (--reference ref.npz) written where the framework runs")
    try:
        module = importlib.import_module(name)
    except ModuleNotFoundError as e:
        raise OracleUnavailable(f"the {framework} oracle cannot be imported here: {e}",
                                hint="pip install 'weightport[parity]'") from e
    return module.create(model)


def build_oracle(framework: str, weights, architecture=None, options=None) -> Oracle:
    """The oracle for `framework` running `weights` (+ `architecture`); see `oracle_for`."""
    if not framework:
        raise ConvertersError("the source framework is not known", hint="give --from (framework=...)")
    options = {k: v for k, v in (options or {}).items() if v is not None}
    return oracle_for(SourceModel(framework, weights=os.fspath(weights),
                                  architecture=os.fspath(architecture) if architecture else None, options=options))


# ---- the run ------------------------------------------------------------------------------------

def _run(rep, setup: ParitySetup, model, oracle, arrays, conv_report, localise):
    check_reached(setup, oracle, arrays, conv_report)
    rep.notes.extend(f"conversion: {w}" for w in getattr(conv_report, "warnings", None) or [])
    names = oracle.input_names()
    extra = setup.inputs.extra
    given, convention = None, None
    if setup.inputs.given is None and hasattr(oracle, "stored_inputs"):  # a reference answers for its own inputs
        stored = oracle.target_inputs()
        given, convention = (stored, "target") if stored else (oracle.stored_inputs(), "source")
    src_in, tgt_in = setup.make_inputs(names, model, given, convention)
    main = [k for k in names if k not in extra]
    rep.inputs = {k: {"shape": list(tgt_in[k].shape), "source_shape": list(src_in[k].shape),
                      "dtype": str(tgt_in[k].dtype)} for k in names}
    for k, item in extra.items():
        rep.inputs[k].update(fill=item["fill"], fed_to="both" if item["target_arg"] is not None else "source")
    args = _tensors(I.target_args(main, extra, tgt_in))
    rep.notes.extend(oracle.notes())

    t0 = time.perf_counter()
    src_out = oracle.run(src_in, output_taps(setup, oracle))
    rep.timings["source"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    out = forward(model, args)
    rep.timings["target"] = time.perf_counter() - t0

    order = setup.parity("outputs") or oracle.output_names()
    chains = activation_chains(setup, oracle, order)
    for name, ref, got in match_outputs(out, src_out, order, rep.notes):
        rep.outputs.append(compare(I.to_target(chains.get(name, setup.conventions.activations), ref), got,
                                   setup.tolerance, name=name))
    if not rep.outputs:
        raise ConvertersError("no output to compare: the PyTorch model returned nothing the source outputs match",
                              hint="list the source outputs in the table's parity.outputs")
    rep.passed = all(o["passed"] for o in rep.outputs)
    if localise and (localise == "always" or not rep.passed):
        t0 = time.perf_counter()
        _localise(rep, setup, model, oracle, arrays, conv_report, src_in, args, localise)
        rep.timings["localise"] = time.perf_counter() - t0


def forward(model, args):
    """The PyTorch model's answer (no_grad); a crash in its forward is a TargetCrashed, not a traceback."""
    try:
        with torch.no_grad():
            return model(*args)
    except Exception as e:  # a user's model may raise anything
        shapes = ", ".join("x".join(map(str, a.shape)) if isinstance(a, torch.Tensor) else "tuple" for a in args)
        raise TargetCrashed(f"the PyTorch model's forward failed on inputs [{shapes}]: {type(e).__name__}: "
                            f"{_one_line(e)}", hint="check the target model and the table's input shape "
                                                    "(--input-shape)") from None


def _one_line(e, limit=400) -> str:
    text = " ".join(str(e).split())
    return text if len(text) <= limit else text[:limit] + " ..."


def activation_chains(setup: ParitySetup, oracle, names) -> dict:
    """{source tensor name: chain to the PyTorch convention} for the names whose layout the oracle
    knows (an NHWC-input ONNX graph is NCHW inside); the others take the table's chain. A table's
    explicit parity.activations applies to every name."""
    if setup.conventions.explicit.get("activations"):
        return {}
    main_layouts = setup.input_layouts(oracle.input_names())
    chains = {}
    for name, layout in (oracle.activation_layouts(list(names), main_layouts) or {}).items():
        if layout:
            chains[name] = I.derive_activations({"layout": layout})
    return chains


def check_reached(setup: ParitySetup, oracle, arrays, conv_report) -> None:
    """Stop when the source graph as given does not compute layers whose weights the table
    converts (an MXNet symbol cut short): its outputs would be compared with another network's."""
    converted = list(dict.fromkeys(p.source_layer for p in pairs_from_conversion(conv_report, arrays)))
    unreached = oracle.unreached_layers(converted)
    if unreached:
        raise ConvertersError(f"the source graph's outputs {oracle.output_names()} do not reach the layer(s) "
                              f"{unreached[:8]} whose weights the table converts",
                              file=getattr(oracle, "symbol", None) or setup.architecture or setup.source_path,
                              hint="give the graph of the whole network (--architecture net-symbol.json), or "
                                   "leave these layers out of the table")


def output_taps(setup: ParitySetup, oracle) -> list:
    """The table's parity.outputs that are not outputs of the source graph, read as taps: a net
    whose last layer is not learned (SSD's DetectionOutput) is compared at the layers before it."""
    declared = set(oracle.output_names())
    wanted = [name for name in setup.parity("outputs") or [] if name not in declared]
    reachable = set(oracle.layer_order())
    unreachable = [name for name in wanted if name not in reachable]
    if unreachable:
        raise MappingError(f"parity.outputs names {unreachable}, which the source graph does not compute: its "
                           f"outputs are {sorted(declared)} and no layer of that name is among its "
                           f"{len(reachable)} layers", file=setup.architecture or setup.source_path,
                           hint="give a graph (symbol file, model) whose outputs reach these layers, or fix "
                                "parity.outputs")
    return wanted


def _tensors(args):
    # np.asarray(order="C"), not np.ascontiguousarray: a 0-d extra input (an RNN step count) stays 0-d
    return [tuple(_tensors(a)) if isinstance(a, tuple) else torch.from_numpy(np.asarray(a, order="C")) for a in args]


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
    """[(name, source array, torch array)]: a dict's entries by name when its keys are source
    outputs (only those in `order`, in its order), else by position in `order` (a dict's values in
    its own order)."""
    missing = [n for n in order if n not in src_out]
    if missing:
        raise MappingError(f"source output(s) {missing} not among the source's outputs {list(src_out)}",
                           hint="fix parity.outputs in the table")
    if isinstance(out, dict) and any(k in src_out for k in out):
        pairs = [(k, src_out[k], _np(out[k])) for k in order if k in out]
        unnamed = [k for k in out if k not in src_out]
        if unnamed:
            notes.append(f"PyTorch outputs {unnamed} have no source output of the same name")
        skipped = [k for k in out if k in src_out and k not in order]
        if skipped:
            notes.append(f"PyTorch outputs {skipped} are not in parity.outputs and were not compared")
        return pairs
    if isinstance(out, dict):
        notes.append(f"the PyTorch model's outputs {list(out)} are matched by position to {order}")
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


def _localise(rep, setup: ParitySetup, model, oracle, arrays, conv_report, src_in, args, localise=True):
    if isinstance(model, torch.jit.ScriptModule):
        why = "the PyTorch model is a TorchScript module, whose layers cannot be tapped"
        if localise == "always":  # asked for explicitly: a usage error, not a verdict
            raise ConvertersError(f"cannot localise: {why}", hint="verify the Python module it was scripted from, "
                                                                  "or pass --localise never")
        rep.notes.append(f"{why}: no layer was compared (verify the Python module it was scripted from to localise)")
        return
    pairs = pairs_from_conversion(conv_report, arrays, setup.parity("layers"), dict(model.named_modules()))
    source_order = list(oracle.layer_order())
    retap(pairs, oracle, source_order)
    unknown = sorted({p.source_layer for p in pairs} - set(source_order))
    if unknown:
        rep.notes.append(f"{len(unknown)} paired source layer(s) the {oracle.framework} oracle cannot tap: "
                         + ", ".join(unknown[:8]) + (" ..." if len(unknown) > 8 else ""))
    recorder = ActivationRecorder(model, {p.module for p in pairs})
    try:
        forward(model, args)
        resolved = resolve_pairs(pairs, recorder, source_order)
        if not resolved:
            rep.notes.append("no (source layer, module) pair could be tapped on both sides: nothing localised")
            return
        taps = [p.source_layer for p, _ in resolved]
        acts = oracle.run(src_in, taps)
        chains = activation_chains(setup, oracle, taps)
        default = setup.conventions.activations
        rep.layers = compare_layers(resolved, recorder, acts, lambda name, a: I.to_target(chains.get(name, default), a),
                                    setup.tolerance, oracle.fused_activations(taps))
    finally:
        recorder.close()
    rep.localised = True
    _name_first_divergent(rep, model, args, conv_report)


def retap(pairs, oracle, source_order) -> None:
    """Each weight pair's source layer replaced by the tap that shows what its module computes
    (Oracle.tap_for), when the oracle can tap that."""
    known = set(source_order)
    for p in pairs:
        tap = oracle.tap_for(p.source_layer) if p.origin == "weights" else p.source_layer
        if tap != p.source_layer and tap in known:
            p.source_layer = tap


def _name_first_divergent(rep, model, args, conv_report):
    """The first layer that differs and whose difference reaches the layers after it; a PASS names
    none, and differing rows that later layers contradict are reported as undecided, not blamed."""
    differing = [r["name"] for r in rep.layers if not r["passed"]]
    if rep.passed:
        if differing:
            rep.notes.append(f"layer(s) {', '.join(differing[:8])} differ although every output agrees: their "
                             "activations are probably not comparable (fused or reordered operations)")
        return
    first, unsure = judge_layers(rep.layers, model, args)
    if unsure:
        rep.notes.append("cannot tell whether " + ", ".join(f"{r['name']} ({r['unsure']})" for r in unsure[:8])
                         + " diverge: not counted as the first divergent layer")
    if first is None:
        rep.undetermined = bool(unsure)
        return
    i = rep.layers.index(first)
    rep.first_divergent = {"source_layer": first["name"], "module": first["module"], "metrics": first,
                           "likely_causes": likely_causes(first, rep.layers[:i], model,
                                                          getattr(conv_report, "bn_eps", {}) or {})}
