"""A SavedModel's serving signature as one flat graph, for the TensorFlow frontend, without
TensorFlow: saved_model.pb is walked on the wire (readers/_tf_graph's NodeDef parser), the
signature's StatefulPartitionedCall is inlined function by function, and every captured
variable is tied to its checkpoint key in variables/ through the object graph.

saved_model.pb: SavedModel.meta_graphs=2 -> MetaGraphDef {graph_def=2, signature_def=5 (map),
object_graph_def=7}. GraphDef.library=2 -> FunctionDefLibrary.function=1 -> FunctionDef
{signature=1 OpDef {name=1, input_arg=2, output_arg=3 (ArgDef.name=1)}, node_def=3, ret=4 (map)}.
SignatureDef {inputs=1, outputs=2: map<string, TensorInfo {name=1}>}. SavedObjectGraph
{nodes=1 SavedObject {children=1 {node_id=1, local_name=2}}, concrete_functions=2 (map<string,
SavedConcreteFunction {bound_inputs=2}>)}. A call's captured inputs are the concrete function's
bound_inputs (object node ids); a node's checkpoint key is its breadth-first path of escaped
local names + `/.ATTRIBUTES/VARIABLE_VALUE`, as TensorFlow's saver writes it.

Inside functions an input is spelled `node:output_arg:index`; it is read as output `index` of
`node` (exact for the single-output-list ops a ported graph uses).
"""
from __future__ import annotations

import os
from collections import deque
from pathlib import Path

from ...arrays import ArrayHandle, Layer
from ...readers._binary import FileView
from ...readers._protowire import LEN, iter_fields, packed_varints, text
from ...readers._tf_graph import _const_handle, _node_def, _Tensor
from ..graph import PortError, UnsupportedOpError

_CALLS = ("StatefulPartitionedCall", "PartitionedCall")
_MAX_DEPTH = 32


class SavedGraph:
    """What the frontend's builder needs: layers (name -> Layer), extra constant handles, the
    signature's Placeholders and output tensors."""

    def __init__(self):
        self.layers: dict[str, Layer] = {}
        self.constants: dict = {}          # function Const name -> ArrayHandle (not in variables/)
        self.inputs: list = []             # Placeholder names, signature order
        self.outputs: list = []            # (output key, tensor name)


def load(folder: Path, variable_keys, signature=None) -> SavedGraph:
    path = folder / "saved_model.pb"
    view = FileView(os.fspath(path))
    try:
        return _Loader(view, set(variable_keys)).run(signature)
    finally:
        view.close()


def _spans(buf, span, file, number):
    return [v for f, w, v, _o in iter_fields(buf, span[0], span[0] + span[1], file) if f == number and w == LEN]


def _map(buf, span, file, number) -> dict:
    """A proto map<string, message> field -> {key: value span}."""
    out = {}
    for entry in _spans(buf, span, file, number):
        key, value = "", None
        for f, w, v, _o in iter_fields(buf, entry[0], entry[0] + entry[1], file):
            if f == 1 and w == LEN:
                key = text(buf, v)
            elif f == 2 and w == LEN:
                value = v
        out[key] = value
    return out


class _Loader:
    def __init__(self, view: FileView, variable_keys: set):
        self.view, self.buf, self.file = view, view.buf, view.path
        self.keys = variable_keys
        self.out = SavedGraph()
        self.taken: set = set()

    def run(self, signature) -> SavedGraph:
        metas = _spans(self.buf, (0, self.view.size), self.file, 2)
        if not metas:
            raise PortError("saved_model.pb holds no MetaGraphDef", file=self.file)
        meta = metas[0]
        graph_span = _spans(self.buf, meta, self.file, 2)[0]
        self.main = {n["name"]: n for n in (_node_def(self.buf, s, self.file, s[0])
                                            for s in _spans(self.buf, graph_span, self.file, 1))}
        self.functions = self._functions(graph_span)
        objects = _spans(self.buf, meta, self.file, 7)
        self.paths, self.bound = self._objects(objects[0]) if objects else ({}, {})
        sig = self._signature(meta, signature)
        self._inline_main(sig)
        return self.out

    def _functions(self, graph_span) -> dict:
        out = {}
        for lib in _spans(self.buf, graph_span, self.file, 2):
            for fdef in _spans(self.buf, lib, self.file, 1):
                opdef = _spans(self.buf, fdef, self.file, 1)[0]
                name = next((text(self.buf, v) for f, w, v, _o in iter_fields(self.buf, opdef[0], opdef[0] + opdef[1])
                             if f == 1 and w == LEN), "")
                args = [self._arg_name(a) for a in _spans(self.buf, opdef, self.file, 2)]
                outs = [self._arg_name(a) for a in _spans(self.buf, opdef, self.file, 3)]
                nodes = [_node_def(self.buf, s, self.file, s[0]) for s in _spans(self.buf, fdef, self.file, 3)]
                ret = {k: text(self.buf, v) for k, v in _map(self.buf, fdef, self.file, 4).items()}
                out[name] = {"args": args, "outputs": outs, "nodes": nodes, "ret": ret}
        return out

    def _arg_name(self, span) -> str:
        return next((text(self.buf, v) for f, w, v, _o in iter_fields(self.buf, span[0], span[0] + span[1])
                     if f == 1 and w == LEN), "")

    def _objects(self, span):
        """Object node id -> checkpoint key of its variable; function name -> bound_inputs."""
        nodes = []
        for node in _spans(self.buf, span, self.file, 1):
            children = []
            for child in _spans(self.buf, node, self.file, 1):
                cid, local = 0, ""
                for f, w, v, _o in iter_fields(self.buf, child[0], child[0] + child[1]):
                    if f == 1 and w != LEN:
                        cid = v
                    elif f == 2 and w == LEN:
                        local = text(self.buf, v)
                children.append((cid, local))
            nodes.append(children)
        paths, queue = {0: []}, deque([0])
        while queue:   # breadth-first, children in order: the path TensorFlow's saver keys by
            i = queue.popleft()
            for cid, local in nodes[i] if i < len(nodes) else ():
                if cid not in paths:
                    paths[cid] = paths[i] + [local.replace(".", "..").replace("/", ".S")]
                    queue.append(cid)
        bound = {}
        for name, value in _map(self.buf, span, self.file, 2).items():
            ids = []
            for f, w, v, _o in iter_fields(self.buf, value[0], value[0] + value[1]):
                if f == 2:
                    ids.extend(packed_varints(self.buf, v) if w == LEN else [v])
            bound[name] = ids
        return paths, bound

    def _signature(self, meta, wanted):
        sigs = _map(self.buf, meta, self.file, 5)
        sigs.pop("__saved_model_init_op", None)
        name = wanted or ("serving_default" if "serving_default" in sigs or len(sigs) != 1 else next(iter(sigs), None))
        if name not in sigs:
            raise PortError(f"the SavedModel has no signature {name!r}; it has {sorted(sigs)}", file=self.file)
        io = {}
        for field in (1, 2):
            io[field] = sorted((k, self._arg_name(v)) for k, v in _map(self.buf, sigs[name], self.file, field).items())
        return io

    # -- inlining ------------------------------------------------------------------------------
    def _inline_main(self, sig) -> None:
        """Signature inputs become Placeholders named by their keys (what TF's loader calls them)."""
        by_placeholder = {}
        for key, tensor in sig[1]:
            node = tensor.split(":")[0]
            if self.main.get(node, {}).get("op") != "Placeholder":
                raise UnsupportedOpError(f"signature input {key} fed to {node}", node, self.file)
            self._add(key, "Placeholder", self.main[node]["attrs"], [])
            self.taken.add(key)
            self.out.inputs.append(key)
            by_placeholder[node] = f"{key}:0"
        done = {}
        for key, tensor in sig[2]:
            node, _, index = tensor.partition(":")
            call = self.main.get(node)
            if call is None or call["op"] not in _CALLS:
                raise UnsupportedOpError(f"signature output {key} from a {call and call['op']} node", node, self.file)
            if node not in done:
                fname = call["attrs"].get("f", {}).get("func", "")
                captured = self.bound.get(fname)
                args = [a.split(":")[0] for a in call["inputs"] if not a.startswith("^")]
                n_real = len(args) - len(captured or [])
                if captured is None or n_real < 0:
                    raise UnsupportedOpError(f"call of {fname} whose captured inputs the object graph does not list",
                                             node, self.file)
                if any(a not in by_placeholder for a in args[:n_real]):
                    raise UnsupportedOpError("a signature call fed by other ops than its inputs", node, self.file)
                feeds = [by_placeholder[a] for a in args[:n_real]] + [("var", self._key(i, node)) for i in captured]
                done[node] = self._inline(fname, feeds, node, 0)
            self.out.outputs.append((key, done[node][int(index or 0)]))

    def _key(self, object_id, where) -> str:
        key = "/".join(self.paths.get(object_id, ["?"])) + "/.ATTRIBUTES/VARIABLE_VALUE"
        if key not in self.keys:
            raise PortError(f"captured variable (object {object_id}) has no checkpoint entry {key!r}", file=self.file,
                            array=where)
        return key

    def _inline(self, fname, feeds, call, depth, scope="") -> list:
        """Add a function's nodes; feeds bind its args; returns its output tensors. Nodes keep
        their own (Keras-scoped) names, flattened through the calls, so model.py reads like the
        model; a name taken by another function's node is prefixed with the call path."""
        fn = self.functions.get(fname)
        if fn is None or depth > _MAX_DEPTH:
            raise UnsupportedOpError(f"call of an unknown function {fname!r}", call, self.file)
        if len(feeds) != len(fn["args"]):
            raise PortError(f"function {fname} takes {len(fn['args'])} inputs, the call gives {len(feeds)}",
                            file=self.file)
        env = dict(zip(fn["args"], feeds))
        names = {}
        for node in fn["nodes"]:
            short = f"{scope}/{node['name']}" if scope else node["name"]
            names[node["name"]] = short if short not in self.taken else f"{call}/{node['name']}"
            self.taken.add(names[node["name"]])
        calls = {}
        for node in fn["nodes"]:
            name = names[node["name"]]
            ins = [self._resolve(i, env, names, calls) for i in node["inputs"] if not i.startswith("^")]
            if node["op"] in _CALLS:
                inner = node["attrs"].get("f", {}).get("func", "")
                calls[node["name"]] = self._inline(inner, ins, name, depth + 1, scope)
            elif node["op"] == "ReadVariableOp" and isinstance(ins[0], tuple):
                self._variable(name, ins[0][1])
            elif node["op"] in ("Const", "HostConst"):
                self._const(name, node)
            elif node["op"] != "NoOp":
                if any(isinstance(i, tuple) for i in ins):
                    raise UnsupportedOpError(f"{node['op']} of a variable handle", name, self.file)
                self._add(name, node["op"], node["attrs"], ins)
        return [self._resolve(fn["ret"][o], env, names, calls) for o in fn["outputs"]]

    def _resolve(self, spelled, env, names, calls):
        node, _, rest = spelled.partition(":")
        if not rest:
            return env[node] if node in env else f"{names[node]}:0"
        index = int(rest.rpartition(":")[2] or 0)
        if node in calls:
            return calls[node][index]
        if node not in names:
            raise PortError(f"a function reads {spelled!r}, which it does not define", file=self.file)
        return f"{names[node]}:{index}"

    def _add(self, name, op, attrs, inputs) -> None:
        params = {k: v for k, v in attrs.items() if not isinstance(v, _Tensor)}
        self.out.layers[name] = Layer(name, op, params, [i.removesuffix(":0") for i in inputs], [name], [])

    def _variable(self, name, key) -> None:
        self.out.layers[name] = Layer(name, "Const", {}, [], [name], [key])

    def _const(self, name, node) -> None:
        tensor = node["attrs"].get("value")
        if not isinstance(tensor, _Tensor):
            raise UnsupportedOpError("a Const without a tensor", name, self.file)
        handle = _const_handle(self.view, name, tensor, None)
        value = handle.numpy()   # copied now: the file is closed once the graph is read
        self.out.constants[name] = ArrayHandle(name, handle.shape, handle.dtype, lambda: value, handle.meta)
        self.out.layers[name] = Layer(name, "Const", {}, [], [name], [name])
