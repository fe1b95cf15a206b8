"""LSTM / GRU -> nn.LSTM / nn.GRU.

The frontends give the weights in PyTorch's gate order already (Params with `gates`,
`keras_gru_bias`, `bias_ih_hh` transforms): this emitter only builds the layer and reads its
results the way the source returns them.

Attributes (port/graph.py): input_size, hidden_size, num_layers (1), bidirectional (False),
batch_first, return_sequences, go_backwards (False), and two optional ones:

* merge_mode ('concat'): how a bidirectional layer joins its directions (Keras Bidirectional:
  concat | sum | mul | ave); nn.LSTM concatenates, the others are computed from the halves.
* state_format ('keras'): what the state outputs (node.outputs[1:]) are. 'keras': the last
  layer's final states, (batch, hidden) each, per direction h (, c): [h] / [h, c] one-way,
  [h_fw, c_fw, h_bw, c_bw] two-way (Keras return_state). 'stacked': PyTorch's h_n (, c_n) of shape
  (layers * directions, batch, hidden) as they are (ONNX Y_h / Y_c, MXNet RNN state outputs).

Inputs beyond the sequence are initial states in PyTorch's stacked form: h0 (GRU) or h0, c0 (LSTM).
return_sequences=False returns the last step: the final hidden state of the last layer (for a
two-way layer the forward direction's after the last step and the backward one's after the
first, which is what Keras returns; `output[:, -1]` would be wrong for the backward half).
go_backwards feeds the sequence reversed in time and, as Keras does, does not reverse the output.
"""
from __future__ import annotations

from . import Ctx, Emitted, emits

_MERGE = {"sum": "{a} + {b}", "mul": "{a} * {b}", "ave": "({a} + {b}) / 2"}


@emits("lstm", "gru")
def emit_rnn(ctx: Ctx) -> Emitted:
    a, lstm = ctx.a, ctx.node.op == "lstm"
    layers, two_way = int(a.get("num_layers", 1)), bool(a.get("bidirectional", False))
    batch_first, hidden = bool(a["batch_first"]), int(a["hidden_size"])
    merge = a.get("merge_mode", "concat") if two_way else "concat"
    if merge not in ("concat", *_MERGE):
        raise ctx.unsupported(f"bidirectional merge_mode {merge!r}")
    module = (f"nn.{'LSTM' if lstm else 'GRU'}({int(a['input_size'])}, {hidden}, num_layers={layers}, "
              f"batch_first={batch_first}, bidirectional={two_way})")
    tmp = f"_{ctx.attr}"
    seq, h, c = f"{tmp}_seq", f"{tmp}_h", f"{tmp}_c"
    x, lines = ctx.x, []
    if a.get("go_backwards", False):
        lines.append(f"{tmp}_x = torch.flip({x}, [{1 if batch_first else 0}])")
        x = f"{tmp}_x"
    lines.append(f"{seq}, {'(' + h + ', ' + c + ')' if lstm else h} = self.{ctx.attr}({_call_args(ctx, x, lstm)})")
    if a["return_sequences"]:
        first = _merged(seq, f"{seq}[..., :{hidden}]", f"{seq}[..., {hidden}:]", merge)
    else:
        first = (_merged(None, f"{h}[-2]", f"{h}[-1]", merge, concat=f"torch.cat([{h}[-2], {h}[-1]], -1)")
                 if two_way else f"{h}[-1]")
    states = _states(ctx, h, c if lstm else None, two_way, a.get("state_format", "keras"))
    lines.append(f"{ctx.y} = {first}")
    lines += [f"{out} = {expr}" for out, expr in zip(ctx.outs[1:], states)]
    return Emitted(forward=lines, module=module)


def _call_args(ctx: Ctx, x: str, lstm: bool) -> str:
    extra = ctx.ins[1:]
    if not extra:
        return x
    if lstm:
        if len(extra) != 2:
            raise ctx.unsupported(f"an LSTM takes h0 and c0 together, got {len(extra)} state inputs")
        return f"{x}, ({extra[0]}, {extra[1]})"
    if len(extra) != 1:
        raise ctx.unsupported(f"a GRU takes one initial state, got {len(extra)}")
    return f"{x}, {extra[0]}"


def _merged(whole, fw, bw, merge, concat=None) -> str:
    if merge == "concat":
        return concat or whole
    return _MERGE[merge].format(a=fw, b=bw)


def _states(ctx: Ctx, h: str, c, two_way: bool, fmt: str) -> list:
    """The expressions of the state outputs, checked against how many the node declares."""
    wanted = len(ctx.outs) - 1
    if wanted == 0:
        return []
    if fmt == "stacked":
        exprs = [h] + ([c] if c else [])
    elif fmt == "keras":
        per_dir = [[f"{h}[{i}]"] + ([f"{c}[{i}]"] if c else []) for i in ((-2, -1) if two_way else (-1,))]
        exprs = [e for d in per_dir for e in d]
    else:
        raise ctx.unsupported(f"state_format {fmt!r}")
    if wanted != len(exprs):
        raise ctx.unsupported(f"{wanted} state outputs where state_format {fmt!r} gives {len(exprs)}")
    return exprs
