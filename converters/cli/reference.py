"""`convert reference IN --map TABLE REF.npz`: record the source framework's answers (inputs,
outputs, paired-layer activations) for `convert verify --reference` where it is not installed."""
from __future__ import annotations

import json

from . import args as A
from .verify import add_source_arguments

HELP = "record the source framework's outputs to a reference .npz (for verify --reference)"


def add_arguments(p) -> None:
    add_source_arguments(p)
    p.add_argument("output", help="the reference .npz to write")
    p.add_argument("--taps", default="mapped", help="mapped (default), all, none, or a comma-separated list of layers")
    A.add_target(p, help="package.module:callable (to pair layers when the table names no target)")
    p.add_argument("--force", action="store_true", help="overwrite an existing output")
    A.add_json(p, help="print the written file's metadata as JSON")
    A.add_quiet(p, help="print nothing on success")


def run(args) -> int:
    from ..parity.reference import write_reference

    taps = args.taps if args.taps in ("mapped", "all", "none") else [t for t in args.taps.split(",") if t]
    with A.activity(args, "running the source model"):
        meta = write_reference(args.input, args.map, args.output, framework=args.framework,
                               architecture=args.architecture, inputs=args.inputs, n=args.n, seed=args.seed,
                               source_python=args.source_python, taps=taps,
                               reader_options=A.parse_options(args.option), input_shape=args.input_shape,
                               inputs_convention=args.inputs_convention, force=args.force, target=args.target,
                               target_kwargs=args.target_kwargs)
    if args.json:
        A.write_output(args.json, json.dumps(meta, indent=1))
    elif not args.quiet:
        print(f"wrote {args.output}: {len(meta['input_names'])} input(s), {len(meta['output_names'])} output(s), "
              f"{len(meta['layer_order'])} tapped layer(s)")
    return 0
