"""What a table may name as its target, checked before anything is called.

A table is data, often downloaded with the weights. Its `target:` names a callable the toolkit
calls with the table's `kwargs`, so without a rule `target: os:system` with
`kwargs: {command: ...}` would run a shell command. The rule keeps the promise of docs/mapping.md
(the only code a table makes the toolkit run is the import of the model it names, and that
model's constructor):

* nothing from the standard library: refused by name, before the module is imported (some
  stdlib modules act on import);
* a class must subclass `torch.nn.Module`;
* a function must be a plain Python function declared to return an `nn.Module` subclass
  (`def resnet50(...) -> ResNet`), defined outside the standard library; builtins, bound
  methods, partials and other callable objects are refused (`torch.load`, `yaml.unsafe_load`,
  `subprocess.run` and friends declare no module return type);
* kwargs are plain YAML data: strings, numbers, booleans, null, lists and string-keyed maps.
"""
from __future__ import annotations

import inspect
import sys

from .errors import ConvertersError

_REFUSED_TOP = {"builtins", "__main__", "__mp_main__"}
_MAX_KWARGS_DEPTH = 16


def check_module_name(module_name: str, spec) -> None:
    """Refuse standard-library modules by name, so not even their import runs."""
    if not all(part.isidentifier() for part in module_name.split(".")):
        raise ConvertersError(f"target {spec!r} is not of the form package.module:callable")
    top = module_name.split(".")[0]
    if top in sys.stdlib_module_names or top in _REFUSED_TOP:
        raise ConvertersError(f"target {spec!r} is in the Python standard library, not a model",
                              hint=_HINT)


def check_factory(obj, spec) -> None:
    """`obj` (resolved from `spec`) is an nn.Module class or a factory declared to return one."""
    import torch

    if any(part.startswith("__") for part in str(spec).rpartition(":")[2].split(".")):
        raise ConvertersError(f"target {spec!r} reaches through a dunder attribute", hint=_HINT)
    if inspect.isclass(obj):
        if not issubclass(obj, torch.nn.Module):
            raise ConvertersError(f"target {spec!r} is the class {obj.__qualname__}, not a torch.nn.Module "
                                  "subclass", hint=_HINT)
        return
    if not inspect.isfunction(obj):
        raise ConvertersError(f"target {spec!r} is a {type(obj).__name__}, not a model class or factory "
                              "function", hint=_HINT)
    defined_in = (obj.__module__ or "").split(".")[0]
    if defined_in in sys.stdlib_module_names or defined_in in _REFUSED_TOP:
        raise ConvertersError(f"target {spec!r} is {obj.__module__}.{obj.__qualname__} from the Python "
                              "standard library, not a model", hint=_HINT)
    returned = _return_class(obj)
    if returned is None or not issubclass(returned, torch.nn.Module):
        raise ConvertersError(f"target {spec!r} is a function not declared to return a torch.nn.Module",
                              hint="annotate the factory (`def make(...) -> nn.Module`) or name the model "
                                   "class itself")


def check_kwargs(kwargs, spec, _depth: int = 0, _at: str = "kwargs") -> None:
    """Only what a safe YAML loader produces for plain data (no dates, bytes, sets or objects)."""
    if _depth > _MAX_KWARGS_DEPTH:
        raise ConvertersError(f"target {spec!r}: {_at} is nested deeper than {_MAX_KWARGS_DEPTH} levels")
    if isinstance(kwargs, dict):
        for k, v in kwargs.items():
            if not isinstance(k, str):
                raise ConvertersError(f"target {spec!r}: {_at} has the non-string key {k!r}")
            check_kwargs(v, spec, _depth + 1, f"{_at}.{k}")
    elif isinstance(kwargs, (list, tuple)):
        for i, v in enumerate(kwargs):
            check_kwargs(v, spec, _depth + 1, f"{_at}[{i}]")
    elif kwargs is not None and not isinstance(kwargs, (str, int, float, bool)):
        raise ConvertersError(f"target {spec!r}: {_at} is a {type(kwargs).__name__}; kwargs are plain "
                              "strings, numbers, booleans, null, lists and maps")


def _return_class(fn):
    """The class a function's return annotation names, looked up without evaluating code."""
    fn = inspect.unwrap(fn)
    ann = getattr(fn, "__annotations__", {}).get("return")
    if isinstance(ann, str):  # `from __future__ import annotations`: a dotted name in the module
        obj = fn.__globals__
        for i, part in enumerate(ann.strip().split(".")):
            if not part.isidentifier():
                return None
            obj = obj.get(part) if i == 0 and isinstance(obj, dict) else getattr(obj, part, None)
            if obj is None:
                return None
        ann = obj
    return ann if inspect.isclass(ann) else None


_HINT = "a target is a torch.nn.Module subclass or a factory function returning one, from a model package"
