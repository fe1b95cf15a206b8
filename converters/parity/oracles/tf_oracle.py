"""TensorFlow oracle: runs a SavedModel (directory or its saved_model.pb) or a frozen GraphDef .pb
in tensorflow-cpu, in-process.

Both kinds end up as one frozen GraphDef: a SavedModel's signature function (option `signature`,
default "serving_default", else the only one) is frozen with TensorFlow's own
convert_variables_to_constants_v2, which replaces each variable read by the variable's value and
leaves every computing op as it was. The graph is imported into a tf.compat.v1.wrap_function and
pruned to the wanted fetches, so any op's output can be read: that is how taps work.

Names: inputs are the graph's Placeholders (for a SavedModel, the signature's argument names);
outputs are the signature's output keys (sorted, as TensorFlow flattens them) or, for a frozen
graph, option `outputs` or else the ops nothing consumes. A tap names an op (`conv1/Conv2D`, or
`name:1` for another output) or a name scope (`conv1`, the prefix the reader puts in
meta["layer"]): a scope gives the output of its last op whose result leaves the scope. Arrays
are in TensorFlow's layout (NHWC).

Frozen graphs written op by op (TF1 code) keep a layer's pieces apart: a convolution's kernel is
read by `conv1/Conv2D` but its bias is added by a separate `conv1/Add`, and an unfused BatchNorm's
constants (`bn/gamma`) feed arithmetic under `bn/batchnorm/`. `tap_for` therefore reads a
Conv2D/MatMul layer after the bias add that alone consumes it, and a layer the reader could only
name after a constant at the name scope around it (`bn`). A tap whose value comes out of an
activation op (a Keras scope ending in Relu) is reported by `fused_activations`.
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from ...errors import ConvertersError
from .base import Oracle, OracleCrashed, OracleUnavailable, SourceModel, require_source
from .keras_oracle import import_tensorflow_safely

INSTALL_HINT = "pip install 'weightport[parity]' (tensorflow-cpu)"
SKIP_OPS = {"Const", "Placeholder", "NoOp", "Identity", "VarHandleOp", "ReadVariableOp"}
BIASED_OPS = {"Conv2D", "Conv3D", "DepthwiseConv2dNative", "MatMul", "Conv2DBackpropInput"}
BIAS_ADD_OPS = {"BiasAdd", "Add", "AddV2"}
ACTIVATION_OPS = {"Relu": "relu", "Relu6": "relu6", "Sigmoid": "sigmoid", "Tanh": "tanh", "Elu": "elu", "Selu": "selu",
                  "Softplus": "softplus", "Softsign": "softsign", "Softmax": "softmax"}


def _import_tf():
    import_tensorflow_safely()
    try:
        import tensorflow as tf
    except ImportError as e:
        raise OracleUnavailable(f"the TensorFlow oracle needs tensorflow, which is not installed here ({e})",
                                hint=INSTALL_HINT) from e
    return tf


def _saved_model_dir(path: Path):
    if path.is_dir() and (path / "saved_model.pb").is_file():
        return path
    if path.name == "saved_model.pb":
        return path.parent
    return None


class TensorFlowOracle(Oracle):
    framework = "tensorflow"

    def __init__(self, model: SourceModel):
        super().__init__(model)
        self.path = require_source(Path(model.weights), "TensorFlow model", directory_ok=True)
        self.tf = _import_tf()
        try:
            if _saved_model_dir(self.path) is not None:
                graph_def, inputs, outputs = self._freeze_saved_model(_saved_model_dir(self.path))
            else:
                graph_def, inputs, outputs = self._read_frozen(self.path)
        except ConvertersError:
            raise
        except Exception as e:
            raise OracleCrashed(f"TensorFlow could not load the model: {type(e).__name__}: "
                                f"{str(e).strip()[-1500:]}", file=self.path) from e
        self.graph_def = graph_def
        self._inputs = inputs      # name -> tensor name in the graph
        self._outputs = outputs    # name -> tensor name in the graph
        self.wrapped = self.tf.compat.v1.wrap_function(
            lambda: self.tf.graph_util.import_graph_def(graph_def, name=""), [])
        self.graph = self.wrapped.graph
        self._ops = [op for op in self.graph.get_operations()]
        self._display = {op.name: _display_name(op.name) for op in self._ops}
        self._by_display = {shown: real for real, shown in self._display.items()}
        self._pruned: dict[tuple, object] = {}

    # ---------------------------------------------------------------------------- loading

    def _freeze_saved_model(self, folder: Path):
        from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

        loaded = self.tf.saved_model.load(str(folder))
        signatures = dict(loaded.signatures)
        wanted = self.model.options.get("signature")
        if wanted is None:
            only = len(signatures) == 1 and "serving_default" not in signatures
            wanted = next(iter(signatures)) if only else "serving_default"
        if wanted not in signatures:
            raise ConvertersError(f"the SavedModel has no signature {wanted!r}; it has {sorted(signatures)}",
                                  file=folder, hint="choose one with the `signature` option")
        function = signatures[wanted]
        self.signature, self.signatures = wanted, sorted(signatures)
        frozen = convert_variables_to_constants_v2(function)
        arg_names = sorted(function.structured_input_signature[1])  # keyword arguments of a signature
        placeholders = [t.name for t in frozen.inputs if t.dtype != self.tf.resource]
        if len(arg_names) != len(placeholders):
            arg_names = [p.split(":")[0] for p in placeholders]
        by_op = {p.split(":")[0]: p for p in placeholders}
        inputs = {name: by_op.get(name, p) for name, p in zip(arg_names, placeholders)}
        output_keys = sorted(function.structured_outputs)
        outputs = {key: t.name for key, t in zip(output_keys, frozen.outputs)}
        return frozen.graph.as_graph_def(), inputs, outputs

    def _read_frozen(self, path: Path):
        graph_def = self.tf.compat.v1.GraphDef()
        try:
            graph_def.ParseFromString(path.read_bytes())
        except Exception as e:
            raise ConvertersError(f"not a GraphDef protobuf ({e})", file=path) from e
        inputs = self.model.options.get("inputs") or [n.name for n in graph_def.node if n.op == "Placeholder"]
        outputs = self.model.options.get("outputs") or _unconsumed(graph_def)
        return graph_def, {_op(n): _tensor(n) for n in inputs}, {_op(n): _tensor(n) for n in outputs}

    # ----------------------------------------------------------------------------- interface

    def notes(self) -> list[str]:
        if len(getattr(self, "signatures", ())) < 2:
            return []
        return [f"the SavedModel has signatures {self.signatures}: ran {self.signature!r} "
                f"(--option signature=NAME for another)"]

    def input_names(self) -> list[str]:
        return list(self._inputs)

    def output_names(self) -> list[str]:
        return list(self._outputs)

    def layer_order(self) -> list[str]:
        """Ops in graph order, each name scope right after its last op (`conv1` after
        `conv1/BiasAdd`), and for scopes Keras 3 traced (`functional_1/conv_1`) the layer's own
        name (`conv`) when only one scope has it: every name a tap accepts, so a source layer named
        after a scope (what readers report) can be paired."""
        ops = [self._display[op.name] for op in self._ops if op.type not in SKIP_OPS]
        last_op_of_scope: dict[str, int] = {}
        for i, name in enumerate(ops):
            parts = name.split("/")
            for depth in range(1, len(parts)):
                last_op_of_scope["/".join(parts[:depth])] = i
        short: dict[str, set] = {}
        for scope in last_op_of_scope:
            base = re.sub(r"_\d+$", "", scope.rsplit("/", 1)[-1])
            short.setdefault(base, set()).add(scope)
        after: dict[int, list[str]] = {}
        for scope, i in last_op_of_scope.items():
            after.setdefault(i, []).append(scope)
        for base, scopes in short.items():
            if len(scopes) == 1 and base not in last_op_of_scope:
                after[last_op_of_scope[next(iter(scopes))]].append(base)
        order = []
        for i, name in enumerate(ops):
            order.append(name)
            order.extend(sorted(after.get(i, []), key=lambda s: -s.count("/")))  # inner scopes first
        return list(dict.fromkeys(order))

    def tap_for(self, layer: str) -> str:
        try:
            op = self.graph.get_operation_by_name(self._by_display.get(layer, layer))
        except KeyError:
            return layer
        if op.type in SKIP_OPS:  # a constant the reader could not attribute: its name scope
            order = self._order_set()
            parts = layer.split("/")
            return next(("/".join(parts[:d]) for d in range(len(parts) - 1, 0, -1) if "/".join(parts[:d]) in order),
                        layer)
        consumers = op.outputs[0].consumers() if op.type in BIASED_OPS and op.outputs else []
        if len(consumers) == 1 and consumers[0].type in BIAS_ADD_OPS and self._adds_constant(consumers[0], op):
            return self._display.get(consumers[0].name, consumers[0].name)
        return layer

    def _adds_constant(self, add, op) -> bool:
        others = [t.op for t in add.inputs if t.op is not op]
        while others and others[0].type in ("Identity", "ReadVariableOp"):
            others = [t.op for t in others[0].inputs]
        return len(others) == 1 and others[0].type == "Const"

    def _order_set(self) -> set:
        if getattr(self, "_order", None) is None:
            self._order = set(self.layer_order())
        return self._order

    def fused_activations(self, taps):
        fused = {}
        for tap in taps:
            try:
                op_type = self.graph.get_tensor_by_name(self._tap_tensor(tap)).op.type
            except (ConvertersError, KeyError, ValueError):
                continue
            if op_type in ACTIVATION_OPS:
                fused[tap] = ACTIVATION_OPS[op_type]
        return fused

    def run(self, inputs, taps=()):
        taps = [t for t in dict.fromkeys(taps)]
        fetch_names = [self._outputs[n] for n in self._outputs] + [self._tap_tensor(t) for t in taps]
        missing = [n for n in self._inputs if n not in inputs]
        if missing:
            raise ConvertersError(f"no value for the model input(s) {missing}; the model takes {list(self._inputs)}",
                                  file=self.path)
        function = self._function(tuple(fetch_names))
        feed = []
        for name, tensor_name in self._inputs.items():
            dtype = self.graph.get_tensor_by_name(tensor_name).dtype.as_numpy_dtype
            feed.append(self.tf.constant(np.asarray(inputs[name]).astype(dtype, copy=False)))
        try:
            results = function(*feed)
        except Exception as e:
            raise OracleCrashed(f"TensorFlow failed running the model: {type(e).__name__}: "
                                f"{str(e).strip()[-1500:]}", file=self.path) from e
        names = self.output_names() + taps
        return {name: np.asarray(value) for name, value in zip(names, results)}

    # ------------------------------------------------------------------------------- helpers

    def _function(self, fetches: tuple):
        if fetches not in self._pruned:
            feeds = [self.graph.get_tensor_by_name(t) for t in self._inputs.values()]
            self._pruned[fetches] = self.wrapped.prune(feeds, [self.graph.get_tensor_by_name(t) for t in fetches])
        return self._pruned[fetches]

    def _tap_tensor(self, tap: str) -> str:
        """The tensor a tap names: an op, `op:i`, or a name scope's outgoing result. Names are
        matched as layer_order shows them (without the StatefulPartitionedCall/ prefixes that
        inlining a SavedModel function adds) or as they are in the graph."""
        name, _, index = tap.partition(":")
        real = self._by_display.get(name, name)
        try:
            op = self.graph.get_operation_by_name(real)
            if op.outputs:
                return op.outputs[int(index or 0)].name
        except KeyError:
            pass
        prefix = self._scope_of(name.rstrip("/")) + "/"

        def inside_scope(op):
            return self._display.get(op.name, op.name).startswith(prefix) or op.name.startswith(prefix)

        inside = [op for op in self._ops if inside_scope(op) and op.type not in SKIP_OPS and op.outputs]
        leaving = [op for op in inside
                   if any(not inside_scope(consumer) for out in op.outputs for consumer in out.consumers())]
        chosen = leaving or inside
        if not chosen:
            raise ConvertersError(f"the TensorFlow graph has no op or name scope {tap!r} to tap", file=self.path)
        return chosen[-1].outputs[0].name

    def _scope_of(self, name: str) -> str:
        """The graph's name scope for a layer name: the name itself when ops live under it, else
        the first scope whose last part is the name, allowing the `_1` suffix Keras 3 adds when it
        traces a model inside its own scope (`functional_1/conv_1/...` for layer `conv`)."""
        shown = [self._display[op.name] for op in self._ops]
        if any(s.startswith(name + "/") for s in shown):
            return name
        depth = name.count("/") + 1
        suffixed = re.compile(re.escape(name) + r"(_\d+)?")
        for s in shown:
            parts = s.split("/")
            for i in range(len(parts) - depth):
                if suffixed.fullmatch("/".join(parts[i:i + depth])):
                    return "/".join(parts[:i + depth])
        return name


def _display_name(name: str) -> str:
    while name.startswith("StatefulPartitionedCall/"):
        name = name[len("StatefulPartitionedCall/"):]
    return name


def _op(name: str) -> str:
    return name.split(":")[0]


def _tensor(name: str) -> str:
    return name if ":" in name else name + ":0"


def _unconsumed(graph_def) -> list[str]:
    """Ops no other op reads: the graph's outputs when none are named."""
    consumed = {inp.lstrip("^").split(":")[0] for node in graph_def.node for inp in node.input}
    return [n.name for n in graph_def.node if n.name not in consumed and n.op not in ("Const", "NoOp", "Placeholder")]


ORACLE = TensorFlowOracle


def create(model: SourceModel) -> TensorFlowOracle:
    """Registry entry point (converters.parity.oracles.ORACLES -> module -> create)."""
    return TensorFlowOracle(model)
