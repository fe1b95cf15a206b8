"""`convert port`: the command line of converters.port (docs/port.md).

A subcommand module of converters/cli (HELP, add_arguments, run); `cmd_port(argv)` runs it alone.
Exit codes: 0 ported (and PASS with --verify), 1 verify failed, 2 bad input (one line, nothing
written).
"""
from __future__ import annotations

HELP = "generate a plain PyTorch module, its mapping table and the weights from a source model's graph"


def add_arguments(p) -> None:
    from ..cli import args as A

    p.add_argument("sources", nargs="+", metavar="SOURCE",
                   help="the model file(s): .caffemodel [+ .prototxt], .onnx, .h5/.keras, .params + -symbol.json, ...")
    p.add_argument("--architecture", metavar="PATH",
                   help="the network's description beside the weights: a Keras config .json/.keras/full .h5 for a "
                   "weights-only file, a Caffe .prototxt, an MXNet -symbol.json")
    p.add_argument("-o", "--out", required=True, metavar="DIR", help="folder to create: model.py, <name>.yaml, weights")
    A.add_from(p)
    p.add_argument("--name", help="class name of the generated module (default: from the model's name)")
    p.add_argument("--format", dest="fmt", choices=["safetensors", "pth"], default="safetensors",
                   help="weights file format (default safetensors)")
    p.add_argument("--outputs", help="comma-separated tensors / layers to return instead of the source's outputs "
                   "(e.g. the raw SSD heads before DetectionOutput)")
    p.add_argument("--input-shape", action="append", default=[], metavar="NAME=D0,D1,...",
                   help="an input's shape in the source's layout (repeatable)")
    A.add_option(p)
    p.add_argument("--force", action="store_true", help="replace an existing non-empty DIR")
    p.add_argument("--verify", action="store_true", help="run `convert verify` on the result; exit 0 only on PASS")
    p.add_argument("--source-python", metavar="PY", help="interpreter with the source framework (mxnet) for --verify")
    A.add_json(p, help="print the result (conversion report, parity verdict) as JSON "
               "(--json=PATH / --json-out PATH: to a file)")
    A.add_quiet(p, help="print only errors and the parity verdict")


def _shapes(items) -> dict | None:
    from ..errors import ConvertersError

    out = {}
    for item in items:
        name, sep, dims = item.partition("=")
        try:
            shape = tuple(int(d) for d in dims.replace("x", ",").split(",")) if sep and name else None
        except ValueError:
            shape = None
        if not shape:
            raise ConvertersError(f"--input-shape {item!r} is not NAME=D0,D1,...")
        out[name] = shape
    return out or None


def run(args) -> int:
    from ..cli import args as A
    from ..cli.args import parse_options
    from .run import port

    outputs = [o.strip() for o in args.outputs.split(",") if o.strip()] if args.outputs else None
    result = port(args.sources, args.out, framework=args.framework, name=args.name, fmt=args.fmt, force=args.force,
                  verify=args.verify, source_python=args.source_python, outputs=outputs,
                  input_shapes=_shapes(args.input_shape), reader_options=parse_options(args.option),
                  architecture=args.architecture)
    if args.json:
        import json

        parity = result.parity.to_dict() if result.parity is not None and hasattr(result.parity, "to_dict") else None
        A.write_output(args.json, json.dumps({"summary": result.summary(), "conversion": result.report.to_dict(),
                                              "parity": parity}, indent=1, default=str))
    elif not args.quiet:
        print(result.summary())
        print(f"conversion: {result.report.summary()}")
    if result.parity is not None:
        if not args.json:
            text = result.parity.summary() if hasattr(result.parity, "summary") else str(result.parity)
            print(text.splitlines()[0] if args.quiet else text)
        return 0 if result.parity.passed else 1
    return 0


def cmd_port(argv) -> int:
    """`convert port ...` as a function (the same parsing, errors and exit codes as the CLI)."""
    from ..cli import main

    return main(["port", *argv])
