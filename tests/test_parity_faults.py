"""Deliberate conversion faults, caught by `converters.parity.verify` and localised to the right layer.

Each source model runs in its real framework through its oracle (Keras 3 in-process, Caffe through
OpenCV, MXNet in the side interpreter). A correct table passes; each fault is one realistic mistake
from other converters' issue trackers, and the test asserts that verify fails AND that the FIRST
DIVERGENT LAYER it names is the layer the mistake was made in:

  Keras VGG-like     wrong flatten order before the first dense layer -> fc1
                     missing transpose of a (square) dense kernel      -> fc2
                     convolution kernel with height and width swapped  -> conv2
  Keras MobileNetV2  BatchNorm eps 1e-5 (PyTorch's) instead of 1e-3    -> bn_Conv1
                     symmetric padding where TF padded bottom/right    -> block_1_depthwise
  Caffe MTCNN P-Net  missing BGR -> RGB flip of the first convolution  -> conv1
                     floor pooling where Caffe rounds up (ceil)        -> pool1
  MXNet MTCNN P-Net  passes against mxnet; a kernel left untransposed  -> conv2
  TF SavedModel      (Keras export) passes; BatchNorm eps 1e-5          -> bn

Source models are built with random weights (biases and BatchNorm statistics too) in pytest's
tmp_path; the P-Nets are the real third-party files in fixtures/.
"""
from __future__ import annotations

import os
import textwrap
from pathlib import Path

import numpy as np
import pytest
from torch import nn

from converters.convert import convert
from converters.mapping import spec
from converters.parity.verify import verify

ROOT = Path(__file__).resolve().parents[1]
CAFFE = ROOT / "fixtures/caffe/mtcnn_pnet/det1.caffemodel"
MX_PARAMS = ROOT / "fixtures/mxnet/mtcnn_pnet/det1-0001.params"
MX_PYTHON = ROOT / ".venv-mxnet/bin/python"


def assert_fails_at(report, source_layer, module=None):
    assert not report.passed, str(report)
    first = report.first_divergent
    assert first is not None, str(report)
    assert first["source_layer"] == source_layer, str(report)
    if module is not None:
        assert first["module"] == module, str(report)
    # every layer before it agreed: the divergence really starts there
    names = [row["name"] for row in report.layers]
    assert all(row["passed"] for row in report.layers[:names.index(source_layer)]), str(report)
    return first


def causes(first) -> str:
    return " ".join(first["likely_causes"]).lower()


def write_table(tmp_path, name, text) -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(textwrap.dedent(text))
    return path


# ------------------------------------------------------------------------------- Keras VGG-like

@pytest.fixture(scope="module")
def keras():
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    return pytest.importorskip("keras")


def randomize(model, seed):
    rng = np.random.default_rng(seed)
    for v in model.weights:
        name, shape = v.name, tuple(v.shape)
        if name in ("gamma", "moving_variance"):
            v.assign(rng.uniform(0.5, 1.5, shape).astype(np.float32))
        elif name in ("beta", "moving_mean", "bias"):
            v.assign(rng.normal(0.0, 0.2, shape).astype(np.float32))


@pytest.fixture(scope="module")
def vgg_file(keras, tmp_path_factory):
    """conv-conv-pool-flatten-dense-dense-dense, NHWC, saved as .keras."""
    keras.utils.set_random_seed(0)
    L = keras.layers
    inp = keras.Input((16, 16, 3), name="image")
    x = L.Conv2D(8, 3, padding="same", activation="relu", name="conv1")(inp)
    x = L.Conv2D(8, 3, padding="same", activation="relu", name="conv2")(x)
    x = L.MaxPooling2D(2, name="pool")(x)
    x = L.Flatten(name="flatten")(x)
    x = L.Dense(16, activation="relu", name="fc1")(x)
    x = L.Dense(16, activation="relu", name="fc2")(x)
    out = L.Dense(10, name="logits")(x)
    model = keras.Model(inp, out)
    randomize(model, 0)
    path = tmp_path_factory.mktemp("vgg") / "small_vgg.keras"
    model.save(path)
    return path


class SmallVGG(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1, self.relu1 = nn.Conv2d(3, 8, 3, padding=1), nn.ReLU()
        self.conv2, self.relu2 = nn.Conv2d(8, 8, 3, padding=1), nn.ReLU()
        self.pool, self.flatten = nn.MaxPool2d(2), nn.Flatten()
        self.fc1, self.relu3 = nn.Linear(8 * 8 * 8, 16), nn.ReLU()
        self.fc2, self.relu4 = nn.Linear(16, 16), nn.ReLU()
        self.logits = nn.Linear(16, 10)

    def forward(self, x):
        x = self.pool(self.relu2(self.conv2(self.relu1(self.conv1(x)))))
        return self.logits(self.relu4(self.fc2(self.relu3(self.fc1(self.flatten(x))))))


VGG_TABLE = """\
    description: a small Keras VGG-like net -> SmallVGG (tests/test_parity_faults.py)
    source: keras
    input: {shape: [1, 16, 16, 3], layout: NHWC, channels: RGB, range: [0, 1]}
    rules:
      - {from: 'conv1/kernel', to: 'conv1.weight', transforms: [CONV1]}
      - {from: 'conv2/kernel', to: 'conv2.weight', transforms: [CONV2]}
      - {from: '(?P<l>conv1|conv2|fc1|fc2|logits)/bias', to: '{l}.bias'}
      - {from: 'fc1/kernel', to: 'fc1.weight', transforms: [tf_dense FLATTEN]}
      - {from: 'fc2/kernel', to: 'fc2.weight', transforms: [FC2]}
      - {from: 'logits/kernel', to: 'logits.weight', transforms: [tf_dense]}
"""
GOOD = {"CONV1": "tf_conv", "CONV2": "tf_conv", "FLATTEN": ", {flatten_order: {h: 8, w: 8, c: 8}}",
        "FC2": "tf_dense"}


def vgg_table(tmp_path, name, **changes):
    text = VGG_TABLE
    for key, value in {**GOOD, **changes}.items():
        text = text.replace(key, value)
    return write_table(tmp_path, name, text)


def test_keras_vgg_correct_table_passes(vgg_file, tmp_path):
    report = verify(vgg_file, vgg_table(tmp_path, "good"), SmallVGG(), localise="always")
    assert report.passed, str(report)
    assert report.outputs[0]["max_abs"] <= report.outputs[0]["atol"]
    assert [row["name"] for row in report.layers][:2] == ["conv1", "conv2"] and all(r["passed"] for r in report.layers)


def test_keras_vgg_wrong_flatten_order(vgg_file, tmp_path):
    report = verify(vgg_file, vgg_table(tmp_path, "no_flatten_order", FLATTEN=""), SmallVGG())
    first = assert_fails_at(report, "fc1", "fc1")
    assert "flatten" in causes(first)


def test_keras_vgg_missing_dense_transpose(vgg_file, tmp_path):
    """fc2 is 16x16: an untransposed kernel fits the shape check and is silently wrong."""
    report = verify(vgg_file, vgg_table(tmp_path, "no_transpose", FC2="{cast: float32}"), SmallVGG())
    first = assert_fails_at(report, "fc2", "fc2")
    assert "transpose" in causes(first) or "layout" in causes(first)


def test_keras_vgg_conv_kernel_height_width_swapped(vgg_file, tmp_path):
    """HWIO -> OIWH instead of OIHW (permute 3,2,1,0): same shape for a 3x3 kernel."""
    report = verify(vgg_file, vgg_table(tmp_path, "hw_swapped", CONV2="{permute: [3, 2, 1, 0]}"), SmallVGG())
    first = assert_fails_at(report, "conv2", "conv2")
    assert "layout" in causes(first) or "transpose" in causes(first)


# ------------------------------------------------------------------------------- Keras MobileNetV2

MNV2_KWARGS = {"alpha": 0.35, "num_classes": 10, "input_size": 32, "classifier_activation": None}


@pytest.fixture(scope="module")
def mobilenet_file(keras, tmp_path_factory):
    keras.utils.set_random_seed(3)
    model = keras.applications.MobileNetV2(weights=None, alpha=0.35, input_shape=(32, 32, 3), classes=10,
                                           classifier_activation=None)
    randomize(model, 3)
    calibrate_batchnorm(keras, model, (8, 32, 32, 3))
    path = tmp_path_factory.mktemp("mnv2") / "mnv2.keras"
    model.save(path)
    return path


def calibrate_batchnorm(keras, model, shape):
    """Moving statistics from one training-mode batch (momentum 0 for that call): random moving
    statistics leave a deep net's output nearly independent of its input, which would let a wrong
    conversion pass on the outputs (a vacuous test); calibrated ones keep it alive."""
    bns = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    for layer in bns:
        layer.momentum = 0.0
    model(np.random.default_rng(4).uniform(-1, 1, shape).astype(np.float32), training=True)
    for layer in bns:
        layer.momentum = 0.999


def mobilenet(**changes):
    from converters.models.keras_mobilenet_v2 import MobileNetV2

    return MobileNetV2(**{**MNV2_KWARGS, **changes})


def test_keras_mobilenet_v2_passes(mobilenet_file):
    report = verify(mobilenet_file, "keras/mobilenet_v2", mobilenet(), input_shape=[2, 32, 32, 3])
    assert report.passed, str(report)
    assert report.outputs[0]["scale"] > 1  # max |output| > 1: a live network (see calibrate_batchnorm)


def test_keras_mobilenet_v2_wrong_batchnorm_eps(mobilenet_file):
    report = verify(mobilenet_file, "keras/mobilenet_v2", mobilenet(bn_eps=1e-5), input_shape=[2, 32, 32, 3])
    first = assert_fails_at(report, "bn_Conv1", "conv1_bn")
    assert "eps" in causes(first)


def test_keras_mobilenet_v2_symmetric_padding_instead_of_same(mobilenet_file):
    """block 1's stride-2 depthwise conv padded (1, 1, 1, 1) as PyTorch's padding=1 would, where
    Keras pads (0, 1, 0, 1): same output size, shifted values."""
    model = mobilenet()
    model.blocks[1].pad = nn.ZeroPad2d(1)
    report = verify(mobilenet_file, "keras/mobilenet_v2", model, input_shape=[2, 32, 32, 3])
    first = assert_fails_at(report, "block_1_depthwise", "blocks.1.depthwise")
    assert "padding" in causes(first) or "same" in causes(first)


# ----------------------------------------------------------------------------- Caffe MTCNN P-Net

PNET_RULES = """\
    rules:
      - {from: 'conv1/0', to: 'conv1.weight', transforms: [CONV1]}
      - {from: 'conv(?P<n>[23])/0', to: 'conv{n}.weight'}
      - {from: 'conv(?P<n>[1-3])/1', to: 'conv{n}.bias'}
      - {from: 'conv4-(?P<h>[12])/0', to: 'conv4_{h}.weight'}
      - {from: 'conv4-(?P<h>[12])/1', to: 'conv4_{h}.bias'}
      - {from: 'PReLU(?P<n>[1-3])/0', to: 'prelu{n}.weight'}
"""
BGR_PNET = """\
    description: the P-Net taken as a BGR model, converted to take RGB (tests/test_parity_faults.py)
    source: caffe
    target: converters.models.mtcnn:PNet
    input: {shape: [1, 3, 31, 25], layout: NCHW, channels: BGR, range: [0, 255],
            mean: [127.5, 127.5, 127.5], std: [128, 128, 128]}
    parity:
      target_input: {channels: RGB}
      outputs: [prob1, conv4-2]
      layers: {pool1: pool1}
""" + PNET_RULES


def pnet_table(tmp_path, name, conv1):
    return write_table(tmp_path, name, BGR_PNET.replace("CONV1", conv1))


@pytest.fixture(scope="module")
def cv2():
    return pytest.importorskip("cv2")


def test_caffe_pnet_shipped_table_passes(cv2):
    report = verify(CAFFE, "caffe/mtcnn_pnet", input_shape=[2, 3, 31, 25], localise="always")
    assert report.passed, str(report)
    assert {o["name"] for o in report.outputs} == {"prob1", "conv4-2"}


def test_caffe_pnet_bgr_flip(cv2, tmp_path):
    good = verify(CAFFE, pnet_table(tmp_path, "flip", "{flip: {axis: 1}}"))
    assert good.passed, str(good)
    report = verify(CAFFE, pnet_table(tmp_path, "no_flip", "{cast: float32}"))
    first = assert_fails_at(report, "conv1", "conv1")
    assert "bgr" in causes(first) or "channel" in causes(first)


def test_caffe_pnet_floor_instead_of_ceil(cv2):
    model, _ = convert(CAFFE, "caffe/mtcnn_pnet")
    model.pool1.ceil_mode = False  # PyTorch's default rounding
    m = spec.load("caffe/mtcnn_pnet")
    m.parity = {**(m.parity or {}), "layers": {**(m.parity or {}).get("layers", {}), "pool1": "pool1"}}
    report = verify(CAFFE, m, model=model, input_shape=[2, 3, 31, 25])  # 29x23 after conv1: odd
    first = assert_fails_at(report, "pool1", "pool1")
    assert "ceil" in causes(first)


# ----------------------------------------------------------------------------- MXNet MTCNN P-Net

MX_PARITY = {
    "source_input": [{"flip": {"axis": 1}}, {"permute": [0, 1, 3, 2]}],  # the port: BGR, width first
    "activations": [{"permute": [0, 1, 3, 2]}],
    "outputs": ["prob1", "conv4_2"],
    "layers": {"pool1": "pool1"},
}


def mx_table(tmp_path, name, break_conv2=False):
    text = (ROOT / "converters/mappings/mxnet/mtcnn_pnet.yaml").read_text()
    if "parity:" not in text:
        import yaml

        text += "\n" + yaml.safe_dump({"parity": MX_PARITY}, default_flow_style=None)
    if break_conv2:  # the conv2/conv3 rule without its height/width swap
        rule = ("  - from: 'conv(?P<n>[23])_weight'\n    to: 'conv{n}.weight'\n"
                "    transforms: [{permute: [0, 1, 3, 2]}]\n")
        assert rule in text
        text = text.replace(rule, "  - from: 'conv(?P<n>[23])_weight'\n    to: 'conv{n}.weight'\n")
    path = tmp_path / f"{name}.yaml"
    path.write_text(text)
    return path


@pytest.fixture(scope="module")
def source_python():
    if not MX_PYTHON.exists():
        pytest.skip(f"{MX_PYTHON} missing: run scripts/setup.sh to create the mxnet environment")
    return str(MX_PYTHON)


@pytest.mark.mxnet
def test_mxnet_pnet_passes_against_mxnet(source_python, tmp_path):
    report = verify(MX_PARAMS, mx_table(tmp_path, "pnet"), source_python=source_python,
                    input_shape=[2, 3, 31, 25], localise="always")
    assert report.passed, str(report)
    assert len(report.layers) >= 9 and all(r["passed"] for r in report.layers)


@pytest.mark.mxnet
def test_mxnet_pnet_untransposed_kernel(source_python, tmp_path):
    report = verify(MX_PARAMS, mx_table(tmp_path, "pnet_broken", break_conv2=True), source_python=source_python,
                    input_shape=[2, 3, 31, 25])
    assert_fails_at(report, "conv2", "conv2")


# ------------------------------------------------------------------- TensorFlow SavedModel (Keras)

class SmallTFNet(nn.Module):
    """Keras: Conv2D(4, 3, strides 2, SAME) -> BatchNormalization -> ReLU -> MaxPool 2 -> Dense 5.
    9x9 input: SAME at stride 2 pads 1 on each side here, so padding=1 is exact."""

    def __init__(self, eps=1e-3):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, stride=2, padding=1)
        self.bn = nn.BatchNorm2d(4, eps=eps)
        self.relu, self.pool, self.flatten = nn.ReLU(), nn.MaxPool2d(2), nn.Flatten()
        self.logits = nn.Linear(16, 5)

    def forward(self, x):
        return self.logits(self.flatten(self.pool(self.relu(self.bn(self.conv(x))))))


TF_TABLE = """\
    description: a Keras model exported as a SavedModel (model.export) -> SmallTFNet
    notes: the TensorFlow reader names a Keras 3 export's variables by index, so parity.layers pairs
      the layers (the TensorFlow oracle taps a Keras layer by its name scope)
    source: tensorflow
    input: {shape: [1, 9, 9, 3], layout: NHWC}
    parity:
      layers: {conv: conv, bn: bn, pool: pool, logits: logits}
    ignore: ['_all_variables/.*']
    fill: [{to: 'bn\\.num_batches_tracked', value: 0}]
    rules:
      - {from: 'variables/0/.ATTRIBUTES/VARIABLE_VALUE', to: conv.weight, transforms: [tf_conv]}
      - {from: 'variables/1/.ATTRIBUTES/VARIABLE_VALUE', to: conv.bias}
      - {from: 'variables/2/.ATTRIBUTES/VARIABLE_VALUE', to: bn.weight}
      - {from: 'variables/3/.ATTRIBUTES/VARIABLE_VALUE', to: bn.bias}
      - {from: 'variables/4/.ATTRIBUTES/VARIABLE_VALUE', to: bn.running_mean}
      - {from: 'variables/5/.ATTRIBUTES/VARIABLE_VALUE', to: bn.running_var}
      - {from: 'variables/6/.ATTRIBUTES/VARIABLE_VALUE', to: logits.weight,
         transforms: [tf_dense, {flatten_order: {h: 2, w: 2, c: 4}}]}
      - {from: 'variables/7/.ATTRIBUTES/VARIABLE_VALUE', to: logits.bias}
"""


@pytest.fixture(scope="module")
def tf_export(keras, tmp_path_factory):
    keras.utils.set_random_seed(7)
    L = keras.layers
    inp = keras.Input((9, 9, 3), name="image")
    x = L.Conv2D(4, 3, strides=2, padding="same", name="conv")(inp)
    x = L.BatchNormalization(name="bn")(x)
    x = L.MaxPooling2D(2, name="pool")(L.ReLU(name="relu")(x))
    model = keras.Model(inp, L.Dense(5, name="logits")(L.Flatten(name="flatten")(x)))
    model.get_layer("bn").set_weights([np.array(v, np.float32) for v in
                                       ([1.2, 0.7, 1.1, 0.9], [0.1, -0.2, 0.05, 0.3], [0.2, -0.1, 0.0, 0.4],
                                        [0.01, 0.02, 0.005, 0.03])])  # small variances: eps matters
    path = tmp_path_factory.mktemp("tf") / "exported"
    model.export(path, verbose=False)
    return path


def test_tensorflow_saved_model_passes(tf_export, tmp_path):
    report = verify(tf_export, write_table(tmp_path, "tf", TF_TABLE), SmallTFNet(), localise="always")
    assert report.passed, str(report)
    assert [row["name"] for row in report.layers] == ["conv", "bn", "pool", "logits"], str(report)


def test_tensorflow_saved_model_wrong_batchnorm_eps(tf_export, tmp_path):
    report = verify(tf_export, write_table(tmp_path, "tf", TF_TABLE), SmallTFNet(eps=1e-5))
    first = assert_fails_at(report, "bn", "bn")
    assert "eps" in causes(first)
