"""converters: bring trained weights from Caffe, TensorFlow/Keras, MXNet/Gluon and ONNX into PyTorch."""
from __future__ import annotations

__version__ = "0.1.0"

from typing import TYPE_CHECKING  # noqa: E402

from .errors import ConvertersError  # noqa: E402

if TYPE_CHECKING:  # the annotation's name; the real import is lazy (_LAZY below)
    from .arrays import ArrayFile


def read(path, framework: str | None = None, **options) -> ArrayFile:
    """Open a weight file as a read-only mapping name -> ArrayHandle, without the source framework.

    framework: one of `converters.readers.FRAMEWORKS`; detected from the file when omitted.
    options are reader-specific (e.g. allow_pickle=True for numpy, prototxt=... for caffe).
    """
    from .readers import open_file

    return open_file(path, framework, **options)


_LAZY = {  # imported on first use so `import converters` (the pytest plugin, `convert --version`) stays light
    "ArrayFile": (".arrays", "ArrayFile"),
    "ArrayHandle": (".arrays", "ArrayHandle"),
    "Layer": (".arrays", "Layer"),
    "convert": (".convert", "convert"),
    "draft": (".draft", "draft"),
    "verify": (".parity.verify", "verify"),
    "port": (".port", "port"),
    "load_partial": (".finetune", "load_partial"),
    "init_params": (".finetune", "init_params"),
    "save_checkpoint": (".finetune", "save_checkpoint"),
    "resume": (".finetune", "resume"),
    "freeze": (".finetune", "freeze"),
    "unfreeze": (".finetune", "unfreeze"),
    "param_groups": (".finetune", "param_groups"),
    "replace_head": (".finetune", "replace_head"),
    "summary": (".finetune", "summary"),
}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module, __name__), attr)
    raise AttributeError(f"module 'converters' has no attribute {name!r}")


__all__ = ["read", "ConvertersError", "__version__", *_LAZY]
