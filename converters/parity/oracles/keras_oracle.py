"""Keras oracle: runs a saved Keras model (legacy HDF5 `.h5`, Keras 3 `.keras`) in Keras itself.

Keras 3 (the one tensorflow-cpu installs) loads `.keras` files and the legacy `.h5` files it
writes; a `.h5` written by Keras 2 (its `keras_version` attribute starts with "2.") is loaded by
tf_keras when that is installed, since Keras 3 refuses some Keras 2 configurations. Option
`keras: "keras3" | "tf_keras"` forces one.

Activations of inner layers come from a second Keras model over the same graph whose outputs are
the model's outputs followed by the tapped layers' outputs (the standard Keras way to read
intermediate activations); it is built once per set of taps. Arrays are NHWC, as Keras uses them.

Weights-only files (`.weights.h5`, Keras 2 `save_weights` .h5) hold no architecture: give it as
the architecture (`--architecture`): a model config (`model.to_json()` as a .json file) or a
full model file (.keras/.h5) of the same network; the model is built from it and the weights
file is loaded into it (`load_weights`), so what runs is the weights file's values.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np

from ...errors import ConvertersError
from .base import Oracle, OracleCrashed, OracleUnavailable, SourceModel, require_source

INSTALL_HINT = "pip install 'weightport[parity]' (tensorflow-cpu brings Keras 3; tf_keras for Keras 2 files)"


def import_tensorflow_safely():
    """torchvision (through torch._dynamo and triton) segfaults when first imported after
    TensorFlow in the same process: import it first when it is installed."""
    if "tensorflow" not in sys.modules:  # too late otherwise: importing it now would be the crash
        try:
            import torchvision  # noqa: F401
        except Exception:  # not installed, or broken: nothing to protect then
            pass
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def _import_keras(which: str):
    import_tensorflow_safely()
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    try:
        if which == "tf_keras":
            import tf_keras as keras
        else:
            import keras
    except ImportError as e:
        raise OracleUnavailable(f"the Keras oracle needs {which.replace('keras3', 'keras')}, which is not "
                                f"installed here ({e})", hint=INSTALL_HINT) from e
    return keras


def _file_keras_version(path: Path) -> str:
    """The `keras_version` recorded in a legacy HDF5 model file ('' if none or not HDF5)."""
    if path.suffix.lower() == ".json":  # a model config (model.to_json()) records it too
        try:
            return str(json.loads(path.read_text()).get("keras_version", ""))
        except (OSError, ValueError, AttributeError):
            return ""
    if path.suffix.lower() not in (".h5", ".hdf5"):
        return ""
    try:
        import h5py
        with h5py.File(path, "r") as f:
            version = f.attrs.get("keras_version", b"")
            if "model_config" not in f.attrs:
                raise ConvertersError("this HDF5 file holds weights only, no model architecture: the Keras "
                                      "oracle needs the network too", file=path,
                                      hint="give its model config (model.to_json() saved as .json) or a full "
                                           "model file as --architecture, or verify against a reference .npz "
                                           "(--reference)")
    except ConvertersError:
        raise
    except Exception:
        return ""
    return version.decode() if isinstance(version, bytes) else str(version)


def _loaders_to_try(path: Path, forced: str | None) -> list[str]:
    if forced:
        if forced not in ("keras3", "tf_keras"):
            raise ConvertersError(f"unknown keras option {forced!r}: expected 'keras3' or 'tf_keras'")
        return [forced]
    if _file_keras_version(path).startswith("2."):
        return ["tf_keras", "keras3"]
    return ["keras3", "tf_keras"]


def _history_layer_name(tensor) -> str:
    """The name of the layer that produced a symbolic tensor (Keras 3 and tf_keras alike)."""
    return tensor._keras_history[0].name


class KerasOracle(Oracle):
    framework = "keras"

    def __init__(self, model: SourceModel):
        super().__init__(model)
        self.path = require_source(Path(model.weights), "Keras model file", directory_ok=True)
        self.architecture = Path(model.architecture) if model.architecture else None
        if self.architecture is not None and not self.architecture.exists():
            raise ConvertersError("Keras architecture file not found", file=self.architecture)
        described_by = self.architecture or self.path
        self.keras, self.net = self._load(_loaders_to_try(described_by, model.options.get("keras")))
        self._tapped: dict[tuple, object] = {}

    def _load(self, loaders):
        failures = []
        for which in loaders:
            try:
                keras = _import_keras(which)
            except OracleUnavailable as e:
                failures.append(str(e))
                continue
            try:
                net = self._build(keras)
            except ConvertersError:
                raise
            except Exception as e:  # the framework's own refusal: keep its words
                failures.append(f"{which}: {type(e).__name__}: {str(e).strip()[-800:]}")
                continue
            return keras, net
        if all("not installed" in f for f in failures):
            raise OracleUnavailable("Keras is not installed here: " + "; ".join(failures), file=self.path,
                                    hint=INSTALL_HINT)
        raise OracleCrashed("Keras could not load the model:\n" + "\n".join(failures), file=self.path)

    def _build(self, keras):
        """The model file itself, or the architecture given beside a weights-only file."""
        if self.architecture is None:
            return keras.models.load_model(str(self.path), compile=False)
        if self.architecture.suffix.lower() == ".json":
            net = keras.models.model_from_json(self.architecture.read_text())
        else:
            net = keras.models.load_model(str(self.architecture), compile=False)
        net.load_weights(str(self.path))
        return net

    # ----------------------------------------------------------------------------- interface

    def input_names(self) -> list[str]:
        return [_history_layer_name(t) for t in self.net.inputs]

    def output_names(self) -> list[str]:
        return [_history_layer_name(t) for t in self.net.outputs]

    def layer_order(self) -> list[str]:
        return [layer.name for layer in self.net.layers if type(layer).__name__ != "InputLayer"]

    def fused_activations(self, taps):
        """Layers with an `activation=` of their own (Conv2D(activation="relu")): their tap is the
        activated output, which a port may compute with a function after the module."""
        fused = {}
        for name in taps:
            try:
                layer = self.net.get_layer(name)
            except ValueError:
                continue
            activation = getattr(getattr(layer, "activation", None), "__name__", "linear")
            if type(layer).__name__ != "Activation" and activation not in ("linear", None):
                fused[name] = activation
        return fused

    def run(self, inputs, taps=()):
        taps = [t for t in dict.fromkeys(taps)]
        model = self._model_with_taps(tuple(taps))
        feed = self._feed(inputs)
        try:
            results = model(self._structured(model, feed), training=False)
        except Exception as e:
            raise OracleCrashed(f"Keras failed running the model: {type(e).__name__}: {str(e).strip()[-1500:]}",
                                file=self.path) from e
        if not isinstance(results, (list, tuple)):
            results = [results]
        names = self.output_names() + taps
        return {name: np.asarray(value) for name, value in zip(names, results)}

    # ------------------------------------------------------------------------------- helpers

    def _feed(self, inputs) -> list[np.ndarray]:
        names = self.input_names()
        missing = [n for n in names if n not in inputs]
        if missing:
            raise ConvertersError(f"no value for the model input(s) {missing}; the model takes {names}",
                                  file=self.path)
        feed = []
        for name, tensor in zip(names, self.net.inputs):
            dtype = getattr(tensor, "dtype", "float32")
            dtype = getattr(dtype, "as_numpy_dtype", dtype)
            feed.append(np.asarray(inputs[name]).astype(np.dtype(dtype), copy=False))
        return feed

    def _structured(self, model, feed: list):
        """The inputs in the nesting the model was built with (Keras 3 warns otherwise): a bare
        tensor for a model loaded from a file with one input, a list for one built with a list."""
        struct = getattr(model, "_inputs_struct", None)
        if len(feed) == 1 and not isinstance(struct, (list, tuple, dict)):
            return feed[0]
        if isinstance(struct, dict):
            return dict(zip(self.input_names(), feed))
        return feed

    def _model_with_taps(self, taps: tuple):
        if not taps:
            return self.net
        if taps not in self._tapped:
            extra = []
            for name in taps:
                try:
                    layer = self.net.get_layer(name)
                except ValueError as e:
                    raise ConvertersError(f"the Keras model has no layer {name!r} to tap",
                                          file=self.path, hint=f"layers: {self.layer_order()[:20]}...") from e
                output = self._layer_output(layer)
                extra.append(output[0] if isinstance(output, (list, tuple)) else output)
            self._tapped[taps] = self.keras.Model(self.net.inputs, list(self.net.outputs) + extra)
        return self._tapped[taps]

    def _layer_output(self, layer):
        try:
            return layer.output
        except (AttributeError, ValueError) as e:  # a layer called more than once has no single output
            try:
                return layer.get_output_at(0)
            except Exception:
                raise ConvertersError(f"layer {layer.name!r} has no single output to tap ({e})",
                                      file=self.path) from e


ORACLE = KerasOracle


def create(model: SourceModel) -> KerasOracle:
    """Registry entry point (converters.parity.oracles.ORACLES -> module -> create)."""
    return KerasOracle(model)
