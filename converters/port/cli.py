"""`convert port`: the command line of converters.port (docs/port.md)."""
from __future__ import annotations

import argparse
import sys

from ..errors import ConvertersError


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2, like every other bad input
        raise SystemExit(_fail(f"convert port: {message}"))


def _fail(msg: str) -> int:
    print(msg, file=sys.stderr)
    return 2


def parser() -> argparse.ArgumentParser:
    p = _Parser(prog="convert port", description="Generate a plain PyTorch module, a mapping table and "
                "the converted weights from a source model's graph (docs/port.md).")
    p.add_argument("sources", nargs="+", metavar="SOURCE", help="the model file(s): .caffemodel [+ .prototxt], "
                   ".onnx, .h5/.keras, .params + -symbol.json, SavedModel/.pb")
    p.add_argument("-o", "--out", required=True, metavar="DIR", help="folder to create (model.py, <name>.yaml, weights)")
    p.add_argument("--from", dest="framework", help="source framework (default: detected from the file)")
    p.add_argument("--name", help="class name of the generated module")
    p.add_argument("--format", dest="fmt", choices=["safetensors", "pth"], default="safetensors")
    p.add_argument("--outputs", help="comma-separated tensors / layers to return instead of the source's outputs")
    p.add_argument("--input-shape", action="append", default=[], metavar="NAME=D0,D1,...",
                   help="an input's shape in the source's layout (repeatable)")
    p.add_argument("--option", action="append", default=[], metavar="KEY=VALUE", help="reader option")
    p.add_argument("--force", action="store_true", help="replace an existing non-empty DIR")
    p.add_argument("--verify", action="store_true", help="run `convert verify` on the result; exit 0 only on PASS")
    p.add_argument("--source-python", metavar="PY", help="interpreter with the source framework (mxnet) for --verify")
    return p


def _shapes(items) -> dict:
    out = {}
    for item in items:
        name, sep, dims = item.partition("=")
        try:
            out[name] = tuple(int(d) for d in dims.split(",")) if sep and name else None
        except ValueError:
            out[name] = None
        if out[name] is None:
            raise ConvertersError(f"--input-shape {item!r} is not NAME=D0,D1,...")
    return out


def _options(items) -> dict:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConvertersError(f"--option {item!r} is not KEY=VALUE")
        out[key] = {"true": True, "false": False}.get(value.lower(), value)
    return out


def cmd_port(argv) -> int:
    try:
        args = parser().parse_args(argv)
    except SystemExit as e:
        return int(e.code or 0)
    from .run import port

    try:
        outputs = [o.strip() for o in args.outputs.split(",") if o.strip()] if args.outputs else None
        result = port(args.sources, args.out, framework=args.framework, name=args.name, fmt=args.fmt,
                      force=args.force, verify=args.verify, source_python=args.source_python, outputs=outputs,
                      input_shapes=_shapes(args.input_shape) or None, reader_options=_options(args.option))
    except ConvertersError as e:
        return _fail(f"convert port: {_one_line(e)}")
    print(result.summary())
    print(f"conversion: {result.report.summary()}")
    if result.parity is not None:
        print(result.parity.summary() if hasattr(result.parity, "summary") else str(result.parity))
        return 0 if result.parity.passed else 1
    return 0


def _one_line(e) -> str:
    return " ".join(str(e).split())
