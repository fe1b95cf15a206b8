"""`convert reference`: record the source model's answers where its framework runs, for a
verify where it does not (`convert verify --reference ref.npz`).

The file format is described in converters/parity/oracles/reference.py. Inputs are made exactly
as `verify` makes them (the table's input description, seed, batch size) or taken from --inputs;
the source layers paired with PyTorch modules by the table are tapped too (`taps="mapped"`), so
a verify against the file can still name the first divergent layer.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os

import numpy as np

from .. import __version__
from ..mapping import spec as mapping_spec
from . import inputs as I
from .oracles.reference import FORMAT, VERSION


def write_reference(source, mapping, out, *, framework=None, architecture=None, inputs=None, n=2, seed=0,
                    source_python=None, taps="mapped", reader_options=None, input_shape=None,
                    inputs_convention="source", oracle=None, force=False, target=None, target_kwargs=None,
                    extra_inputs=None) -> dict:
    """Run the source model on the verify inputs and write a reference .npz to `out`.
    taps: "mapped" (source layers the table pairs with modules), "all", "none", or a list.
    Returns the file's __meta__ dict."""
    from ..convert import _open, convert
    from ..provenance import sha256_files, source_files
    from ..writer import atomic_output
    from .localise import pairs_from_conversion
    from .verify import _architecture_from, all_inputs, build_oracle, output_taps

    m = mapping if isinstance(mapping, mapping_spec.Mapping) else mapping_spec.load(mapping)
    framework = framework or m.source
    reader_options = dict(reader_options or {})
    if os.path.exists(out) and not force:
        from ..errors import OutputExistsError

        raise OutputExistsError("output exists", file=out, hint="pass --force to overwrite it")
    conv = I.Conventions.from_mapping(m)
    own = oracle is None
    if oracle is None:
        oracle = build_oracle(framework, source, architecture or _architecture_from(reader_options),
                              {"source_python": source_python})
    try:
        names = oracle.input_names()
        extra = I.merged_extra_inputs((m.parity or {}).get("extra_inputs"), extra_inputs)
        model = _target_model(m, target, target_kwargs) if extra else None  # its sizes shape the extra inputs
        src_in, tgt_in = all_inputs(conv, names, extra, model, inputs, n, seed, "float32", input_shape,
                                    inputs_convention)
        order = list(oracle.layer_order())
        if taps == "all":
            wanted = order
        elif taps == "none":
            wanted = []
        elif taps == "mapped":
            arrays = _open(source, framework, reader_options)
            _, rep = convert(arrays, m, target, framework=framework, target_kwargs=target_kwargs, dry_run=True,
                             allow_unused=True, allow_missing=True)
            layers = {p.source_layer for p in pairs_from_conversion(rep, arrays, (m.parity or {}).get("layers"))}
            wanted = [name for name in order if name in layers]
        else:
            wanted = list(taps)
        as_outputs = output_taps(m, oracle)  # parity.outputs read at inner layers are stored as outputs
        results = oracle.run(src_in, list(dict.fromkeys(wanted + as_outputs)))
        outputs = oracle.output_names() + as_outputs
    finally:
        if own:
            oracle.close()
    meta = {"format": FORMAT, "version": VERSION, "framework": framework,
            "source_file": os.path.basename(os.fspath(source)),
            "source_sha256": sha256_files(source_files(source)) if source_files(source) else "",
            "mapping": os.path.basename(m.path), "mapping_sha256": m.sha256, "seed": seed, "n": n,
            "input_names": names, "output_names": outputs, "layer_order": wanted,
            "tool": f"converters {__version__}",
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    entries = {"__meta__": np.array(json.dumps(meta))}
    entries.update({f"input/{k}": v for k, v in src_in.items()})
    entries.update({f"target_input/{k}": v for k, v in tgt_in.items()})
    entries.update({f"output/{k}": np.asarray(results[k]) for k in outputs})
    entries.update({f"tap/{k}": np.asarray(results[k]) for k in wanted if k in results})
    with atomic_output(out, force=True) as tmp:
        with open(tmp, "wb") as fh:
            np.savez_compressed(fh, **entries)
    return meta


def _target_model(m, target, target_kwargs):
    """The (untrained) target model, or None when the table names none: only its sizes are read."""
    import torch

    from ..convert import _target_spec
    from ..target import build_model

    if isinstance(target, torch.nn.Module):
        return target
    spec = _target_spec(target, m, target_kwargs)
    return build_model(spec) if spec is not None else None


def cmd_reference(argv) -> int:
    from .verify import _options, add_common_arguments

    p = argparse.ArgumentParser(prog="convert reference", description="Run the source model in its own framework "
                                "and write its inputs, outputs and paired-layer activations to a reference .npz, "
                                "for `convert verify --reference` where the framework is not installed.")
    add_common_arguments(p)
    p.add_argument("output", help="the reference .npz to write")
    p.add_argument("--taps", default="mapped", help="mapped (default), all, none, or a comma-separated list of layers")
    p.add_argument("--target", help="package.module:callable (to pair layers when the table names no target)")
    p.add_argument("--target-kwargs", type=json.loads, default=None)
    p.add_argument("--force", action="store_true", help="overwrite an existing output")
    args = p.parse_args(argv)
    taps = args.taps if args.taps in ("mapped", "all", "none") else [t for t in args.taps.split(",") if t]
    meta = write_reference(args.input, args.map, args.output, framework=args.framework, architecture=args.architecture,
                           inputs=args.inputs, n=args.n, seed=args.seed, source_python=args.source_python, taps=taps,
                           reader_options=_options(args.option), input_shape=args.input_shape,
                           inputs_convention=args.inputs_convention, force=args.force, target=args.target,
                           target_kwargs=args.target_kwargs)
    print(f"wrote {args.output}: {len(meta['input_names'])} input(s), {len(meta['output_names'])} output(s), "
          f"{len(meta['layer_order'])} tapped layer(s)")
    return 0
