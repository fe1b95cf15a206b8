"""`convert draft --from F SOURCE --target package.module:callable [-o map.yaml] [--verify]`:
propose a mapping table (converters.draft), optionally run it through the parity check."""
from __future__ import annotations

import json
import sys

from ..errors import ConvertersError
from . import args as A

HELP = "propose a mapping table for a source file and a PyTorch model"


def add_arguments(p) -> None:
    p.description = ("Propose a mapping table: which source array fills which tensor of the target module, with "
                     "which transforms, and the evidence (names, layer order vs traced execution order, shapes).")
    p.add_argument("source", help="weight file")
    A.add_from(p)
    p.add_argument("--target", required=True, metavar="MODULE:CALLABLE",
                   help="package.module:callable building the PyTorch model")
    p.add_argument("--target-kwargs", type=A.json_object, default=None, metavar="JSON",
                   help="keyword arguments for the target, a JSON object")
    p.add_argument("-o", "--output", help="write the table here (default: print it)")
    p.add_argument("--force", action="store_true", help="overwrite an existing output")
    A.add_input_shape(p, help="dummy input for tracing the target, e.g. 1,3,224,224 (NCHW)")
    A.add_option(p)
    p.add_argument("--verify", action="store_true",
                   help="run the draft through the parity check and name the rules the first divergent layer "
                        "implicates")
    p.add_argument("--source-python", help="interpreter with the source framework (MXNet), for --verify")
    p.add_argument("--like", metavar="PORT", help="an existing port's weights (.pth, .safetensors, ...): make every "
                   "rule reproduce its tensors bit for bit (layout steps searched), say where none does")
    p.add_argument("--base", metavar="TABLE", help="start from this table: its rules, ignores and fills are kept, "
                   "only what it leaves open is drafted")
    A.add_json(p, help="print the draft's summary (matches, confidence, unmatched) as JSON")
    A.add_quiet(p, help="print only the table (without -o) or nothing (with -o)")


def run(args) -> int:
    from ..draft import draft

    if args.verify and not args.output:
        raise ConvertersError("--verify needs -o: the parity check reads the written table")
    reader_options = A.reader_options_of(A.parse_options(args.option), args.framework, args.source)
    with A.activity(args, "drafting"):
        d = draft(args.source, args.target, framework=args.framework, target_kwargs=args.target_kwargs,
                  out=args.output, input_shape=args.input_shape, reader_options=reader_options,
                  force=args.force, like=args.like, base=args.base)
    if args.output is None:
        sys.stdout.write(d.text)
    elif not args.quiet and not args.json:
        print(f"wrote {args.output}")
    if args.json:
        A.write_output(args.json, json.dumps(_summary(d), indent=1, default=str))
    elif not args.quiet:
        print(str(d), file=sys.stderr if args.output is None else sys.stdout)
    if not args.verify:
        return 0
    return _verify(d, args)


def _summary(d) -> dict:
    return {"path": d.path, "complete": d.complete, "stats": d.stats, "problems": list(d.problems),
            "rules": len(d.rules)}


def _verify(d, args) -> int:
    from ..parity.verify import verify

    if not d.complete:
        print("verify: skipped, the draft needs edits before it converts (see UNMATCHED/AMBIGUOUS in the table)")
        return 1
    kwargs = {"framework": args.framework, "reader_options": A.parse_options(args.option)}
    if args.source_python:
        kwargs["source_python"] = args.source_python
    with A.activity(args, "verifying"):
        report = verify(args.source, args.output, **kwargs)
    print(report if not args.quiet else str(report).splitlines()[0])
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
