"""Source models for tests/parity_cases.yaml, built in their real frameworks (random weights, every
array randomised so a swapped or dropped one shows) and saved into the case's temporary folder.
Each builder takes the folder and returns the source path plus verify() options it implies."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

import numpy as np

from converters.parity.oracles.base import OracleUnavailable

ROOT = Path(__file__).resolve().parents[1]
MXNET_PY = ROOT / ".venv-mxnet" / "bin" / "python"


def _keras():
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    try:
        import keras
    except ImportError as e:
        raise OracleUnavailable(f"Keras is not installed ({e})", hint="pip install 'weightport[parity]'") from e
    return keras


def _randomise(model, seed):
    rng = np.random.default_rng(seed)
    for v in model.weights:
        name = v.name.split("/")[-1].split(":")[0]
        if name in ("gamma", "moving_variance"):
            v.assign(rng.uniform(0.5, 1.5, tuple(v.shape)).astype(np.float32))
        elif name in ("beta", "moving_mean", "bias"):
            v.assign(rng.normal(0.0, 0.2, tuple(v.shape)).astype(np.float32))


def keras_mobilenet_v2_small(directory: Path) -> dict:
    keras = _keras()
    keras.utils.set_random_seed(1)
    model = keras.applications.MobileNetV2(weights=None, classifier_activation=None, alpha=0.35,
                                           input_shape=(96, 96, 3), classes=10)
    _randomise(model, 1)
    model.save(directory / "mnv2.keras")
    return {"source": directory / "mnv2.keras", "input_shape": [2, 96, 96, 3],
            "target_kwargs": {"alpha": 0.35, "num_classes": 10, "input_size": 96, "classifier_activation": None}}


def _rnn(directory, layer_name, seed, **kw):
    keras = _keras()
    keras.utils.set_random_seed(seed)
    inp = keras.Input((6, 5))
    layer = getattr(keras.layers, layer_name)(4, **kw)
    model = keras.Model(inp, layer(inp))
    _randomise(model, seed)
    path = directory / f"{layer_name.lower()}.h5"
    model.save(path)
    return {"source": path, "input_shape": [3, 6, 5], "target_kwargs": {"input_size": 5, "hidden_size": 4}}


def keras_lstm(directory: Path) -> dict:
    out = _rnn(directory, "LSTM", 8, return_sequences=True)
    out["target_kwargs"]["return_sequences"] = True
    return out


def keras_gru(directory: Path) -> dict:
    return _rnn(directory, "GRU", 10, return_sequences=True)


def keras_vgg16(directory: Path) -> dict:
    keras = _keras()
    keras.utils.set_random_seed(15)
    model = keras.applications.VGG16(weights=None, classifier_activation=None)
    _randomise(model, 15)
    model.save(directory / "vgg16.h5")
    return {"source": directory / "vgg16.h5", "n": 1}


def _mxnet(directory: Path, name: str) -> Path:
    if not MXNET_PY.exists():
        raise OracleUnavailable(f"{MXNET_PY} is missing", hint="scripts/setup.sh creates the mxnet environment")
    run = subprocess.run([str(MXNET_PY), str(ROOT / "tests/mxnet_side/make_tables_models.py"), str(directory), name],
                         capture_output=True, text=True, timeout=600)
    if run.returncode != 0:
        raise RuntimeError(f"the mxnet generator failed for {name}:\n{run.stderr[-3000:]}")
    if name in (directory / "missing.json").read_text():
        raise OracleUnavailable(f"{name} needs gluoncv in .venv-mxnet")
    return directory / f"{name}-0000.params"


def mxnet_resnet50_v1(directory: Path) -> dict:
    return {"source": _mxnet(directory, "resnet50_v1"), "input_shape": [1, 3, 64, 64]}


def gluon_resnet50_v1b(directory: Path) -> dict:
    return {"source": _mxnet(directory, "resnet50_v1b"), "input_shape": [1, 3, 64, 64]}



def gluon_lstm_bi(directory: Path) -> dict:
    """Gluon rnn.LSTM, two layers, two-way, NTC; verified from its net.export() checkpoint."""
    return {"source": _mxnet(directory, "lstm_bi"), "framework": "mxnet"}


def gluon_lstm_uni(directory: Path) -> dict:
    """Gluon rnn.LSTM, two layers, one-way, TNC (the Gluon default)."""
    return {"source": _mxnet(directory, "lstm_uni"), "framework": "mxnet"}
