"""What the toolkit knows about each source framework, declared once.

Why one place: the same facts (BatchNorm's default eps, whether activations are NHWC, which
channel order images come in, the file extensions, which oracle runs the model, which port
frontend parses its graph) were spread over the readers, the draft matcher, the plan's eps check,
parity and the port generator, and a new framework had to be taught to each. A new framework is
one entry here plus its reader (CONTRIBUTING.md). The facts are the frameworks' documented defaults
(docs/design.md, "correctness facts"); a model may override any of them (a layer that records its
own eps, a table's `input:` section), and then the model wins.

Registries that own the modules stay where they are (readers/__init__.py for readers,
parity/oracles/__init__.py for oracles, port/frontends/__init__.py for graph parsers); the names
here say which entry a framework uses, and tests/test_checklists.py checks both sides agree.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Framework:
    name: str                      # the `--from` name
    extensions: tuple = ()         # file suffixes its weights usually have (lower case)
    bn_eps: float | None = None    # BatchNorm epsilon when a layer records none
    layout: str = "NCHW"           # how its image activations are laid out
    channels: str | None = None    # the usual image channel order of models trained with it
    oracle: str | None = None      # entry of parity.oracles.ORACLES that runs its models
    graph: str | None = None       # entry of port.frontends that parses its graphs


FRAMEWORKS = {f.name: f for f in (
    Framework("caffe", (".caffemodel", ".prototxt"), bn_eps=1e-5, channels="BGR", oracle="caffe", graph="caffe"),
    Framework("tensorflow", (".pb", ".index"), bn_eps=1e-3, layout="NHWC", channels="RGB", oracle="tensorflow",
              graph="tensorflow"),
    Framework("keras", (".h5", ".hdf5", ".keras"), bn_eps=1e-3, layout="NHWC", channels="RGB", oracle="keras",
              graph="keras"),
    Framework("mxnet", (".params", ".json"), bn_eps=1e-3, channels="RGB", oracle="mxnet", graph="mxnet"),
    Framework("gluon", (".params",), bn_eps=1e-5, channels="RGB", oracle="gluon", graph="gluon"),
    Framework("onnx", (".onnx",), bn_eps=1e-5, oracle="onnx", graph="onnx"),
    Framework("torch", (".pth", ".pt", ".bin", ".ckpt"), bn_eps=1e-5, channels="RGB"),
    Framework("safetensors", (".safetensors",)),
    Framework("numpy", (".npy", ".npz")),
)}
"""By `--from` name; the order is the readers' (readers/__init__.py)."""


def get(name: str | None) -> Framework | None:
    return FRAMEWORKS.get(name) if name else None


def default_bn_eps(name: str | None) -> float | None:
    """BatchNorm eps a framework uses when a layer does not record one (None: not known)."""
    f = get(name)
    return f.bn_eps if f else None


def nhwc(name: str | None) -> bool:
    """True for frameworks whose image activations are channels-last."""
    f = get(name)
    return f is not None and f.layout == "NHWC"


NHWC_FRAMEWORKS = tuple(n for n, f in FRAMEWORKS.items() if f.layout == "NHWC")
