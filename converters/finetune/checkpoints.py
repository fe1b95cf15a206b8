"""Resumable training checkpoints: model, optimizer, scheduler, RNG streams, epoch, metrics, extras.

Why this exists: a resumed run must continue exactly where it stopped. That needs the optimizer
moments, the scheduler position and the random streams (dropout, shuffling), not just the weights.
Files are written atomically (temporary file in the same directory, fsync, os.replace), so an
interrupted or failed save never destroys the previous `last` or `best` checkpoint. Files are read
with torch.load(weights_only=True) only, so everything is stored as tensors and plain containers.
"""
from __future__ import annotations

import os
import random
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

from ..errors import ConvertersError, FormatError

FORMAT = "converters.checkpoint"
VERSION = 1
LAST_NAME = "last.pt"
BEST_NAME = "best.pt"
_STATEFUL = "__state_dict__"  # marks an extra saved through its state_dict()


class Resumed(NamedTuple):
    """What resume() hands back besides the restored objects."""

    epoch: Any
    metrics: dict
    extra: dict
    path: Path


def checkpoint_paths(path) -> tuple[Path, Path]:
    """(last, best) for `path`: a directory holds last.pt and best.pt; a file `x.pt` pairs with `x.best.pt`."""
    path = Path(path)
    if path.is_dir() or not path.suffix:
        return path / LAST_NAME, path / BEST_NAME
    return path, path.with_name(f"{path.stem}.best{path.suffix}")


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The plain module inside DataParallel / DistributedDataParallel / torch.compile wrappers."""
    while True:
        inner = getattr(model, "module", None) if _is_wrapper(model) else getattr(model, "_orig_mod", None)
        if not isinstance(inner, torch.nn.Module):
            return model
        model = inner


def _is_wrapper(model) -> bool:
    return isinstance(model, (torch.nn.DataParallel, torch.nn.parallel.DistributedDataParallel))


def strip_prefixes(state: dict, prefixes=("module.", "_orig_mod.")) -> dict:
    """State dict keys without wrapper prefixes (`module.` from DataParallel/DDP, `_orig_mod.` from compile)."""
    out = {}
    for key, value in state.items():
        changed = True
        while changed:
            changed = False
            for p in prefixes:
                if key.startswith(p):
                    key, changed = key[len(p):], True
        out[key] = value
    return out


# ---------------------------------------------------------------------------------------- saving

def save_checkpoint(path, model=None, optimizer=None, scheduler=None, epoch=None, metrics=None,
                    is_best: bool = False, *, rng: bool = True, **extra) -> Path:
    """Write the whole training state to `path` atomically; copy it to the best file when is_best.

    path: a directory (holds last.pt, best.pt) or a file (x.pt, best copy x.best.pt), see
    checkpoint_paths(). extra: plain values (numbers, strings, tensors, numpy arrays, lists, dicts)
    or objects with state_dict()/load_state_dict() (a GradScaler, an EMA model), restored by
    passing the same keyword to resume(). Returns the path of the last checkpoint.
    """
    last, best = checkpoint_paths(path)
    last.parent.mkdir(parents=True, exist_ok=True)
    state = {
        "format": FORMAT, "version": VERSION, "torch": str(torch.__version__), "saved_at": time.time(),
        "model": strip_prefixes(unwrap(model).state_dict()) if model is not None else None,
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "epoch": _plain(epoch, "epoch"),
        "metrics": _plain(dict(metrics or {}), "metrics"),
        "extra": {k: _extra_state(v, k) for k, v in extra.items()},
        "rng": rng_state() if rng else None,
    }
    _atomic_write(last, lambda fh: torch.save(state, fh))
    if is_best:
        _atomic_write(best, lambda fh: _copy_into(last, fh))
    return last


def _extra_state(value, key):
    if hasattr(value, "state_dict") and hasattr(value, "load_state_dict"):
        return {_STATEFUL: _plain(value.state_dict(), key)}
    return _plain(value, key)


def _plain(value, where: str):
    """`value` in types weights_only loading accepts; refuse early (at save) what it would refuse later."""
    if value is None or type(value) in (bool, int, float, complex, str, bytes) or isinstance(
            value, (torch.Tensor, torch.Size, torch.dtype, torch.device)):
        return value
    for base in (bool, int, float, str):  # subclasses (IntEnum, TorchVersion) would need their class
        if isinstance(value, base):
            return base(value)
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return torch.from_numpy(np.array(value, order="C"))  # a copy; keeps 0-d arrays 0-d
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, dict):
        return {k: _plain(v, f"{where}[{k!r}]") for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        items = [_plain(v, f"{where}[{i}]") for i, v in enumerate(value)]
        return items if isinstance(value, list) else tuple(items)
    raise ConvertersError(f"cannot store a {type(value).__name__} in a checkpoint", array=where,
                          hint="store numbers, strings, tensors, arrays, lists and dicts, "
                               "or an object with state_dict()")


def rng_state() -> dict:
    """The random streams a training step draws from: torch (CPU and CUDA), numpy's global, Python's."""
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": (np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]),
        "python": random.getstate(),
    }


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), int(pos), int(has_gauss), float(cached)))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))


def _atomic_write(target: Path, write) -> None:
    """Write through `write(fileobj)` into a temporary sibling, fsync, then rename over `target`."""
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    _fsync_dir(target.parent)


def _copy_into(source: Path, fh) -> None:
    with open(source, "rb") as src:
        shutil.copyfileobj(src, fh, 1 << 20)


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # not possible on every platform; the rename itself is still atomic
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# --------------------------------------------------------------------------------------- loading

def load_checkpoint(path, map_location="cpu") -> dict:
    """The checkpoint dictionary at `path` (file or directory), read with weights_only=True.

    Raises FormatError naming the file when it is missing, truncated, corrupt or holds objects
    weights_only loading refuses.
    """
    file = checkpoint_paths(path)[0] if Path(path).is_dir() else Path(path)
    if not file.is_file():
        raise FormatError("no such checkpoint file", file=file)
    try:
        state = torch.load(file, map_location=map_location, weights_only=True)
    except Exception as e:  # zip, pickle and torch errors all mean the same thing to the user
        reason = _reason(e)
        hint = ("the file holds pickled objects; only tensors and plain containers load safely"
                if "weights_only" in str(e) or "Unsupported global" in str(e)
                else "the file is truncated or corrupt; use the previous or the best checkpoint")
        raise FormatError(f"cannot read checkpoint: {reason}", file=file, hint=hint) from None
    if not isinstance(state, dict):
        raise FormatError(f"checkpoint holds a {type(state).__name__}, expected a dictionary", file=file)
    return state


def _reason(e: Exception) -> str:
    """The informative line of a torch.load error (its first lines are generic advice)."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    for ln in lines:
        if "Unsupported global" in ln or "WeightsUnpickler error" in ln:
            return ln.split("error:", 1)[-1].strip()[:200]
    return (lines[0] if lines else type(e).__name__)[:200]


def resume(path, model=None, optimizer=None, scheduler=None, *, map_location="cpu", strict: bool = True,
           restore_rng: bool = True, **stateful) -> Resumed:
    """Restore what save_checkpoint() wrote into the given objects; return epoch, metrics, extras.

    model may be plain or wrapped (DataParallel/DDP); `module.` prefixes are handled both ways.
    stateful: objects passed to save_checkpoint as extras with state_dict() (e.g. scaler=scaler)
    get their state back. The RNG streams are restored last, so the next random draw is the one
    the interrupted run would have made.
    """
    file = checkpoint_paths(path)[0] if Path(path).is_dir() else Path(path)
    state = load_checkpoint(file, map_location)
    if state.get("format") != FORMAT:
        raise FormatError("not a converters checkpoint (no training state)", file=file,
                          hint="for weights alone use converters.finetune.load_partial")
    _restore(file, "model", model, state, lambda m, s: unwrap(m).load_state_dict(strip_prefixes(s), strict=strict))
    _restore(file, "optimizer", optimizer, state, lambda o, s: o.load_state_dict(s))
    _restore(file, "scheduler", scheduler, state, lambda o, s: o.load_state_dict(s))
    extra = dict(state.get("extra") or {})
    for key, obj in stateful.items():
        saved = extra.get(key)
        if not (isinstance(saved, dict) and _STATEFUL in saved):
            raise FormatError("checkpoint holds no state for this object", file=file, array=key)
        obj.load_state_dict(saved[_STATEFUL])
    extra = {k: (v[_STATEFUL] if isinstance(v, dict) and _STATEFUL in v else v) for k, v in extra.items()}
    if restore_rng and state.get("rng"):
        set_rng_state(state["rng"])
    return Resumed(state.get("epoch"), dict(state.get("metrics") or {}), extra, file)


def _restore(file, key, obj, state, load) -> None:
    if obj is None:
        return
    if state.get(key) is None:
        raise FormatError(f"checkpoint has no {key} state", file=file, array=key)
    try:
        load(obj, state[key])
    except (RuntimeError, ValueError, KeyError) as e:
        raise FormatError(f"{key} state does not fit: {str(e).strip()[:300]}", file=file, array=key) from None
