"""TensorFlow frontend: a frozen GraphDef (`.pb`, as readers/_tf_graph parses it) -> port.graph.Graph.

The module is channels-first: every 4-d TF tensor (NHWC) is held as its NCHW permutation
("cf") in the module, so convolutions, pooling, BatchNorm and friends run as PyTorch runs them.
Ops whose meaning depends on TF's memory order (Reshape, Transpose, Squeeze that would reorder,
Pack) first get a `transpose` back to NHWC, so their result is bit-for-bit TF's; such 4-d
tensors stay "source order" until an op that needs channels-first takes them back.

Weights are the Const nodes the reader lists (array name = node name): Conv2D filters get
`tf_conv`, depthwise filters `tf_depthwise`, MatMul kernels `tf_dense`; a BiasAdd (or Add of a
1-d constant) right after a conv/MatMul becomes that layer's bias Param (issue #10: never a zero
bias). Small integer constants (axes, shapes, paddings, sizes) are read at port time and listed
as unused arrays with that reason; Shape / StridedSlice / Pack / arithmetic on constants are
folded when their inputs are known (Keras Flatten's shape computation).

SavedModel directories: the serving signature's function graph, inlined by _tf_saved (tf.Module,
tf_keras and Keras 3 SavedModels alike: their serving functions are plain TF ops).
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ... import readers
from ..graph import Graph, GraphInput, Node, Param, PortError, UnsupportedOpError
from . import _tf_saved
from ._tf_ops import OPS, _Value

NAME = "tensorflow"
_PASS = ("Identity", "ReadVariableOp", "StopGradient", "Snapshot", "PreventGradient", "CheckNumerics")
_TO_CF, _TO_SOURCE = (0, 3, 1, 2), (0, 2, 3, 1)


def build_graph(sources, *, reader_options=None, outputs=None, input_shapes=None, name=None) -> Graph:
    paths = [Path(s) for s in ([sources] if isinstance(sources, (str, os.PathLike)) else sources)]
    if len(paths) != 1:
        raise PortError(f"a TensorFlow port takes one frozen .pb or SavedModel, got {len(paths)} sources",
                        file=paths[0] if paths else None)
    path = paths[0]
    saved = path if (path / "saved_model.pb").is_file() else (path.parent if path.name == "saved_model.pb" else None)
    if saved is not None:
        return _saved_model(saved, reader_options, outputs, input_shapes)
    arrays = readers.open_file(path, "tensorflow", **dict(reader_options or {}))
    if arrays.meta.get("format") != "graphdef":
        raise PortError("a TensorFlow port needs a frozen GraphDef (.pb) or a SavedModel; this is a checkpoint, "
                        "which holds weights but no graph", file=path,
                        hint="freeze the model (convert_variables_to_constants_v2) or pass the SavedModel")
    b = _Builder(os.fspath(path), arrays)
    heads = b.heads(outputs)
    b.build(heads, input_shapes)
    out_tensors = [b.output(h) for h in heads]
    graph = Graph(name=name or path.stem, framework="tensorflow", source_files=[os.fspath(path)],
                  inputs=b.inputs, outputs=out_tensors, nodes=b.nodes,
                  output_layouts={t: b.layout_of(t) for t in out_tensors if b.layout_of(t)},
                  output_names={t: h.split(":")[0] if h.endswith(":0") else h for t, h in zip(out_tensors, heads)},
                  unused_arrays=b.unused_arrays(), reader_options=dict(reader_options or {}), fixed_batch=b.fixed_batch,
                  notes=[("TensorFlow takes and returns NHWC; the module is NCHW (inputs and 4-d outputs are "
                         "permuted at the boundary)")] if any(i.source_layout == "NHWC" for i in b.inputs) else [])
    graph.check()
    return graph


def _saved_model(folder: Path, reader_options, outputs, input_shapes) -> Graph:
    """A SavedModel's serving signature (option `signature`), inlined from its function library;
    Keras SavedModels too (their serving function is plain TF ops)."""
    options = dict(reader_options or {})
    signature = options.pop("signature", None)
    arrays = readers.open_file(folder, "tensorflow", **options)
    saved = _tf_saved.load(folder, list(arrays), signature)
    b = _Builder(os.fspath(folder / "saved_model.pb"), arrays, layers=saved.layers, extra=saved.constants)
    heads = [_canon(o) for o in outputs] if outputs else [t for _, t in saved.outputs]
    names = {} if outputs else {t: k for k, t in saved.outputs}
    b.build(heads, input_shapes)
    outs = [b.output(h) for h in heads]
    graph = Graph(name=folder.name, framework="tensorflow", source_files=[os.fspath(folder)], inputs=b.inputs,
                  outputs=outs, nodes=b.nodes, output_layouts={t: b.layout_of(t) for t in outs if b.layout_of(t)},
                  output_names={t: names.get(h, h.removesuffix(":0")) for t, h in zip(outs, heads)},
                  unused_arrays=b.unused_arrays(), reader_options=options, fixed_batch=b.fixed_batch,
                  notes=["ported from the SavedModel's serving signature (its function graph, inlined)"])
    graph.check()
    return graph


class _Builder:
    def __init__(self, file, arrays, layers=None, extra=None):
        self.file, self.arrays = file, arrays
        self.layers = arrays.layers if layers is None else layers
        self.extra = extra or {}     # SavedModel function constants: values, not stored arrays
        self.values: dict[str, _Value] = {}
        self.nodes, self.inputs = [], []
        self.fixed_batch = None  # the first Placeholder's stored batch, when it is a literal
        self.used, self.read_at_port_time, self.taken = set(), set(), set()
        self.fused, self.graph_outputs = set(), set()
        self.consumers = self._consumers()

    def _consumers(self) -> dict:
        out: dict[str, list] = {}
        for name, layer in self.layers.items():
            for inp in layer.inputs:
                if not inp.startswith("^"):
                    out.setdefault(_canon(inp), []).append(name)
        return out

    def heads(self, outputs) -> list:
        if outputs:
            heads = [_canon(o) for o in outputs]
            for h in heads:
                if h.split(":")[0] not in self.layers:
                    raise PortError(f"outputs names {h!r}, which is no op of the graph", file=self.file)
            return heads
        consumed = {inp.lstrip("^").split(":")[0] for layer in self.layers.values() for inp in layer.inputs}
        return [f"{n}:0" for n, layer in self.layers.items()
                if n not in consumed and layer.type not in ("Const", "NoOp", "Placeholder")]

    # -- the walk ------------------------------------------------------------------------------
    def build(self, heads, input_shapes) -> None:
        order = self._topological([h.split(":")[0] for h in heads])
        self.graph_outputs = set(heads)
        shapes = dict(input_shapes or {})
        for name in order:
            layer = self.layers[name]
            if name in self.fused or f"{name}:0" in self.values:
                continue
            if layer.type == "Placeholder":
                self._placeholder(layer, shapes)
            elif layer.type in ("Const", "HostConst"):
                self._const(layer)
            elif layer.type in _PASS:
                self.values[f"{name}:0"] = self.value(layer.inputs[0])
            elif layer.type == "NoOp":
                continue
            else:
                handler = OPS.get(layer.type)
                if handler is None:
                    raise UnsupportedOpError(layer.type, name, self.file)
                handler(self, layer)
        unknown = sorted(set(shapes) - {i.name for i in self.inputs} - {None, ""})
        if unknown:
            raise PortError(f"input shapes given for {unknown}, which are not Placeholders of the graph",
                            file=self.file)

    def _topological(self, roots) -> list:
        order, state = [], {}
        for root in roots:
            stack = [(root, False)]
            while stack:
                name, done = stack.pop()
                if done:
                    state[name] = 2
                    order.append(name)
                    continue
                if state.get(name):
                    continue
                state[name] = 1
                stack.append((name, True))
                for inp in reversed(self.layers[name].inputs):
                    src = inp.lstrip("^").split(":")[0]
                    if src not in self.layers:
                        raise PortError(f"op {name!r} reads {src!r}, which the graph does not define", file=self.file)
                    if not state.get(src):
                        stack.append((src, False))
        return order

    def _placeholder(self, layer, shapes) -> None:
        if layer.params.get("dtype", "float32") != "float32":
            raise UnsupportedOpError(f"Placeholder of dtype {layer.params.get('dtype')}", layer.name, self.file)
        given = shapes.get(layer.name) or (shapes.get(None) or shapes.get("") if len(shapes) == 1 else None)
        stored = layer.params.get("shape")
        shape = tuple(int(d) for d in given) if given else (
            tuple(None if d is None or d < 0 else int(d) for d in stored) if stored is not None else None)
        if shape is None:
            raise PortError(f"Placeholder {layer.name!r} has no shape", file=self.file,
                            hint="pass --input-shape NAME=N,H,W,C (TF layout)")
        if not self.inputs and stored and len(stored) > 1 and stored[0] is not None and stored[0] > 0:
            self.fixed_batch = int(stored[0])  # TensorFlow refuses another batch for this Placeholder
        cf = len(shape) == 4
        module_shape = tuple(shape[i] for i in _TO_CF) if cf else shape
        layout = {4: "NHWC", 2: "NC", 3: "NLC"}.get(len(shape), "N" + "?" * (len(shape) - 1))
        self.inputs.append(GraphInput(name=layer.name, shape=module_shape, source_layout=layout))
        self.values[f"{layer.name}:0"] = _Value(ir=layer.name, shape=shape, cf=cf)

    def _const(self, layer) -> None:
        if not layer.arrays:
            raise UnsupportedOpError("a string constant", layer.name, self.file)
        key = layer.arrays[0]
        handle = self.extra[key] if key in self.extra else self.arrays[key]
        self.values[f"{layer.name}:0"] = _Value(array=handle.name, shape=handle.shape, load=handle.numpy)

    # -- values ----------------------------------------------------------------------------------
    def value(self, tf_name) -> _Value:
        """What a TF tensor name stands for; Consts (and Identity chains over them) resolve on
        first use, since a fused bias may be read before the walk reaches its Const."""
        key = _canon(tf_name)
        if key not in self.values:
            layer = self.layers.get(key.split(":")[0])
            if layer is not None and key.endswith(":0") and layer.type in ("Const", "HostConst"):
                self._const(layer)
            elif layer is not None and key.endswith(":0") and layer.type in _PASS:
                self.values[key] = self.value(layer.inputs[0])
            else:
                raise UnsupportedOpError(f"output {key.split(':')[1]} of {key.split(':')[0]}", key.split(":")[0],
                                         self.file)
        return self.values[key]

    def ensure(self, tf_name):
        """The value of a tensor computed from constants only, folded now (a fused bias may be
        reshaped from its variable after the conv in the walk); None when it needs run-time data."""
        key = _canon(tf_name)
        if key in self.values:
            return self.values[key]
        layer = self.layers.get(key.split(":")[0])
        if layer is None or layer.type in ("Placeholder",) or layer.name in self.fused:
            return None
        if layer.type in ("Const", "HostConst") or layer.type in _PASS:
            return self.value(tf_name)
        inputs = [self.ensure(i) for i in layer.inputs if not i.startswith("^")]
        if any(v is None or not v.is_const for v in inputs) or layer.type not in OPS:
            return None
        try:
            OPS[layer.type](self, layer)
        except UnsupportedOpError:
            return None   # not foldable here; the walk reaches the op and reports it
        return self.values.get(key)

    def const(self, tf_name, what) -> np.ndarray:
        """A constant read at port time (an axis, a shape): refused when the graph computes it."""
        v = self.value(tf_name)
        if not v.is_const:
            raise UnsupportedOpError(f"{what} computed at run time (from {tf_name!r})", tf_name.split(":")[0],
                                     self.file)
        if v.array is not None:
            self.read_at_port_time.add(v.array)
        return v.value()

    def set(self, layer, value: _Value, index=0) -> None:
        self.values[f"{layer.name}:{index}"] = value

    def only_consumer(self, layer, op_types):
        """The single consumer of a layer's output 0 when it is one of op_types (for fusing)."""
        users = self.consumers.get(f"{layer.name}:0", [])
        if len(users) == 1 and self.layers[users[0]].type in op_types:
            return self.layers[users[0]]
        return None

    def cf(self, v: _Value, layer) -> str:
        """The module tensor of v, channels-first (a transpose is inserted for a source-order 4-d)."""
        if v.is_const:
            return self.constant(v, layer, cf=True)
        if v.shape is not None and len(v.shape) == 4 and not v.cf:
            return self.emit(self.fresh(f"{layer.name}_to_nchw"), "transpose", [v.ir], {"perm": _TO_CF},
                             source_op="layout")
        return v.ir

    def source(self, v: _Value, layer) -> str:
        """The module tensor of v in TF's own axis order (a transpose back for a channels-first one)."""
        if v.is_const:
            return self.constant(v, layer, cf=False)
        if v.cf:
            return self.emit(self.fresh(f"{layer.name}_to_nhwc"), "transpose", [v.ir], {"perm": _TO_SOURCE},
                             source_op="layout")
        return v.ir

    def constant(self, v: _Value, layer, cf: bool, rank=4) -> str:
        """A stored Const used as a tensor operand: a `constant` node, laid out for a cf operand."""
        if v.array is None:
            raise UnsupportedOpError("a constant computed from other constants used as an operand", layer.name,
                                     self.file)
        if v.array in self.extra:   # a function constant: no stored array holds it
            if tuple(v.shape) != ():
                raise UnsupportedOpError("a non-scalar function constant used as an operand", layer.name, self.file)
            return self.emit(self.fresh(f"{v.array}_const"), "constant", [], {"shape": (), "dtype": "float32"},
                             {"value": Param(fill=float(v.value()))}, source_op="Const")
        shape, transforms = tuple(v.shape), list(v.transforms)
        if cf and 1 <= len(shape) <= 4:
            full = (1,) * (rank - len(shape)) + shape
            if full != shape:
                transforms.append({"reshape": {"shape": list(full)}})
            if rank == 4:
                transforms.append({"permute": {"axes": list(_TO_CF)}})
                full = tuple(full[i] for i in _TO_CF)
            shape = full
        self.used.add(v.array)
        return self.emit(self.fresh(f"{v.array}_const"), "constant", [], {"shape": shape, "dtype": "float32"},
                         {"value": Param(source=v.array, transforms=transforms)}, source_op="Const")

    def param(self, tf_name, transforms=(), what="weight") -> Param:
        v = self.value(tf_name)
        if not v.is_const or v.array is None or v.array in self.extra:
            raise UnsupportedOpError(f"{what} computed at run time or not stored as a variable (from {tf_name!r})",
                                     tf_name.split(":")[0], self.file)
        self.used.add(v.array)
        return Param(source=v.array, transforms=v.transforms + list(transforms))

    def fresh(self, base) -> str:
        name, n = base, 1
        while name in self.taken or name in self.layers and name != base:
            n += 1
            name = f"{base}_{n}"
        return name

    def emit(self, name, op, inputs, attrs, params=None, source_op="", outputs=None) -> str:
        if name in self.taken:
            name = self.fresh(name + "_")
        self.taken.add(name)
        outputs = outputs or [name]
        self.nodes.append(Node(name=name, op=op, inputs=list(inputs), outputs=list(outputs), attrs=attrs,
                               params=params or {}, source_op=source_op))
        return outputs[0]

    def output(self, head) -> str:
        """A graph output: 4-d ones channels-first (the module's convention; TF returns NHWC)."""
        v = self.value(head)
        if v.is_const:
            raise UnsupportedOpError("a graph output that is a constant", head, self.file)
        layer = self.layers[head.split(":")[0]]
        return self.cf(v, layer) if v.shape is not None and len(v.shape) == 4 else v.ir

    def layout_of(self, tensor) -> str | None:
        """What TF returns: NHWC for a 4-d output (the module returns its NCHW permutation)."""
        for v in self.values.values():
            if v.ir == tensor and v.shape is not None:
                return {4: "NHWC", 2: "NC"}.get(len(v.shape))
        return None

    def unused_arrays(self) -> dict:
        out = {}
        for key in self.arrays:
            if key in self.used:
                continue
            out[key] = ("read at port time (an axis, shape, size or padding written into model.py)"
                        if key in self.read_at_port_time else "feeds no op that reaches the ported outputs")
        return out


def _canon(name: str) -> str:
    return name if ":" in name else f"{name}:0"
