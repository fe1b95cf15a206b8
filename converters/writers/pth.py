"""Streaming `.pth`: torch.save's zip format written one tensor at a time.

torch.save pickles the state dict (tensors as persistent ids naming storage records) and then
writes each storage as `archive/data/<key>`. The pickle only needs names, shapes and dtypes, which
the plan knows before any data is read, so it is made first from stand-ins that pickle exactly
as real tensors do (`torch._utils._rebuild_tensor_v2`, typed storage classes; `_rebuild_tensor_v3`
with an untyped storage for dtypes without a typed storage class), and the tensors are streamed
after it. torch.load(weights_only=True), with or without mmap=True, reads the result as it reads a
torch.save of the same state dict; provenance rides in `_metadata[''].converters`, which
load_state_dict ignores.
"""
from __future__ import annotations

import concurrent.futures
import io
import os
import pickle
import secrets
import zlib
from collections import OrderedDict

import numpy as np
import torch

from ..dtypes import ML_DTYPES, TORCH, of_torch
from ..errors import ConvertersError
from .atomic import atomic_output
from .space import reserve
from .stream import little, nbytes, write_tensors
from .torchzip import ZIP64_LIMIT, ZipLayout

# torch's typed storage class per dtype (torch.storage._dtype_to_storage_type_map); other dtypes
# (uint16-64, float8) are pickled with an untyped storage and _rebuild_tensor_v3, as torch does
_TYPED_STORAGE = {
    "float64": "DoubleStorage", "float32": "FloatStorage", "float16": "HalfStorage", "bfloat16": "BFloat16Storage",
    "int64": "LongStorage", "int32": "IntStorage", "int16": "ShortStorage", "int8": "CharStorage",
    "uint8": "ByteStorage", "bool": "BoolStorage", "complex128": "ComplexDoubleStorage",
    "complex64": "ComplexFloatStorage"}
FORMAT_VERSION = b"3\n"  # archive/version as torch.save writes it


class _Storage:
    """Pickled as the persistent id torch.save gives a storage."""

    def __init__(self, pid):
        self.pid = pid


class _Tensor:
    """Pickles as a contiguous CPU tensor that needs no grad, with its storage as record `key`."""

    def __init__(self, key: str, shape, dtype: torch.dtype):
        self.shape, self.dtype = tuple(int(d) for d in shape), dtype
        numel = int(np.prod(self.shape, dtype=np.int64))
        typed = _TYPED_STORAGE.get(str(dtype).removeprefix("torch."))
        if typed is not None:
            self.storage = _Storage(("storage", getattr(torch, typed), key, "cpu", numel))
        else:
            self.storage = _Storage(("storage", torch.storage.UntypedStorage, key, "cpu", numel * dtype.itemsize))
        self.v3 = typed is None

    def __reduce_ex__(self, protocol):
        args = (self.storage, 0, self.shape, _strides(self.shape), False, OrderedDict())
        if self.v3:
            return torch._utils._rebuild_tensor_v3, args + (self.dtype,)
        return torch._utils._rebuild_tensor_v2, args


def _strides(shape) -> tuple:
    """torch's contiguous strides (a 0 dimension counts as 1)."""
    out, step = [], 1
    for d in reversed(shape):
        out.append(step)
        step *= max(d, 1)
    return tuple(reversed(out))


class _Pickler(pickle.Pickler):
    def persistent_id(self, obj):
        return obj.pid if isinstance(obj, _Storage) else None


def torch_dtype(dtype) -> torch.dtype:
    name = TORCH.code_of(little(dtype))
    if name is None or not hasattr(torch, name):
        raise ConvertersError(f"torch has no dtype for {np.dtype(dtype)}")
    return getattr(torch, name)


def state_dict_pickle(entries, metadata) -> bytes:
    """data.pkl of an OrderedDict state dict holding the entries' tensors (storage keys "0", "1", ...)
    and `_metadata`, byte for byte as torch.save pickles it."""
    sd = OrderedDict()
    for i, (name, shape, dtype, *_) in enumerate(entries):
        try:
            sd[name] = _Tensor(str(i), shape, torch_dtype(dtype))
        except ConvertersError as e:
            raise ConvertersError(f".pth cannot hold dtype {np.dtype(dtype)}", array=name) from e
    if metadata is not None:
        sd._metadata = metadata
    buf = io.BytesIO()
    _Pickler(buf, protocol=2).dump(sd)
    return buf.getvalue()


def stream_pth(entries, path, provenance: dict, force: bool = False, progress=None, metadata=None,
               fsync: bool = True, zip64_limit: int = ZIP64_LIMIT) -> None:
    """Write entries (see writers.stream) as a torch.save'd state dict, one tensor at a time.

    metadata: the state dict's `_metadata` (module versions); provenance goes to its "" entry
    under "converters". Provenance values that are Futures (the source sha256) are pickled as
    placeholders of their final length and patched once the tensors are written.
    """
    meta = OrderedDict((k, dict(v)) for k, v in (metadata or {}).items())
    tokens = {k: secrets.token_hex(32) for k, v in provenance.items() if isinstance(v, concurrent.futures.Future)}
    meta.setdefault("", {})["converters"] = {k: tokens.get(k, v) for k, v in provenance.items()}
    pkl = state_dict_pickle(entries, meta)
    zf = ZipLayout("archive", zip64_limit)
    head = [(zf.add(name, len(data)), data) for name, data in (
        ("data.pkl", pkl), (".format_version", b"1"), (".storage_alignment", b"64"), ("byteorder", b"little"))]
    records = [zf.add(f"data/{i}", nbytes(shape, dtype)) for i, (_, shape, dtype, *_) in enumerate(entries)]
    with atomic_output(path, force, fsync) as tmp:
        fd = os.open(tmp, os.O_RDWR)
        try:
            reserve(fd, zf.end, path)
            crcs = write_tensors(fd, entries, [r.data_offset for r in records], checksum=True, progress=progress,
                                 core_busy=bool(tokens))  # the source hash, still running
            head[0] = (head[0][0], _resolved(pkl, tokens, provenance, path))
            for rec, crc in zip(records, crcs):
                rec.crc = crc
                os.pwrite(fd, zf.local_header(rec), rec.header_offset)
            for rec, data in head:
                _write_record(fd, zf, rec, data)
            _write_record(fd, zf, zf.add("version", len(FORMAT_VERSION)), FORMAT_VERSION)
            serial = _serialization_id(zf.records)
            _write_record(fd, zf, zf.add(".data/serialization_id", len(serial)), serial)
            os.pwrite(fd, zf.directory(), zf.end)
        finally:
            os.close(fd)


def _resolved(pkl: bytes, tokens: dict, provenance: dict, path) -> bytes:
    """The pickle with each placeholder replaced by its value, now computed (same length)."""
    for key, token in tokens.items():
        digest = str(provenance[key].result())
        if len(digest) != len(token) or pkl.count(token.encode()) != 1:
            raise ConvertersError(f"provenance {key} has an unexpected length", file=path)
        pkl = pkl.replace(token.encode(), digest.encode())
    return pkl


def _serialization_id(records) -> bytes:
    """40 digits, as torch writes: 20 random, 20 from the records' CRCs."""
    combined = 0
    for rec in records:
        combined = (combined * 31 + rec.crc) % (1 << 64)
    return f"{secrets.randbits(64):020d}{combined % 10 ** 20:020d}".encode()


def _write_record(fd, zf, rec, data: bytes) -> None:
    rec.crc = zlib.crc32(data)
    os.pwrite(fd, zf.local_header(rec) + data, rec.header_offset)


def tensor_entries(state_dict) -> list:
    """Entries for tensors already in memory (a filled module's state dict)."""
    return [(k, tuple(t.shape), _np_dtype(k, t), lambda t=t: _as_numpy(t)) for k, t in state_dict.items()]


def _np_dtype(name, t) -> np.dtype:
    dtype = of_torch(t.dtype)
    if dtype is None:
        raise ConvertersError(f"cannot write dtype {t.dtype}", array=name)
    return dtype


def _as_numpy(t: torch.Tensor) -> np.ndarray:
    t = t.detach().cpu().contiguous()
    dtype = of_torch(t.dtype)
    if dtype.name in ML_DTYPES:  # numpy knows these only through ml_dtypes: through the bits
        return t.view({1: torch.uint8, 2: torch.int16}[t.element_size()]).numpy().view(dtype)
    return t.numpy()


def save_pth(state_dict: dict, path, provenance: dict, force: bool = False, metadata=None, fsync: bool = True) -> None:
    """torch.save of a plain state dict, streamed; metadata defaults to the state dict's own
    `_metadata` (module versions)."""
    if metadata is None:
        metadata = getattr(state_dict, "_metadata", None)
    stream_pth(tensor_entries(state_dict), path, provenance, force, metadata=metadata, fsync=fsync)


