"""ONNX oracle: runs the .onnx file with onnxruntime (CPU).

Layer names are the reader's (converters.readers.onnx_files): a node's name, else
`<op_type>:<first output>`, made unique with `#<index>`, so the `meta['layer']` of a converted
array is directly a tap. Tapping a layer adds the node's first output to the graph outputs of a
copy of the model (onnxruntime computes only what is asked for); the copy's session is cached per
set of taps. Arrays are in the model's own layout (NCHW for most ONNX models).

Graphs converted from TensorFlow (tf2onnx, keras2onnx) often take an NHWC input and transpose it
to NCHW at once: their inner tensors are NCHW although the table's input is NHWC. Each tensor's
layout is therefore followed through the graph (`activation_layouts`): Transpose permutes it,
the channel-first operators (Conv, BatchNormalization, pooling, ...) make it NC + spatial axes,
elementwise operators keep it, anything else (Reshape, MatMul, ...) leaves it unknown.
"""
from __future__ import annotations

import os
from types import SimpleNamespace

import numpy as np

from ...errors import ConvertersError
from .base import Oracle, OracleCrashed, OracleUnavailable, SourceModel, require_source

INSTALL_HINT = "pip install onnx onnxruntime (or 'weightport[parity]')"


def _import():
    try:
        import onnx
        import onnxruntime
    except ImportError as e:
        raise OracleUnavailable(f"the ONNX oracle needs onnx and onnxruntime ({e})", hint=INSTALL_HINT) from e
    return onnx, onnxruntime


def layer_keys(nodes) -> list[str]:
    """The reader's layer key for every node (same rule, same order)."""
    from ...readers.onnx_files import _node_keys

    return _node_keys([SimpleNamespace(name=n.name, op_type=n.op_type, outputs=list(n.output)) for n in nodes], {})


class OnnxOracle(Oracle):
    framework = "onnx"

    def __init__(self, model: SourceModel):
        super().__init__(model)
        self.path = require_source(os.fspath(model.weights), "ONNX model")
        self.onnx, self.ort = _import()
        try:
            self.proto = self.onnx.load(self.path)
        except Exception as e:  # noqa: BLE001 - onnx raises DecodeError, ValueError, OSError ...
            raise OracleCrashed(f"onnx could not load the model: {e}", file=self.path) from e
        graph = self.proto.graph
        initializers = {t.name for t in graph.initializer}
        self._inputs = [i.name for i in graph.input if i.name not in initializers]
        self._outputs = [o.name for o in graph.output]
        self._keys = layer_keys(graph.node)
        self._first_output = {k: n.output[0] for k, n in zip(self._keys, graph.node) if n.output}
        self._sessions = {}
        self.threads = int(model.options.get("threads", 0) or 0)

    def input_names(self) -> list[str]:
        return list(self._inputs)

    def output_names(self) -> list[str]:
        return list(self._outputs)

    def layer_order(self) -> list[str]:
        return list(self._keys)  # ONNX requires nodes in topological order

    def activation_layouts(self, names, input_layouts):
        layouts = tensor_layouts(self.proto.graph, input_layouts)
        out = {}
        for name in names:
            tensor = self._first_output.get(name, name)
            if tensor in layouts:
                out[name] = layouts[tensor]
        return out

    def _session(self, extra: tuple):
        if extra not in self._sessions:
            options = self.ort.SessionOptions()
            if self.threads:
                options.intra_op_num_threads = self.threads
            if extra:
                # keep tapped tensors intact: graph fusions would remove the intermediates asked for
                options.graph_optimization_level = self.ort.GraphOptimizationLevel.ORT_DISABLE_ALL
                proto = self.onnx.ModelProto()
                proto.CopyFrom(self.proto)
                known = {o.name for o in proto.graph.output}
                for name in extra:
                    if name not in known:
                        proto.graph.output.append(self.onnx.ValueInfoProto(name=name))
                model = proto.SerializeToString()
            else:
                model = self.path
            try:
                self._sessions[extra] = self.ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
            except Exception as e:  # noqa: BLE001 - onnxruntime's own exception types
                raise OracleCrashed(f"onnxruntime could not load the model: {_tail(e)}", file=self.path) from e
        return self._sessions[extra]

    def run(self, inputs, taps=()):
        unknown = [t for t in taps if t not in self._first_output]
        if unknown:
            raise ConvertersError(f"the ONNX graph has no layer(s) {unknown[:5]} to tap", file=self.path)
        missing = [n for n in self._inputs if n not in inputs]
        if missing:
            raise ConvertersError(f"no value for the model input(s) {missing}; it takes {self._inputs}", file=self.path)
        tap_tensors = tuple(dict.fromkeys(self._first_output[t] for t in taps))
        session = self._session(tuple(t for t in tap_tensors if t not in self._outputs))
        feed = {}
        for meta in session.get_inputs():
            if meta.name in inputs:
                feed[meta.name] = np.ascontiguousarray(inputs[meta.name], dtype=_numpy_type(meta.type))
        names = [o.name for o in session.get_outputs()]
        try:
            values = session.run(names, feed)
        except Exception as e:  # noqa: BLE001
            raise OracleCrashed(f"onnxruntime failed running the model: {_tail(e)}", file=self.path) from e
        by_tensor = dict(zip(names, values))
        out = {n: by_tensor[n] for n in self._outputs}
        for t in taps:
            out[t] = by_tensor[self._first_output[t]]
        return out

    def close(self) -> None:
        self._sessions.clear()


CHANNEL_FIRST_OPS = {"Conv", "ConvTranspose", "BatchNormalization", "InstanceNormalization", "MaxPool", "AveragePool",
                     "GlobalAveragePool", "GlobalMaxPool", "LpPool", "LRN", "DepthToSpace", "SpaceToDepth"}
LAYOUT_KEEPING_OPS = {"Relu", "LeakyRelu", "PRelu", "Sigmoid", "Tanh", "Clip", "Elu", "Selu", "HardSigmoid",
                      "HardSwish", "Softplus", "Softsign", "Add", "Sub", "Mul", "Div", "Max", "Min", "Sum", "Mean",
                      "Identity", "Dropout", "Cast", "Pad", "Resize", "Upsample", "Abs", "Neg", "Exp", "Log", "Sqrt",
                      "Pow", "Erf", "Gelu", "Mish", "Concat"}
CHANNEL_FIRST_LAYOUT = {3: "NCL", 4: "NCHW", 5: "NCDHW"}


def tensor_layouts(graph, input_layouts: dict) -> dict:
    """{tensor name: layout letters or None}, followed from the graph inputs' layouts (module
    docstring). Initializers have no layout; a constant beside a tensor does not change its."""
    constants = {t.name for t in graph.initializer}
    layouts = {name: layout for name, layout in (input_layouts or {}).items() if layout}
    for node in graph.node:
        known = [layouts.get(i) for i in node.input if i and i not in constants and layouts.get(i)]
        layout = None
        if node.op_type == "Transpose" and known:
            perm = next((list(a.ints) for a in node.attribute if a.name == "perm"), None)
            source = known[0]
            if perm is None:
                perm = list(range(len(source)))[::-1]
            layout = "".join(source[p] for p in perm) if len(perm) == len(source) else None
        elif node.op_type in CHANNEL_FIRST_OPS:
            rank = len(known[0]) if known else _weight_rank(graph, node, constants)
            layout = CHANNEL_FIRST_LAYOUT.get(rank)
        elif node.op_type in LAYOUT_KEEPING_OPS and known and len(set(known)) == 1:
            layout = known[0]
        for out in node.output:
            layouts[out] = layout
    return layouts


def _weight_rank(graph, node, constants):
    """The data rank of a Conv-like node from its weight initializer (same rank as the data)."""
    if node.op_type not in ("Conv", "ConvTranspose") or len(node.input) < 2 or node.input[1] not in constants:
        return None
    return next((len(t.dims) for t in graph.initializer if t.name == node.input[1]), None)


_ORT_TYPES = {"tensor(float)": np.float32, "tensor(double)": np.float64, "tensor(float16)": np.float16,
              "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(uint8)": np.uint8,
              "tensor(int8)": np.int8, "tensor(bool)": np.bool_}


def _numpy_type(ort_type: str):
    return _ORT_TYPES.get(ort_type, np.float32)


def _tail(e, n=8) -> str:
    return "\n".join(str(e).strip().splitlines()[-n:])


ORACLE = OnnxOracle


def create(model: SourceModel) -> OnnxOracle:
    """Registry entry point (converters.parity.oracles.ORACLES -> module -> create)."""
    return OnnxOracle(model)
