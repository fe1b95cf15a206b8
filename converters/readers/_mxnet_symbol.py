"""MXNet `-symbol.json` graphs: the architecture that sits beside an NDArray-list `.params` file.

Two JSON forms exist and both are still met in the wild:

* NNVM (mxnet >= 0.9.5, what `net.export()` / `sym.save()` write): nodes carry `attrs` (older
  releases: `attr`), inputs are `[node_id, output_index, version]`, plus `arg_nodes`,
  `node_row_ptr`, `heads` and `attrs.mxnet_version = ["int", 10901]`.
* legacy (pre-NNVM): nodes carry `param` (operator parameters) and optionally `attr` (user
  attributes), `backward_source_id`, and inputs are `[node_id, output_index]` pairs.

Both are normalised into one node list; attribute values stay the strings MXNet stored
(`"(3, 3)"`, `"False"`, `"1e-05"`): parsing them is the consumer's business, and keeping them as
written means nothing is lost or mis-parsed here.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

from ..arrays import Layer
from ..errors import FormatError

_MAX_SYMBOL_BYTES = 256 * 1024 * 1024


@dataclass
class SymbolGraph:
    """A parsed symbol file: nodes in file (topological) order, plus where the outputs are."""

    path: str
    form: str                       # "nnvm" or "legacy"
    nodes: list = field(default_factory=list)   # dicts: name, op, attrs, inputs [[name, index]]
    heads: list = field(default_factory=list)   # [[name, index]]
    arg_nodes: list = field(default_factory=list)  # names
    mxnet_version: int | None = None


def load_symbol(path) -> SymbolGraph:
    """Parse a `-symbol.json` file of either form; every structural flaw is a FormatError."""
    path = os.fspath(path)
    try:
        size = os.path.getsize(path)
    except OSError as e:
        raise FormatError(f"cannot read the symbol file: {e.strerror}", file=path) from None
    if size > _MAX_SYMBOL_BYTES:
        raise FormatError(f"symbol file of {size} bytes is implausibly large", file=path)
    with open(path, "rb") as fh:
        raw = fh.read()
    try:
        doc = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise FormatError(f"symbol file is not JSON: {e}", file=path) from None
    if not isinstance(doc, dict) or not isinstance(doc.get("nodes"), list):
        raise FormatError("symbol JSON has no `nodes` list", file=path,
                          hint="expected the `-symbol.json` written by sym.save() or net.export()")
    raw_nodes = doc["nodes"]
    legacy = any(isinstance(n, dict) and ("param" in n or "backward_source_id" in n) for n in raw_nodes)
    graph = SymbolGraph(path=path, form="legacy" if legacy else "nnvm")
    names = [_node_name(path, i, n) for i, n in enumerate(raw_nodes)]
    for i, node in enumerate(raw_nodes):
        graph.nodes.append({
            "name": names[i],
            "op": _node_op(path, names[i], node),
            "attrs": _node_attrs(path, names[i], node),
            "inputs": [[names[j], k] for j, k in _entries(path, names[i], node.get("inputs", []), len(names))],
        })
    graph.heads = [[names[j], k] for j, k in _entries(path, "heads", doc.get("heads", []), len(names))]
    arg_nodes = doc.get("arg_nodes", [])
    if not isinstance(arg_nodes, list) or not all(isinstance(j, int) and 0 <= j < len(names) for j in arg_nodes):
        raise FormatError("`arg_nodes` must list node ids", file=path)
    graph.arg_nodes = [names[j] for j in arg_nodes]
    graph.mxnet_version = _mxnet_version(doc.get("attrs"))
    return graph


def _node_name(path, i, node) -> str:
    if not isinstance(node, dict) or not isinstance(node.get("name"), str):
        raise FormatError(f"node {i} is not an object with a string `name`", file=path)
    return node["name"]


def _node_op(path, name, node) -> str:
    op = node.get("op")
    if not isinstance(op, str):
        raise FormatError("node has no string `op`", file=path, array=name)
    return op


def _node_attrs(path, name, node) -> dict:
    """`param` (legacy operator params), `attr` (legacy / early NNVM) and `attrs` (NNVM), merged."""
    merged = {}
    for key in ("param", "attr", "attrs"):
        part = node.get(key)
        if part is None:
            continue
        if not isinstance(part, dict):
            raise FormatError(f"node `{key}` is not an object", file=path, array=name)
        merged.update({str(k): v if isinstance(v, str) else json.dumps(v) for k, v in part.items()})
    return merged


def _entries(path, where, entries, n_nodes) -> list[tuple[int, int]]:
    """[[node_id, output_index(, version)]...] -> (node_id, output_index), ids range-checked."""
    if not isinstance(entries, list):
        raise FormatError("inputs/heads must be a list", file=path, array=where)
    out = []
    for e in entries:
        if (not isinstance(e, list) or len(e) not in (2, 3) or not all(isinstance(x, int) for x in e)
                or not 0 <= e[0] < n_nodes or e[1] < 0):
            raise FormatError(f"graph entry {e!r} is not [node_id < {n_nodes}, output_index(, version)]",
                              file=path, array=where)
        out.append((e[0], e[1]))
    return out


def _mxnet_version(attrs) -> int | None:
    if isinstance(attrs, dict):
        v = attrs.get("mxnet_version")
        if isinstance(v, list) and len(v) == 2 and isinstance(v[1], int):
            return v[1]
    return None


def entry_name(name: str, index: int) -> str:
    """How an input is spelled in Layer.inputs: the node name, with `:k` for output k > 0."""
    return name if index == 0 else f"{name}:{index}"


def build_layers(graph: SymbolGraph, key_of) -> tuple[dict, dict]:
    """Layers for the non-null ops, and, for each array key, (layer, op, attrs, position).

    `key_of(node_name)` returns the ArrayFile key a null node's values are stored under, or None
    when the file does not hold it (graph inputs such as `data`, labels).
    """
    consumers: dict[str, list[str]] = {}
    for node in graph.nodes:
        for src, _ in node["inputs"]:
            consumers.setdefault(src, [])
            if node["name"] not in consumers[src]:
                consumers[src].append(node["name"])
    layers: dict[str, Layer] = {}
    owner: dict[str, tuple] = {}
    by_name = {n["name"]: n for n in graph.nodes}
    for node in graph.nodes:
        if node["op"] == "null":
            continue
        arrays = []
        for src, _ in node["inputs"]:
            key = key_of(src) if by_name[src]["op"] == "null" else None
            if key is not None and key not in arrays:
                arrays.append(key)
                owner.setdefault(key, (node["name"], node["op"], node["attrs"], len(arrays) - 1))
        layers[node["name"]] = Layer(
            name=node["name"], type=node["op"], params=dict(node["attrs"]),
            inputs=[entry_name(src, k) for src, k in node["inputs"]],
            outputs=list(consumers.get(node["name"], [])), arrays=arrays)
    return layers, owner


_CONV_WEIGHT_LAYOUT = {"NCW": "OIW", "NCHW": "OIHW", "NCDHW": "OIDHW",
                       "NWC": "OWI", "NHWC": "OHWI", "NDHWC": "ODHWI"}
_DECONV_WEIGHT_LAYOUT = {"NCW": "IOW", "NCHW": "IOHW", "NCDHW": "IODHW"}
_DEFAULT_SPATIAL = {3: "NCW", 4: "NCHW", 5: "NCDHW"}


def weight_layout(op: str, attrs: dict, ndim: int) -> str | None:
    """Axis letters of a weight as the op stores it (None when the op does not fix them)."""
    if op == "FullyConnected":
        return "OI" if ndim == 2 else None
    if op in ("Convolution", "Deconvolution"):
        layout = attrs.get("layout") or _DEFAULT_SPATIAL.get(ndim)
        table = _CONV_WEIGHT_LAYOUT if op == "Convolution" else _DECONV_WEIGHT_LAYOUT
        letters = table.get(layout or "")
        return letters if letters and len(letters) == ndim else None
    return None
