"""`convert draft --from F SOURCE --target package.module:callable [-o map.yaml] [--verify]`."""
from __future__ import annotations

import argparse
import json
import sys

from ..cli import subcommand
from ..errors import ConvertersError


@subcommand("draft")
def cmd_draft(argv) -> int:
    from ..readers import FRAMEWORKS

    p = argparse.ArgumentParser(prog="convert draft", description=(
        "Propose a mapping table: which source array fills which tensor of the target module, with "
        "which transforms, and the evidence (names, layer order vs traced execution order, shapes)."))
    p.add_argument("source", help="weight file")
    p.add_argument("--from", dest="framework", choices=FRAMEWORKS)
    p.add_argument("--target", required=True, help="package.module:callable building the PyTorch model")
    p.add_argument("--target-kwargs", type=json.loads, default=None, help="JSON object of keyword arguments")
    p.add_argument("-o", "--output", help="write the table here (default: print it)")
    p.add_argument("--force", action="store_true", help="overwrite an existing output")
    p.add_argument("--input-shape", help="dummy input for tracing the target, e.g. 1,3,224,224 (NCHW)")
    p.add_argument("--option", action="append", default=[], metavar="KEY=VALUE", help="reader option")
    p.add_argument("--verify", action="store_true",
                   help="run the draft through the parity check and name the rules the first divergent layer implicates")
    p.add_argument("--source-python", help="interpreter with the source framework (MXNet), for --verify")
    args = p.parse_args(argv)
    if args.target_kwargs is not None and not isinstance(args.target_kwargs, dict):
        p.error("--target-kwargs must be a JSON object")
    shape = None
    if args.input_shape:
        try:
            shape = [int(d) for d in args.input_shape.split(",")]
        except ValueError:
            p.error("--input-shape: comma-separated integers, e.g. 1,3,224,224")
    options = dict(o.split("=", 1) for o in args.option if "=" in o)
    if args.verify and not args.output:
        p.error("--verify needs -o: the parity check reads the written table")

    from . import draft

    d = draft(args.source, args.target, framework=args.framework, target_kwargs=args.target_kwargs,
              out=args.output, input_shape=shape, reader_options=options, force=args.force)
    if args.output is None:
        sys.stdout.write(d.text)
    else:
        print(f"wrote {args.output}")
    print(str(d), file=sys.stderr if args.output is None else sys.stdout)
    if not args.verify:
        return 0
    return _verify(d, args)


def _verify(d, args) -> int:
    try:
        from ..parity.verify import verify
    except ImportError:
        raise ConvertersError("--verify needs the parity verifier (converters.parity.verify), which this "
                              "installation does not have", hint="run `convert verify` once it is available") from None
    if not d.complete:
        print("verify: skipped, the draft needs edits before it converts (see UNMATCHED/AMBIGUOUS in the table)")
        return 1
    kwargs = {"framework": args.framework}
    if args.source_python:
        kwargs["source_python"] = args.source_python
    report = verify(args.source, args.output, **kwargs)
    print(report)
    if report.passed:
        return 0
    fd = report.first_divergent or {}
    module = fd.get("module")
    if module:
        rules = d.rules_for_module(module)
        print(f"first divergent layer: {fd.get('source_layer')} -> {module}; rules that fill it:")
        for line, pattern, to in rules or [(None, None, None)]:
            print(f"  {args.output}:{line}  from {pattern!r} to {to}" if line else "  (none: a layer without weights)")
    return 1
