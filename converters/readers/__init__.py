"""Reader registry: one module per format, chosen by `--from` name or by sniffing the file.

Each reader module defines
    NAME: str                      the `--from` name
    sniff(path, head) -> bool      True when the file (first 64 bytes in `head`) is its format
    OPTIONS: {name: type or tuple of types}   the options open() takes; anything else is
                                   rejected (with a did-you-mean) before the file is touched,
                                   and a value of the wrong type too ("false" is not a bool)
    open(path, **options) -> ArrayFile
    detect_name(path) -> str       optional: the `--from` name when one module serves several
                                   (mxnet / gluon); open() then also receives framework=<name>
Readers never import the source framework.
"""
from __future__ import annotations

import difflib
import importlib
import os
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import ConvertersError, DetectionError, FormatError

if TYPE_CHECKING:  # numpy (via arrays) is not needed to list FRAMEWORKS for `convert --help`
    from ..arrays import ArrayFile

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
        if _sniffs(module, path, head):
            return getattr(module, "detect_name", lambda p: module.NAME)(path)  # noqa: B023 - called at once
    raise DetectionError("cannot tell which framework wrote this file", file=path,
                         hint=f"pass --from with one of {', '.join(FRAMEWORKS)}")


def _sniffs(module, path: Path, head: bytes) -> bool:
    """module.sniff, where a parser failure on a damaged file (a zip whose member names are not
    UTF-8, a JSON nested too deep) means "not recognisably this format"."""
    from ._limits import PARSER_ERRORS

    try:
        return bool(module.sniff(path, head))
    except PARSER_ERRORS:
        return False


def _tf_prefix_exists(path: Path) -> bool:
    return Path(str(path) + ".index").exists()


def open_file(path, framework: str | None = None, **options) -> ArrayFile:
    """Open `path` as named lazy arrays (see `converters.read`)."""
    path = Path(os.fspath(path))
    framework = framework or detect(path)
    module = reader_module(framework)
    check_options(module, framework, options)
    if module.NAME != framework:  # one module serving several names (mxnet / gluon)
        options["framework"] = framework
    return module.open(path, **options)


_TYPE_WORDS = {bool: "true or false", str: "a path or text", int: "an integer", float: "a number", dict: "a mapping"}


def check_options(module, framework: str, options: dict) -> None:
    """Reject options the reader does not declare in OPTIONS, and values of the wrong type: a
    misspelt or string-valued safety switch (`allow_pickle="false"`) must not pass silently."""
    declared = getattr(module, "OPTIONS", {})
    for key, value in options.items():
        if key not in declared:
            close = difflib.get_close_matches(key, declared, n=1)
            raise ConvertersError(
                f"the {framework} reader has no option {key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""),
                hint=f"its options: {', '.join(sorted(declared))}" if declared else "it takes no options")
        types = declared[key] if isinstance(declared[key], tuple) else (declared[key],)
        if value is not None and not any(_is_a(value, t) for t in types):
            raise ConvertersError(f"option {key} of the {framework} reader takes "
                                  f"{' or '.join(_TYPE_WORDS.get(t, t.__name__) for t in types)}, "
                                  f"not {value!r} ({type(value).__name__})")


def _is_a(value, t) -> bool:
    if t is bool:
        return isinstance(value, bool)
    if t is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if t is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if t is str:
        return isinstance(value, (str, os.PathLike))
    return isinstance(value, t)
