"""`convert verify IN --map TABLE`: run the source model in its own framework and the converted
PyTorch model on the same inputs and compare (converters.parity.verify). Exit 0 pass, 1 parity
failure, 2 usage error or source framework unavailable/crashed."""
from __future__ import annotations

import sys

from . import args as A

HELP = "run the source framework and the converted PyTorch model on the same inputs; compare"


def add_source_arguments(p) -> None:
    """What `verify` and `reference` share: the source, its table and framework, and the inputs."""
    from ..parity.oracles import ORACLES

    p.add_argument("input", help="the source weight file (what the conversion reads)")
    A.add_from(p, extra=ORACLES)
    A.add_map(p)
    p.add_argument("--architecture", help="the file the source framework needs beside the weights "
                                          "(deploy.prototxt, net-symbol.json; for a weights-only Keras file "
                                          "its model config .json or a full model file)")
    A.add_option(p)
    p.add_argument("--source-python", metavar="PATH",
                   help="Python interpreter with the source framework (MXNet); default $CONVERTERS_SOURCE_PYTHON "
                        "or .venv-mxnet/bin/python")
    p.add_argument("--inputs", metavar="NPZ", help="inputs (.npz, named after the model's inputs or in order)")
    p.add_argument("--inputs-convention", choices=("source", "target"), default="source",
                   help="the --inputs arrays are laid out for the source model (default) or the PyTorch model")
    p.add_argument("-n", type=int, default=None,
                   help="random inputs: batch size (default: the table's parity.batch, else 2)")
    p.add_argument("--seed", type=int, default=0, help="random inputs: seed (default 0)")
    A.add_input_shape(p, help="input shape in the table's input layout, e.g. 1,224,224,3")


def add_arguments(p) -> None:
    add_source_arguments(p)
    A.add_target(p)
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
    A.add_json(p, help="print the report as JSON")
    p.add_argument("--html", metavar="PATH", help="write the report as a standalone HTML page ('-': stdout)")
    p.add_argument("--plot", metavar="PNG", help="write the per-layer error plot (needs matplotlib)")
    A.add_quiet(p, help="print only the verdict line")


def run(args) -> int:
    return run_from_args(args).exit_code


def run_from_args(args, model=None):
    from ..parity.verify import verify
    from ..target import load_converted

    options = A.parse_options(args.option)
    tolerance = {k: getattr(args, k, None) for k in ("atol", "rtol", "cosine", "topk")}
    tolerance = {k: v for k, v in tolerance.items() if v is not None} or None
    if model is None and getattr(args, "converted", None):
        model = load_converted(args.converted, args.map, getattr(args, "target", None),
                               getattr(args, "target_kwargs", None))
    localise = {"auto": True, "always": "always", "never": False}[getattr(args, "localise", "auto")]
    with A.activity(args, "verifying"):
        rep = verify(args.input, args.map, getattr(args, "target", None), framework=args.framework,
                     architecture=args.architecture, inputs=args.inputs, n=args.n, seed=args.seed,
                     tolerance=tolerance, localise=localise, source_python=args.source_python,
                     reference=getattr(args, "reference", None),
                     dtype="float64" if getattr(args, "float64", False) else "float32", model=model,
                     target_kwargs=getattr(args, "target_kwargs", None), reader_options=options,
                     input_shape=args.input_shape, inputs_convention=args.inputs_convention)
    emit(rep, args)
    return rep


def emit(rep, args) -> None:
    """The report where the flags say: JSON / HTML / plot files, and the verdict text (stdout on a
    pass, stderr on a failure; nothing when stdout carries the JSON or HTML)."""
    json_path, html_path = getattr(args, "json", None), getattr(args, "html", None)
    if json_path:
        if json_path == "-":
            print(rep.to_json())
        else:
            rep.to_json(json_path)
    if html_path:
        A.write_output(html_path, html_page(rep))
    if getattr(args, "plot", None):
        rep.plot(args.plot)
    if "-" not in (json_path, html_path):
        text = str(rep) if not getattr(args, "quiet", False) else str(rep).splitlines()[0]
        print(text, file=sys.stdout if rep.passed else sys.stderr)


_PAGE_STYLE = """body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;margin:2em auto;max-width:72em;
color:#1f2328;padding:0 1em}code{font:12px ui-monospace,Menlo,monospace;background:#f6f8fa;padding:0 .25em}
table{border-collapse:collapse;margin:.6em 0 1.2em}th,td{border:1px solid #d0d7de;padding:.25em .6em;text-align:left;
font-variant-numeric:tabular-nums}th{background:#f6f8fa}tr:nth-child(even) td{background:#fbfcfd}div{margin:.4em 0}"""


def html_page(rep) -> str:
    """A standalone, styled HTML page around the report's notebook HTML (`--html PATH`)."""
    import html

    title = f"parity {rep.verdict()}: {rep.source}"
    return (f"<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            f"<title>{html.escape(title)}</title>\n<style>{_PAGE_STYLE}</style>\n</head>\n<body>\n"
            f"<h1>{html.escape(title)}</h1>\n{rep._repr_html_()}\n</body>\n</html>\n")
