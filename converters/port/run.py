"""`converters.port(...)`: source graph -> DIR/model.py + DIR/<name>.yaml + DIR/weights.*, atomically.

Everything is written into a temporary folder beside DIR and renamed at the end, so an error
(an unsupported op, a prototxt that disagrees with the weights, a coverage problem) leaves
nothing half-written. The weights go through the normal table + writer path
(`converters.convert.convert`), so the coverage report holds.
"""
from __future__ import annotations

import keyword
import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from ..errors import OutputExistsError
from . import codegen, frontends
from .graph import PortError
from .table import make_table

FORMATS = {"safetensors": "weights.safetensors", "pth": "weights.pth"}


@dataclass
class PortResult:
    out_dir: str
    class_name: str
    model_file: str
    table_file: str
    weights_file: str
    layers: list = field(default_factory=list)     # {layer, op, attr, lines}
    report: object = None                          # the conversion's coverage report
    parity: object = None                          # the ParityReport with verify=True
    timings: dict = field(default_factory=dict)

    def summary(self) -> str:
        lines = [f"ported {len(self.layers)} layer(s) into {self.model_file} (class {self.class_name}), "
                 f"table {self.table_file}, weights {self.weights_file}"]
        for row in self.layers:
            where = f"lines {row['lines'][0]}-{row['lines'][1]}" if row["lines"][1] > row["lines"][0] else \
                f"line {row['lines'][0]}"
            attr = f", self.{row['attr']}" if row["module"] else ""
            lines.append(f"  {row['layer']} ({row['op']}) -> {where}{attr}")
        return "\n".join(lines)


def class_name_for(name: str) -> str:
    parts = [p for p in re.split(r"[\W_]+", str(name)) if p]
    ident = "".join(p[0].upper() + p[1:] for p in parts) or "Ported"
    return ("Model" + ident if ident[0].isdigit() else ident)


def _snake(name: str) -> str:
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", name).lower()


def port(sources, out_dir, *, framework=None, name=None, fmt="safetensors", force=False, verify=False,
         source_python=None, outputs=None, input_shapes=None, reader_options=None, verify_options=None,
         architecture=None) -> PortResult:
    """Port `sources` (a path or a list) into `out_dir`; see the module docstring and docs/port.md.
    architecture: the network's description beside the weights (a Keras config .json / .keras /
    full .h5 for a weights-only file, a Caffe .prototxt, an MXNet -symbol.json)."""
    t0 = time.perf_counter()
    sources = [os.fspath(s) for s in ([sources] if isinstance(sources, (str, os.PathLike)) else sources)]
    if not sources:
        raise PortError("no source file given")
    if fmt not in FORMATS:
        raise PortError(f"unknown weights format {fmt!r}", hint="pth or safetensors")
    if name is not None and (not str(name).isidentifier() or keyword.iskeyword(str(name))):
        raise PortError(f"--name {name!r} is not a Python class name")
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not force:
        raise OutputExistsError("output folder exists and is not empty", file=str(out),
                                hint="pass --force to replace it")
    if framework is None:
        from ..readers import detect

        framework = detect(sources[0])
    graph = frontends.build_graph(framework, sources, reader_options=reader_options, outputs=outputs,
                                  input_shapes=input_shapes, architecture=architecture)
    cls = name or class_name_for(graph.name)
    gen = codegen.generate(graph, cls)
    t_graph = time.perf_counter()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.port-", dir=out.parent))
    try:
        result = _write(graph, gen, tmp, out, fmt)
        _replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    result.timings = {"graph_and_code": t_graph - t0, "total": time.perf_counter() - t0}
    if verify:
        result.parity = _verify(graph, result, source_python, verify_options or {}, reader_options)
    return result


def _write(graph, gen, tmp: Path, out: Path, fmt: str) -> PortResult:
    from ..convert import convert

    table_name = _snake(gen.class_name) + ".yaml"
    (tmp / "model.py").write_text(gen.source, encoding="utf-8")
    fills = _untargeted_fills(tmp / "model.py", gen, graph)
    table = make_table(graph, gen.bindings, f"model.py:{gen.class_name}", fills)
    (tmp / table_name).write_text(dump_table(table), encoding="utf-8")
    weights = tmp / FORMATS[fmt]
    _, report = convert(graph.source_files[0], str(tmp / table_name), out=str(weights), framework=graph.framework,
                        reader_options=graph.reader_options)
    layers = [{"layer": b.node.name, "op": b.node.source_op or b.node.op, "attr": b.attr, "lines": b.lines,
               "module": b.has_module} for b in gen.bindings]
    report.output = str(out / FORMATS[fmt])
    return PortResult(str(out), gen.class_name, str(out / "model.py"), str(out / table_name),
                      str(out / FORMATS[fmt]), layers, report)


class _TableDumper(yaml.SafeDumper):
    """Lists of scalars (shapes, outputs, transform arguments) on one line, as tables are written by hand."""


_TableDumper.add_representer(list, lambda d, v: d.represent_sequence(
    "tag:yaml.org,2002:seq", v, flow_style=all(not isinstance(i, (dict, list)) for i in v)))
_TableDumper.add_representer(tuple, lambda d, v: d.represent_list(list(v)))


def dump_table(table: dict) -> str:
    return yaml.dump(table, Dumper=_TableDumper, sort_keys=False, width=100, allow_unicode=True)


def _untargeted_fills(model_file: Path, gen, graph) -> dict:
    """State-dict tensors of the generated module no Param fills: BatchNorm counters get 0; any
    other is a codegen fault, stopped here rather than left to the coverage check's wording."""
    from ..target import build_model, describe

    model = build_model({"model": f"{model_file}:{gen.class_name}"}, meta=True)
    targeted = {t for b in gen.bindings for t in b.targets.values()}
    fills = {}
    for tensor in describe(model):
        if tensor in targeted:
            continue
        if tensor.endswith("num_batches_tracked"):
            fills[tensor] = 0
        else:
            raise PortError(f"internal: generated tensor {tensor} is filled by no source array",
                            file=graph.source_files[0] if graph.source_files else None)
    return fills


def _replace(tmp: Path, out: Path) -> None:
    if out.exists():
        old = out.with_name(f".{out.name}.port-old-{os.getpid()}")
        os.replace(out, old)
        os.replace(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, out)


def _verify(graph, result: PortResult, source_python, options: dict, reader_options):
    """Verify the written port; oracle-only options the frontend set aside (a SavedModel's
    `signature`: the function that was ported) go to the oracle, so it runs that same function."""
    from ..parity.setup import split_oracle_options
    from ..parity.verify import verify
    from ..target import load_converted

    model = load_converted(result.weights_file, result.table_file)
    oracle_only = split_oracle_options(graph.framework, reader_options)[1]
    kwargs = {"framework": graph.framework, "architecture": graph.architecture, "source_python": source_python,
              "reader_options": {**graph.reader_options, **oracle_only}, **options}
    return verify(graph.source_files[0], result.table_file, model=model, **kwargs)
