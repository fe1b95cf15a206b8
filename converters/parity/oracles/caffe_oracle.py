"""Caffe oracle: runs prototxt + caffemodel through OpenCV's Caffe importer (cv2.dnn).

Caffe itself has no working pip package; OpenCV's DNN module (opencv-python-headless below 5:
version 5 dropped the Caffe importer) reads the same two files and runs the net on the CPU in
float32, independently of this project's reader.

Names are Caffe layer names. A tapped layer gives that layer's own output: for an in-place layer
pair such as conv1 + PReLU1 (both writing blob `conv1`), tapping `conv1` gives the convolution's
output before the PReLU and tapping `PReLU1` gives it after, which is what the PyTorch modules
`conv1` and `prelu1` return. OpenCV would otherwise fuse such pairs; it keeps every requested
output unfused. Arrays are NCHW in the model's own channel order (BGR for most Caffe models).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ...errors import ConvertersError
from .base import Oracle, OracleCrashed, OracleUnavailable, SourceModel, require_source

INSTALL_HINT = "pip install 'opencv-python-headless<5' (or 'weightport[parity]'); OpenCV 5 has no Caffe importer"


def _import_cv2():
    try:
        import cv2
    except ImportError as e:
        raise OracleUnavailable(f"the Caffe oracle needs OpenCV, which is not installed here ({e})",
                                hint=INSTALL_HINT) from e
    major = int(str(cv2.__version__).split(".")[0])
    if major >= 5 or not hasattr(cv2.dnn, "readNetFromCaffe"):
        raise OracleUnavailable(f"OpenCV {cv2.__version__} has no Caffe importer", hint=INSTALL_HINT)
    return cv2


def _find_prototxt(weights: Path, architecture) -> Path:
    from ...readers.caffe import _choose_prototxt

    path, _ = _choose_prototxt(str(weights), architecture)
    if path is None:
        raise ConvertersError("the Caffe oracle needs the net's prototxt and none was given or found beside "
                              "the weights", file=weights,
                              hint="pass it as the architecture (--architecture deploy.prototxt)")
    return Path(path)


class CaffeOracle(Oracle):
    framework = "caffe"

    def __init__(self, model: SourceModel):
        super().__init__(model)
        self.weights = require_source(Path(model.weights), "caffemodel")
        self.prototxt = _find_prototxt(self.weights, model.architecture)
        self.cv2 = _import_cv2()
        self.net = self._load_net()
        self._fetched = None  # the outputs + taps the net was last run for
        self._inputs = self._declared_inputs()

    def _load_net(self):
        try:
            return self.cv2.dnn.readNetFromCaffe(str(self.prototxt), str(self.weights))
        except self.cv2.error as e:
            raise OracleCrashed(f"OpenCV could not load the Caffe net: {_last_lines(str(e))}",
                                file=self.prototxt) from e

    def _declared_inputs(self) -> list[str]:
        from ...readers.caffe import _read_prototxt

        _, inputs, _ = _read_prototxt(self.prototxt)
        return list(inputs) or ["data"]

    # ----------------------------------------------------------------------------- interface

    def input_names(self) -> list[str]:
        return list(self._inputs)

    def output_names(self) -> list[str]:
        return list(self.net.getUnconnectedOutLayersNames())

    def layer_order(self) -> list[str]:
        return list(self.net.getLayerNames())

    def run(self, inputs, taps=()):
        outputs = self.output_names()
        taps = [t for t in dict.fromkeys(taps) if t not in outputs]
        known = set(self.layer_order())
        unknown = [t for t in taps if t not in known]
        if unknown:
            raise ConvertersError(f"the Caffe net has no layer(s) {unknown} to tap", file=self.prototxt)
        missing = [n for n in self._inputs if n not in inputs]
        if missing:
            raise ConvertersError(f"no value for the net input(s) {missing}; the net takes {self._inputs}",
                                  file=self.prototxt)
        fetch = tuple(outputs + taps)
        if self._fetched is not None and fetch != self._fetched:
            # OpenCV fuses layers at the first forward (BatchNorm + Scale + ReLU folded into the
            # convolution's weights) for the outputs asked then; a later forward asking for a
            # convolution's own output would get the fused result. A fresh net fuses anew.
            self.net = self._load_net()
        self._fetched = fetch
        try:
            for name in self._inputs:
                blob = np.ascontiguousarray(inputs[name], dtype=np.float32)
                self.net.setInput(blob, name)
            results = self.net.forward(outputs + taps)
        except self.cv2.error as e:
            raise OracleCrashed(f"OpenCV failed running the Caffe net: {_last_lines(str(e))}",
                                file=self.prototxt) from e
        return {name: np.array(value) for name, value in zip(outputs + taps, results)}


def _last_lines(text: str, n: int = 8) -> str:
    return "\n".join(text.strip().splitlines()[-n:])


ORACLE = CaffeOracle


def create(model: SourceModel) -> CaffeOracle:
    """Registry entry point (converters.parity.oracles.ORACLES -> module -> create)."""
    return CaffeOracle(model)
