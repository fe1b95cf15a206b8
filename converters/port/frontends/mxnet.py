"""MXNet frontend: a `-symbol.json` graph (legacy or NNVM, as readers/_mxnet_symbol parses it) and
its `.params` arrays -> port.graph.Graph.

Only nodes that reach the symbol's heads are ported; `outputs=[...]` names other node outputs to
return instead (dead-end heads such as RetinaFace's bbox/landmark convs). Symbols store no input
shapes: `input_shapes` ({input name: shape}) gives them; without it only the rank is
inferred (from the first consumer), and an op whose meaning needs sizes (Reshape codes, split
sizes, instance softmax, `full` pooling with padding) stops with a hint to pass it.

MXNet semantics kept exactly: BatchNorm eps defaults to 1e-3 and fix_gamma=True (the default)
uses ones whatever the file holds (a `constant: 1` transform, so the report shows it);
FullyConnected flattens its input unless flatten=False; Deconvolution has no bias by default;
SoftmaxOutput at inference is a softmax over axis 1 (multi_output) or over all but the batch axis,
and its label input becomes a parity extra input (the source needs it bound, the port does not).
"""
from __future__ import annotations

import os
from pathlib import Path

from ...readers import mxnet as mxreader
from ...readers._mxnet_symbol import entry_name
from ..graph import Graph, GraphInput, Node, Param, PortError, UnsupportedOpError
from ._mxnet_ops import OPS as _OPS
from ._mxnet_ops import rnn_param_sources

NAME = "mxnet"
_REQUIRED = object()
_LABEL_OPS = {"SoftmaxOutput", "LinearRegressionOutput", "LogisticRegressionOutput", "MAERegressionOutput"}


def build_graph(sources, *, reader_options=None, outputs=None, input_shapes=None, name=None) -> Graph:
    """The Graph of an MXNet checkpoint: `sources` holds the `.params` file (and optionally the
    `-symbol.json`; by default the one beside `PREFIX-EPOCH.params`). input_shapes: {data input
    name: NCHW shape} (a bare shape is taken for the only data input)."""
    params_path, symbol_path = _files(sources)
    options = dict(reader_options or {})
    if symbol_path is not None:
        options["symbol"] = os.fspath(symbol_path)
    arrays = mxreader.open(params_path, **options)
    meta = arrays.meta
    if "graph" not in meta:
        raise PortError("an MXNet port needs the network's -symbol.json and none was given or found beside "
                        "the weights", file=params_path,
                        hint="pass --architecture PREFIX-symbol.json (Gluon: export the net with net.export)")
    b = _Builder(meta["symbol"], arrays, meta["graph"])
    heads = _heads(b, meta["graph_heads"], outputs)
    b.build(heads, input_shapes)
    graph = Graph(name=name or _model_name(params_path), framework="mxnet",
                  source_files=[os.fspath(params_path), os.fspath(meta["symbol"])], inputs=b.inputs,
                  outputs=[b.tensor_of(h) for h in heads], nodes=b.nodes,
                  output_names={b.tensor_of(h): _source_output_name(h) for h in heads},
                  extra_inputs=b.extra_inputs, unused_arrays=b.unused_arrays(), reader_options=options,
                  architecture=os.fspath(meta["symbol"]))
    graph.check()
    return graph


def _files(sources) -> tuple[Path, Path | None]:
    sources = [Path(s) for s in ([sources] if isinstance(sources, (str, os.PathLike)) else sources)]
    symbols = [s for s in sources if s.name.endswith(".json")]
    params = [s for s in sources if not s.name.endswith(".json")]
    if len(params) != 1 or len(symbols) > 1:
        raise PortError(f"an MXNet port takes one .params file and at most one -symbol.json, got "
                        f"{[s.name for s in sources]}", file=sources[0] if sources else None)
    return params[0], symbols[0] if symbols else None


def _model_name(path: Path) -> str:
    stem = path.name.rsplit(".", 1)[0]
    return stem.rsplit("-", 1)[0] if stem.rsplit("-", 1)[-1].isdigit() else stem


def _heads(b, graph_heads, outputs) -> list:
    """[[node, index]] of the symbol's heads, or of the node outputs named in `outputs`."""
    if not outputs:
        return [tuple(h) for h in graph_heads]
    heads = []
    for spec in outputs:
        node, _, index = str(spec).partition(":")
        if node.endswith("_output") and node[:-7] in b.by_name:
            node = node[:-7]
        if node not in b.by_name or b.by_name[node]["op"] == "null":
            raise PortError(f"outputs names {spec!r}, which is no operator node of the symbol", file=b.file)
        heads.append((node, int(index or 0)))
    return heads


def _source_output_name(head) -> str:
    node, index = head
    return node if index == 0 else f"{node}_output{index}"


class _Attrs:
    """An MXNet node's attribute strings ("(3, 3)", "False", "1e-05", "None") parsed on demand."""

    def __init__(self, raw: dict, node: str, file):
        self.raw, self.node, self.file = raw, node, file

    def _get(self, key, default):
        if key in self.raw:
            return self.raw[key]
        if default is _REQUIRED:
            raise PortError(f"layer {self.node!r} lacks the attribute {key!r}", file=self.file)
        return default

    def _fail(self, key, value, what):
        raise PortError(f"layer {self.node!r}: attribute {key}={value!r} is not {what}", file=self.file)

    def str(self, key, default=_REQUIRED):
        return self._get(key, default)

    def int(self, key, default=_REQUIRED):
        v = self._get(key, default)
        try:
            return v if v is None or isinstance(v, int) else int(v)
        except ValueError:
            self._fail(key, v, "an integer")

    def float(self, key, default=_REQUIRED):
        v = self._get(key, default)
        if v in (None, "None"):
            return None
        try:
            return float(v)
        except (TypeError, ValueError):
            self._fail(key, v, "a number")

    def bool(self, key, default=_REQUIRED):
        v = self._get(key, default)
        if isinstance(v, bool):
            return v
        if str(v).lower() in ("true", "1"):
            return True
        if str(v).lower() in ("false", "0"):
            return False
        self._fail(key, v, "a boolean")

    def tuple(self, key, default=_REQUIRED):
        """"(3, 3)", "[3,3]", "3", "(0,None)" -> (3, 3), (3,), (0, None); "()" / "[]" -> ()."""
        v = self._get(key, default)
        if v is None or isinstance(v, tuple):
            return v
        text = str(v).strip().strip("()[]").strip()
        out = []
        for part in (p.strip() for p in text.split(",")):
            if not part:
                continue
            try:
                out.append(None if part == "None" else int(part))
            except ValueError:
                self._fail(key, v, "a tuple of integers")
        return tuple(out)


class _Builder:
    """Walks the reached symbol nodes in file (topological) order and emits canonical nodes."""

    def __init__(self, file, arrays, sym_nodes):
        self.file, self.arrays = file, arrays
        self.sym_nodes = sym_nodes
        self.by_name = {n["name"]: n for n in sym_nodes}
        self.nodes, self.inputs, self.shapes = [], [], {}
        self.extra_inputs, self.used, self.taken = {}, set(), set()
        self.constants, self.absorbed = {}, set()
        self.labels = self._label_inputs()

    # -- the walk ------------------------------------------------------------------------------
    def build(self, heads, input_shape) -> None:
        reached = self._reached(heads)
        data = [n["name"] for n in self.sym_nodes if n["name"] in reached and n["op"] == "null"
                and self.key(n["name"]) is None and n["name"] not in self.labels]
        shapes = _input_shapes(data, input_shape, self.file)
        for name in data:
            shape = shapes.get(name) or self._rank_guess(name)
            self.inputs.append(GraphInput(name=name, shape=shape,
                                          source_layout=_layout_of(shape)))
            self.shapes[name] = shape
        self._unreached_labels(reached)
        for node in self.sym_nodes:
            if node["op"] == "RNN" and node["name"] in reached:
                rnn_param_sources(self, node)  # its weight Reshapes/concat are absorbed
        for node in self.sym_nodes:
            if node["name"] in reached and node["op"] != "null" and node["name"] not in self.absorbed:
                handler = _OPS.get(node["op"])
                if handler is None:
                    raise UnsupportedOpError(node["op"], node["name"], self.file)
                handler(self, node, _Attrs(node["attrs"], node["name"], self.file))

    def _unreached_labels(self, reached) -> None:
        """The oracle runs the whole symbol: a label no ported output needs must still be bound."""
        for n in self.sym_nodes:
            if n["op"] in _LABEL_OPS and n["name"] not in reached and len(n["inputs"]) > 1:
                label = n["inputs"][1][0]
                if label in self.labels and not _Attrs(n["attrs"], n["name"], self.file).bool("multi_output", False):
                    self.extra_inputs[label] = {"shape": ["d0"], "fill": "zeros"}

    def _reached(self, heads) -> set:
        seen, stack = set(), [h[0] for h in heads]
        while stack:
            name = stack.pop()
            if name not in seen:
                seen.add(name)
                stack.extend(src for src, _ in self.by_name[name]["inputs"])
        return seen

    def _label_inputs(self) -> set:
        out = set()
        for n in self.sym_nodes:
            if n["op"] in _LABEL_OPS and len(n["inputs"]) > 1:
                src = n["inputs"][1][0]
                if self.by_name[src]["op"] == "null" and self.key(src) is None:
                    out.add(src)
        return out

    def _rank_guess(self, name):
        """Unknown sizes: the rank from the first consumer when it tells (a kernel's dims + 2)."""
        for n in self.sym_nodes:
            if any(src == name for src, _ in n["inputs"]):
                if n["op"] in ("Convolution", "Deconvolution", "Pooling") and "kernel" in n["attrs"]:
                    return (None,) * (len(_Attrs(n["attrs"], n["name"], self.file).tuple("kernel")) + 2)
                return None
        return None

    # -- tensors and params --------------------------------------------------------------------
    def key(self, node_name):
        """The array key holding a null node's value, None for graph inputs."""
        for k in (node_name, f"arg:{node_name}", f"aux:{node_name}"):
            if k in self.arrays:
                return k
        return None

    def tensor_of(self, entry) -> str:
        return entry_name(entry[0], entry[1])

    def tensor(self, entry) -> str:
        """The tensor an input entry names; a stored array read as data becomes a `constant` node."""
        src, index = entry
        if self.by_name[src]["op"] == "null":
            key = self.key(src)
            if key is not None and src not in self.constants:
                self.used.add(key)
                self.constants[src] = src
                self.emit(src, "constant", [], {"shape": self.arrays[key].shape}, {"value": Param(key)},
                          "null", self.arrays[key].shape)
        return entry_name(src, index)

    def weight(self, node, position, transforms=()) -> Param:
        inputs = node["inputs"]
        if position >= len(inputs):
            raise PortError(f"layer {node['name']!r} ({node['op']}) has no input {position} (its weights)",
                            file=self.file)
        src = inputs[position][0]
        key = self.key(src) if self.by_name[src]["op"] == "null" else None
        if key is None:
            raise UnsupportedOpError(f"{node['op']} with a computed (not stored) weight input {src!r}",
                                     node["name"], self.file)
        self.used.add(key)
        return Param(source=key, transforms=list(transforms))

    def shape(self, tensor):
        return self.shapes.get(tensor)

    def rank(self, tensor, node, why):
        s = self.shapes.get(tensor)
        if s is None:
            raise PortError(f"layer {node['name']!r} ({node['op']}): {why} needs the input's rank, unknown here",
                            file=self.file, hint="pass input_shapes / --input-shape")
        return len(s)

    def need_shape(self, tensor, node, why):
        s = self.shapes.get(tensor)
        if s is None or any(d is None for d in s[1:]):
            raise PortError(f"layer {node['name']!r} ({node['op']}): {why} needs the input's sizes, unknown "
                            f"here", file=self.file, hint="pass input_shapes / --input-shape (MXNet symbols "
                                                          "store no input shapes)")
        return s

    def fresh(self, base) -> str:
        name = base
        n = 1
        while name in self.by_name or name in self.taken:
            n += 1
            name = f"{base}_{n}"
        return name

    def emit(self, name, op, inputs, attrs, params=None, source_op="", shape=None, outputs=None) -> str:
        outputs = outputs or [name]
        self.taken.add(name)
        self.nodes.append(Node(name=name, op=op, inputs=list(inputs), outputs=list(outputs), attrs=attrs,
                               params=params or {}, source_op=source_op))
        if len(outputs) == 1:
            self.shapes[outputs[0]] = shape
        return outputs[0]

    def unused_arrays(self) -> dict:
        out = {}
        in_symbol = {self.key(n["name"]) for n in self.sym_nodes if n["op"] == "null"}
        for key in self.arrays:
            if key not in self.used:
                out[key] = ("feeds only nodes that do not reach the ported outputs" if key in in_symbol
                            else "not an argument of the symbol")
        return out


def _input_shapes(data, input_shape, file) -> dict:
    if not input_shape:
        if len(data) > 1:
            raise PortError(f"the symbol has {len(data)} data inputs ({', '.join(data)}) and no shapes were given",
                            file=file, hint="pass input_shapes={name: shape, ...} / --input-shape NAME=SHAPE")
        return {}
    if isinstance(input_shape, dict):
        unknown = sorted(set(input_shape) - set(data) - {None, ""})
        if unknown:
            raise PortError(f"input_shapes names {unknown}, not data inputs of the symbol ({data})", file=file)
        if len(input_shape) == 1 and len(data) == 1 and next(iter(input_shape)) in (None, ""):
            return {data[0]: tuple(int(d) for d in next(iter(input_shape.values())))}
        return {k: tuple(int(d) for d in v) for k, v in input_shape.items()}
    if len(data) != 1:
        raise PortError(f"one input shape given for {len(data)} data inputs ({', '.join(data)})", file=file,
                        hint="pass input_shapes={name: shape, ...}")
    return {data[0]: tuple(int(d) for d in input_shape)}


def _layout_of(shape) -> str:
    return {2: "NC", 3: "NCL", 4: "NCHW", 5: "NCDHW"}.get(len(shape) if shape else 4, "NCHW")

