"""LSTM/GRU emitters (port/ops/rnn.py): Gluon rnn layers exported by mxnet 1.9.1 ported and verified
against mxnet; a real tf_keras LSTM+GRU model ported through the Keras frontend and compared with
Keras' own forward pass; the last-step / go_backwards / merge / state semantics checked against
nn.LSTM's own per-direction outputs."""
from __future__ import annotations

import types
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import converters  # noqa: E402 - after the torch skip: converters.port needs torch
from converters.mapping.transforms import build, chain_apply  # noqa: E402
from converters.port import codegen, port  # noqa: E402
from converters.port.graph import Graph, GraphInput, Node, Param, UnsupportedOpError  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
FIX = ROOT / "fixtures" / "port" / "mxnet"
MXNET_PY = ROOT / ".venv-mxnet" / "bin" / "python"


def _module(graph):
    gen = codegen.generate(graph, "Ported")
    mod = types.ModuleType("ported_rnn")
    exec(compile(gen.source, "model.py", "exec"), mod.__dict__)  # noqa: S102 - our own generated code
    return mod.Ported().eval(), gen


# ---------------------------------------------------------------- mxnet fused RNN (Gluon export)

@pytest.mark.mxnet
@pytest.mark.parametrize("name, shapes", [
    ("lstm", {"data0": (2, 6, 4), "data1": (4, 2, 5), "data2": (4, 2, 5)}),   # 2 layers, two-way, NTC
    ("gru", {"data0": (5, 2, 4), "data1": (1, 2, 3)}),                        # 1 layer, TNC
])
def test_gluon_rnn_export_matches_mxnet(tmp_path, name, shapes):
    if not MXNET_PY.exists():
        pytest.skip(f"the mxnet environment {MXNET_PY} is missing (scripts/setup.sh creates it)")
    result = port([str(FIX / f"{name}-0000.params")], tmp_path / "out", framework="mxnet", input_shapes=shapes,
                  verify=True)
    assert result.parity.passed, str(result.parity)
    for o in result.parity.outputs:
        assert o["max_abs"] <= 1e-5 * max(1.0, o["scale"]), o
    source = "".join(Path(result.model_file).read_text().split())   # formatting aside
    assert ("nn.LSTM(4,5,num_layers=2,batch_first=False,bidirectional=True)" in source
            if name == "lstm" else "nn.GRU(4,3,num_layers=1,batch_first=False,bidirectional=False)" in source)


# ---------------------------------------------------------------- Keras (P2's frontend) vs Keras

@pytest.mark.heavy
def test_keras_lstm_gru_model_matches_keras():
    from converters.parity.oracles.keras_oracle import import_tensorflow_safely
    from converters.port.frontends.keras import build_graph

    path = ROOT / "fixtures" / "keras" / "k2_rnn_full.h5"
    graph = build_graph([str(path)], reader_options={}, outputs=None, input_shapes=None)
    assert {n.op for n in graph.nodes} >= {"lstm", "gru"}
    model, gen = _module(graph)
    state = model.state_dict()
    with converters.read(str(path)) as f:
        for b in gen.bindings:
            for key, param in b.node.params.items():
                to = b.targets[key]
                value = (np.full(tuple(state[to].shape), param.fill, np.float32) if param.source is None else
                         chain_apply([build(t) for t in param.transforms], f[param.source].numpy()))
                state[to] = torch.from_numpy(np.ascontiguousarray(value))
    model.load_state_dict(state)
    import_tensorflow_safely()
    import tf_keras

    keras_model = tf_keras.models.load_model(str(path), compile=False)
    x = np.random.RandomState(3).randn(2, 7, 3).astype(np.float32)
    want = keras_model(x, training=False).numpy()
    with torch.no_grad():
        got = model(torch.from_numpy(x.transpose(0, 2, 1).copy())).numpy()   # the module takes NCL
    assert got.shape == want.shape
    assert np.abs(got - want).max() <= 1e-5 * max(1.0, np.abs(want).max())


# ---------------------------------------------------------------- emitter semantics vs nn.LSTM

def _lstm_graph(outputs, **attrs):
    a = {"input_size": 3, "hidden_size": 4, "num_layers": 1, "bidirectional": True, "batch_first": True,
         "return_sequences": False, "go_backwards": False}
    a.update(attrs)
    names = [f"{g}_{m}_l0{d}" for d in ("", "_reverse") for g in ("weight", "bias") for m in ("ih", "hh")]
    node = Node("rnn", "lstm", ["x"], outputs, a, {n: Param(source=n) for n in names}, "LSTM")
    return Graph("t", "test", [], [GraphInput("x", (2, 5, 3), source_layout="NTC")], outputs, [node])


def _reference_and_port(graph):
    model, _ = _module(graph)
    torch.manual_seed(0)
    ref = torch.nn.LSTM(3, 4, batch_first=True, bidirectional=True).eval()
    model.rnn.load_state_dict(ref.state_dict())
    return ref, model


def test_last_step_of_a_two_way_lstm_is_forward_end_and_backward_start():
    ref, model = _reference_and_port(_lstm_graph(["y", "h_fw", "c_fw", "h_bw", "c_bw"]))
    x = torch.randn(2, 5, 3)
    with torch.no_grad():
        seq, (h, c) = ref(x)
        y, h_fw, _c_fw, _h_bw, c_bw = model(x)
    torch.testing.assert_close(y, torch.cat([seq[:, -1, :4], seq[:, 0, 4:]], -1), rtol=0, atol=0)
    torch.testing.assert_close(h_fw, h[0], rtol=0, atol=0)
    torch.testing.assert_close(c_bw, c[1], rtol=0, atol=0)


def test_go_backwards_and_merge_sum_on_the_sequence():
    ref, model = _reference_and_port(_lstm_graph(["y"], return_sequences=True, go_backwards=True, merge_mode="sum"))
    x = torch.randn(2, 5, 3)
    with torch.no_grad():
        seq, _ = ref(torch.flip(x, [1]))          # reversed input, output not reversed back (Keras)
        y = model(x)
    torch.testing.assert_close(y, seq[..., :4] + seq[..., 4:], rtol=0, atol=0)


def test_state_count_mismatch_is_refused():
    with pytest.raises(UnsupportedOpError, match="3 state outputs where state_format 'keras' gives 4"):
        _module(_lstm_graph(["y", "a", "b", "c"]))
