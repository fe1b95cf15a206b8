"""Keras frontend: a Keras model config (as `readers.keras` exposes it) -> a port `Graph`.

Reads Keras 2 / tf_keras `.h5` full models, Keras 3 `.keras` zips and Keras 3 legacy `.h5`:
Sequential and Functional configs, nested models inlined as `outer/inner` layers. A weights-only
file has no architecture: give one with `--architecture` (a config `.json`, a `.keras` or a full
model `.h5`; it arrives here as reader option `architecture`, or as a second source).

Layout. Keras is channels-last; the module is channels-first. Every tensor carries a flag
`cf`: True when the module holds it channels-first (N, C, *spatial) while Keras holds it
(N, *spatial, C). Convolutions, pooling, padding, upsampling and BatchNorm want `cf` tensors;
Dense on >2-d inputs, Flatten, Reshape, Permute and the RNNs work on the Keras order, so the
frontend inserts a `transpose` back to it first: a Flatten before a Dense then orders the
features (h, w, c) exactly as Keras, and the Dense kernel needs no reordering. Axis arguments
(Concatenate, Softmax, BatchNormalization) are translated to the module's order. 4-d inputs are
taken NCHW by the module (table input layout NHWC); 3-d inputs NLC (-> NCL) when a Conv1D/
pooling reads them first, otherwise as Keras takes them (NTC: batch, time, features).

Semantics worth knowing: `hard_sigmoid` is clip(0.2 x + 0.5) in Keras 2 but x / 6 + 0.5 in
Keras 3; padding "same" is TF SAME (static pads when the input size is known; extra pixel at the
end), max pooling pads with -inf and average pooling excludes padded cells; BatchNormalization
epsilon is per layer (Keras' default 1e-3), a missing gamma/beta (scale/center False) is filled
with 1/0; GRU needs reset_after=True (PyTorch's formulation).
"""
from __future__ import annotations

import json
import os

from ..graph import (
    Graph,
    GraphInput,
    PortError,
    UnsupportedOpError,
)
from ._keras_layers import _CF_LAYOUT, _CONV_LIKE, _T, LAYERS, _Builder, keras_op
from .onnx import prune_nodes

# =========================================================================== model walking

def _cfg_of(entry):
    return entry.get("config") if isinstance(entry.get("config"), dict) else {}


def _entry_name(entry):
    return entry.get("name") or _cfg_of(entry).get("name")


def _input_shape(cfg):
    shape = cfg.get("batch_input_shape") or cfg.get("batch_shape")
    return list(shape) if shape else None


def _call_inputs(entry) -> list:
    """[(layer name, tensor index)] this functional layer is called on; refuses shared layers."""
    nodes = entry.get("inbound_nodes") or []
    if len(nodes) > 1:
        raise UnsupportedOpError(f"{entry.get('class_name')} (a shared layer called {len(nodes)} times)",
                                 _entry_name(entry), None)
    if not nodes:
        return []
    node = nodes[0]
    found = []

    def walk(x):
        if isinstance(x, dict):
            hist = x.get("config", {}).get("keras_history") if isinstance(x.get("config"), dict) else None
            if hist:
                found.append((hist[0], int(hist[2])))
                return
            for v in x.values():
                walk(v)
        elif isinstance(x, list):
            if len(x) >= 3 and isinstance(x[0], str) and isinstance(x[1], int) and isinstance(x[2], int):
                found.append((x[0], x[2]))
                return
            for v in x:
                walk(v)
        elif isinstance(x, (int, float)) and not isinstance(x, bool):
            found.append(float(x))  # a constant operand of a Keras 3 op layer (`x + 3.0`)

    walk(node.get("args", []) if isinstance(node, dict) else node)
    y = _tf_op_kwargs(entry).get("y") if entry.get("class_name") == "TFOpLambda" else None
    if isinstance(y, list) and len(y) >= 3 and isinstance(y[0], str):  # x * y of two tensors
        found.append((y[0], int(y[2])))
    return found


def _tf_op_kwargs(entry) -> dict:
    node = (entry.get("inbound_nodes") or [[]])[0]
    call = node[0] if node and isinstance(node[0], list) else node  # [[x, 0, 0, kw]] or, as h5 saves it, [x, 0, 0, kw]
    kwargs = call[3] if isinstance(call, list) and len(call) > 3 else {}
    return kwargs if isinstance(kwargs, dict) else {}


_TF_OPS = {"__operators__.add": "Add", "math.add": "Add", "math.multiply": "Multiply", "math.subtract": "Subtract",
           "math.truediv": "TrueDivide", "math.divide": "Divide"}


def _tf_op_args(entry, ins) -> list:
    """A tf_keras TFOpLambda call [[x, 0, 0, {"y": 3.0}]] -> [x tensor, 3.0]; y a tensor is in ins."""
    y = _tf_op_kwargs(entry).get("y")
    if len(ins) == 1 and isinstance(y, (int, float)) and not isinstance(y, bool):
        return [ins[0], float(y)]
    return list(ins)  # keras_op refuses what is not (tensor, scalar) or (tensor, tensor)


def _refs(value) -> list:
    """input_layers / output_layers: [[name, node, tensor], ...] or one [name, node, tensor]."""
    if value and isinstance(value[0], str):
        value = [value]
    return [(v[0], int(v[2])) for v in value or []]


class _Walker:
    def __init__(self, b: _Builder, input_shapes: dict | None):
        self.b = b
        self.input_shapes = input_shapes or {}
        self.inputs: list[GraphInput] = []
        self.output_names: list[str] = []
        self.layer_outputs: dict[str, list] = {}  # qualified layer name -> its output tensors

    def graph_input(self, name, shape, first_consumer_cls):
        given = self.input_shapes.get(name)
        shape = list(given) if given is not None else shape
        if not shape:
            raise PortError(f"input {name!r} has no shape in the config", file=self.b.path,
                            hint="give it with --input-shape")
        kshape = ("N", *[int(d) if d is not None else None for d in shape[1:]])
        cf = len(kshape) >= 4 or (len(kshape) == 3 and first_consumer_cls in _CONV_LIKE)
        t = _T(name, kshape, cf)
        self.b.tensors.add(name)
        layout = _CF_LAYOUT[len(kshape)] if cf else {2: "NC", 3: "NTC"}.get(len(kshape), "")
        self.inputs.append(GraphInput(name, tuple(1 if d == "N" else d for d in t.module_shape()), "float32",
                                      source_layout=layout))
        return t

    def run_layer(self, entry, q, ins):
        cls = entry.get("class_name")
        cfg = _cfg_of(entry)
        if cls in ("Sequential", "Functional", "Model"):
            return self.model(entry, q + "/", ins)
        self.b.layer = (q, cls)
        if ".ops." in str(entry.get("module", "")):  # keras.ops called on Keras tensors (keras.src.ops.numpy.Add)
            return self.record(q, keras_op(self.b, q, cls, ins))
        if cls == "TFOpLambda":  # tf_keras: a TF function called on Keras tensors (`x + 3.0`)
            return self.record(q, keras_op(self.b, q, _TF_OPS.get(cfg.get("function"), cfg.get("function")),
                                           _tf_op_args(entry, ins)))
        if any(not isinstance(t, _T) for t in ins):
            raise UnsupportedOpError(f"{cls} (called with constant arguments)", q, self.b.path)
        fn = LAYERS.get(cls)
        if fn is None:
            hint = "Lambda layers hold Python code that cannot be ported" if cls == "Lambda" else None
            raise UnsupportedOpError(cls, q, self.b.path, hint=hint)
        try:
            outs = fn(self.b, q, cfg, ins)
        except (KeyError, TypeError, ValueError, IndexError) as e:
            raise PortError(f"layer {q!r} ({cls}): its config is not what Keras writes ({type(e).__name__}: {e})",
                            file=self.b.path) from None
        return self.record(q, outs)

    def record(self, q, outs):
        self.layer_outputs[q] = outs
        return outs

    def model(self, model_config, prefix="", ins=None):
        cls = model_config.get("class_name")
        cfg = model_config.get("config")
        if cls == "Sequential" or isinstance(cfg, list):
            return self.sequential(cfg if isinstance(cfg, list) else cfg.get("layers", []), prefix, ins,
                                   (cfg or {}).get("build_input_shape") if isinstance(cfg, dict) else None)
        return self.functional(cfg, prefix, ins)

    def sequential(self, entries, prefix, ins, build_shape):
        entries = [e for e in entries if isinstance(e, dict)]
        cur = ins
        for i, entry in enumerate(entries):
            name = _entry_name(entry)
            cfg = _cfg_of(entry)
            if entry.get("class_name") == "InputLayer":
                if cur is None:
                    nxt = entries[i + 1].get("class_name") if i + 1 < len(entries) else None
                    cur = [self.graph_input(name, _input_shape(cfg), nxt)]
                continue
            if cur is None:
                cur = [self.graph_input(f"{name}_input", _input_shape(cfg) or build_shape, entry.get("class_name"))]
            cur = self.run_layer(entry, prefix + name, cur)
            if not prefix:
                self.output_names = [name] * len(cur)
        return cur

    def functional(self, cfg, prefix, ins):
        entries = [e for e in cfg.get("layers", []) if isinstance(e, dict)]
        by_name = {_entry_name(e): e for e in entries}
        produced: dict = {}
        input_refs = _refs(cfg.get("input_layers"))
        consumers = {}
        for e in entries:
            for ref in _call_inputs(e):
                if isinstance(ref, tuple):
                    consumers.setdefault(ref[0], e.get("class_name"))
        for k, (name, idx) in enumerate(input_refs):
            if ins is not None:
                produced[(name, idx)] = ins[k]
            else:
                produced[(name, idx)] = self.graph_input(name, _input_shape(_cfg_of(by_name[name])),
                                                         consumers.get(name))
        for e in entries:
            name = _entry_name(e)
            if e.get("class_name") == "InputLayer":
                continue
            calls = _call_inputs(e)
            try:
                args = [produced[c] if isinstance(c, tuple) else c for c in calls]
            except KeyError as err:
                raise PortError(f"layer {prefix + name!r} reads {err.args[0]}, which no earlier layer produces "
                                "(layers out of order or a shared layer)", file=self.b.path) from None
            for i, t in enumerate(self.run_layer(e, prefix + name, args)):
                produced[(name, i)] = t
        refs = _refs(cfg.get("output_layers"))
        if not prefix:
            self.output_names = [name for name, _ in refs]
        return [produced[r] for r in refs]


def _requested_outputs(walker, outputs, path) -> list:
    """--outputs: layer names (nested ones as outer/inner) -> their first output tensors."""
    missing = [o for o in outputs if o not in walker.layer_outputs]
    if missing:
        raise PortError(f"--outputs names no layer {missing[0]!r}", file=path,
                        hint=f"layers: {', '.join(list(walker.layer_outputs)[:12])}, ...")
    walker.output_names = list(outputs)
    return [walker.layer_outputs[o][0] for o in outputs]


def _architecture(f, path):
    if f.meta.get("config") is not None:
        return f.meta["config"]
    hint = ("pass it with --architecture ARCH (ARCH a model.to_json() .json, a .keras or a full-model .h5; "
            "or as a second SOURCE)")
    raise PortError("this Keras file holds weights only, no model architecture", file=path, hint=hint)


def _open(sources, reader_options):
    from ...readers import keras as keras_reader

    path = os.fspath(sources[0])
    options = dict(reader_options)
    arch = options.pop("architecture", None) or (sources[1] if len(sources) > 1 else None)
    if arch is not None and "config" not in options:
        options["config"] = _load_architecture(arch)
    return keras_reader.open(path, **options), path, options, (os.fspath(arch) if arch is not None else None)


def _load_architecture(arch):
    """A config .json / .keras / full-model .h5 -> the model config dict."""
    arch = os.fspath(arch)
    if arch.lower().endswith((".h5", ".hdf5")):
        from ...readers import keras as keras_reader

        f = keras_reader.open(arch)
        try:
            config = f.meta.get("config")
        finally:
            f.close()
        if config is None:
            raise PortError("the --architecture file holds no model config either", file=arch)
        return config
    if arch.lower().endswith(".json"):
        try:
            with open(arch, "rb") as fh:
                data = json.loads(fh.read())
        except (OSError, ValueError) as e:
            raise PortError(f"cannot read the architecture JSON: {e}", file=arch) from None
        return data.get("config", data) if isinstance(data, dict) and "class_name" not in data and \
            isinstance(data.get("config"), dict) and "class_name" in data["config"] else data
    return arch  # a .keras zip: the reader's config= option reads its config.json


def build_graph(sources, *, reader_options=None, outputs=None, input_shapes=None) -> Graph:
    """The port Graph of a Keras model (see the module docstring)."""
    f, path, options, arch = _open(sources, reader_options or {})
    try:
        graph = _build(f, path, options, outputs, input_shapes)
    finally:
        f.close()
    graph.architecture = arch
    graph.check()
    return graph


def _build(f, path, options, outputs, input_shapes) -> Graph:
    config = _architecture(f, path)
    b = _Builder(f, path, str(f.meta.get("version", "")) if f.meta.get("format") != "keras3" else "3")
    walker = _Walker(b, input_shapes)
    outs = walker.model(config)
    if outputs:
        outs = _requested_outputs(walker, outputs, path)
    b.layer = ("(outputs)", "output")
    # outputs follow the input's convention, which the table's parity section permutes by:
    # 4-d+ channels-first; 3-d channels-first only when the input is NLC
    nlc_input = any(i.source_layout == "NLC" for i in walker.inputs)
    final = [b.to_cf(t) if t.rank >= 4 or (t.rank == 3 and nlc_input) else b.to_keras(t) for t in outs]
    out_names = [t.name for t in final]
    if len(set(out_names)) != len(out_names):
        raise PortError("the model returns one tensor twice", file=path)
    layouts = {t.name: (_CF_LAYOUT[t.rank] if t.cf else {2: "NC", 3: "NTC"}.get(t.rank, "")) for t in final}
    dropped = {}
    if outputs:
        b.nodes, dropped = prune_nodes(b.nodes, out_names)
        b.used = {p.source for node in b.nodes for p in node.params.values() if p.source}
    unused = {a.name: dropped.get(a.name) or _unused_reason(a) for a in f.values() if a.name not in b.used}
    cfg = config.get("config") if isinstance(config, dict) else None
    name = (cfg.get("name") if isinstance(cfg, dict) else None) or os.path.splitext(os.path.basename(path))[0]
    return Graph(name=name, framework="keras", source_files=[path], inputs=walker.inputs, outputs=out_names,
                 nodes=b.nodes, output_layouts=layouts, output_names=dict(zip(out_names, walker.output_names)),
                 unused_arrays=unused, reader_options=dict(options))


def _unused_reason(a) -> str:
    if a.name.startswith("optimizer") or a.meta.get("role") in ("optimizer", "counter"):
        return "optimizer state (training only)"
    return "no layer of the architecture reads it"
