"""ONNX frontend: an ONNX graph (as `readers.onnx_files` parses it) -> a port `Graph`.

ONNX is channels-first already, so nodes map one to one onto canonical ops; the work is in
resolving what ONNX leaves to run time:

* Shapes: the reader exposes only the graph inputs' and outputs' shapes, so this module
  propagates shapes itself (ints, or symbols for unknown dims: `N` for a batch dim). Conv/Linear
  sizes come from the weights; `Shape -> Gather/Slice -> Concat -> Reshape` chains fold to
  constants when the dims they read are known (a symbolic batch becomes `-1`).
* Constants (initializers, Constant nodes) stay source arrays: `Reshape`/`Unsqueeze`/`Squeeze`/
  `Transpose`/`Cast` of a constant fold into the Param's transform chain; a constant read as
  data becomes a `constant` node (a buffer) filled by the table. Constants read as attributes
  (shapes, axes, Clip bounds, Resize scales) are recorded in `Graph.unused_arrays` with why.
* MatMul(x, W) + Add(b) (tf2onnx/keras2onnx/Paddle2ONNX dense) becomes one `linear` with both
  Params; Gemm's alpha/beta and transB fold into the weight transforms.
* Softmax before opset 13 coerces the input to 2-d at `axis`: emitted as flatten, softmax, reshape.
* An op, attribute value or mode PyTorch cannot compute exactly stops with `UnsupportedOpError`.
"""
from __future__ import annotations

import numpy as np

from ..graph import Graph, GraphInput, PortError, UnsupportedOpError
from ._onnx_ops import HANDLERS
from ._onnx_state import _LAYOUTS, _Builder, _Const

# =========================================================================== driver

_FOLD_FIRST = {"Constant", "Reshape", "Unsqueeze", "Squeeze", "Transpose", "Identity", "Cast"}

def _graph_inputs(b, f, input_shapes):
    inputs = []
    for spec in f.meta["graph"]["inputs"]:
        name = spec["name"]
        given = (input_shapes or {}).get(name)
        raw = list(given) if given is not None else list(spec.get("shape") or [])
        if not raw:
            raise PortError(f"graph input {name!r} has no shape", file=b.path,
                            hint="give it with --input-shape")
        file_dims = list(spec.get("shape") or [])
        if len(file_dims) != len(raw):
            file_dims = list(raw)
        dims, batch = [], None
        for i, (d, fd) in enumerate(zip(raw, file_dims)):
            symbolic_in_file = not (isinstance(fd, int) and fd > 0)
            if symbolic_in_file and batch is None and len(raw) > 1 and (i == 0 or "batch" in str(fd).lower()):
                dims.append("N")  # the batch stays symbolic: the module takes any batch size
                batch = i
            elif isinstance(d, int) and d > 0:
                dims.append(int(d))
            else:
                dims.append(fd if isinstance(fd, str) and fd not in ("", "N", "?") else b.symbol())
        b.shapes[name] = tuple(dims)
        b.runtime.add(name)
        dtype = spec.get("dtype", "float32")
        if dtype != "float32":
            raise PortError(f"graph input {name!r} is {dtype}: `convert port` writes float32 modules", file=b.path,
                            hint="convert the model to float32 first (onnxconverter-common), or port a float32 export")
        layout = "TNC" if batch not in (None, 0) and len(dims) == 3 else _LAYOUTS.get(len(dims), "")
        shown = [d if isinstance(d, int) and d > 0 else (1 if i == batch else None) for i, d in enumerate(raw)]
        inputs.append(GraphInput(name, tuple(shown), dtype, source_layout=layout))
    return inputs


def build_graph(sources, *, reader_options=None, outputs=None, input_shapes=None) -> Graph:
    """The port Graph of an ONNX model (frontends/__init__.py gives the contract). input_shapes:
    {input name: shape} for graphs whose inputs have symbolic dims (the batch stays free)."""
    import os

    from ...readers import onnx_files

    path = os.fspath(sources[0])
    options = dict(reader_options or {})
    f = onnx_files.open(path, **options)
    try:
        return _build(f, path, options, outputs, input_shapes)
    finally:
        f.close()


def _build(f, path, options, outputs, input_shapes) -> Graph:
    opset = int(f.meta.get("opset_import", {}).get("ai.onnx") or 1)
    b = _Builder(f, path, opset)
    b.graph_outputs = [o["name"] for o in f.meta["graph"]["outputs"]]
    layers = list(f.layers.values())  # top-level nodes first; If/Loop/Scan bodies (after them) are refused
    for a in f.values():
        if a.meta.get("subgraph_of"):
            continue
        b.consts[a.name] = _Const(tuple(a.shape), np.dtype(a.dtype), source=a.name, source_shape=tuple(a.shape))
    inputs = _graph_inputs(b, f, input_shapes)
    if outputs:
        b.graph_outputs = [f.layers[o].outputs[0] if o in f.layers and o not in b.shapes and f.layers[o].outputs else o
                           for o in outputs]
    for L in layers:
        for t in L.inputs:
            if t:
                b.consumers.setdefault(t, []).append(L)
    for L in layers:  # constant subgraphs first, so fusions can look ahead at folded biases
        if L.type in _FOLD_FIRST and all(b.is_const(t) for t in L.inputs if t):
            b.layer = L
            HANDLERS[L.type](b, L)
            b.skip.add(L.name)
    for L in layers:
        if L.name in b.skip:
            continue
        b.layer = L
        if L.type not in HANDLERS:
            raise UnsupportedOpError(L.type, L.name, path)
        HANDLERS[L.type](b, L)
    b.layer = None
    for o in b.graph_outputs:
        if o not in b.runtime:
            raise PortError(f"graph output {o!r} is a constant or is not computed", file=path)
    if outputs:
        _prune(b)
    unused = {}
    for a in f.values():
        if a.name not in b.used:
            unused[a.name] = b.folded.get(a.name, "no emitted layer reads it (dead constant or folded shape input)")
    graph = Graph(name=_model_name(f, path), framework="onnx", source_files=[path], inputs=inputs,
                  outputs=list(b.graph_outputs), nodes=b.nodes,
                  output_layouts={o: _LAYOUTS.get(len(b.shapes.get(o, ())), "") for o in b.graph_outputs},
                  output_names=_output_names(f, b.graph_outputs), unused_arrays=unused, reader_options=options,
                  notes=_notes(f, inputs), fixed_batch=_fixed_batch(f))
    graph.check()
    return graph


def _fixed_batch(f) -> int | None:
    """The main input's leading dim when the file fixes it (no symbol): onnxruntime refuses any
    other batch, so verify must feed this one (the table's parity.batch)."""
    specs = f.meta["graph"]["inputs"]
    dims = list(specs[0].get("shape") or []) if specs else []
    return int(dims[0]) if len(dims) > 1 and isinstance(dims[0], int) and dims[0] > 0 else None


def _output_names(f, outputs) -> dict:
    """Graph outputs by their tensor name; other requested tensors by the layer that produces them
    (the ONNX oracle taps layers)."""
    real = {o["name"] for o in f.meta["graph"]["outputs"]}
    producer = {t: L.name for L in f.layers.values() for t in L.outputs}
    return {o: o if o in real else producer.get(o, o) for o in outputs}


def _notes(f, inputs) -> list:
    """A channels-last input that the graph transposes itself (tf2onnx, keras2onnx): say so."""
    notes = []
    for inp in inputs:
        users = [L for L in f.layers.values() if inp.name in L.inputs]
        if len(inp.shape) == 4 and users and all(L.type == "Transpose" and list(L.params.get("perm") or []) ==
                                                  [0, 3, 1, 2] for L in users):
            notes.append(f"Input {inp.name} is channels-last (N, H, W, C): the source graph transposes it to NCHW "
                         "itself, and so does model.py, so both take the same array.")
    return notes


def _prune(b: _Builder) -> None:
    """Keep only the nodes the requested outputs need (--outputs); their weights become unused."""
    b.nodes, dropped = prune_nodes(b.nodes, b.graph_outputs)
    b.used = {p.source for node in b.nodes for p in node.params.values() if p.source}
    b.folded.update(dropped)


def prune_nodes(nodes: list, outputs: list) -> tuple[list, dict]:
    """(the nodes `outputs` need, in order; {source array: why unused} for the others' weights)."""
    needed, kept, dropped = set(outputs), [], {}
    for node in reversed(nodes):
        if any(o in needed for o in node.outputs):
            kept.append(node)
            needed.update(node.inputs)
        else:
            dropped.update({p.source: f"read by {node.name}, which the requested outputs (--outputs) do not need"
                            for p in node.params.values() if p.source})
    kept.reverse()
    still = {p.source for node in kept for p in node.params.values() if p.source}
    return kept, {k: v for k, v in dropped.items() if k not in still}


def _model_name(f, path) -> str:
    import os

    return f.meta.get("graph", {}).get("name") or os.path.splitext(os.path.basename(path))[0]
