"""The port IR: a source model's graph in one canonical, framework-free vocabulary.

Frontends (`port/frontends/<format>.py`) turn what our readers parse (prototxt, symbol JSON,
Keras config, ONNX/TF graphs) into a `Graph`; emitters (`port/ops/`) turn each canonical `Node`
into PyTorch code; the table generator turns every `Param` into a mapping rule. The IR is the
contract between them, so it is small and exact:

* Tensors are named strings. Every tensor a node reads is a graph input or an earlier node's
  output (nodes are in topological order, the order `forward` runs them).
* Layout: the emitted module is channels-first (NCHW, NCL, NCDHW). Frontends of channels-last
  sources (Keras, TF, NHWC ONNX) translate axes and weights at the boundary: conv kernels get
  `tf_conv`, concat axis -1 becomes 1, and where an op's meaning depends on the memory order
  (reshape/flatten of a 4-d tensor, a generic transpose), the frontend first inserts a
  `transpose` back to the source order so the result is bit-for-bit the source's.
  `GraphInput.source_layout` and `Graph.output_layouts` record what the source itself takes and
  returns, so the table's `input`/`parity` sections can say how to compare.
* Attributes are plain Python values (ints, floats, bools, strings, tuples), already resolved:
  no "auto" padding, no defaults left for the emitter to guess. `padding` is per spatial dim a
  (begin, end) pair, or the string "same" for TF SAME, computed at run time from the input size.
* Weights are `Param`s: a source array name and the table transform chain (docs/mapping.md)
  that makes it the emitted module's tensor. Nothing is copied here; the normal table + writer
  path moves the data and reports coverage.

Canonical ops and their attributes (all required unless a default is given):

    conv            dims, in_channels, out_channels, kernel, stride, dilation, groups, padding,
                    bias (bool), padding_value (0.0)
    conv_transpose  dims, in_channels, out_channels, kernel, stride, dilation, groups, padding,
                    output_padding, bias
    linear          in_features, out_features, bias
    batchnorm       dims (1|2|3), num_features, eps, affine (bool); params weight/bias/running_mean/running_var
    scale           num_features, bias (bool), axis (1): per-channel y = x*w (+ b) (Caffe Scale)
    activation      kind: relu | relu6 | leaky_relu (negative_slope) | elu (alpha) | selu | gelu
                    (approximate 'none'|'tanh') | sigmoid | tanh | hard_sigmoid (alpha, beta: y =
                    clip(alpha*x + beta, 0, 1), Keras' 0.2/0.5 differs from torch's 1/6) |
                    hard_swish | silu | softplus | softsign | exp | abs | neg | sqrt | linear |
                    power (power, scale, shift: y = (shift + scale*x) ** power, Caffe Power)
    prelu           num_parameters; param weight (num_parameters,); axis (1)
    softmax         axis, log (False)
    pool            kind (max|avg), dims, kernel, stride, padding, ceil_mode, count_include_pad
                    (avg only), dilation (1s)
    global_pool     kind (max|avg), keepdims (bool)
    add | sub | mul | div | max | min
                    n-ary elementwise with numpy broadcasting; add takes coeffs (None or a list, Caffe
                    Eltwise SUM coefficients)
    matmul          (two tensor inputs)
    concat          axis
    split           axis, sizes (list): one output per size
    slice           axis, start, stop, step (1)
    flatten         start_dim (1), end_dim (-1): of the tensor as stored in the module (frontends
                    permute first)
    reshape         shape: tuple as torch.reshape takes it (-1 allowed once); 0 copies the input's dim
                    at that index (Caffe/ONNX), so a batch dim stays free
    transpose       perm
    squeeze         axes;  unsqueeze: axes
    pad             pads: per dim of the tensor a (begin, end) pair; mode constant|reflect|replicate; value
    upsample        mode nearest|bilinear, scale (tuple|None), size (tuple|None), align_corners
                    (bool; nearest: False), half_pixel (bool, bilinear without align_corners)
    crop            offsets: per dim (None = keep), second input is the reference shape (Caffe Crop)
                    or sizes (tuple) when there is no reference
    normalize       across_spatial, channel_shared, eps; param weight (Caffe Normalize)
    lrn             size, alpha, beta, k: b = a / (k + alpha/size * sum over `size` channels of a^2)^beta
                    (Caffe LRN ACROSS_CHANNELS, ONNX LRN, torch LocalResponseNorm)
    reduce          kind mean|sum|max|min, axes, keepdims
    clip            min, max (None for unbounded)
    identity        (dropout in inference, Keras InputLayer, ...)
    constant        a graph constant: param value (registered as a buffer); attrs shape (tuple),
                    dtype ('float32'); no inputs
    lstm | gru      input_size, hidden_size, num_layers (1), bidirectional (False), batch_first,
                    return_sequences (bool), go_backwards (False); params weight_ih_l0 ... with
                    the gate transforms; outputs [sequence or last step] (+ states when the source
                    returns them); merge_mode ('concat'|sum|mul|ave, two-way), state_format ('keras':
                    last layer's (batch, hidden) h(, c) per direction | 'stacked': torch's h_n(, c_n));
                    inputs beyond the sequence: initial h0 (, c0) in torch's stacked form (ops/rnn.py)

An op a frontend cannot express exactly stops with `UnsupportedOpError` naming op, layer and
file: a port never approximates silently.

Emitters (port/ops/__init__.py: `@emits`, `Ctx`, `Emitted`, `helper`) are the other side of
this contract; frontends/__init__.py gives the frontend signature. Changes since the first
version: Graph.reader_options, notes, architecture; op lrn; flatten end_dim; activation kind
power; reshape 0 = copy the input dim; constant carries its shape; lstm/gru merge_mode,
state_format, initial states; `sanitise` also avoids Python keywords and the names the
generated file imports (torch, nn, F, math, self).
"""
from __future__ import annotations

import keyword
import re
from dataclasses import dataclass, field

from ..errors import ConvertersError


class PortError(ConvertersError):
    """A source model cannot be ported as asked (unsupported op, missing architecture, ...)."""


class UnsupportedOpError(PortError):
    def __init__(self, op: str, layer: str, file, *, hint: str | None = None):
        super().__init__(f"layer {layer!r}: op {op} is not supported by `convert port`", file=file,
                         hint=hint or "docs/port.md lists the covered ops")
        self.op = op
        self.layer = layer


OPS = frozenset("""
conv conv_transpose linear batchnorm scale activation prelu softmax pool global_pool
add sub mul div max min matmul concat split slice flatten reshape transpose squeeze unsqueeze
pad upsample crop normalize lrn reduce clip identity constant lstm gru
""".split())


@dataclass
class Param:
    """One tensor of the emitted module, filled from the source through a table rule.

    source:     the source array name, exactly as `converters.read` lists it; None with `fill`
    transforms: the table transform chain (names or one-key dicts, docs/mapping.md)
    with_:      extra source arrays passed after `source` (Caffe BatchNorm's scale factor)
    fill:       a constant when no source array holds the tensor (MXNet fix_gamma, BN without
                scale): written as the table's `fill`, so the report shows it
    """

    source: str | None = None
    transforms: list = field(default_factory=list)
    with_: list = field(default_factory=list)
    fill: float | None = None


@dataclass
class Node:
    name: str                     # the source layer / op name (codegen sanitises it)
    op: str                       # one of OPS
    inputs: list                  # tensor names read
    outputs: list                 # tensor names produced
    attrs: dict = field(default_factory=dict)
    params: dict = field(default_factory=dict)   # module tensor name ('weight', ...) -> Param
    source_op: str = ""           # the source's own op / layer type, for comments and errors


@dataclass
class GraphInput:
    name: str                     # the source's input name (used by parity to feed the source)
    shape: tuple                  # in the module's layout (NCHW...); None for unknown dims
    dtype: str = "float32"
    source_layout: str = "NCHW"   # what the source takes: NCHW, NHWC, NC, NLC, NCL, ...


@dataclass
class Graph:
    name: str                     # a model name for the class (sanitised by codegen)
    framework: str                # the reader's framework name
    source_files: list            # the files the graph and weights came from
    inputs: list                  # GraphInput, the order forward() takes them
    outputs: list                 # tensor names forward() returns, in the source's order
    nodes: list                   # Node, topological order
    output_layouts: dict = field(default_factory=dict)   # tensor -> layout the source returns it in
    output_names: dict = field(default_factory=dict)     # tensor -> the source's name for that output
    input_conventions: dict = field(default_factory=dict)  # extra table `input:` keys (channels, mean, ...)
    extra_inputs: dict = field(default_factory=dict)       # table `parity.extra_inputs` (MXNet labels, ...)
    unused_arrays: dict = field(default_factory=dict)      # source array -> why no node uses it (table ignore)
    reader_options: dict = field(default_factory=dict)     # converters.read options for source_files[0] (prototxt=...)
    notes: list = field(default_factory=list)              # facts for the table's notes (what the file lacks, ...)
    architecture: str | None = None                        # what verify's oracle reads beside the weights (prototxt)
    fixed_batch: int | None = None                         # the batch the source only runs at (table parity.batch)

    def check(self) -> None:
        """Every tensor defined before use, ops known, names unique: frontends call this last."""
        defined = {i.name for i in self.inputs}
        seen_nodes = set()
        file = self.source_files[0] if self.source_files else None
        for node in self.nodes:
            if node.op not in OPS:
                raise PortError(f"internal: frontend produced unknown op {node.op!r} for {node.name!r}", file=file)
            if node.name in seen_nodes:
                raise PortError(f"two nodes are named {node.name!r}", file=file)
            seen_nodes.add(node.name)
            for t in node.inputs:
                if t not in defined:
                    raise PortError(f"layer {node.name!r} reads {t!r}, which no earlier layer produces", file=file)
            for t in node.outputs:
                if t in defined:
                    raise PortError(f"tensor {t!r} is produced twice (by {node.name!r})", file=file)
                defined.add(t)
        for t in self.outputs:
            if t not in defined:
                raise PortError(f"graph output {t!r} is produced by no layer", file=file)


def nhwc_axis(axis: int, ndim: int) -> int:
    """A channels-last axis index -> the same axis in the channels-first module (ndim >= 3)."""
    axis = axis % ndim
    if ndim < 3 or axis == 0:
        return axis
    return 1 if axis == ndim - 1 else axis + 1


def sanitise(name: str, taken: set | None = None) -> str:
    """A source layer name -> a Python identifier (conv4-2 -> conv4_2), unique within `taken`."""
    ident = re.sub(r"\W+", "_", name).strip("_") or "layer"
    if ident[0].isdigit():
        ident = "l_" + ident
    if keyword.iskeyword(ident) or ident in {"forward", "training", "eval", "train", "to", "type", "float", "half",
                                             "cuda", "cpu", "torch", "nn", "F", "math", "self", "super"}:
        ident += "_"
    if taken is not None:
        base, n = ident, 1
        while ident in taken:
            n += 1
            ident = f"{base}_{n}"
        taken.add(ident)
    return ident
