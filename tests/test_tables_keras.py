"""Shipped Keras tables (mappings/keras/*.yaml), proved against Keras itself.

Each test builds the source model in Keras 3 (tensorflow-cpu; one test in tf_keras, Keras 2), gives every
variable random values (BatchNorm statistics and biases too, so a swapped or missed array shows), saves it in a real
Keras file format, converts it with `converters.convert` through the project's reader and compares
the PyTorch model's output with Keras' on the same input (NHWC / NTC for Keras, NCHW for torch):
max |difference| <= 1e-4 * max(1, max |output|). Models are written to pytest's tmp_path, never
committed.
"""
from __future__ import annotations

import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")
# torchvision.ops imports torch._dynamo, which imports triton, whose native library crashes the
# process (segfault) when TensorFlow was loaded first: import torchvision before Keras.
try:
    import torchvision.models
except ImportError:
    torchvision = None

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
keras = pytest.importorskip("keras")

from converters.convert import convert  # noqa: E402
from converters.errors import MappingError  # noqa: E402
from converters.models.keras_mobilenet_v2 import MobileNetV2  # noqa: E402
from converters.models.rnn import KerasGRU, KerasLSTM  # noqa: E402

# ---------------------------------------------------------------------------------------- helpers


def randomize(model, seed=0):
    """Random values for everything Keras initialises to constants (biases 0, BN gamma 1, beta 0,
    mean 0, var 1); kernels keep Keras' own random initialisation."""
    rng = np.random.default_rng(seed)
    for v in model.weights:
        name, shape = v.name, tuple(v.shape)
        if name in ("gamma", "moving_variance"):
            value = rng.uniform(0.5, 1.5, shape)
        elif name in ("beta", "moving_mean", "bias"):
            value = rng.normal(0.0, 0.2, shape)
        else:
            continue
        v.assign(value.astype(np.float32))


def keras_output(model, x):
    return np.asarray(model(x, training=False))


def torch_output(module, x_nchw):
    with torch.no_grad():
        return module(torch.from_numpy(np.ascontiguousarray(x_nchw))).numpy()


def assert_close(expected, got):
    assert expected.shape == got.shape
    scale = max(1.0, float(np.abs(expected).max()))
    diff = float(np.abs(expected - got).max())
    assert diff <= 1e-4 * scale, f"max |diff| {diff:.3g} > {1e-4 * scale:.3g}"
    print(f"max |diff| {diff:.3g}, max |output| {scale:.3g}")  # shown with pytest -s
    return diff


def assert_clean(rep):
    assert rep.ok, str(rep)
    assert rep.count("unused_source") == 0 and rep.count("missing_target") == 0, str(rep)


def nchw(x):
    return np.transpose(x, (0, 3, 1, 2))


# ------------------------------------------------------------------------------------ MobileNetV2

SMALL = dict(alpha=0.35, input_shape=(96, 96, 3), classes=10)


@pytest.fixture(scope="module")
def small_mobilenet(tmp_path_factory):
    """A random alpha=0.35 MobileNetV2 with logits output, saved as .keras and as legacy .h5."""
    keras.utils.set_random_seed(1)
    model = keras.applications.MobileNetV2(weights=None, classifier_activation=None, **SMALL)
    randomize(model, 1)
    d = tmp_path_factory.mktemp("mobilenet")
    model.save(d / "mnv2.keras")
    model.save(d / "mnv2.h5")
    return model, d


SMALL_KWARGS = {"alpha": 0.35, "num_classes": 10, "input_size": 96, "classifier_activation": None}


@pytest.mark.parametrize("filename", ["mnv2.keras", "mnv2.h5"])
def test_mobilenet_v2_small_matches_keras(small_mobilenet, filename):
    model, d = small_mobilenet
    module, rep = convert(d / filename, "keras/mobilenet_v2", target_kwargs=SMALL_KWARGS)
    assert_clean(rep)
    assert not rep.warnings, rep.warnings
    assert len(rep.rows) == len(model.weights)  # one assignment per Keras variable
    x = np.random.default_rng(2).uniform(-1, 1, (2, 96, 96, 3)).astype(np.float32)
    expected = keras_output(model, x)
    assert np.abs(expected).max() > 0.1  # a live network, not a collapsed one
    assert_close(expected, torch_output(module, nchw(x)))


def test_mobilenet_v2_eps_mismatch_is_reported(small_mobilenet):
    """A target built with PyTorch's eps 1e-5 converts (the arrays fit) but the report says why its
    outputs will drift: the source layers' epsilon (1e-3) comes from the Keras config."""
    model, d = small_mobilenet
    wrong = MobileNetV2(**SMALL_KWARGS, bn_eps=1e-5).eval()
    module, rep = convert(d / "mnv2.keras", "keras/mobilenet_v2", target=wrong)
    assert_clean(rep)
    eps_warnings = [w for w in rep.warnings if "eps" in w]
    assert eps_warnings and "0.001" in eps_warnings[0] and "1e-05" in eps_warnings[0], rep.warnings
    assert "bn_Conv1" in " ".join(eps_warnings)
    # and the warning is about a real difference: the outputs do not match
    x = np.random.default_rng(3).uniform(-1, 1, (1, 96, 96, 3)).astype(np.float32)
    expected = keras_output(model, x)
    got = torch_output(module, nchw(x))
    assert np.abs(expected - got).max() > 1e-4 * max(1.0, float(np.abs(expected).max()))


def test_mobilenet_v2_odd_feature_maps_and_unknown_size(tmp_path):
    """Keras' correct_pad: symmetric padding on odd feature maps when the size is known (36 -> 18,
    9, 5, 3 at the stride-2 depthwise convs), always bottom/right when the model was built with an unknown
    size; no top, avg pool."""
    keras.utils.set_random_seed(4)
    known = keras.applications.MobileNetV2(weights=None, alpha=0.35, input_shape=(36, 36, 3),
                                           include_top=False, pooling="avg")
    randomize(known, 4)
    known.save(tmp_path / "known.keras")
    unknown = keras.applications.MobileNetV2(weights=None, alpha=0.35, input_shape=(None, None, 3),
                                             include_top=False, pooling="avg")
    unknown.set_weights(known.get_weights())
    unknown.save(tmp_path / "unknown.keras")

    x = np.random.default_rng(5).uniform(-1, 1, (1, 36, 36, 3)).astype(np.float32)
    outputs = {}
    for name, model, size in (("known", known, 36), ("unknown", unknown, None)):
        kwargs = {"alpha": 0.35, "input_size": size, "include_top": False, "pooling": "avg"}
        module, rep = convert(tmp_path / f"{name}.keras", "keras/mobilenet_v2", target_kwargs=kwargs)
        assert_clean(rep)
        outputs[name] = keras_output(model, x)
        assert_close(outputs[name], torch_output(module, nchw(x)))
    # the two Keras models really differ on this input, so both padding modes were exercised
    assert np.abs(outputs["known"] - outputs["unknown"]).max() > 1e-3


@pytest.mark.heavy
def test_mobilenet_v2_standard_configuration(tmp_path):
    """keras.applications.MobileNetV2() as published (alpha 1, 224x224, 1000 classes, softmax) with
    the table's default target kwargs."""
    keras.utils.set_random_seed(6)
    model = keras.applications.MobileNetV2(weights=None)
    randomize(model, 6)
    model.save(tmp_path / "mobilenet_v2.keras")
    module, rep = convert(tmp_path / "mobilenet_v2.keras", "keras/mobilenet_v2")
    assert_clean(rep)
    assert not rep.warnings, rep.warnings
    assert module.predictions.out_features == 1000 and module.conv_1.out_channels == 1280
    x = np.random.default_rng(7).uniform(-1, 1, (1, 224, 224, 3)).astype(np.float32)
    expected = keras_output(model, x)
    got = torch_output(module, nchw(x))
    assert_close(expected, got)
    assert int(expected.argmax()) == int(got.argmax())
    # softmax over 1000 classes squeezes differences: compare the backbone's 7x7x1280 map too
    backbone = keras.Model(model.inputs, model.get_layer("out_relu").output)
    with torch.no_grad():
        features = module.features(torch.from_numpy(nchw(x).copy())).numpy()
    assert_close(keras_output(backbone, x), np.transpose(features, (0, 2, 3, 1)))


# ------------------------------------------------------------------------------------ LSTM / GRU

T, FEATURES, UNITS = 6, 5, 4


def rnn_model(layer):
    inp = keras.Input((T, FEATURES))
    return keras.Model(inp, layer(inp))


@pytest.mark.parametrize("suffix", [".keras", ".h5"])
@pytest.mark.parametrize("return_sequences", [True, False])
def test_lstm_matches_keras(tmp_path, suffix, return_sequences):
    keras.utils.set_random_seed(8)
    model = rnn_model(keras.layers.LSTM(UNITS, return_sequences=return_sequences))
    randomize(model, 8)
    path = tmp_path / f"lstm{suffix}"
    model.save(path)
    module, rep = convert(path, "keras/lstm", target_kwargs={"input_size": FEATURES, "hidden_size": UNITS,
                                                              "return_sequences": return_sequences})
    assert_clean(rep)
    assert isinstance(module, KerasLSTM) and module.lstm.batch_first
    assert not module.lstm.bias_hh_l0.any()  # Keras' one bias went to bias_ih
    x = np.random.default_rng(9).normal(0, 1, (3, T, FEATURES)).astype(np.float32)
    assert_close(keras_output(model, x), torch_output(module, x))


def test_lstm_compiled_model_optimizer_state_is_ignored(tmp_path):
    """A model saved after training carries optimizer slots; the table drops them on purpose."""
    keras.utils.set_random_seed(17)
    model = rnn_model(keras.layers.LSTM(UNITS))
    model.compile(optimizer="adam", loss="mse")
    model.fit(np.ones((2, T, FEATURES), np.float32), np.ones((2, UNITS), np.float32), verbose=0)
    model.save(tmp_path / "trained.h5")
    module, rep = convert(tmp_path / "trained.h5", "keras/lstm",
                          target_kwargs={"input_size": FEATURES, "hidden_size": UNITS, "return_sequences": False})
    assert_clean(rep)
    ignored = [name for name, _, _ in rep.ignored]
    # iteration counter, learning rate, Adam momentum + velocity for each of the 3 variables
    assert len(ignored) == 2 + 2 * 3 and all(n.startswith("optimizer/") for n in ignored)
    x = np.random.default_rng(18).normal(0, 1, (2, T, FEATURES)).astype(np.float32)
    assert_close(keras_output(model, x), torch_output(module, x))


@pytest.mark.parametrize("suffix", [".keras", ".h5"])
def test_gru_matches_keras(tmp_path, suffix):
    keras.utils.set_random_seed(10)
    model = rnn_model(keras.layers.GRU(UNITS, return_sequences=True))  # reset_after=True by default
    randomize(model, 10)
    path = tmp_path / f"gru{suffix}"
    model.save(path)
    module, rep = convert(path, "keras/gru", target_kwargs={"input_size": FEATURES, "hidden_size": UNITS})
    assert_clean(rep)
    assert isinstance(module, KerasGRU) and module.gru.batch_first
    x = np.random.default_rng(11).normal(0, 1, (3, T, FEATURES)).astype(np.float32)
    expected = keras_output(model, x)
    assert_close(expected, torch_output(module, x))


def test_gru_gate_order_matters(tmp_path):
    """Guard against a vacuous pass: without the zrh -> rzh reorder the outputs differ."""
    keras.utils.set_random_seed(12)
    model = rnn_model(keras.layers.GRU(UNITS, return_sequences=True))
    randomize(model, 12)
    model.save(tmp_path / "gru.keras")
    module, _ = convert(tmp_path / "gru.keras", "keras/gru", target_kwargs={"input_size": FEATURES,
                                                                             "hidden_size": UNITS})
    g = module.gru
    with torch.no_grad():  # swap PyTorch's r and z blocks back to Keras' order
        for p in (g.weight_ih_l0, g.weight_hh_l0, g.bias_ih_l0, g.bias_hh_l0):
            r, z, n = p.data.chunk(3)
            p.data.copy_(torch.cat([z, r, n]))
    x = np.random.default_rng(13).normal(0, 1, (2, T, FEATURES)).astype(np.float32)
    assert np.abs(keras_output(model, x) - torch_output(module, x)).max() > 1e-3


def test_gru_reset_after_false_is_refused(tmp_path):
    """A reset_after=False GRU applies the reset gate before the recurrent matmul: nn.GRU cannot
    compute it, so the table must stop with a MappingError rather than produce a wrong model."""
    keras.utils.set_random_seed(14)
    model = rnn_model(keras.layers.GRU(UNITS, return_sequences=True, reset_after=False, name="gru"))
    model.save(tmp_path / "gru_v1.keras")
    with pytest.raises(MappingError) as info:
        convert(tmp_path / "gru_v1.keras", "keras/gru", target_kwargs={"input_size": FEATURES, "hidden_size": UNITS})
    message = str(info.value)
    assert "reset_after" in message and "gru/gru_cell/bias" in message and "gru.yaml" in message


# ----------------------------------------------------------------------------- Keras 2 (tf_keras)


def test_keras2_files_use_the_same_tables(tmp_path):
    """tf_keras (Keras 2) names some arrays differently (DepthwiseConv2D `depthwise_kernel`, RNN
    cells `lstm_cell`); the same tables convert its .h5 files."""
    tf_keras = pytest.importorskip("tf_keras")
    tf_keras.utils.set_random_seed(19)
    mnv2 = tf_keras.applications.MobileNetV2(weights=None, classifier_activation=None, **SMALL)
    randomize_keras2(mnv2, 19)
    mnv2.save(tmp_path / "k2_mnv2.h5")
    inp = tf_keras.Input((T, FEATURES))
    lstm = tf_keras.Model(inp, tf_keras.layers.LSTM(UNITS, return_sequences=True)(inp))
    randomize_keras2(lstm, 20)
    lstm.save(tmp_path / "k2_lstm.h5")
    inp = tf_keras.Input((T, FEATURES))
    gru = tf_keras.Model(inp, tf_keras.layers.GRU(UNITS, return_sequences=True)(inp))
    randomize_keras2(gru, 21)
    gru.save(tmp_path / "k2_gru.h5")

    module, rep = convert(tmp_path / "k2_mnv2.h5", "keras/mobilenet_v2", target_kwargs=SMALL_KWARGS)
    assert_clean(rep)
    assert any(r["sources"][0].endswith("depthwise/depthwise_kernel") for r in rep.rows)
    x = np.random.default_rng(22).uniform(-1, 1, (1, 96, 96, 3)).astype(np.float32)
    assert_close(np.asarray(mnv2(x, training=False)), torch_output(module, nchw(x)))

    seq = np.random.default_rng(23).normal(0, 1, (2, T, FEATURES)).astype(np.float32)
    sizes = {"input_size": FEATURES, "hidden_size": UNITS}
    for model, table in ((lstm, "keras/lstm"), (gru, "keras/gru")):
        module, rep = convert(tmp_path / f"k2_{table.split('/')[1]}.h5", table, target_kwargs=sizes)
        assert_clean(rep)
        assert_close(np.asarray(model(seq, training=False)), torch_output(module, seq))


def randomize_keras2(model, seed):
    """`randomize` for tf_keras, whose variable names are `layer/bias:0`."""
    rng = np.random.default_rng(seed)
    for v in model.weights:
        name, shape = v.name.split("/")[-1].split(":")[0], tuple(v.shape)
        if name in ("gamma", "moving_variance"):
            v.assign(rng.uniform(0.5, 1.5, shape).astype(np.float32))
        elif name in ("beta", "moving_mean", "bias"):
            v.assign(rng.normal(0.0, 0.2, shape).astype(np.float32))


# ------------------------------------------------------------------------------------------ VGG16


@pytest.mark.heavy
@pytest.mark.skipif(torchvision is None, reason="the keras/vgg16 table targets torchvision.models.vgg16")
def test_vgg16_matches_keras(keras_vgg16):
    """keras.applications.VGG16 (138M parameters, written as legacy .h5) -> torchvision vgg16.
    fc1 proves flatten_order: a (h, w, c)-ordered kernel fed (c, h, w) features gives other logits.
    The file is the run's shared one (tests/conftest.py); Keras reads it back for the reference."""
    path = keras_vgg16["source"]
    model = keras.models.load_model(path, compile=False)
    x = np.random.default_rng(16).uniform(-100, 100, (1, 224, 224, 3)).astype(np.float32)
    expected = keras_output(model, x)
    del model
    module, rep = convert(path, "keras/vgg16")
    assert_clean(rep)
    assert len(rep.rows) == 32
    got = torch_output(module, nchw(x))
    assert np.abs(expected).max() > 0.1
    assert_close(expected, got)
    fc1 = module.classifier[0].weight  # undo flatten_order: the table's reorder is what makes it match
    with torch.no_grad():
        fc1.copy_(fc1.reshape(4096, 512, 7, 7).permute(0, 2, 3, 1).reshape(4096, -1).clone())
    assert np.abs(torch_output(module, nchw(x)) - expected).max() > 100 * 1e-4 * max(1.0, np.abs(expected).max())
