"""converters: bring trained weights from Caffe, TensorFlow/Keras, MXNet/Gluon and ONNX into PyTorch."""
from __future__ import annotations

__version__ = "0.1.0"

from .arrays import ArrayFile, ArrayHandle, Layer  # noqa: E402
from .errors import ConvertersError  # noqa: E402


def read(path, framework: str | None = None, **options) -> ArrayFile:
    """Open a weight file as a read-only mapping name -> ArrayHandle, without the source framework.

    framework: one of `converters.readers.FRAMEWORKS`; detected from the file when omitted.
    options are reader-specific (e.g. allow_pickle=True for numpy, prototxt=... for caffe).
    """
    from .readers import open_file

    return open_file(path, framework, **options)


__all__ = ["read", "ArrayFile", "ArrayHandle", "Layer", "ConvertersError", "__version__"]
