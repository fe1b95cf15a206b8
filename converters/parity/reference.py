"""`convert reference` (converters/cli/reference.py): record the source model's answers where its framework runs, for a
verify where it does not (`convert verify --reference ref.npz`).

The file format is described in converters/parity/oracles/reference.py. Inputs are made exactly
as `verify` makes them (the table's input description, seed, batch size) or taken from --inputs;
the source layers paired with PyTorch modules by the table are tapped too (`taps="mapped"`), so
a verify against the file can still name the first divergent layer.
"""
from __future__ import annotations

import json
import os

import numpy as np

from .oracles.reference import FORMAT, VERSION
from .setup import ParitySetup


def write_reference(source, mapping, out, *, framework=None, architecture=None, inputs=None, n=None, seed=0,
                    source_python=None, taps="mapped", reader_options=None, input_shape=None,
                    inputs_convention="source", oracle=None, force=False, target=None, target_kwargs=None,
                    extra_inputs=None) -> dict:
    """Run the source model on the verify inputs and write a reference .npz to `out`.
    taps: "mapped" (source layers the table pairs with modules), "all", "none", or a list.
    Returns the file's __meta__ dict."""
    setup = ParitySetup.create(source, mapping, target, framework=framework, architecture=architecture,
                               inputs=inputs, n=n, seed=seed, source_python=source_python, target_kwargs=target_kwargs,
                               reader_options=reader_options, input_shape=input_shape,
                               inputs_convention=inputs_convention, extra_inputs=extra_inputs)
    return write_reference_setup(setup, out, taps=taps, oracle=oracle, force=force)


def write_reference_setup(setup: ParitySetup, out, *, taps="mapped", oracle=None, force=False) -> dict:
    """`write_reference` for a resolved set-up."""
    from ..writer import atomic_output
    from .verify import oracle_for, output_taps

    if os.path.exists(out) and not force:
        from ..errors import OutputExistsError

        raise OutputExistsError("output exists", file=out, hint="pass --force to overwrite it")
    own = oracle is None
    if oracle is None:
        oracle = oracle_for(setup.source_model())
    try:
        names = oracle.input_names()
        model = _target_model(setup) if setup.inputs.extra else None  # its sizes shape the extra inputs
        src_in, tgt_in = setup.make_inputs(names, model)
        retapped = {}
        wanted = _wanted_taps(setup, oracle, taps, retapped)
        as_outputs = output_taps(setup, oracle)  # parity.outputs read at inner layers are stored as outputs
        results = oracle.run(src_in, list(dict.fromkeys(wanted + as_outputs)))
        outputs = oracle.output_names() + as_outputs
        layouts = oracle.activation_layouts(outputs + wanted, setup.input_layouts(names)) or {}
        fused = oracle.fused_activations(wanted) or {}
    finally:
        if own:
            oracle.close()
    meta = _meta(setup, names, outputs, wanted)
    meta.update(activation_layouts={k: v for k, v in layouts.items() if v}, fused_activations=fused,
                tap_for=retapped)
    entries = {"__meta__": np.array(json.dumps(meta))}
    entries.update({f"input/{k}": v for k, v in src_in.items()})
    entries.update({f"target_input/{k}": v for k, v in tgt_in.items()})
    entries.update({f"output/{k}": np.asarray(results[k]) for k in outputs})
    entries.update({f"tap/{k}": np.asarray(results[k]) for k in wanted if k in results})
    with atomic_output(out, force=True) as tmp:
        with open(tmp, "wb") as fh:
            np.savez_compressed(fh, **entries)
    return meta


def _wanted_taps(setup: ParitySetup, oracle, taps, retapped: dict) -> list:
    """The layers to record; `retapped` receives {reader layer: tap} where Oracle.tap_for moved one."""
    from ..convert import convert
    from .localise import pairs_from_conversion
    from .verify import retap

    order = list(oracle.layer_order())
    if taps == "all":
        return order
    if taps == "none":
        return []
    if taps != "mapped":
        return list(taps)
    arrays = setup.open_arrays()
    _, rep = convert(arrays, setup.mapping, setup.target, framework=setup.framework or None,
                     target_kwargs=setup.target_kwargs, dry_run=True, allow_unused=True, allow_missing=True)
    pairs = pairs_from_conversion(rep, arrays, setup.parity("layers"))
    layers = [p.source_layer for p in pairs]
    retap(pairs, oracle, order)
    retapped.update({old: p.source_layer for old, p in zip(layers, pairs) if old != p.source_layer})
    return [name for name in order if name in {p.source_layer for p in pairs}]


def _meta(setup: ParitySetup, names, outputs, wanted) -> dict:
    from ..provenance import record

    return {**record(setup.source_path, setup.framework, setup.mapping), "format": FORMAT, "version": VERSION,
            "framework": setup.framework, "seed": setup.inputs.seed, "n": setup.inputs.n, "input_names": names,
            "output_names": outputs, "layer_order": wanted}


def _target_model(setup: ParitySetup):
    """The (untrained) target model, or None when the table names none: only its sizes are read."""
    import torch

    from ..target import build_model, resolve_target

    if isinstance(setup.target, torch.nn.Module):
        return setup.target
    spec = resolve_target(setup.target, setup.mapping, setup.target_kwargs)
    return build_model(spec) if spec is not None else None
