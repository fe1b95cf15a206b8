"""Reader registry: one module per format, chosen by `--from` name or by sniffing the file.

Each reader module defines
    NAME: str                      the `--from` name
    sniff(path, head) -> bool      True when the file (first 64 bytes in `head`) is its format
    open(path, **options) -> ArrayFile
    detect_name(path) -> str       optional: the `--from` name when one module serves several
                                   (mxnet / gluon); open() then also receives framework=<name>
Readers never import the source framework.
"""
from __future__ import annotations

import importlib
import os
from pathlib import Path

from ..arrays import ArrayFile
from ..errors import ConvertersError, DetectionError, FormatError

# Order matters for sniffing: formats with a real magic first, guess-by-structure last.
_MODULES = {
    "safetensors": "safetensors",
    "numpy": "numpy_files",
    "mxnet": "mxnet",
    "gluon": "mxnet",
    "keras": "keras",
    "torch": "torch_files",
    "tensorflow": "tensorflow",
    "onnx": "onnx_files",
    "caffe": "caffe",
}
FRAMEWORKS = tuple(_MODULES)


def reader_module(framework: str):
    try:
        mod = _MODULES[framework]
    except KeyError:
        raise ConvertersError(f"unknown framework {framework!r}",
                              hint=f"choose one of {', '.join(FRAMEWORKS)}") from None
    return importlib.import_module(f"{__name__}.{mod}")


def detect(path) -> str:
    """The framework name of `path`, from magic bytes, layout and, last, the file name."""
    path = Path(path)
    if not path.exists() and not _tf_prefix_exists(path):
        raise FormatError("no such file or directory", file=path)
    head = b""
    if path.is_file():
        with open(path, "rb") as fh:
            head = fh.read(64)
    seen = set()
    for name, mod in _MODULES.items():
        if mod in seen:
            continue
        seen.add(mod)
        module = reader_module(name)
        if module.sniff(path, head):
            return getattr(module, "detect_name", lambda p: module.NAME)(path)
    raise DetectionError("cannot tell which framework wrote this file", file=path,
                         hint=f"pass --from with one of {', '.join(FRAMEWORKS)}")


def _tf_prefix_exists(path: Path) -> bool:
    return Path(str(path) + ".index").exists()


def open_file(path, framework: str | None = None, **options) -> ArrayFile:
    """Open `path` as named lazy arrays (see `converters.read`)."""
    path = Path(os.fspath(path))
    framework = framework or detect(path)
    module = reader_module(framework)
    if module.NAME != framework:  # one module serving several names (mxnet / gluon)
        options["framework"] = framework
    return module.open(path, **options)
