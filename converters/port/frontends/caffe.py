"""Caffe frontend: the layers the Caffe reader parsed (prototxt, else the caffemodel's own net) -> Graph.

Blobs are SSA-renamed (Caffe's in-place layers write the blob they read: the new tensor is named
after the writing layer). A BatchNorm followed by the Scale that reads only its output becomes
one affine batchnorm (the Scale's gamma/beta are its weight/bias), as Caffe's own deploy nets are
usually folded by hand. Training-only layers (data, losses, accuracy, silence) are skipped; arrays
no kept layer uses (layers of the caffemodel's training net absent from the prototxt, layers cut
off by --outputs) are listed with the reason. Every blob shape is checked against the layer's
prototxt parameters and the channels reaching it, so a prototxt that does not describe these
weights stops here.

Caffe files do not record the input's channel order or mean: the graph says only shape and NCHW.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..graph import Graph, GraphInput, PortError, UnsupportedOpError
from . import caffe_layers

PROTOTXT_SUFFIXES = (".prototxt", ".pbtxt", ".txt")
TRAINING_ONLY = {"Data", "ImageData", "HDF5Data", "HDF5Output", "AnnotatedData", "MemoryData", "WindowData",
                 "DummyData", "Accuracy", "Silence"}


@dataclass
class State:
    """What translating layer by layer needs to know: the current tensor of each blob, channels."""

    file: str
    arrays: object
    current: dict = field(default_factory=dict)    # Caffe blob name -> current tensor name
    channels: dict = field(default_factory=dict)   # tensor -> channel count when known
    rank: dict = field(default_factory=dict)       # tensor -> number of dims when known
    spatial: dict = field(default_factory=dict)    # tensor -> spatial size (H, W, ...) when known
    tensors: set = field(default_factory=set)
    nodes: list = field(default_factory=list)
    producer: dict = field(default_factory=dict)   # tensor -> Caffe layer name that wrote it
    keep: set = field(default_factory=set)         # layer / blob names asked for with --outputs
    from_prototxt: bool = False                    # layer params as written (else decoded from the caffemodel)

    def shape(self, name):
        return tuple(self.arrays[name].shape)

    def new_tensor(self, blob: str, layer: str) -> str:
        name = blob if blob not in self.tensors else layer
        n = 1
        while name in self.tensors:
            n += 1
            name = f"{layer}_{n}"
        self.tensors.add(name)
        self.current[blob] = name
        self.producer[name] = layer
        return name

    def error(self, layer, msg) -> PortError:
        return PortError(f"layer {layer.name!r} ({layer.type}): {msg}", file=self.file)


def build_graph(sources, *, reader_options, outputs=None, input_shapes=None) -> Graph:
    from ...readers import caffe as caffe_reader

    weights, prototxt = _split_sources(sources, reader_options)
    arrays = caffe_reader.open(weights, prototxt=prototxt)
    used_prototxt = arrays.meta.get("prototxt")
    st = State(weights, arrays, keep=set(outputs or ()), from_prototxt=bool(used_prototxt))
    missing = arrays.meta.get("prototxt_layers_without_blobs") or []
    if missing:
        first = missing[0]
        name = first.get("name") if isinstance(first, dict) else first
        raise PortError(f"prototxt layer {name!r} has weights in its definition but none in the caffemodel: "
                        "the prototxt does not describe these weights", file=used_prototxt or weights)
    inputs = _inputs(st, arrays, input_shapes)
    layers = [lay for lay in arrays.layers.values() if lay.type not in TRAINING_ONLY and not lay.type.endswith("Loss")
              and lay.type != "Input" and "TRAIN" not in _phases(lay)]
    skipped = {lay.name: lay for lay in arrays.layers.values() if lay not in layers}
    wanted = _wanted_layers(layers, outputs, st, weights)
    kept, cut = [lay for lay in layers if lay.name in wanted], [lay for lay in layers if lay.name not in wanted]
    i = 0
    while i < len(kept):
        i = caffe_layers.translate(st, kept, i)
    outs = _outputs(st, kept, outputs)
    read = {t for n in st.nodes for t in n.inputs} | set(outs)
    unread = [i.name for i in inputs if st.current.get(i.name, i.name) not in read and i.name not in read]
    inputs = [i for i in inputs if i.name not in unread]  # labels only a loss layer reads
    graph = Graph(name=arrays.meta.get("name") or Path(weights).stem, framework="caffe", source_files=[weights],
                  inputs=inputs, outputs=outs, nodes=st.nodes,
                  output_names={t: st.producer.get(t, t) for t in outs},
                  reader_options={"prototxt": used_prototxt or False}, architecture=used_prototxt,
                  unused_arrays=_unused(st, arrays, skipped, cut),
                  notes=["Caffe files do not record the input's channel order (usually BGR), range or mean:",
                         "the input section gives only the shape and layout the prototxt declares."]
                  + ([f"Inputs read by no ported layer (dropped): {', '.join(unread)}."] if unread else []))
    graph.check()
    return graph


def _phases(layer) -> set:
    """The phases a layer is restricted to (`include { phase: TRAIN }`); a deploy net runs TEST."""
    inc = layer.params.get("include") or []
    return {str(i.get("phase")) for i in (inc if isinstance(inc, list) else [inc]) if isinstance(i, dict)}


def _split_sources(sources, options):
    protos = [s for s in sources if str(s).lower().endswith(PROTOTXT_SUFFIXES)]
    weights = [s for s in sources if s not in protos]
    if len(weights) != 1 or len(protos) > 1:
        raise PortError("a Caffe port takes one .caffemodel and at most one .prototxt",
                        file=sources[0] if sources else None)
    prototxt = protos[0] if protos else options.get("prototxt")
    return weights[0], prototxt


def _inputs(st: State, arrays, input_shapes) -> list:
    declared = dict(arrays.meta.get("input") or {})
    for layer in arrays.layers.values():
        if layer.type == "Input":
            shapes = (layer.params.get("input_param") or {}).get("shape") or []
            for k, top in enumerate(layer.outputs):
                dims = shapes[k] if k < len(shapes) else (shapes[0] if shapes else None)
                if isinstance(dims, dict):
                    dims = dims.get("dim")
                declared.setdefault(top, list(dims) if dims else None)
    for name, shape in (input_shapes or {}).items():
        declared[name] = list(shape)
    if not declared:  # a training net: its data layer's tops are the inputs
        for layer in arrays.layers.values():
            if layer.type in TRAINING_ONLY and layer.type.endswith("Data") and layer.outputs:
                declared[layer.outputs[0]] = None
                break
    if not declared:
        raise PortError("the Caffe net declares no input (no input/input_shape, Input or data layer)", file=st.file,
                        hint="give --input-shape NAME=N,C,H,W")
    out = []
    for name, dims in declared.items():
        shape = tuple(int(d) for d in dims) if dims else None
        out.append(GraphInput(name, shape, source_layout="NCHW" if not shape or len(shape) == 4 else
                              {2: "NC", 3: "NCL", 5: "NCDHW"}.get(len(shape), "N")))
        tensor = st.new_tensor(name, name)
        st.producer.pop(tensor, None)
        if shape:
            st.rank[tensor] = len(shape)
            if len(shape) > 1:
                st.channels[tensor] = shape[1]
            if len(shape) > 2:
                st.spatial[tensor] = tuple(shape[2:])
    return out


def _wanted_layers(layers, outputs, st, file) -> set:
    """All layers, or with --outputs only those the named blobs / layers depend on."""
    if not outputs:
        return {lay.name for lay in layers}
    writers = {}   # blob -> layers writing it, in order
    for lay in layers:
        for t in lay.outputs:
            writers.setdefault(t, []).append(lay)
    by_name = {lay.name: lay for lay in layers}
    wanted, todo = set(), []
    for o in outputs:
        if o in by_name:
            todo.append(by_name[o])
        elif o in writers:
            todo.append(writers[o][-1])
        elif o not in st.current:
            raise PortError(f"--outputs names {o!r}, which is neither a layer nor a blob of the net", file=file)
    index = {lay.name: i for i, lay in enumerate(layers)}
    while todo:
        layer = todo.pop()
        if layer.name in wanted:
            continue
        wanted.add(layer.name)
        for b in layer.inputs:  # the last writer of that blob before this layer
            before = [w for w in writers.get(b, []) if index[w.name] < index[layer.name]]
            if before:
                todo.append(before[-1])
        for t in layer.outputs:  # in-place layers before it that wrote what it reads
            if t in layer.inputs:
                for w in writers.get(t, []):
                    if index[w.name] < index[layer.name]:
                        todo.append(w)
    return wanted


def _outputs(st: State, kept, outputs) -> list:
    if outputs:
        by_layer = {}
        for node in st.nodes:
            for t in node.outputs:
                by_layer[st.producer.get(t, node.name)] = t
        return [by_layer[o] if o in by_layer else st.current[o] for o in outputs]
    consumed = {t for node in st.nodes for t in node.inputs}
    final = set(st.current.values())
    outs = []
    for node in st.nodes:
        for t in node.outputs:
            if t not in consumed and t in final and t not in outs:
                outs.append(t)
    return outs


def _unused(st: State, arrays, skipped, cut) -> dict:
    used = {p.source for n in st.nodes for p in n.params.values() if p.source}
    used |= {w for n in st.nodes for p in n.params.values() for w in p.with_}
    not_in_proto = {d["name"]: d["type"] for d in arrays.meta.get("layers_not_in_prototxt") or []}
    cut_names = {lay.name for lay in cut}
    out = {}
    for name in arrays:
        if name in used:
            continue
        layer = arrays[name].meta.get("layer", "")
        if layer in not_in_proto:
            out[name] = (f"layer {layer} ({not_in_proto[layer]}) is in the caffemodel's training net, "
                         "not in the prototxt")
        elif layer in skipped:
            phase = " (include phase TRAIN)" if "TRAIN" in _phases(skipped[layer]) else ""
            out[name] = f"layer {layer} ({skipped[layer].type}) is training-only{phase}"
        elif layer in cut_names:
            out[name] = f"layer {layer} is not needed for the requested outputs (--outputs)"
        else:
            raise PortError(f"internal: array {name} of layer {layer!r} is used by no ported layer", file=st.file)
    return out


def unsupported(st: State, layer, why=None) -> UnsupportedOpError:
    hint = None
    if layer.type in ("DetectionOutput", "PriorBox"):
        hint = ("it decodes boxes / computes priors, not a learned tensor op: pass --outputs with the tensors "
                "it reads (e.g. --outputs mbox_loc,mbox_conf_flatten) to stop before it")
    op = layer.type if why is None else f"{layer.type} ({why})"
    return UnsupportedOpError(op, layer.name, st.file, hint=hint)

