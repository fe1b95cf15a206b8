"""`convert port` TensorFlow frontend: frozen GraphDefs made by TensorFlow (tf.function ->
convert_variables_to_constants_v2; fixtures/port/tensorflow/make_fixtures.py and graphs frozen at
test time) ported to an NCHW PyTorch module and verified against TensorFlow on the same inputs."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

from converters.errors import ConvertersError
from converters.parity.verify import verify
from converters.port import port
from converters.port.frontends.tensorflow import build_graph
from converters.port.graph import PortError, UnsupportedOpError

ROOT = Path(__file__).resolve().parents[1]
FIX = ROOT / "fixtures" / "port" / "tensorflow"


def _verified(tmp_path, source, **kw):
    result = port([str(source)], tmp_path / "out", framework="tensorflow", verify=True, **kw)
    assert result.parity.passed, str(result.parity)
    for o in result.parity.outputs:
        assert o["max_abs"] <= 1e-5 * max(1.0, o["scale"]), o
    return result


def _tf():
    from converters.parity.oracles.keras_oracle import import_tensorflow_safely

    import_tensorflow_safely()
    import tensorflow as tf

    return tf


def _freeze(fn, shape, path: Path) -> Path:
    tf = _tf()
    from tensorflow.python.framework.convert_to_constants import (
        convert_variables_to_constants_v2,
    )

    concrete = tf.function(fn).get_concrete_function(tf.TensorSpec(shape, tf.float32, name="x"))
    path.write_bytes(convert_variables_to_constants_v2(concrete).graph.as_graph_def().SerializeToString())
    return path


def test_raw_op_cnn_matches_tensorflow(tmp_path):
    result = _verified(tmp_path, FIX / "cnn.pb")
    table = yaml.safe_load(Path(result.table_file).read_text())
    assert table["input"]["layout"] == "NHWC" and table["input"]["shape"] == [2, 11, 11, 3]
    assert table["parity"]["outputs"] == ["Identity", "Identity_1"]
    source = Path(result.model_file).read_text()
    assert "# BiasAdd: Conv2D+BiasAdd" in source and "# FusedBatchNormV3: FusedBatchNormV3" in source


@pytest.mark.heavy
def test_frozen_keras_model_matches_tensorflow(tmp_path):
    result = _verified(tmp_path, FIX / "keras_cnn.pb")
    source = Path(result.model_file).read_text()
    assert "groups=6" in source                      # DepthwiseConv2D
    assert "permute(0,2,3,1)" in "".join(source.split())   # Flatten reads NHWC memory order


@pytest.mark.heavy
def test_keras_mobilenet_v2_frozen_graph_matches_tensorflow(tmp_path):
    """A whole Keras application (random weights): ZeroPadding, depthwise/pointwise convs, BN,
    ReLU6, residual adds, global pooling, Dense; the logits are compared too (softmax hides errors)."""
    _tf()  # TensorFlow imported the safe way before tf_keras
    import tf_keras as keras

    model = keras.applications.MobileNetV2(input_shape=(64, 64, 3), alpha=0.35, weights=None, classes=10)
    rng = np.random.RandomState(0)
    for w in model.weights:
        if "moving_variance" in w.name:
            w.assign(rng.rand(*w.shape).astype("float32") + 0.5)
        elif "moving_mean" in w.name or "beta" in w.name:
            w.assign(rng.randn(*w.shape).astype("float32") * 0.2)
    pb = _freeze(lambda x: model(x, training=False), (None, 64, 64, 3), tmp_path / "mobilenet_v2.pb")
    logits = f"{model.name}/predictions/BiasAdd"
    result = _verified(tmp_path, pb, outputs=[logits, "Identity"])
    assert [o["name"] for o in result.parity.outputs] == [logits, "Identity"]


def test_conv_and_dense_biases_come_from_the_biasadd_constants():
    """Issue #10: a frozen graph's conv bias is the BiasAdd's Const, never zeros."""
    graph = build_graph([str(FIX / "keras_cnn.pb")])
    convs = {n.name: n for n in graph.nodes if n.op in ("conv", "linear")}
    assert convs["sequential/conv1/BiasAdd"].params["bias"].source == "sequential/conv1/BiasAdd/ReadVariableOp/resource"
    assert convs["sequential/conv1/BiasAdd"].params["weight"].transforms == ["tf_conv"]
    assert convs["sequential/dw2/BiasAdd"].params["weight"].transforms == ["tf_depthwise"]
    assert convs["sequential/dense/BiasAdd"].params["weight"].transforms == ["tf_dense"]
    bn = next(n for n in graph.nodes if n.op == "batchnorm")
    assert abs(bn.attrs["eps"] - 1e-3) < 1e-9
    assert graph.inputs[0].shape == (None, 3, 10, 10) and graph.inputs[0].source_layout == "NHWC"
    assert graph.unused_arrays == {"sequential/flatten/Const": "read at port time (an axis, shape, size or "
                                                               "padding written into model.py)"}


def test_shape_computations_fold_with_a_fixed_batch(tmp_path):
    tf = _tf()
    w = tf.Variable(np.random.RandomState(1).randn(2 * 2 * 3, 4).astype(np.float32))

    def fn(x):
        flat = tf.reshape(x, tf.stack([tf.shape(x)[0], -1]))      # Shape -> StridedSlice -> Pack
        y = tf.matmul(flat, w) + tf.constant(np.arange(4, dtype=np.float32))
        return tf.transpose(tf.reshape(y, (2, 2, 2)), (0, 2, 1))

    pb = _freeze(fn, (2, 2, 2, 3), tmp_path / "fold.pb")
    result = _verified(tmp_path, pb)
    assert "Pack" not in Path(result.model_file).read_text()


def test_unsupported_op_is_one_error_and_writes_nothing(tmp_path):
    tf = _tf()
    pb = _freeze(lambda x: tf.nn.local_response_normalization(tf.nn.relu(x)), (1, 4, 4, 3), tmp_path / "lrn.pb")
    with pytest.raises(UnsupportedOpError) as e:
        port([str(pb)], tmp_path / "out", framework="tensorflow")
    assert "layer 'LRN': op LRN is not supported" in str(e.value) and "lrn.pb" in str(e.value)
    assert not (tmp_path / "out").exists()


def test_inexpressible_resize_is_refused(tmp_path):
    tf = _tf()
    pb = _freeze(lambda x: tf.compat.v1.image.resize_nearest_neighbor(x, (5, 5), align_corners=True),
                 (1, 3, 3, 2), tmp_path / "resize.pb")
    with pytest.raises(UnsupportedOpError, match="align_corners=True"):
        build_graph([str(pb)])


def test_a_checkpoint_is_refused():
    with pytest.raises(PortError, match="holds weights but no graph"):
        build_graph([str(ROOT / "fixtures" / "tensorflow" / "tf2_keras")])


# ---------------------------------------------------------------- SavedModel function graphs

def test_saved_model_signature_matches_tensorflow(tmp_path):
    """tf.saved_model.save of a tf.Module: the serving function inlined, its captured variables
    tied to the checkpoint keys through the object graph."""
    result = _verified(tmp_path, ROOT / "fixtures" / "tensorflow" / "saved_model")
    table = yaml.safe_load(Path(result.table_file).read_text())
    assert table["input"]["name"] == "x" and table["parity"]["outputs"] == ["output_0"]
    assert {r["from"] for r in table["rules"]} == {"w/\\.ATTRIBUTES/VARIABLE_VALUE", "b/\\.ATTRIBUTES/VARIABLE_VALUE"}


def _keras_weights(model, rng):
    for w in model.weights:
        value = rng.randn(*w.shape).astype("float32") * 0.3
        w.assign(np.abs(value) + 0.5 if "variance" in w.name else value)


@pytest.mark.heavy
def test_tf_keras_saved_model_matches_tensorflow(tmp_path):
    _tf()
    import tf_keras as keras

    model = keras.Sequential([keras.Input((9, 9, 3)), keras.layers.Conv2D(5, 3, strides=2, padding="same"),
                              keras.layers.BatchNormalization(), keras.layers.ReLU(),
                              keras.layers.Flatten(), keras.layers.Dense(4, activation="softmax")])
    _keras_weights(model, np.random.RandomState(2))
    model.save(tmp_path / "saved", save_format="tf")
    _verified(tmp_path, tmp_path / "saved")


@pytest.mark.heavy
def test_keras3_export_matches_tensorflow(tmp_path):
    """Keras 3 `model.export()`: its conv bias is a reshaped variable and its BatchNormalization
    the unfused tf.nn.batch_normalization arithmetic; both become plain layers."""
    _tf()
    import keras

    model = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Conv2D(4, 3, padding="same"),
                              keras.layers.BatchNormalization(epsilon=1e-2), keras.layers.GlobalAveragePooling2D(),
                              keras.layers.Dense(3)])
    _keras_weights(model, np.random.RandomState(4))
    model.export(str(tmp_path / "k3"))
    result = _verified(tmp_path, tmp_path / "k3")
    table = yaml.safe_load(Path(result.table_file).read_text())
    # Keras 3 adds the conv bias reshaped to (1, 1, 1, 4): folded into the bias rule's transforms
    assert any(r.get("transforms", [None])[-1] == {"reshape": {"shape": [4]}} for r in table["rules"])
    source = Path(result.model_file).read_text()
    assert "batch_normalization (unfused)" in source and "nn.BatchNorm2d(4,eps=0.0099999" in "".join(source.split())


@pytest.mark.heavy
def test_keras_conv2d_transpose_matches_tensorflow(tmp_path):
    """Conv2DBackpropInput: SAME (odd row at the end) and VALID, with and without bias; Keras
    computes output_shape from tf.shape at run time, folded here for the fixed batch."""
    _tf()
    import tf_keras as keras

    layers = keras.layers
    model = keras.Sequential([keras.Input((5, 6, 3)), layers.Conv2DTranspose(4, 3, strides=2, padding="same"),
                              layers.Conv2DTranspose(2, 3, strides=2, padding="valid"),
                              layers.Conv2DTranspose(3, 4, strides=2, padding="same", use_bias=False)])
    _keras_weights(model, np.random.RandomState(6))
    pb = _freeze(lambda x: model(x, training=False), (2, 5, 6, 3), tmp_path / "deconv.pb")
    result = _verified(tmp_path, pb)
    assert "nn.ConvTranspose2d" in Path(result.model_file).read_text()


def test_unfused_batch_normalization_in_a_frozen_graph(tmp_path):
    tf = _tf()
    rng = np.random.RandomState(5)
    mean, var, beta = (tf.constant(rng.randn(3).astype(np.float32)) for _ in range(3))
    var = tf.abs(var) + 0.5
    pb = _freeze(lambda x: tf.nn.relu(tf.nn.batch_normalization(x, mean, var, beta, None, 1e-3)), (2, 4, 4, 3),
                 tmp_path / "bn.pb")
    graph = build_graph([str(pb)])
    bn = [n for n in graph.nodes if n.op == "batchnorm"]
    assert len(bn) == 1 and bn[0].params["weight"].fill == 1.0       # no scale: gamma 1
    _verified(tmp_path, pb)


def test_fixed_batch_placeholder_writes_the_tables_batch(tmp_path):
    """A frozen graph whose Placeholder is [1, H, W, C] (TensorFlow refuses batch 2) and reshapes
    to a literal 1: the table says parity.batch: 1 and verify passes with no options."""
    tf = _tf()
    w = tf.Variable(np.random.RandomState(2).randn(3 * 3 * 2, 5).astype(np.float32))
    pb = _freeze(lambda x: tf.matmul(tf.reshape(x, (1, -1)), w), (1, 3, 3, 2), tmp_path / "one.pb")
    result = _verified(tmp_path, pb)
    assert yaml.safe_load(Path(result.table_file).read_text())["parity"]["batch"] == 1
    with pytest.raises(ConvertersError):  # what the key spares: TensorFlow refuses a batch of 2
        verify(str(pb), result.table_file, n=2)
