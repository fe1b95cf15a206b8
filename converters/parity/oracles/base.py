"""The oracle interface: the source model, run by its own framework.

An oracle is built from the source files (the same paths the conversion read, plus the
architecture file the framework needs: prototxt, -symbol.json, the Keras model file itself, the
ONNX model) and answers `run(inputs, taps)`: the model's outputs, and the activations of the
source layers named in `taps` (for first-divergent-layer localisation).

Arrays cross this interface in the SOURCE's conventions (e.g. NHWC for Keras/TF, BGR where the
model is BGR); converting to and from the PyTorch side's conventions is the verifier's job
(converters.parity.inputs / layouts), so an oracle stays a thin wrapper over its framework.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np

from ...errors import ConvertersError


def require_source(path, what: str, *, directory_ok: bool = False):
    """`path` unchanged, or one ConvertersError "<what> not found" naming it: each oracle's first
    check, before its framework is imported (a SavedModel or Keras model may be a directory)."""
    exists = os.path.exists if directory_ok else os.path.isfile
    if not exists(path):
        raise ConvertersError(f"{what} not found", file=path)
    return path


class OracleUnavailable(ConvertersError):
    """The source framework is not installed here; the message says which extra to install or how
    to point --source-python at an environment that has it."""


class OracleCrashed(ConvertersError):
    """The source framework (or the side interpreter) failed while running; carries its last lines.
    Reported as a crash, never as a parity failure."""

    exit_code = 2


@dataclass
class SourceModel:
    """What an oracle needs to run the source model."""

    framework: str
    weights: str                      # the file the conversion read (.caffemodel, .params, .h5, .onnx, ...)
    architecture: str | None = None   # prototxt, -symbol.json, ... when separate from the weights
    options: dict = field(default_factory=dict)  # e.g. epoch for mxnet, source_python, output names


class Oracle:
    """Base class; subclasses implement the four methods."""

    framework = "?"

    def __init__(self, model: SourceModel):
        self.model = model

    def input_names(self) -> list[str]:
        """Names of the model's inputs, in order."""
        raise NotImplementedError

    def output_names(self) -> list[str]:
        """Names of the model's outputs, in order."""
        raise NotImplementedError

    def layer_order(self) -> list[str]:
        """Source layer names in execution (topological) order: the candidates for `taps`."""
        raise NotImplementedError

    def run(self, inputs: dict[str, np.ndarray], taps: list[str] = ()) -> dict[str, np.ndarray]:
        """Run in eval/inference mode. Returns {output name: array} for every output, plus
        {tap name: activation} for every requested tap (the layer's first output)."""
        raise NotImplementedError

    def close(self) -> None:
        pass

    # optional answers: what the verifier needs to compare like with like (defaults: nothing known)

    def activation_layouts(self, names: list[str], input_layouts: dict) -> dict[str, str | None]:
        """{tap or output name: its axis layout ("NCHW", "NHWC", ...) or None when unknown}, given
        the layouts of the inputs; names left out (or None) take the table's activation chain."""
        return {}

    def tap_for(self, layer: str) -> str:
        """The tap that shows what the PyTorch module paired with source `layer` computes (the
        reader's layer name; a frozen TF graph's kernel is read at the op before its bias add)."""
        return layer

    def fused_activations(self, taps: list[str]) -> dict[str, str]:
        """{tap: activation the source applies inside that layer ("relu", "sigmoid", ...)}: a
        Keras Conv2D(activation="relu") tap is compared with the PyTorch module's output after it."""
        return {}

    def unreached_layers(self, layers: list[str]) -> list[str]:
        """Of `layers` (source layers whose weights the table converts), those the source graph
        as given does not compute: comparing outputs without them means nothing."""
        return []

    def notes(self) -> list[str]:
        """Things the report should say about how the source was run."""
        return []
