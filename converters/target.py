"""The PyTorch side: import the target model a mapping names and describe its tensors."""
from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib
import importlib.util
import os
import sys
import threading

import numpy as np
import torch

from .arrays import c_contiguous
from .dtypes import ML_DTYPES, of_torch
from .errors import ConvertersError
from .mapping.plan import TargetTensor
from .mapping.spec import is_file_target
from .target_policy import check_factory, check_kwargs, check_module_name


def numpy_dtype(dtype: torch.dtype) -> np.dtype:
    found = of_torch(dtype)  # converters/dtypes.py
    if found is None:
        raise ConvertersError(f"tensor dtype {dtype} has no numpy equivalent")
    return found


def to_torch(arr: np.ndarray) -> torch.Tensor:
    """numpy -> torch without a copy where possible (bfloat16 through an int16 view). 0-d arrays
    stay 0-d (np.ascontiguousarray would make them (1,))."""
    arr = c_contiguous(arr)
    if arr.dtype.name in ML_DTYPES and hasattr(torch, arr.dtype.name):  # bfloat16, float8: through the bits
        return torch.from_numpy(arr.view({1: np.uint8, 2: np.int16}[arr.dtype.itemsize])).view(
            getattr(torch, arr.dtype.name))
    if not arr.flags.writeable:
        arr = arr.copy()
    return torch.from_numpy(arr)


def load_factory(spec: str):
    """`package.module:callable` or `file.py:callable` -> the callable (the only code a mapping can
    make us import). A relative file path is relative to the current directory; tables resolve
    theirs against the table's own directory when loaded (mapping/spec.py)."""
    if is_file_target(spec):
        module_name, _, attr = str(spec).rpartition(":")
        obj = _import_file(module_name)
    else:
        module_name, _, attr = str(spec).partition(":")
        if not module_name or not attr:
            raise ConvertersError(f"target {spec!r} is not of the form package.module:callable")
        check_module_name(module_name, spec)
        try:
            obj = importlib.import_module(module_name)
        except ImportError as e:
            raise ConvertersError(f"cannot import target module {module_name!r}: {e}",
                                  hint="install the package that provides the model") from None
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ConvertersError(f"{module_name} has no {attr!r}") from None
    check_factory(obj, spec)  # a model class or factory, nothing else (target_policy.py)
    return obj


def _import_file(path: str):
    """Execute a model file under a module name unique to its path (re-read on every load)."""
    path = os.path.abspath(path)
    if not os.path.isfile(path):
        raise ConvertersError(f"target file {path} does not exist", file=path)
    name = "_converters_target_" + hashlib.sha256(path.encode()).hexdigest()[:16]
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses and pickling look the module up by name
    try:
        spec.loader.exec_module(module)
    except Exception as e:  # a broken file may raise anything at import
        del sys.modules[name]
        raise ConvertersError(f"cannot import target file: {type(e).__name__}: {e}", file=path) from None
    return module


def build_model(target: dict, *, meta: bool = False) -> torch.nn.Module:
    """Instantiate the mapping's target; meta=True builds it without memory for its tensors."""
    factory = load_factory(target["model"])
    kwargs = dict(target.get("kwargs") or {})
    check_kwargs(kwargs, target["model"])
    try:
        if meta:
            with torch.device("meta"), _meta_init_skipped():
                model = factory(**kwargs)
        else:
            model = factory(**kwargs)
    except Exception as e:  # a user's model constructor may raise anything
        raise ConvertersError(f"building target {target['model']}({kwargs}) failed: {type(e).__name__}: {e}") from None
    if not isinstance(model, torch.nn.Module):
        raise ConvertersError(f"target {target['model']} returned {type(model).__name__}, not a torch.nn.Module")
    return model.eval()


_INITIALISERS = tuple(n for n in dir(torch.nn.init) if n.endswith("_") and not n.startswith("_"))
_skip = threading.local()
_patch_lock = threading.Lock()
_patch_users = 0


@contextlib.contextmanager
def _meta_init_skipped():
    """In this thread, torch.nn.init's in-place initialisers return a meta tensor untouched.

    A meta tensor has no values to draw, but each initialiser still costs ~0.4 ms of Python and
    device-mode dispatch: most of the time of building a model on the meta device (resnet50: 80 ->
    19 ms, 64 Linear layers 50 -> 10 ms). Other threads, and tensors that are not meta, get the
    real initialiser. torch.nn.init is restored when the last build ends; code that imported an
    initialiser by name keeps the real one (correct, only slower)."""
    global _patch_users
    with _patch_lock:
        if _patch_users == 0:
            for name in _INITIALISERS:
                setattr(torch.nn.init, name, _skipping(getattr(torch.nn.init, name)))
        _patch_users += 1
    _skip.depth = getattr(_skip, "depth", 0) + 1
    try:
        yield
    finally:
        _skip.depth -= 1
        with _patch_lock:
            _patch_users -= 1
            if _patch_users == 0:
                for name in _INITIALISERS:
                    setattr(torch.nn.init, name, getattr(torch.nn.init, name).__wrapped__)


def _skipping(initialiser):
    @functools.wraps(initialiser)
    def maybe_skip(tensor, *args, **kwargs):
        if getattr(_skip, "depth", 0) and isinstance(tensor, torch.Tensor) and tensor.is_meta:
            return tensor
        return initialiser(tensor, *args, **kwargs)
    return maybe_skip


def describe(model: torch.nn.Module) -> dict[str, TargetTensor]:
    """Every state-dict tensor of the model: shape, dtype, owning module type and BatchNorm eps."""
    owners = {}
    for mod_name, mod in model.named_modules():
        for t_name, _ in list(mod.named_parameters(recurse=False)) + list(mod.named_buffers(recurse=False)):
            owners[f"{mod_name}.{t_name}" if mod_name else t_name] = mod
    out = {}
    for name, t in model.state_dict(keep_vars=True).items():
        mod = owners.get(name)
        eps = getattr(mod, "eps", None) if isinstance(mod, torch.nn.modules.batchnorm._NormBase) else None
        out[name] = TargetTensor(tuple(t.shape), numpy_dtype(t.dtype), type(mod).__name__ if mod else "", eps)
    return out


def resolve_target(target, mapping, kwargs=None) -> dict | None:
    """{'model': spec, 'kwargs': {...}} for a conversion: the given 'package.module:callable' (checked
    now, so a bad name fails before any work), else the table's own target with `kwargs` merged in;
    None for an nn.Module (filled as is) or when neither names one (a state dict is built)."""
    if isinstance(target, torch.nn.Module):
        return None
    if isinstance(target, str):
        load_factory(target)  # fail early on a bad name
        return {"model": target, "kwargs": kwargs or {}}
    if mapping.target:
        spec = dict(mapping.target)
        if kwargs:
            spec["kwargs"] = {**(spec.get("kwargs") or {}), **kwargs}
        return spec
    return None


def load_converted(path, mapping, target=None, target_kwargs=None) -> torch.nn.Module:
    """The target module holding a converted .pth / .safetensors (weights only, no pickled code)."""
    from .mapping import spec as mapping_spec

    m = mapping if isinstance(mapping, mapping_spec.Mapping) else mapping_spec.load(mapping)
    spec = resolve_target(target, m, target_kwargs)
    if spec is None:
        raise ConvertersError("the table names no target model to load the converted weights into",
                              hint="give --target package.module:callable")
    model = build_model(spec)
    path = os.fspath(path)
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        sd = load_file(path)
    else:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    missing, unexpected = model.load_state_dict(sd, strict=False)
    if missing or unexpected:
        raise ConvertersError(f"the converted file does not fit the target: missing {missing[:5]}, "
                              f"unexpected {unexpected[:5]}", file=path)
    return model
