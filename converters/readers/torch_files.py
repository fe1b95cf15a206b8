"""[torch] reader: `.pth` / `.pt` / `.bin` / `.ckpt` files written by torch.save.

The tensors live in a pickle, and no pickle is ever loaded with a general unpickler. Zip-format
files (torch >= 1.6) holding a state dict or a plain checkpoint are read without torch
(_torch_pickle.py: the C unpickler with an allow-list of inert stand-ins; tensors are spans of
their records, read with pread on `.numpy()` or viewed in the memory-mapped file with copy=False). Anything else
(other globals, quantized tensors, archives re-zipped with compression, legacy pre-1.6 files) goes
to torch.load(weights_only=True), whose restricted unpickler refuses every global outside its own
allow-list, so a file cannot run code either way. That path reads every tensor into memory while
opening (no mmap): a copy out of torch's map of a file cut short since (torch.save rewriting it in
place, say) would be a SIGBUS. The sizes either path trusts (zip records, the
pickle's storage counts) are bounded by the file first (_torch_bounds.py).

Checkpoints often wrap the state dict ({'epoch': 3, 'state_dict': {...}, 'optimizer': {...}}):
the state dict is found under the usual keys (or `key=`), its names are kept as written
(`module.` prefixes stay visible), other tensors are exposed under their dotted path
(`optimizer.state.0.exp_avg`), plain values go to `.meta['checkpoint']`.
"""
from __future__ import annotations

import builtins
import os
import re
import sys
import zipfile
from collections.abc import Mapping

from ..arrays import ArrayFile, ArrayHandle, element_count, role_from_name
from ..dtypes import ML_DTYPES, of_torch
from ..errors import ConvertersError, FormatError, MissingDependencyError, TruncatedError, UnsupportedError
from ..frameworks import FRAMEWORKS
from . import _torch_pickle as plain_pickle
from ._binary import FileArray, FileView, SmallReads
from ._limits import PARSER_ERRORS, parser_errors
from ._torch_bounds import check_legacy, check_members, check_zip

NAME = "torch"
OPTIONS = {"key": str}
"""Reader options (`--option KEY=VALUE`) and their types; readers/__init__ validates against it."""
EXTENSIONS = FRAMEWORKS["torch"].extensions
# torch's legacy serialisation writes this number (as a pickled LONG1) before anything else
_LEGACY_MAGIC = b"\x8a\x0a" + (0x1950A86A20F9469CFC6C).to_bytes(10, "little")
# keys under which training scripts store the model's state dict, most specific first
STATE_DICT_KEYS = ("state_dict", "model_state_dict", "model", "net", "module", "network", "model_state")
OPTIMIZER_KEYS = ("optimizer", "optimizer_state_dict", "optim", "optimizer_state", "opt")
_PLAIN = (int, float, str, bool, type(None))


# --------------------------------------------------------------------------- sniffing

def sniff(path, head: bytes) -> bool:
    if head.startswith(b"PK\x03\x04"):
        return _zip_has_data_pkl(path, head)
    if head[:1] == b"\x80" and _LEGACY_MAGIC in head:
        return True
    return str(path).lower().endswith(EXTENSIONS) and head[:1] == b"\x80"


def _zip_has_data_pkl(path, head: bytes) -> bool:
    """torch's zip format stores `<archive>/data.pkl`, usually as the first member."""
    n = int.from_bytes(head[26:28], "little")
    if head[30:30 + n].endswith(b"/data.pkl"):
        return True
    try:
        with zipfile.ZipFile(path) as zf:
            return any(_is_data_pkl(m) for m in zf.namelist())
    except PARSER_ERRORS:  # damaged zips, member names that are not UTF-8
        return False


def _is_data_pkl(member: str) -> bool:
    return member == "data.pkl" or member.endswith("/data.pkl")


# --------------------------------------------------------------------------- loading

def _torch():
    try:
        import torch
    except ImportError:
        raise MissingDependencyError("reading PyTorch files needs the `torch` package",
                                     hint="pip install torch") from None
    return torch


def _check_container(path: str) -> bool:
    """Whether the file is in torch's zip format. Raises a clear error for truncated, foreign or
    oversized-claim files (_torch_bounds)."""
    with builtins.open(path, "rb") as fh:
        head = fh.read(64)
    if head.startswith(b"PK"):
        try:
            zf = zipfile.ZipFile(path)
        except zipfile.BadZipFile as e:
            raise TruncatedError(f"not a readable zip archive ({e})", file=path, offset=0,
                                 hint="the torch zip file is truncated or corrupt") from None
        with zf:
            _check_torch_zip(zf, path)
            return True
    if head[:1] != b"\x80":
        raise FormatError("neither torch's zip format nor a pickle (no 0x80 protocol byte)", file=path, offset=0,
                          hint="not a file written by torch.save")
    check_legacy(path, _torch(), _LEGACY_MAGIC)
    return False


def _check_torch_zip(zf, path: str) -> None:
    """A torch.save archive (not TorchScript, data.pkl present) within its size bounds."""
    names = zf.namelist()
    if any(m.endswith("/constants.pkl") for m in names) and any("/code/" in m for m in names):
        raise UnsupportedError("a TorchScript archive (torch.jit.save), not a torch.save file", file=path,
                               hint="in a trusted environment: torch.jit.load(path).state_dict(), then "
                               "torch.save or safetensors")
    if not any(_is_data_pkl(m) for m in names):
        raise FormatError(f"zip archive without a data.pkl member ({len(names)} members)", file=path,
                          hint="not a file written by torch.save")
    check_zip(zf, path, _torch())


def _open_plain(path: str):
    """(checkpoint, mapped file, record offsets) for a zip archive read without torch, or None
    when only torch.load can read (or refuse) it. Size bounds are checked either way."""
    with builtins.open(path, "rb") as fh:
        if fh.read(4) != b"PK\x03\x04":
            return None
    try:
        zf = zipfile.ZipFile(path)
    except zipfile.BadZipFile:
        return None  # _check_container says what is wrong
    with zf:
        names = zf.namelist()
        if not any(_is_data_pkl(m) for m in names) or any(m.endswith("/constants.pkl") for m in names):
            return None  # not torch.save's layout: _check_torch_zip names it
        pkl = check_members(zf, path)
        prefix = pkl.filename[:-len("data.pkl")]
        if prefix + "byteorder" in names and zf.read(prefix + "byteorder") != b"little":
            return None
        try:
            obj, storages = plain_pickle.load_pickle(zf.read(pkl))
        except plain_pickle.NotPlain:
            return None
        declared = {k: ref.numel * ref.dtype.itemsize for k, ref in storages.items()}
        if not check_zip(zf, path, None, declared):
            return None  # compressed records: torch reads them into memory
        view = FileView(path)
        try:
            offsets = plain_pickle.record_offsets(zf, view, prefix, storages)
        except plain_pickle.NotPlain:
            view.close()
            return None
    return obj, view, offsets


def _load(path: str):
    """torch.load(weights_only=True), which reads every tensor into memory here: never mmap=True,
    whose tensors are views of torch's map of the file (`.numpy()` copying one after the file was
    cut short, by torch.save rewriting it in place say, would be a SIGBUS)."""
    torch = _torch()
    import pickle

    size = os.path.getsize(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=False)
    except (pickle.UnpicklingError, RuntimeError, EOFError, KeyError, ValueError, OSError) as e:
        raise _load_error(path, size, e) from None


def _load_error(path: str, size: int, e: Exception) -> ConvertersError:
    """What torch.load's failure means: a file cut short while torch read it, a refused global, a
    truncated or a damaged file."""
    import pickle

    now = os.path.getsize(path) if os.path.exists(path) else 0
    if now < size:
        return TruncatedError(f"the file has {now} bytes, {size} when torch.load started reading it", file=path,
                              hint="the file was truncated while open")
    text = str(e)
    if isinstance(e, pickle.UnpicklingError):
        match = re.search(r"GLOBAL ([\w.]+)", text) or re.search(r"global:? ([\w.]+)", text, re.IGNORECASE)
        if "Weights only load failed" in text or match:
            culprit = match.group(1) if match else "an object outside torch's allow-list"
            return FormatError(f"refused to unpickle {culprit}: the file holds arbitrary pickled Python objects",
                               file=path, hint="only plain state dicts are read (weights_only=True); in a trusted "
                               "environment re-save it with torch.save(model.state_dict()) or as safetensors")
        return FormatError(f"not a readable torch pickle ({text.splitlines()[0] if text else type(e).__name__})",
                           file=path)
    first = text.splitlines()[0] if text else type(e).__name__
    if isinstance(e, EOFError) or "EOF" in first or "central directory" in first:
        return TruncatedError(f"torch.load failed: {first}", file=path, hint="the file is truncated or corrupt")
    return FormatError(f"torch.load failed: {first}", file=path)


# --------------------------------------------------------------------------- checkpoint structure

def _is_tensor(x) -> bool:
    """A tensor read by either path (torch is only looked at when something imported it)."""
    if isinstance(x, plain_pickle.TensorRef):
        return True
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(x, torch.Tensor)


def _walk(obj, prefix: tuple, tensors: list, plain: dict, other: list):
    """Flatten a checkpoint into (path, tensor) pairs, plain values and unreadable leftovers."""
    if _is_tensor(obj):
        tensors.append((prefix, obj))
    elif isinstance(obj, Mapping):
        for k, v in obj.items():
            _walk(v, prefix + (str(k),), tensors, plain, other)
    elif isinstance(obj, (list, tuple)) and any(_contains_tensor(v) for v in obj):
        for i, v in enumerate(obj):
            _walk(v, prefix + (str(i),), tensors, plain, other)
    elif _is_plain(obj):
        plain[".".join(prefix)] = _jsonish(obj)
    else:
        other.append((".".join(prefix), type(obj).__name__))


def _jsonish(obj):
    """Plain values with tuples as lists, so file meta prints and serialises as JSON would."""
    if isinstance(obj, (list, tuple)):
        return [_jsonish(v) for v in obj]
    if isinstance(obj, Mapping):
        return {k: _jsonish(v) for k, v in obj.items()}
    return obj


def _contains_tensor(obj) -> bool:
    if _is_tensor(obj):
        return True
    if isinstance(obj, Mapping):
        return any(_contains_tensor(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return any(_contains_tensor(v) for v in obj)
    return False


def _is_plain(obj) -> bool:
    if isinstance(obj, _PLAIN):
        return True
    if isinstance(obj, (list, tuple)):
        return all(_is_plain(v) for v in obj)
    if isinstance(obj, Mapping):
        return all(isinstance(k, _PLAIN) and _is_plain(v) for k, v in obj.items())
    return False


def state_dict_location(obj) -> tuple:
    """Keys leading to the state dict inside a checkpoint object: the one rule for files and for
    in-memory dicts (finetune's load_partial uses it too)."""
    return _find_state_dict(obj, None, None)


def _find_state_dict(obj, path, key: str | None) -> tuple:
    """Path (tuple of keys) of the state dict inside the checkpoint."""
    if key is not None:
        node, where = obj, ()
        for part in key.split("."):
            if not isinstance(node, Mapping) or part not in node:
                have = sorted(map(str, node)) if isinstance(node, Mapping) else type(node).__name__
                raise FormatError(f"key {key!r}: no {part!r} under {'.'.join(where) or 'the top level'}",
                                  file=path, hint=f"available: {have}")
            node, where = node[part], where + (part,)
        if not _contains_tensor(node):
            raise FormatError(f"key {key!r} holds no tensors", file=path)
        return where
    where = ()
    while isinstance(obj, Mapping):
        for k in STATE_DICT_KEYS:
            if k in obj and _contains_tensor(obj[k]):
                obj, where = obj[k], where + (k,)
                break
        else:
            return where
    return where


# --------------------------------------------------------------------------- handles

def _numpy_dtype(tensor, path, name):
    torch = _torch()
    dt = of_torch(tensor.dtype)
    if dt is not None and dt.name in ML_DTYPES:  # bfloat16, float8: numpy sees the bits, ml_dtypes the type
        bits = {1: torch.uint8, 2: torch.int16}[dt.itemsize]
        return dt, lambda t: t.detach().view(bits).numpy().view(dt)
    if tensor.is_quantized or tensor.layout != torch.strided or tensor.device.type != "cpu":
        raise UnsupportedError(f"{tensor.layout} / quantized / {tensor.device} tensors are not supported",
                               file=path, array=name)
    try:
        dt = torch.empty(0, dtype=tensor.dtype).numpy().dtype
    except (TypeError, RuntimeError):
        raise UnsupportedError(f"torch dtype {tensor.dtype} has no numpy equivalent", file=path, array=name) from None
    return dt, lambda t: t.detach().numpy()  # detach: a saved nn.Parameter requires grad


def _guess_layout(name: str, ndim: int) -> str | None:
    """Only `.weight` arrays: 4-D -> OIHW (Conv2d), 3-D OIW, 5-D OIDHW, 2-D OI (Linear).

    A state dict has no layer types: ConvTranspose weights (IOHW) and Embedding tables look the
    same, which is why meta['layout_guessed'] is set."""
    if not (name == "weight" or name.endswith(".weight")):
        return None
    return {2: "OI", 3: "OIW", 4: "OIHW", 5: "OIDHW"}.get(ndim)


def _handle(name, tensor, path, meta, reads=None, offsets=None) -> ArrayHandle:
    if isinstance(tensor, plain_pickle.TensorRef):
        return _plain_handle(name, tensor, path, meta, reads, offsets[tensor.storage.key])
    dtype, convert = _numpy_dtype(tensor, path, name)

    def load():
        with parser_errors(path, "tensor data", name):
            return convert(tensor)
    return ArrayHandle(name, tuple(tensor.shape), dtype, load, meta)


def _plain_handle(name, tensor, path, meta, reads: SmallReads, data_offset) -> ArrayHandle:
    """A tensor read without torch: its elements must lie inside its storage record. `.numpy()`
    reads with pread (a file cut short while open is a TruncatedError, not a SIGBUS): a C-order
    tensor through `reads` (records follow the pickle's order: one pread serves many small
    tensors), a strided one from a pread of the storage it spans."""
    shape, dtype, view = tensor.shape, tensor.dtype, reads.view
    if plain_pickle.strided_extent(tensor) > tensor.storage.numel:
        raise FormatError(f"tensor {list(shape)} at offset {tensor.offset} with strides {list(tensor.stride)} "
                          f"reaches past its storage of {tensor.storage.numel} elements", file=path, array=name,
                          hint="the file is corrupt")
    count = element_count(shape, dtype.itemsize)
    if count is None:
        raise FormatError(f"shape {list(shape)} of {dtype} cannot be an array", file=path, array=name,
                          hint="a corrupt shape field")
    if plain_pickle.contiguous(tensor):
        start = data_offset + tensor.offset * dtype.itemsize if count else data_offset
        return reads.add(name, shape, dtype, start, start + count * dtype.itemsize, meta)
    return FileArray(name, shape, dtype, lambda: plain_pickle.tensor_copy(tensor, view, data_offset, name),
                     lambda: plain_pickle.tensor_array(tensor, view, data_offset, name), meta)


def _storage_key(tensor):
    if isinstance(tensor, plain_pickle.TensorRef):
        return tensor.storage.key, tensor.offset, tensor.shape, tensor.stride, tensor.dtype.str
    try:
        return (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape),
                tuple(tensor.stride()), tensor.dtype)
    except (RuntimeError, NotImplementedError):
        return None


# --------------------------------------------------------------------------- open

def open(path, key: str | None = None, **options) -> ArrayFile:
    """Open a torch.save file. key: dotted path of the state dict inside a checkpoint ('model',
    'state_dict', 'ema.model', ...) when the automatic choice is not the one wanted."""
    path = str(path)
    with parser_errors(path, "torch file"):  # torch.load and zipfile raise struct.error, MemoryError, ...
        return _open(path, key)


def _open(path: str, key: str | None) -> ArrayFile:
    found = _open_plain(path)
    if found is not None:
        obj, view, offsets = found
        is_zip = True
    else:
        is_zip = _check_container(path)
        obj, view, offsets = _load(path), None, None
    try:
        return _arrays(path, key, obj, is_zip, view, offsets)
    except BaseException:
        if view is not None:
            view.close()
        raise


def _arrays(path: str, key, obj, is_zip: bool, view, offsets) -> ArrayFile:
    tensors, plain, other = [], {}, []
    _walk(obj, (), tensors, plain, other)
    if not tensors:
        raise FormatError(f"no tensors in the file (top level is a {type(obj).__name__})", file=path)
    where = _find_state_dict(obj, path, key)
    arrays, seen = [], {}
    reads = SmallReads(view) if view is not None else None
    for parts, tensor in tensors:
        inside = parts[:len(where)] == where
        name = ".".join(parts[len(where):] if inside else parts) or "tensor"
        arrays.append(_handle(name, tensor, path, _meta(name, parts, tensor, inside, where), reads, offsets))
        skey = _storage_key(tensor)
        if skey is not None:
            if skey in seen:
                arrays[-1].meta["same_as"] = seen[skey]
            else:
                seen[skey] = name
    meta = {"format": "torch-zip" if is_zip else "torch-legacy", "state_dict_key": ".".join(where) or None,
            "checkpoint": plain}
    if other:
        meta["unread"] = dict(other)
    recorded = ((getattr(obj, "_metadata", None) or {}).get("") or {}).get("converters")
    if isinstance(recorded, dict):  # the provenance converters' writer records (writer.save_pth)
        meta["provenance"] = _jsonish(dict(recorded))
    return ArrayFile(path, NAME, arrays, meta=meta, closer=view.close if view is not None else None)


def _meta(name, parts, tensor, inside, where) -> dict:
    if inside:
        role = role_from_name(name) or "other"
        meta = {"role": role}
        if "." in name:
            meta["layer"] = name.rsplit(".", 1)[0]
        layout = _guess_layout(name, tensor.ndim)
        if layout:
            meta["layout"] = layout
            meta["layout_guessed"] = True
        return meta
    section = parts[0] if parts else ""
    if section in OPTIMIZER_KEYS:
        role = "counter" if parts[-1] == "step" else "optimizer"
    else:
        role = "counter" if role_from_name(name) == "counter" else "other"
    return {"role": role, "section": section}
