"""torch.save's zip format read without torch: the pickle's structure, and where each tensor's
elements lie in its storage record (read with pread, or viewed in the memory-mapped file).

The pickle is read by the standard library's C unpickler with `find_class` replaced by a short
allow-list that maps every permitted global to an inert stand-in defined here (a storage type is
a dtype name, `_rebuild_tensor_v2` builds a TensorRef record, `OrderedDict` is OrderedDict):
no global outside the list is ever looked up, so nothing in the file can run code, which is the
same guarantee torch.load(weights_only=True) gives, at C speed and without importing torch.

Anything outside what a state dict or a plain checkpoint holds (a global not on the list, a
quantized or sparse tensor, a big-endian archive, a compressed record) raises NotPlain, and the
caller falls back to torch.load(weights_only=True), which reads or refuses it as before.
"""
from __future__ import annotations

import io
import pickle
import struct
import zipfile
from collections import OrderedDict

import numpy as np

from ..dtypes import np_dtype

# torch's storage classes -> numpy dtype names (the typed-storage names torch.save still writes)
STORAGE_DTYPES = {
    "FloatStorage": "float32", "DoubleStorage": "float64", "HalfStorage": "float16", "BFloat16Storage": "bfloat16",
    "LongStorage": "int64", "IntStorage": "int32", "ShortStorage": "int16", "CharStorage": "int8",
    "ByteStorage": "uint8", "BoolStorage": "bool", "ComplexFloatStorage": "complex64",
    "ComplexDoubleStorage": "complex128", "Float8_e4m3fnStorage": "float8_e4m3fn",
    "Float8_e5m2Storage": "float8_e5m2", "Float8_e4m3fnuzStorage": "float8_e4m3fnuz",
    "Float8_e5m2fnuzStorage": "float8_e5m2fnuz", "UInt16Storage": "uint16", "UInt32Storage": "uint32",
    "UInt64Storage": "uint64",
}


class NotPlain(Exception):
    """The file holds something only torch.load can decide about; read it with torch.load."""


class StorageRef:
    """One storage record: `archive/data/<key>`, `numel` elements of `dtype`."""

    __slots__ = ("key", "dtype", "numel")

    def __init__(self, key: str, dtype: np.dtype, numel: int):
        self.key, self.dtype, self.numel = key, dtype, numel

    def __setstate__(self, state):
        raise NotPlain("state on a storage")


class TensorRef:
    """A tensor as torch.save describes it: a storage, an element offset, a shape and strides."""

    __slots__ = ("storage", "offset", "shape", "stride")

    def __init__(self, storage: StorageRef, offset: int, shape: tuple, stride: tuple):
        self.storage, self.offset, self.shape, self.stride = storage, offset, shape, stride

    @property
    def dtype(self) -> np.dtype:
        return self.storage.dtype

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def __setstate__(self, state):
        raise NotPlain("state on a tensor (a tensor subclass or Python attributes)")


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None,
                       metadata=None):
    if not isinstance(storage, StorageRef) or metadata:
        raise NotPlain("a tensor without a plain storage, or with metadata")
    size, stride = tuple(size), tuple(stride)
    counts = (*size, *stride)
    if not (isinstance(storage_offset, int) and storage_offset >= 0 and len(size) == len(stride)
            and all(isinstance(n, int) and n >= 0 for n in counts)):
        raise NotPlain("a malformed tensor description")
    return TensorRef(storage, storage_offset, size, stride)


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None):
    if not isinstance(data, TensorRef):
        raise NotPlain("a parameter without a plain tensor")
    return data


def _rebuild_parameter_with_state(data, requires_grad, backward_hooks, state):
    if state:
        raise NotPlain("a parameter with Python state")
    return _rebuild_parameter(data)


ALLOWED = {
    ("collections", "OrderedDict"): OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter_with_state,
}


class _Unpickler(pickle.Unpickler):
    def __init__(self, data: bytes):
        super().__init__(io.BytesIO(data))
        self.storages: dict[str, StorageRef] = {}

    def find_class(self, module, name):
        if (module, name) in ALLOWED:
            return ALLOWED[(module, name)]
        if module == "torch" and name in STORAGE_DTYPES:
            return ("storage type", name)
        raise NotPlain(f"global {module}.{name}")

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise NotPlain("a persistent id that is not a storage")
        _, stype, key, _location, numel = pid
        if not (isinstance(stype, tuple) and stype[:1] == ("storage type",) and isinstance(key, str)
                and isinstance(numel, int) and numel >= 0):
            raise NotPlain("a storage of an unknown type")
        dtype = np_dtype(STORAGE_DTYPES[stype[1]])
        if dtype is None:
            raise NotPlain(f"{stype[1]} needs ml_dtypes")
        ref = self.storages.get(key)
        if ref is None:  # torch keeps the first declaration of a key
            ref = self.storages[key] = StorageRef(key, dtype, numel)
        return ref


def load_pickle(data: bytes):
    """(object, {key: StorageRef}) from a data.pkl, or NotPlain."""
    u = _Unpickler(data)
    try:
        obj = u.load()
    except NotPlain:
        raise
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError,
            struct.error, MemoryError, RecursionError) as e:  # malformed: torch.load gives the user-facing error
        raise NotPlain(f"the pickle does not read as a plain checkpoint ({type(e).__name__})") from None
    return obj, u.storages


def record_offsets(zf: zipfile.ZipFile, view, prefix: str, keys) -> dict[str, int]:
    """File offset of each stored `<prefix>data/<key>` record's bytes (after its local header)."""
    out = {}
    for key in keys:
        info = zf.getinfo(f"{prefix}data/{key}")
        if info.compress_type != zipfile.ZIP_STORED:
            raise NotPlain("a compressed storage record")
        sig, name_len, extra_len = (view.unpack("<I", info.header_offset, "zip local header")[0],
                                    *view.unpack("<HH", info.header_offset + 26, "zip local header"))
        if sig != 0x04034B50:
            raise NotPlain("a zip local header without its signature")
        out[key] = info.header_offset + 30 + name_len + extra_len
    return out


def strided_extent(t: TensorRef) -> int:
    """Elements of its storage a tensor spans (offset + furthest index + 1); 0 when it is empty."""
    if any(d == 0 for d in t.shape):
        return 0
    return t.offset + sum((d - 1) * s for d, s in zip(t.shape, t.stride)) + 1


def contiguous(t: TensorRef) -> bool:
    """Its elements lie in C order, one after the other (an empty tensor counts as contiguous)."""
    return t.stride == _c_strides(t.shape) or any(d == 0 for d in t.shape)


def tensor_copy(t: TensorRef, view, data_offset: int, name: str) -> np.ndarray:
    """A new C-contiguous array of a strided tensor's elements, gathered from one pread of the
    part of its storage it spans (never the map: a file cut short is a TruncatedError)."""
    itemsize = t.dtype.itemsize
    span = view.read_array(data_offset + t.offset * itemsize, t.dtype, (strided_extent(t) - t.offset,), name)
    return np.lib.stride_tricks.as_strided(span, t.shape, tuple(s * itemsize for s in t.stride)).copy()


def tensor_array(t: TensorRef, view, data_offset: int, name: str) -> np.ndarray:
    """A read-only view of the tensor's elements in the mapped file (strided as stored)."""
    itemsize = t.dtype.itemsize
    if contiguous(t):
        return view.array(data_offset + t.offset * itemsize, t.dtype, t.shape, array=name)
    base = view.array(data_offset, t.dtype, (t.storage.numel,), array=name)
    return np.lib.stride_tricks.as_strided(base[t.offset:], t.shape, tuple(s * itemsize for s in t.stride),
                                           writeable=False)


def _c_strides(shape: tuple) -> tuple:
    strides, acc = [], 1
    for d in reversed(shape):
        strides.append(acc)
        acc *= max(d, 1)
    return tuple(reversed(strides))
