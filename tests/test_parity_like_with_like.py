"""Localisation compares like with like, or says it cannot tell (issue #10, items 10-11).

* An ONNX graph as tf2onnx / keras2onnx write it (built with onnx.helper, run by onnxruntime):
  NHWC input, a Transpose to NCHW, NCHW convolutions and BatchNorm, a Transpose back to NHWC and
  a MatMul + Add dense layer. Its inner tensors are NCHW although the table's input is NHWC: the
  oracle follows each tensor's layout through the graph, so faults are named at their layer; with
  the layouts unknown the report says it cannot tell instead of blaming the first convolution.
* A Keras model whose Conv2D layers fuse their ReLU, against a port that applies F.relu as a
  function: no false DIFF rows, a correct table passes every layer and a fault is named at its
  layer. A PASS never prints "first divergent layer".
* A TF1-style frozen graph (Conv2D + a separate bias Add, an unfused batch_normalization): the
  kernel's layer is read after its bias add and the BatchNorm at its name scope.
* A two-head torch.onnx export: a fault in one head is named although the other head agrees
  after it (it does not depend on it); a row a later dependent row contradicts is not blamed.
* A weights-only Keras file verifies with --architecture (a model config or a full model file).
* A crash in the PyTorch model's forward, and a TorchScript target with --localise, are one line
  and exit 2; dict outputs follow parity.outputs.
"""
from __future__ import annotations

import os
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from converters.errors import ConvertersError
from converters.parity.oracles import onnx_oracle
from converters.parity.verify import TargetCrashed, verify

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------- the tf2onnx-style ONNX graph

def nhwc_onnx(path: Path, seed=0) -> Path:
    """image (N, 8, 8, 3) -> Transpose -> conv1 -> relu1 -> conv2 -> bn2 -> relu2 -> Transpose
    (NHWC) -> Reshape (N, 384) -> dense/MatMul -> dense/BiasAdd: logits (N, 5)."""
    rng = np.random.default_rng(seed)

    def init(name, shape, lo=None, hi=None):
        a = rng.uniform(lo, hi, shape) if lo is not None else rng.normal(0, 0.3, shape)
        return numpy_helper.from_array(a.astype(np.float32), name)

    inits = [init("conv1_W", (4, 3, 3, 3)), init("conv1_B", (4,)), init("conv2_W", (6, 4, 3, 3)),
             init("conv2_B", (6,)), init("bn2_scale", (6,), 0.5, 1.5), init("bn2_bias", (6,)),
             init("bn2_mean", (6,)), init("bn2_var", (6,), 0.002, 0.02), init("dense_W", (384, 5)),
             init("dense_b", (5,)), numpy_helper.from_array(np.array([-1, 384], np.int64), "flat_shape")]
    nodes = [
        helper.make_node("Transpose", ["image"], ["t0"], name="to_nchw", perm=[0, 3, 1, 2]),
        helper.make_node("Conv", ["t0", "conv1_W", "conv1_B"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "conv2_W", "conv2_B"], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["c2", "bn2_scale", "bn2_bias", "bn2_mean", "bn2_var"], ["b2"],
                         name="bn2", epsilon=1e-3),
        helper.make_node("Relu", ["b2"], ["r2"], name="relu2"),
        helper.make_node("Transpose", ["r2"], ["t1"], name="to_nhwc", perm=[0, 2, 3, 1]),
        helper.make_node("Reshape", ["t1", "flat_shape"], ["flat"], name="flatten"),
        helper.make_node("MatMul", ["flat", "dense_W"], ["mm"], name="dense/MatMul"),
        helper.make_node("Add", ["mm", "dense_b"], ["logits"], name="dense/BiasAdd"),
    ]
    graph = helper.make_graph(nodes, "tf2onnx_like", [helper.make_tensor_value_info("image", TensorProto.FLOAT,
                                                                                    ["N", 8, 8, 3])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 5])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


class NHWCPort(nn.Module):
    """An independent PyTorch port: NCHW input, the flatten in NHWC order as the graph does."""

    def __init__(self, eps=1e-3, nhwc_flatten=True):
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 6, 3, padding=1)
        self.bn2, self.relu, self.fc = nn.BatchNorm2d(6, eps=eps), nn.ReLU(), nn.Linear(384, 5)
        self.nhwc_flatten = nhwc_flatten

    def forward(self, x):
        x = self.relu(self.bn2(self.conv2(self.relu(self.conv1(x)))))
        return self.fc((x.permute(0, 2, 3, 1) if self.nhwc_flatten else x).flatten(1))


ONNX_TABLE = """
source: onnx
input: {shape: [2, 8, 8, 3], layout: NHWC}
rules:
  - {from: 'conv1_W', to: 'conv1.weight'}
  - {from: 'conv2_W', to: 'conv2.weight', transforms: CONV2}
  - {from: 'conv(?P<i>\\d)_B', to: 'conv{i}.bias'}
  - {from: 'bn2_scale', to: 'bn2.weight'}
  - {from: 'bn2_bias', to: 'bn2.bias'}
  - {from: 'bn2_(?P<s>mean|var)', to: 'bn2.running_{s}'}
  - {from: 'dense_W', to: 'fc.weight', transforms: [{permute: [1, 0]}]}
  - {from: 'dense_b', to: 'fc.bias'}
ignore: ['flat_shape']
fill:
  - {to: 'bn2\\.num_batches_tracked', value: 0}
"""


@pytest.fixture(scope="module")
def nhwc_graph(tmp_path_factory):
    return nhwc_onnx(tmp_path_factory.mktemp("nhwc") / "tf2onnx_like.onnx")


def onnx_table(tmp_path, conv2_swapped=False) -> Path:
    """conv2_swapped: conv2's kernel with height and width swapped (3x3: the shape stays)."""
    path = tmp_path / ("swapped.yaml" if conv2_swapped else "table.yaml")
    path.write_text(ONNX_TABLE.replace("CONV2", "[{permute: [0, 1, 3, 2]}]" if conv2_swapped else "[]"))
    return path


def test_nhwc_input_graph_passes_with_every_nchw_tap_compared_as_nchw(nhwc_graph, tmp_path):
    rep = verify(nhwc_graph, onnx_table(tmp_path), NHWCPort(), localise="always")
    assert rep.passed, str(rep)
    assert [r["name"] for r in rep.layers] == ["conv1", "conv2", "bn2", "dense/BiasAdd"], str(rep)
    assert all(r["passed"] for r in rep.layers), str(rep)
    assert rep.layers[0]["shape"] == [2, 4, 8, 8]  # NCHW inside, not permuted as the NHWC input is


@pytest.mark.parametrize("fault,layer", [("conv2_hw_swapped", "conv2"), ("bn_eps", "bn2"),
                                         ("nchw_flatten", "dense/BiasAdd")])
def test_nhwc_input_graph_faults_are_named_at_their_layer(nhwc_graph, tmp_path, fault, layer):
    port = NHWCPort(eps=1e-5 if fault == "bn_eps" else 1e-3, nhwc_flatten=fault != "nchw_flatten")
    rep = verify(nhwc_graph, onnx_table(tmp_path, conv2_swapped=fault == "conv2_hw_swapped"), port)
    assert not rep.passed and rep.first_divergent is not None, str(rep)
    assert rep.first_divergent["source_layer"] == layer, str(rep)
    names = [r["name"] for r in rep.layers]
    assert all(r["passed"] for r in rep.layers[:names.index(layer)]), str(rep)


def test_unknown_inner_layouts_give_cannot_tell_not_the_first_conv(nhwc_graph, tmp_path, monkeypatch):
    """What happened before the layouts were followed: the NHWC permute was applied to NCHW taps."""
    monkeypatch.setattr(onnx_oracle.OnnxOracle, "activation_layouts", lambda self, names, layouts: {})
    rep = verify(nhwc_graph, onnx_table(tmp_path, conv2_swapped=True), NHWCPort())
    assert not rep.passed and rep.first_divergent is None and rep.undetermined, str(rep)
    assert "first divergent layer: cannot tell" in str(rep)
    assert all(r.get("unsure") for r in rep.layers if not r["passed"]), str(rep)


def test_tensor_layouts_follow_transposes_and_channel_first_ops(nhwc_graph):
    layouts = onnx_oracle.tensor_layouts(onnx.load(str(nhwc_graph)).graph, {"image": "NHWC"})
    assert (layouts["t0"], layouts["c1"], layouts["r1"], layouts["b2"], layouts["t1"]) == \
        ("NCHW", "NCHW", "NCHW", "NCHW", "NHWC")
    assert layouts["flat"] is None and layouts["logits"] is None  # a Reshape: unknown, not guessed


# --------------------------------------------------- Keras fused activations vs functional ones

@pytest.fixture(scope="module")
def keras():
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    return pytest.importorskip("keras")


def keras_fused(keras, seed=0):
    """Conv2D(relu) -> Conv2D(relu) -> Flatten -> Dense: the ReLUs live inside the conv layers."""
    L = keras.layers
    inp = keras.Input((6, 6, 3), name="image")
    x = L.Conv2D(4, 3, padding="same", activation="relu", name="conv1")(inp)
    x = L.Conv2D(5, 3, padding="same", activation="relu", name="conv2")(x)
    out = L.Dense(3, name="fc")(L.Flatten(name="flatten")(x))
    model = keras.Model(inp, out)
    rng = np.random.default_rng(seed)
    for v in model.weights:
        v.assign(rng.normal(0, 0.4, tuple(v.shape)).astype(np.float32))
    return model


class FunctionalPort(nn.Module):
    """The port computes the ReLUs with F.relu: no module to compare the fused taps with."""

    def __init__(self):
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 5, 3, padding=1)
        self.fc = nn.Linear(180, 3)

    def forward(self, x):
        x = F.relu(self.conv2(F.relu(self.conv1(x))))
        return self.fc(x.permute(0, 2, 3, 1).flatten(1))


KERAS_TABLE = """
source: keras
input: {shape: [2, 6, 6, 3], layout: NHWC}
rules:
  - {from: 'conv1/kernel', to: 'conv1.weight', transforms: [tf_conv]}
  - {from: 'conv2/kernel', to: 'conv2.weight', transforms: CONV2}
  - {from: 'conv(?P<i>\\d)/bias', to: 'conv{i}.bias'}
  - {from: 'fc/kernel', to: 'fc.weight', transforms: [tf_dense]}
  - {from: 'fc/bias', to: 'fc.bias'}
"""


@pytest.fixture(scope="module")
def keras_files(keras, tmp_path_factory):
    d = tmp_path_factory.mktemp("keras_fused")
    model = keras_fused(keras)
    model.save(d / "fused.keras")
    model.save_weights(d / "fused.weights.h5")
    (d / "fused.json").write_text(model.to_json())
    return d


def keras_table(tmp_path, conv2_fault=False) -> Path:
    """conv2_fault: the kernel's height and width swapped (a 3x3 kernel keeps its shape)."""
    path = tmp_path / ("k_fault.yaml" if conv2_fault else "k.yaml")
    path.write_text(KERAS_TABLE.replace("CONV2", "[tf_conv, {permute: [0, 1, 3, 2]}]" if conv2_fault else "[tf_conv]"))
    return path


def test_keras_fused_relu_against_functional_relu_has_no_false_diff(keras_files, tmp_path):
    rep = verify(keras_files / "fused.keras", keras_table(tmp_path), FunctionalPort(), localise="always")
    assert rep.passed, str(rep)
    assert [r["name"] for r in rep.layers] == ["conv1", "conv2", "fc"] and all(r["passed"] for r in rep.layers), \
        str(rep)
    assert rep.layers[0]["compared_with"] == "conv1+relu", str(rep)
    assert "first divergent" not in str(rep) and "DIFF" not in str(rep)


def test_keras_fused_relu_fault_is_named_at_its_layer(keras_files, tmp_path):
    rep = verify(keras_files / "fused.keras", keras_table(tmp_path, conv2_fault=True), FunctionalPort())
    assert not rep.passed and rep.first_divergent["source_layer"] == "conv2", str(rep)
    assert rep.layers[0]["passed"], str(rep)


def test_a_pass_never_names_a_first_divergent_layer(keras_files, tmp_path, monkeypatch):
    """Even when a layer's activations cannot be matched (here: the fused activation unknown)."""
    from converters.parity.oracles import keras_oracle

    monkeypatch.setattr(keras_oracle.KerasOracle, "fused_activations", lambda self, taps: {})
    rep = verify(keras_files / "fused.keras", keras_table(tmp_path), FunctionalPort(), localise="always")
    assert rep.passed and not rep.layers[0]["passed"], str(rep)
    assert rep.first_divergent is None and "first divergent" not in str(rep) and "first divergent" not in \
        rep._repr_html_()
    assert any("differ although every output agrees" in n for n in rep.notes), rep.notes


# ------------------------------------------------------------------------ weights-only Keras files

@pytest.mark.parametrize("architecture", ["fused.json", "fused.keras"])
def test_weights_only_keras_file_verifies_with_an_architecture(keras_files, tmp_path, architecture):
    weights = keras_files / "fused.weights.h5"
    with pytest.raises(ConvertersError, match="--architecture"):
        verify(weights, keras_table(tmp_path), FunctionalPort())
    rep = verify(weights, keras_table(tmp_path), FunctionalPort(), architecture=keras_files / architecture)
    assert rep.passed, str(rep)


def test_weights_only_keras_cli_with_architecture(keras_files, tmp_path, capsys):
    from converters.cli import main

    target = tmp_path / "port.py"
    target.write_text(textwrap.dedent("""
        import torch.nn.functional as F
        from torch import nn

        class FunctionalPort(nn.Module):
            def __init__(self):
                super().__init__()
                self.conv1, self.conv2 = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 5, 3, padding=1)
                self.fc = nn.Linear(180, 3)

            def forward(self, x):
                x = F.relu(self.conv2(F.relu(self.conv1(x))))
                return self.fc(x.permute(0, 2, 3, 1).flatten(1))
        """))
    args = ["verify", str(keras_files / "fused.weights.h5"), "--map", str(keras_table(tmp_path)),
            "--target", f"{target}:FunctionalPort", "--architecture", str(keras_files / "fused.json"), "-q"]
    assert main(args) == 0, capsys.readouterr()
    assert capsys.readouterr().out.startswith("parity PASS")


# --------------------------------------------------------------- crashes, TorchScript, dict outputs

class DictPort(FunctionalPort):
    def forward(self, x):
        return {"scores": super().forward(x), "aux": x.mean()}


def test_dict_outputs_follow_parity_outputs(keras_files, tmp_path):
    path = keras_table(tmp_path)
    path.write_text(path.read_text() + "parity:\n  outputs: [fc]\n")
    rep = verify(keras_files / "fused.keras", path, DictPort())
    assert rep.passed and [o["name"] for o in rep.outputs] == ["fc"], str(rep)
    assert any("matched by position" in n for n in rep.notes), rep.notes


class Crashing(FunctionalPort):
    def forward(self, x):
        return super().forward(x.flatten(1))  # a wrong input assumption inside the port


def test_a_crash_in_the_pytorch_forward_is_one_line_and_exit_2(keras_files, tmp_path, capsys):
    with pytest.raises(TargetCrashed, match="PyTorch model's forward failed"):
        verify(keras_files / "fused.keras", keras_table(tmp_path), Crashing())
    from converters.cli import main

    target = tmp_path / "crash.py"
    target.write_text("from torch import nn\n\nclass Crash(nn.Module):\n    def __init__(self):\n"
                      "        super().__init__()\n        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)\n"
                      "        self.conv2 = nn.Conv2d(4, 5, 3, padding=1)\n        self.fc = nn.Linear(180, 3)\n\n"
                      "    def forward(self, x):\n        return self.fc(x)\n")
    code = main(["verify", str(keras_files / "fused.keras"), "--map", str(keras_table(tmp_path)),
                 "--target", f"{target}:Crash"])
    err = capsys.readouterr().err
    assert code == 2 and "forward failed" in err and "Traceback" not in err, err
    assert len(err.strip().splitlines()) == 1, err


def test_a_torchscript_target_with_localise_is_one_line_not_a_traceback(keras_files, tmp_path):
    from converters.convert import convert

    table = keras_table(tmp_path, conv2_fault=True)
    model, _ = convert(keras_files / "fused.keras", table, FunctionalPort())
    scripted = torch.jit.script(model.eval())
    with pytest.raises(ConvertersError, match="cannot localise: .*TorchScript"):  # --localise always: exit 2
        verify(keras_files / "fused.keras", table, model=scripted, localise="always")
    rep = verify(keras_files / "fused.keras", table, model=scripted)  # auto: the verdict, and why no layer
    assert not rep.passed and rep.first_divergent is None and not rep.localised, str(rep)
    assert any("TorchScript" in n for n in rep.notes), rep.notes


# ------------------------------------------------------------- a TF1-style frozen graph (.pb)

@pytest.fixture(scope="module")
def frozen_graph(tmp_path_factory):
    """image (N, 6, 6, 3) -> conv1/Conv2D + conv1/Add (bias as a separate add) -> unfused BatchNorm
    (tf.nn.batch_normalization: bn/batchnorm/...) -> relu -> fc/MatMul + fc/logits (BiasAdd)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    from converters.parity.oracles.keras_oracle import import_tensorflow_safely

    import_tensorflow_safely()
    tf = pytest.importorskip("tensorflow")
    rng = np.random.default_rng(3)

    def const(shape, name, lo=None, hi=None):
        a = rng.uniform(lo, hi, shape) if lo is not None else rng.normal(0, 0.3, shape)
        return tf.constant(a.astype(np.float32), name=name)

    graph = tf.Graph()
    with graph.as_default():
        x = tf.compat.v1.placeholder(tf.float32, [None, 6, 6, 3], name="image")
        with tf.name_scope("conv1"):
            h = tf.add(tf.nn.conv2d(x, const((3, 3, 3, 4), "kernel"), 1, "SAME"), const((4,), "bias"))
        with tf.name_scope("bn"):
            h = tf.nn.batch_normalization(h, const((4,), "moving_mean"), const((4,), "moving_variance", 0.002, 0.02),
                                          const((4,), "beta"), const((4,), "gamma", 0.5, 1.5), 1e-3)
        h = tf.nn.relu(h, name="relu")
        with tf.name_scope("fc"):
            flat = tf.reshape(h, [-1, 144])
            tf.nn.bias_add(tf.matmul(flat, const((144, 3), "kernel")), const((3,), "bias"), name="logits")
    path = tmp_path_factory.mktemp("frozen") / "frozen.pb"
    path.write_bytes(graph.as_graph_def().SerializeToString())
    return path


class FrozenPort(nn.Module):
    def __init__(self, eps=1e-3):
        super().__init__()
        self.conv1, self.bn, self.fc = nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4, eps=eps), nn.Linear(144, 3)

    def forward(self, x):
        x = F.relu(self.bn(self.conv1(x)))
        return self.fc(x.permute(0, 2, 3, 1).flatten(1))


FROZEN_TABLE = """
source: tensorflow
input: {shape: [2, 6, 6, 3], layout: NHWC}
rules:
  - {from: 'conv1/kernel', to: 'conv1.weight', transforms: CONV}
  - {from: 'conv1/bias', to: 'conv1.bias'}
  - {from: 'bn/gamma', to: 'bn.weight'}
  - {from: 'bn/beta', to: 'bn.bias'}
  - {from: 'bn/moving_mean', to: 'bn.running_mean'}
  - {from: 'bn/moving_variance', to: 'bn.running_var'}
  - {from: 'fc/kernel', to: 'fc.weight', transforms: [tf_dense]}
  - {from: 'fc/bias', to: 'fc.bias'}
ignore: ['bn/batchnorm/add/y', 'fc/Reshape/shape']
fill:
  - {to: 'bn\\.num_batches_tracked', value: 0}
"""


def frozen_table(tmp_path, conv_fault=False) -> Path:
    path = tmp_path / ("f_fault.yaml" if conv_fault else "f.yaml")
    text = FROZEN_TABLE.replace("CONV", "[tf_conv, {permute: [0, 1, 3, 2]}]" if conv_fault else "[tf_conv]")
    path.write_text(text)
    return path


def test_frozen_graph_taps_after_the_bias_add_and_at_the_batchnorm_scope(frozen_graph, tmp_path):
    rep = verify(frozen_graph, frozen_table(tmp_path), FrozenPort(), localise="always")
    assert rep.passed, str(rep)
    # conv1: the scope's output (conv1/Add, after the bias), not conv1/Conv2D; bn: the scope of bn/gamma
    assert [(r["name"], r["module"]) for r in rep.layers] == [("conv1", "conv1"), ("bn", "bn"),
                                                              ("fc/logits", "fc")], str(rep)
    assert all(r["passed"] for r in rep.layers), str(rep)


@pytest.mark.parametrize("fault,layer", [("bn_eps", "bn"), ("conv_hw_swapped", "conv1")])
def test_frozen_graph_faults_are_named_at_their_layer(frozen_graph, tmp_path, fault, layer):
    port = FrozenPort(eps=1e-5 if fault == "bn_eps" else 1e-3)
    rep = verify(frozen_graph, frozen_table(tmp_path, conv_fault=fault == "conv_hw_swapped"), port)
    assert not rep.passed and (rep.first_divergent or {}).get("source_layer") == layer, str(rep)


def test_frozen_graph_reference_keeps_the_taps(frozen_graph, tmp_path):
    from converters.parity.reference import write_reference

    table = frozen_table(tmp_path)
    meta = write_reference(frozen_graph, table, tmp_path / "ref.npz", target=FrozenPort())
    assert {k: meta["tap_for"].get(k) for k in ("conv1/Conv2D", "bn/gamma", "fc/MatMul")} == \
        {"conv1/Conv2D": "conv1/Add", "bn/gamma": "bn", "fc/MatMul": "fc/logits"}, meta
    rep = verify(frozen_graph, table, FrozenPort(eps=1e-5), reference=tmp_path / "ref.npz")
    assert not rep.passed and rep.first_divergent["source_layer"] == "bn", str(rep)


# --------------------------------------------- branches and contradicted rows (torch.onnx export)

class TwoHeads(nn.Module):
    """conv1 -> relu -> conv2 -> relu -> (head_a, head_b): two outputs from one trunk."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(7)
        self.conv1, self.conv2 = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1)
        self.head_a, self.head_b = nn.Conv2d(4, 2, 3, padding=1), nn.Conv2d(4, 3, 3, padding=1)
        self.relu = nn.ReLU()

    def forward(self, x):
        h = self.relu(self.conv2(self.relu(self.conv1(x))))
        return self.head_a(h), self.head_b(h)


HEADS_TABLE = """
source: onnx
input: {shape: [2, 3, 8, 8], layout: NCHW}
rules:
  - {from: 'conv1\\.(?P<p>weight|bias)', to: 'conv1.{p}', transforms: CONV1}
  - {from: 'conv2\\.weight', to: 'conv2.weight', transforms: CONV2}
  - {from: 'conv2\\.bias', to: 'conv2.bias'}
  - {from: 'head_a\\.weight', to: 'head_a.weight', transforms: HEAD_A}
  - {from: 'head_a\\.bias', to: 'head_a.bias'}
  - {from: 'head_b\\.weight', to: 'head_b.weight', transforms: HEAD_B}
  - {from: 'head_b\\.bias', to: 'head_b.bias'}
"""


@pytest.fixture(scope="module")
def two_heads(tmp_path_factory):
    import warnings

    path = tmp_path_factory.mktemp("heads") / "heads.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(TwoHeads().eval(), torch.zeros(1, 3, 8, 8), str(path), dynamo=False, input_names=["x"],
                          output_names=["a", "b"], dynamic_axes={"x": {0: "N"}})
    return path


def heads_table(tmp_path, rescaled=False, head_b_swapped=False, head_a_swapped=False) -> Path:
    """rescaled: conv1 filled x2 and conv2's kernel x0.5, an equivalent network whose conv1 output
    differs from the source's; head_*_swapped: that head's kernel with height and width swapped."""
    text = HEADS_TABLE.replace("CONV1", "[{scale: {factor: 2}}]" if rescaled else "[]")
    text = text.replace("CONV2", "[{scale: {factor: 0.5}}]" if rescaled else "[]")
    text = text.replace("HEAD_B", "[{permute: [0, 1, 3, 2]}]" if head_b_swapped else "[]")
    text = text.replace("HEAD_A", "[{permute: [0, 1, 3, 2]}]" if head_a_swapped else "[]")
    path = tmp_path / f"heads_{int(rescaled)}{int(head_b_swapped)}{int(head_a_swapped)}.yaml"
    path.write_text(text)
    return path


def test_a_fault_in_one_branch_is_named_although_the_other_branch_agrees_after_it(two_heads, tmp_path):
    rep = verify(two_heads, heads_table(tmp_path, head_b_swapped=True), TwoHeads())
    assert not rep.passed and rep.first_divergent["module"] == "head_b", str(rep)
    rep = verify(two_heads, heads_table(tmp_path, head_a_swapped=True), TwoHeads())  # head_a runs before head_b
    modules = [r["module"] for r in rep.layers]
    assert modules.index("head_a") < modules.index("head_b") and rep.layers[modules.index("head_b")]["passed"], str(rep)
    assert rep.first_divergent["module"] == "head_a", str(rep)  # head_b agrees, but is not computed from head_a


def test_a_row_contradicted_by_a_later_dependent_row_is_not_blamed(two_heads, tmp_path):
    rep = verify(two_heads, heads_table(tmp_path, rescaled=True), TwoHeads(), localise="always")
    assert rep.passed and not rep.layers[0]["passed"] and rep.first_divergent is None, str(rep)
    rep = verify(two_heads, heads_table(tmp_path, rescaled=True, head_b_swapped=True), TwoHeads())
    assert not rep.passed and rep.first_divergent["module"] == "head_b", str(rep)
    assert "computed from it, agrees" in rep.layers[0]["unsure"] and "DIFF?" in str(rep), str(rep)
