"""The lazy array handle and the opened-file mapping every reader returns.

Readers describe arrays (name, shape, dtype, where the bytes are) without touching the data; the
bytes are read only when `.numpy()` is called. Metadata keys are shared by all readers so later
steps (mappings, drafts, parity) can reason across formats:

    layer       source layer / op / variable-scope name the array belongs to
    layer_type  the source's type for that layer (Convolution, Conv2D, BatchNorm, ...)
    role        one of ROLES
    layout      axis letters of the stored array, e.g. OIHW, HWIO, HWCM (depthwise), IO, OI
    index       position of the array inside its layer (Caffe blob index, Keras weight order)
"""
from __future__ import annotations

import math
import mmap
import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field

import numpy as np

from .errors import ArrayNotFoundError, ConvertersError, FormatError, TruncatedError

ROLES = ("weight", "bias", "running_mean", "running_var", "running_stat", "optimizer", "counter",
         "constant", "other")
"""Array roles. `optimizer` (slots, moments) and `counter` (steps, iterations) are training state
that a mapping usually ignores by category; `running_*` are BatchNorm statistics."""



def __getattr__(name):
    """`BFLOAT16`, kept for callers that import it: resolved (importing ml_dtypes, ~0.5 s) on first
    use, not at `import converters`; converters.dtypes holds the dtype tables."""
    if name == "BFLOAT16":
        from .dtypes import bfloat16

        return bfloat16()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


MAX_ARRAY_BYTES = 1 << 62


def element_count(shape, itemsize: int = 1) -> int | None:
    """Element count of `shape`, or None when it cannot be an array: a negative dimension, or
    non-zero dimensions whose byte product passes 2**62 (numpy refuses those even with a zero
    dimension beside them, and its int64 product would wrap around)."""
    dims = [int(d) for d in shape]
    if any(d < 0 for d in dims):
        return None
    if math.prod(d for d in dims if d) * max(1, itemsize) > MAX_ARRAY_BYTES:
        return None
    return math.prod(dims)


@dataclass(frozen=True)
class StoredSpan:
    """Where an array's bytes lie verbatim in the file the reader holds open: `nbytes` from
    `offset`, C order, `dtype` as stored. A writer that needs them unchanged copies them file to
    file (copy_file_range from `fileno()`) instead of reading them into memory first. `fileno()` is
    the reader's own descriptor (None once the file is closed), so the bytes are those of the file
    that was read even if its path has been replaced since; `view()` is the array as a view into
    the reader's map."""

    path: str
    offset: int
    nbytes: int
    shape: tuple
    dtype: np.dtype
    fileno: Callable[[], int | None] = field(compare=False, repr=False)
    view: Callable[[], np.ndarray] = field(compare=False, repr=False)

    def check(self, array: str | None = None) -> int:
        """The open descriptor, after checking the file still holds the span: touching a memory
        map past a file's end is a SIGBUS, not an error (a file cut short between this check and
        the read can still do that)."""
        fd = self.fileno()
        if fd is None:
            raise ConvertersError("the source file was closed before its arrays were read", file=self.path,
                                  array=array)
        size = os.fstat(fd).st_size
        if size < self.offset + self.nbytes:
            raise TruncatedError(f"the array needs bytes {self.offset}..{self.offset + self.nbytes} but the file now "
                                 f"has {size}", file=self.path, array=array, offset=self.offset,
                                 hint="the file was truncated while converting")
        return fd


class ArrayHandle:
    """One named array of an opened file. Nothing is read until `.numpy()`."""

    __slots__ = ("name", "shape", "dtype", "_meta", "_load", "_fresh")

    def __init__(self, name: str, shape, dtype, load: Callable[[], np.ndarray],
                 meta: dict | Callable[[ArrayHandle], dict] | None = None, *, fresh: bool = False):
        """`fresh=True` promises that every `load()` returns a new array nobody else holds (read with
        `pread` into its own buffer, say), so `numpy()` hands it out without a second copy.
        `meta` may be a callable taking the handle and returning its dict: it is called on first
        access of `.meta`, so a reader of thousands of arrays need not work out roles and layers
        nobody asks for."""
        self.name = name
        self.shape = tuple(int(d) for d in shape)
        self.dtype = np.dtype(dtype)
        if element_count(self.shape, self.dtype.itemsize) is None:
            raise FormatError(f"shape {list(self.shape)} of {self.dtype} cannot be an array", array=name,
                              hint="a corrupt shape field")
        self._load = load
        self._fresh = fresh
        self._meta = meta if callable(meta) else dict(meta or {})

    @classmethod
    def checked(cls, name: str, shape: tuple, dtype: np.dtype, load: Callable[[], np.ndarray],
                meta: dict | Callable[[ArrayHandle], dict], fresh: bool = False) -> ArrayHandle:
        """A handle whose caller already validated everything __init__ checks: `shape` a tuple of
        ints that `element_count` accepts with `dtype` (an np.dtype), and `meta` its own dict or a
        callable. For readers that validate thousands of arrays at once (no per-array checks)."""
        self = cls.__new__(cls)
        self.name, self.shape, self.dtype, self._load, self._fresh, self._meta = name, shape, dtype, load, fresh, meta
        return self

    @property
    def meta(self) -> dict:
        m = self._meta
        if not isinstance(m, dict):
            m = self._meta = dict(m(self))
        return m

    @meta.setter
    def meta(self, value: dict) -> None:
        self._meta = value

    @property
    def size(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n

    @property
    def nbytes(self) -> int:
        return self.size * self.dtype.itemsize

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def role(self) -> str | None:
        return self.meta.get("role")

    @property
    def layer(self) -> str | None:
        return self.meta.get("layer")

    @property
    def layout(self) -> str | None:
        return self.meta.get("layout")

    def numpy(self, copy: bool = True) -> np.ndarray:
        """The data as a numpy array of `.shape` and `.dtype`.

        copy=True (default) returns an array that owns its memory and outlives the file; where a
        reader reads it with pread (safetensors, ONNX, numpy, MXNet, Caffe, TF checkpoints and
        GraphDefs, torch.save zips read without torch), a file cut short since it was opened is a
        TruncatedError (files torch.load reads, legacy or compressed ones, were read whole when
        opened: they read as they were).
        copy=False may return a read-only view into the memory-mapped file: no copy, but touching
        it after the file was truncated (by another process, say) kills the process with SIGBUS.
        """
        arr = self._load()
        shape, dtype = self.shape, self.dtype
        if arr.shape != shape and arr.size == self.size:
            arr = arr.reshape(shape)
        if arr.shape != shape or (arr.dtype is not dtype and arr.dtype != dtype):
            raise FormatError(f"decoded {arr.dtype}{list(arr.shape)}, expected {dtype}{list(shape)}",
                              array=self.name)
        if not copy:
            return arr
        if self._fresh and arr.flags.c_contiguous and arr.flags.writeable and arr.dtype.isnative:
            return arr
        view = arr
        arr = view.copy() if type(view) is np.ndarray else np.array(view, copy=True, order="C")
        if view.nbytes >= RELEASE_MIN_BYTES:
            release_pages(view)
        if not arr.dtype.isnative:  # ('<f4' is native here: no second copy for little-endian tables)
            arr = arr.astype(arr.dtype.newbyteorder("="))
        return arr

    def stored_span(self) -> StoredSpan | None:
        """Where the bytes lie verbatim in the file, for readers that know (None: they do not, or
        the stored bytes are not the array as is: compressed, split, or decoded from text)."""
        return None

    def __array__(self, dtype=None, copy=None):
        arr = self.numpy()
        return arr if dtype is None else arr.astype(dtype)

    def __repr__(self) -> str:
        role = f", role={self.role}" if self.role else ""
        return f"ArrayHandle({self.name!r}, shape={self.shape}, dtype={self.dtype}{role})"


@dataclass
class Layer:
    """A layer / op / node of the source architecture, in source order."""

    name: str
    type: str
    params: dict = field(default_factory=dict)
    inputs: list = field(default_factory=list)
    outputs: list = field(default_factory=list)
    arrays: list = field(default_factory=list)


class ArrayFile(Mapping):
    """Read-only mapping name -> ArrayHandle, in the file's own order.

    `.meta` holds file-level facts (framework, format, version, config, graph); `.layers` the
    architecture when the format records one (prototxt, symbol JSON, Keras config, ONNX graph).
    """

    def __init__(self, path, framework: str, arrays: list[ArrayHandle] | dict, *, meta: dict | None = None,
                 layers: dict | Callable[[], dict] | None = None, closer: Callable[[], None] | None = None):
        self.path = os.fspath(path)
        self.framework = framework
        items = list(arrays.values() if isinstance(arrays, dict) else arrays)
        self._arrays: dict[str, ArrayHandle] = {a.name: a for a in items}
        if len(self._arrays) != len(items):
            seen = set()
            for a in items:
                if a.name in seen:
                    raise FormatError("array name appears twice", file=self.path, array=a.name)
                seen.add(a.name)
        self.meta = {"framework": framework, **(meta or {})}
        self._layers = layers if callable(layers) else dict(layers or {})
        self._closer = closer

    @property
    def layers(self) -> dict[str, Layer]:
        """The architecture; a reader may pass a callable that builds it on first access."""
        if callable(self._layers):
            self._layers = dict(self._layers())
        return self._layers

    @layers.setter
    def layers(self, value: dict) -> None:
        self._layers = value

    def __getitem__(self, name: str) -> ArrayHandle:
        try:
            return self._arrays[name]
        except KeyError:
            import difflib

            close = difflib.get_close_matches(name, list(self._arrays), n=3)
            hint = (f"did you mean {', '.join(close)}?" if close
                    else f"{len(self)} arrays; list them with `convert inspect`")
            raise ArrayNotFoundError("no such array", file=self.path, array=name, hint=hint) from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._arrays)

    def values(self):  # the dict's own views: Mapping's call __getitem__ once per array
        return self._arrays.values()

    def items(self):
        return self._arrays.items()

    def keys(self):
        return self._arrays.keys()

    def __len__(self) -> int:
        return len(self._arrays)

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in self._arrays.values())

    def numpy(self) -> dict[str, np.ndarray]:
        """Every array materialised, in file order."""
        return {k: a.numpy() for k, a in self._arrays.items()}

    def close(self) -> None:
        if self._closer is not None:
            self._closer()
            self._closer = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self) -> str:
        return f"<ArrayFile {self.framework} {self.path!r}: {len(self)} arrays, {self.nbytes} bytes>"

    def _repr_html_(self, limit: int = 50) -> str:
        """The notebook view: the file, then name / shape / dtype / role of the first `limit` arrays."""
        import html

        rows = "".join(f"<tr><td><code>{html.escape(a.name)}</code></td><td>{'x'.join(map(str, a.shape)) or 'scalar'}"
                       f"</td><td>{a.dtype}</td><td>{html.escape(a.role or '')}</td></tr>"
                       for a in list(self.values())[:limit])
        more = f"<div><i>... and {len(self) - limit} more arrays</i></div>" if len(self) > limit else ""
        return (f"<div><b>{html.escape(self.framework)}</b> <code>{html.escape(str(self.path))}</code>: "
                f"{len(self)} arrays, {self.nbytes:,} bytes</div><table><tr><th>name</th><th>shape</th>"
                f"<th>dtype</th><th>role</th></tr>{rows}</table>{more}")


def c_contiguous(arr) -> np.ndarray:
    """`arr` as a C-contiguous array of the same shape; np.ascontiguousarray would turn 0-d into (1,)."""
    arr = np.asarray(arr)
    return arr if arr.flags.c_contiguous else np.array(arr, order="C")


RELEASE_MIN_BYTES = 64 * 1024


def map_of(view: np.ndarray) -> mmap.mmap | None:
    """The memory map a view's memory belongs to (through its bases), or None for memory of its own."""
    base = view
    while isinstance(base, np.ndarray) and base.base is not None:
        base = base.base
    mm = base if isinstance(base, mmap.mmap) else getattr(base, "obj", None)  # np.ndarray(buffer=map) / frombuffer
    return mm if isinstance(mm, mmap.mmap) else None


def release_pages(view: np.ndarray) -> None:
    """Drop the file pages a memory-mapped view touched from this process's resident set.

    Called after a view was copied: the copy is what the caller keeps, and without this the
    mapped pages would count a second time in RSS (they stay in the OS page cache either way,
    and a later touch of the view maps them back in). Views under RELEASE_MIN_BYTES are left alone:
    their few clean pages cost less RSS than the madvise call costs time on files of thousands of
    small tensors (about 40 us each). Only a read-only map of a file is touched: MADV_DONTNEED
    would zero an anonymous mapping and drop the writes to a private (copy-on-write) one.
    """
    if view.nbytes < RELEASE_MIN_BYTES:
        return
    mm = map_of(view)
    if mm is None or mm.closed or not hasattr(mmap, "MADV_DONTNEED") or view.size == 0 \
            or not _read_only_file_map(mm):
        return
    try:
        start = np.frombuffer(mm, np.uint8, count=1).ctypes.data
        byte_bounds = getattr(np, "byte_bounds", None) or np.lib.array_utils.byte_bounds
        low, high = byte_bounds(view)
        lo = (low - start) // mmap.PAGESIZE * mmap.PAGESIZE
        hi = min(high - start, len(mm))
        if 0 <= lo < hi:
            mm.madvise(mmap.MADV_DONTNEED, lo, hi - lo)
    except (ValueError, OSError):  # advisory only
        pass


def _read_only_file_map(mm: mmap.mmap) -> bool:
    """Is `mm` a read-only (ACCESS_READ) map of a file? mmap keeps neither fact where Python can
    see it, but size() fstats the mapped file (an anonymous map has none: OSError) and a read-only
    map exports a read-only buffer."""
    try:
        with memoryview(mm) as buf:
            if not buf.readonly:
                return False
        mm.size()
    except (OSError, ValueError, BufferError):
        return False
    return True


# Flat names `<layer>_<variable>` (MXNet symbols, TF1 graphs built by hand, Caffe-to-TF ports):
# suffix -> role, longest first.
SUFFIX_ROLES = tuple(sorted((
    ("_running_mean", "running_mean"), ("_running_var", "running_var"), ("_moving_mean", "running_mean"),
    ("_moving_var", "running_var"), ("_moving_variance", "running_var"), ("_weight", "weight"),
    ("_weights", "weight"), ("_kernel", "weight"), ("_depthwise_kernel", "weight"), ("_bias", "bias"),
    ("_biases", "bias"), ("_gamma", "weight"), ("_beta", "bias"), ("_alpha", "weight")),
    key=lambda sr: -len(sr[0])))


def split_role_suffix(name: str) -> tuple[str, str, str] | None:
    """(role, layer, variable) of a flat name: `bn_moving_var` -> ('running_var', 'bn', 'moving_var')."""
    for suffix, role in SUFFIX_ROLES:
        if name.endswith(suffix) and len(name) > len(suffix):
            return role, name[:-len(suffix)], suffix[1:]
    return None


def role_from_name(name: str) -> str | None:
    """Role guessed from the conventional variable names most frameworks share."""
    low = name.lower().rsplit("/", 1)[-1].rsplit(".", 1)[-1].rsplit(":", 1)[-1]
    if low in ("kernel", "weight", "weights", "gamma", "depthwise_kernel", "pointwise_kernel",
               "recurrent_kernel", "embeddings", "alpha", "scale", "w"):
        return "weight"
    if low in ("bias", "biases", "beta", "b"):
        return "bias"
    if low in ("moving_mean", "running_mean"):
        return "running_mean"
    if low in ("moving_variance", "moving_var", "running_var"):
        return "running_var"
    if low in ("num_batches_tracked",):
        return "counter"
    return None
