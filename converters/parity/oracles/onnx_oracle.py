"""ONNX oracle: runs the .onnx file with onnxruntime (CPU).

Layer names are the reader's (converters.readers.onnx_files): a node's name, else
`<op_type>:<first output>`, made unique with `#<index>`, so the `meta['layer']` of a converted
array is directly a tap. Tapping a layer adds the node's first output to the graph outputs of a
copy of the model (onnxruntime computes only what is asked for); the copy's session is cached per
set of taps. Arrays are in the model's own layout (NCHW for most ONNX models).
"""
from __future__ import annotations

import os
from types import SimpleNamespace

import numpy as np

from ...errors import ConvertersError
from .base import Oracle, OracleCrashed, OracleUnavailable, SourceModel

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
        self.path = os.fspath(model.weights)
        if not os.path.isfile(self.path):
            raise ConvertersError("ONNX model not found", file=self.path)
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
