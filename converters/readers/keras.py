"""[keras] reader: Keras 2 / legacy HDF5 (`.h5`, `.hdf5`), Keras 3 `.keras` zips and `.weights.h5`.

HDF5 is read with h5py (the maintained library for the format), but not object by object: one
H5Lvisit pass lists every link, and the object headers of groups and of contiguous, unfiltered
numeric datasets are decoded in Python (_hdf5_tree, _hdf5_headers; h5py's lookups cost 20-50 us
each, thousands of them on a file of small arrays). Nothing is materialised at open: contiguous
datasets are read at their byte offset (bounds-checked first; `.numpy()` preads into a new array,
`.numpy(copy=False)` is a map view), other datasets through h5py when `.numpy()` is called.

Naming (see docs/readers/keras.md):
  Keras 2 / legacy HDF5   the weight name as written, without a trailing `:0` (`conv2d_1/kernel`),
                          in layer_names then weight_names order; `optimizer/<weight name>`.
  Keras 3 .keras/.weights.h5   `<layer name>/.../<variable name>` built from the saved layer names
                          and the layer class's variable order (vars/0 of a Conv2D is `kernel`);
                          `optimizer/vars/<i>`.
The raw HDF5 path is always in meta['h5_path'].
"""
from __future__ import annotations

import builtins
import functools
import json
import os
import re
import tempfile
import zipfile

import numpy as np

from ..arrays import ArrayFile, ArrayHandle, Layer, role_from_name
from ..dtypes import bfloat16
from ..errors import FormatError, MissingDependencyError, TruncatedError, UnsupportedError
from . import _gc
from ._binary import FileView
from ._hdf5_tree import DatasetNode, Tree
from ._limits import PARSER_ERRORS, check_inflation, element_count, parser_errors

NAME = "keras"
OPTIONS = {"config": (str, dict), "allow_external": bool}
"""Reader options (`--option KEY=VALUE`) and their types; readers/__init__ validates against it."""
HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
_ZIP_MAGIC = b"PK\x03\x04"
_WEIGHTS_MEMBER = "model.weights.h5"

# ----------------------------------------------------------------------------- layer knowledge

_RNN_GATES = {"LSTM": ("ifco", 4), "GRU": ("zrh", 3), "SimpleRNN": ("", 1), "CuDNNLSTM": ("ifco", 4),
              "CuDNNGRU": ("zrh", 3), "ConvLSTM2D": ("ifco", 4)}
_DEPTHWISE = {"DepthwiseConv1D", "DepthwiseConv2D"}
_TRANSPOSED = {"Conv1DTranspose", "Conv2DTranspose", "Conv3DTranspose", "Deconvolution2D"}
_NORM = {"BatchNormalization", "LayerNormalization", "GroupNormalization", "SyncBatchNormalization"}
_WRAPPERS = {"Bidirectional", "TimeDistributed"}

# Keras 3 stores a layer's variables as vars/0, vars/1, ... in the order the layer creates them.
_K3_VARIABLES = {
    **{c: ("kernel", "bias") for c in ("Dense", "EinsumDense", "Conv1D", "Conv2D", "Conv3D",
                                       "Conv1DTranspose", "Conv2DTranspose", "Conv3DTranspose",
                                       "DepthwiseConv1D", "DepthwiseConv2D")},
    "SeparableConv1D": ("depthwise_kernel", "pointwise_kernel", "bias"),
    "SeparableConv2D": ("depthwise_kernel", "pointwise_kernel", "bias"),
    "LSTMCell": ("kernel", "recurrent_kernel", "bias"),
    "GRUCell": ("kernel", "recurrent_kernel", "bias"),
    "SimpleRNNCell": ("kernel", "recurrent_kernel", "bias"),
    "Embedding": ("embeddings",),
    "PReLU": ("alpha",),
}
_KNOWN_CLASSES = set(_K3_VARIABLES) | _NORM | set(_RNN_GATES) | _WRAPPERS | {
    "InputLayer", "Sequential", "Functional", "Activation", "Add", "Concatenate", "Dropout", "Flatten",
    "GlobalAveragePooling2D", "MaxPooling2D", "AveragePooling2D", "ReLU", "Reshape", "ZeroPadding2D"}


def to_snake_case(name: str) -> str:
    """Keras 3's rule for the HDF5 key of a saved layer (`DepthwiseConv2D` -> `depthwise_conv2d`)."""
    name = re.sub(r"\W+", "", name)
    name = re.sub("(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub("([a-z])([A-Z])", r"\1_\2", name).lower()


_CLASS_OF_KEY = {to_snake_case(c): c for c in _KNOWN_CLASSES}


@functools.lru_cache(maxsize=4096)
def _class_from_key(key: str) -> str | None:
    """The class a Keras 3 HDF5 key was derived from, for the classes we know (`conv2d_3` -> Conv2D)."""
    return _CLASS_OF_KEY.get(key) or _CLASS_OF_KEY.get(re.sub(r"_\d+$", "", key))


def _k3_variable_names(cls: str | None, params: dict | None, count: int) -> list[str | None]:
    """Names for vars/0..count-1 of a Keras 3 layer; None where the class/config cannot tell."""
    if cls in ("BatchNormalization", "SyncBatchNormalization", "LayerNormalization", "GroupNormalization"):
        stats = ["moving_mean", "moving_variance"] if "Batch" in cls else []
        if params is not None:
            names = (["gamma"] if params.get("scale", True) else []) + \
                    (["beta"] if params.get("center", True) else []) + stats
        elif count == len(stats) + 2:
            names = ["gamma", "beta"] + stats
        elif count == len(stats):
            names = stats
        else:  # gamma or beta missing: only the config can say which
            names = [None] * (count - len(stats)) + stats
    else:
        names = list(_K3_VARIABLES.get(cls, ()))
        if cls in _K3_VARIABLES and params is not None and not params.get("use_bias", True):
            names = [n for n in names if n != "bias"]
    if len(names) != count:
        names = (names + [None] * count)[:count] if len(names) < count else names[:count]
    return names


def _effective_class(cls: str | None, params: dict | None) -> str | None:
    """The class that owns the variables: a wrapper's inner layer, an RNN cell's layer."""
    if cls in _WRAPPERS and isinstance(params, dict) and isinstance(params.get("layer"), dict):
        return params["layer"].get("class_name", cls)
    if cls and cls.endswith("Cell") and cls[:-4] in _RNN_GATES:
        return cls[:-4]
    return cls


def _array_meta(var: str, cls: str | None, params: dict | None, ndim: int) -> dict:
    """role / layout (and RNN gate order) of one variable from its name and its layer class."""
    cls = _effective_class(cls, params)
    meta = {"role": role_from_name(var)}
    layout = None
    if cls in _RNN_GATES:
        gates, n = _RNN_GATES[cls]
        if cls == "ConvLSTM2D":
            layout = {"kernel": "HWI(4H)", "recurrent_kernel": "HWH(4H)"}.get(var)
        else:
            layout = {"kernel": f"I,{n}H", "recurrent_kernel": f"H,{n}H"}.get(var)
        if var == "bias":
            layout = f"2,{n}H" if ndim == 2 else f"{n}H"
        if gates:
            meta["gates"] = gates
        if cls in ("GRU", "CuDNNGRU") and params is not None:
            meta["reset_after"] = bool(params.get("reset_after", cls == "CuDNNGRU"))
    elif var == "depthwise_kernel" or (var == "kernel" and cls in _DEPTHWISE):
        layout = {3: "KCM", 4: "HWCM"}.get(ndim)
    elif var == "pointwise_kernel":
        layout = {3: "KIO", 4: "HWIO"}.get(ndim)
    elif var == "kernel" and cls in _TRANSPOSED:
        layout = {3: "KOI", 4: "HWOI", 5: "DHWOI"}.get(ndim)
    elif var == "kernel":
        layout = {2: "IO", 3: "KIO", 4: "HWIO", 5: "DHWIO"}.get(ndim)
        if cls is None and layout:
            meta["layout_guessed"] = True  # Conv2DTranspose (HWOI) cannot be told apart
    elif var in ("gamma", "beta", "moving_mean", "moving_variance") and ndim == 1:
        layout = "C"
    elif var == "bias" and ndim == 1:
        layout = "O"
    if layout:
        meta["layout"] = layout
    return meta


# ----------------------------------------------------------------------------- model config


def _layer_entries(model_config) -> tuple[str | None, list]:
    """(class_name, layer entries) of a model config in any Keras version's shape."""
    if isinstance(model_config, list):  # Keras 1 Sequential: config is the layer list
        return "Sequential", model_config
    if not isinstance(model_config, dict):
        return None, []
    cls = model_config.get("class_name")
    cfg = model_config.get("config")
    if isinstance(cfg, list):
        return cls, cfg
    if isinstance(cfg, dict) and isinstance(cfg.get("layers"), list):
        return cls, cfg["layers"]
    return cls, []


def _entry_name(entry: dict) -> str | None:
    cfg = entry.get("config") if isinstance(entry.get("config"), dict) else {}
    return entry.get("name") or cfg.get("name")


def _inbound_names(nodes) -> list[str]:
    """Layer names feeding a functional layer: Keras 2 [[name, node, tensor, kwargs]] lists and
    Keras 3 {'keras_history': [name, node, tensor]} tensors."""
    found: list[str] = []

    def walk(x):
        if isinstance(x, dict):
            cfg = x.get("config")
            hist = cfg.get("keras_history") if isinstance(cfg, dict) else x.get("keras_history")
            if isinstance(hist, list) and hist and isinstance(hist[0], str):
                found.append(hist[0])
                return
            for v in x.values():
                walk(v)
        elif isinstance(x, list):
            if len(x) >= 3 and isinstance(x[0], str) and isinstance(x[1], int):
                found.append(x[0])
                return
            for v in x:
                walk(v)

    walk(nodes)
    return list(dict.fromkeys(found))


def _config_layers(model_config, prefix: str = "") -> dict[str, Layer]:
    """Layer records for every layer of a model config, nested models as `outer/inner`."""
    cls, entries = _layer_entries(model_config)
    layers: dict[str, Layer] = {}
    previous = None
    for entry in entries:
        if not isinstance(entry, dict):
            continue
        name = _entry_name(entry)
        if not name:
            continue
        qualified = prefix + name
        params = entry.get("config") if isinstance(entry.get("config"), dict) else {}
        if cls == "Sequential":
            inputs = [previous] if previous else []
        else:
            inputs = [prefix + n for n in _inbound_names(entry.get("inbound_nodes", []))]
        layers[qualified] = Layer(qualified, entry.get("class_name", ""), params, inputs)
        previous = qualified
        if _layer_entries(entry)[1]:
            layers.update(_config_layers(entry, qualified + "/"))
    return layers


def _find_entry(model_config, name: str):
    for entry in _layer_entries(model_config)[1]:
        if isinstance(entry, dict) and _entry_name(entry) == name:
            return entry
    return None


# ----------------------------------------------------------------------------- h5 plumbing


def _h5py():
    try:
        import h5py
    except ImportError:
        raise MissingDependencyError("reading Keras HDF5 files needs h5py",
                                     hint="pip install weightport[keras]") from None
    return h5py


def _text(value) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if isinstance(value, np.ndarray) and value.shape == ():
        return _text(value[()])
    return str(value)


def _text_list(attrs, key) -> list[str] | None:
    """A list-of-names attribute. Keras 2 splits one past HDF5's 64 KB header limit into
    `key0`, `key1`, ...; those are joined back in order."""
    if key in attrs:
        parts = [attrs[key]]
    elif f"{key}0" in attrs:
        parts, i = [], 0
        while f"{key}{i}" in attrs:
            parts.append(attrs[f"{key}{i}"])
            i += 1
    else:
        return None
    out = []
    for value in parts:
        if isinstance(value, (bytes, str)):
            out.append(_text(value))
        else:
            out += [_text(v) for v in np.asarray(value).reshape(-1) if np.asarray(v).dtype.kind in "SUO"]
    return out


class _Region:
    """Read-only file object over a byte range of a memory map (a stored zip member) for h5py."""

    def __init__(self, buf, start: int, size: int):
        self._buf, self._start, self._size, self._pos = buf, start, size, 0

    def read(self, n: int = -1) -> bytes:
        end = self._size if n is None or n < 0 else min(self._size, self._pos + n)
        data = bytes(self._buf[self._start + self._pos:self._start + end]) if end > self._pos else b""
        self._pos = max(self._pos, end)
        return data

    def readinto(self, b) -> int:
        data = self.read(len(b))
        b[:len(data)] = data
        return len(data)

    def seek(self, offset: int, whence: int = 0) -> int:
        base = {0: 0, 1: self._pos, 2: self._size}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def tell(self) -> int:
        return self._pos

    def seekable(self) -> bool:
        return True

    def readable(self) -> bool:
        return True

    def flush(self) -> None:
        pass


class _Source:
    """An open HDF5 file plus where its bytes are in a memory-mappable file (for lazy views)."""

    def __init__(self, path: str, h5, view: FileView, base: int, size: int, cleanup=(), allow_external=False):
        self.path, self.h5, self.view, self.base, self.size = path, h5, view, base, size
        self.allow_external = allow_external
        self._cleanup = list(cleanup)
        self.root = h5

    def index(self, h5py) -> None:
        """List every link once (refusing external links unless allow_external): the groups and
        plain datasets are then walked without h5py (see _hdf5_tree)."""
        tree = Tree(h5py, self.h5, self.view.buf, self.base, stop_at_external=not self.allow_external,
                    before_h5py=lambda: _check_global_heaps(self.view, self.base, self.size, self.path))
        if tree.external and not self.allow_external:
            name, target = tree.external[0]
            raise UnsupportedError(f"HDF5 external link {name} -> {target}: the data is outside this file",
                                   file=self.path, hint="pass allow_external=True only for files you trust")
        self.root = tree.root()

    def close(self) -> None:
        try:
            self.h5.close()
        finally:
            if self.view is not None:
                self.view.close()
            for fn in self._cleanup:
                fn()

    def handle(self, name: str, ds, meta: dict) -> ArrayHandle:
        """A lazy handle for dataset `ds`, checking its byte range before anything is read."""
        if isinstance(ds, DatasetNode):  # decoded from its header: contiguous, unfiltered, numeric
            return self._mapped(name, ds.shape, ds.dtype, ds.offset, {**meta, "h5_path": ds.name})
        dtype = ds.dtype
        if _text(ds.attrs.get("dtype", "")) == "bfloat16" and dtype.itemsize == 2 and bfloat16() is not None:
            dtype = bfloat16()
        elif dtype.kind not in "biuf?c" or dtype.fields or dtype.subdtype:
            raise UnsupportedError(f"dataset dtype {ds.dtype} is not a numeric array", file=self.path,
                                   array=name, hint=f"HDF5 path {ds.name}")
        shape = ds.shape if ds.shape is not None else ()
        foreign = self._check_storage(name, ds)
        offset = None
        if self.view is not None and not foreign and ds.chunks is None and ds.compression is None:
            try:
                offset = ds.id.get_offset()
            except Exception:
                offset = None
        meta = {**meta, "h5_path": ds.name}
        if offset is not None:
            return self._mapped(name, tuple(shape), dtype, self.base + int(offset), meta)
        nbytes = (element_count(shape, dtype.itemsize) or 0) * dtype.itemsize
        if not foreign:  # what h5py would inflate (or fill) must be in proportion to what is stored
            check_inflation(nbytes, ds.id.get_storage_size(), f"dataset {ds.name}", self.path, name)
            if ds.chunks:
                check_inflation(element_count(ds.chunks, dtype.itemsize) * dtype.itemsize,
                                max(nbytes, ds.id.get_storage_size()), f"chunks of {ds.name}", self.path, name)
        return ArrayHandle(name, shape, dtype, self._reader(ds, name, dtype), meta)

    def _check_storage(self, name: str, ds) -> bool:
        """Refuse datasets whose bytes live in other files (external raw storage, virtual datasets,
        a dataset reached through an external link) unless allow_external; True if foreign."""
        reasons = []
        if ds.external:
            reasons.append(f"external raw storage in {', '.join(_text(e[0]) for e in ds.external)}")
        if ds.is_virtual:
            reasons.append("a virtual dataset mapping other files")
        if ds.file.id != self.h5.id:
            reasons.append(f"an external link into {ds.file.filename}")
        if reasons and not self.allow_external:
            raise UnsupportedError(f"dataset {ds.name} is {reasons[0]}: its data is outside this file",
                                   file=self.path, array=name,
                                   hint="pass allow_external=True only for files you trust")
        return bool(reasons)

    def _mapped(self, name: str, shape: tuple, dtype, start: int, meta: dict) -> ArrayHandle:
        """A handle on the bytes of a contiguous dataset at `start` in the view, bounds-checked now."""
        count = element_count(shape, dtype.itemsize)
        if count is None:
            raise FormatError(f"shape {list(shape)} of {dtype} cannot be an array", file=self.path, array=name,
                              hint=f"HDF5 path {meta['h5_path']}")
        self.view.require(start, count * dtype.itemsize, f"dataset {meta['h5_path']}", name)
        meta["offset"] = start
        return self.view.handle(name, start, dtype, shape, meta)

    def _reader(self, ds, name: str, dtype):
        def load():
            with parser_errors(self.path, f"dataset {ds.name}", name):
                arr = np.asarray(ds[()])
            return arr.view(dtype) if arr.dtype != dtype and arr.dtype.itemsize == dtype.itemsize else arr
        return load


def _open_h5(h5py, path: str, target, what: str):
    """h5py.File with h5py's OSError turned into an error that names the file (and the EOF)."""
    try:
        return h5py.File(target, "r")
    except OSError as e:
        text = str(e)
        m = re.search(r"eof = (\d+).*stored_eof = (\d+)", text)
        if m:
            raise TruncatedError(f"{what} ends at byte {m.group(1)} but its superblock says {m.group(2)}",
                                 file=path, offset=int(m.group(1)), hint="the file is truncated") from None
        raise FormatError(f"{what} is not a readable HDF5 file: {text}", file=path, offset=0) from None


def _check_global_heaps(view: FileView, start: int, size: int, path: str) -> None:
    """Walk every HDF5 global heap collection (GCOL: where variable-length strings live) the way
    the HDF5 library decodes it, and refuse one it would decode forever: an object of index 0
    and size 0 makes HDF5 1.14 loop without end (it is not interruptible from Python).
    Run before h5py is first given an object whose attributes it could read (only h5py decodes
    the heaps then): a file whose attributes _hdf5_headers decodes is never scanned."""
    buf, end_of_data = view.buf, start + size
    at = buf.find(b"GCOL", start, end_of_data) if size else -1
    while at >= 0:
        if at + 16 <= end_of_data and buf[at + 4] == 1:
            length = int.from_bytes(buf[at + 8:at + 16], "little")
            end, p = min(end_of_data, at + length), at + 16
            while p + 16 <= end:
                idx = int.from_bytes(buf[p:p + 2], "little")
                obj = int.from_bytes(buf[p + 8:p + 16], "little")
                need = obj if idx == 0 else 16 + (obj + 7) // 8 * 8
                if need == 0:
                    raise FormatError("HDF5 global heap object of size 0 (a corrupt heap the HDF5 library "
                                      "cannot decode)", file=path, offset=p)
                p += need
        at = buf.find(b"GCOL", at + 4, end_of_data)
    view.release()


def _open_h5_path(path: str, allow_external: bool = False) -> _Source:
    h5py = _h5py()
    h5 = _open_h5(h5py, path, path, "file")
    try:
        view = FileView(path)
    except BaseException:
        h5.close()
        raise
    source = _Source(path, h5, view, 0, view.size, allow_external=allow_external)
    try:
        source.index(h5py)
    except BaseException:
        source.close()
        raise
    return source


def _zip_member_start(view: FileView, info: zipfile.ZipInfo) -> int:
    """Byte offset of a zip member's data: after its local header (whose extra field may differ
    from the central directory's)."""
    sig = view.bytes(info.header_offset, 4, "zip local header", info.filename)
    if sig != _ZIP_MAGIC:
        raise FormatError("zip local header signature missing", file=view.path, array=info.filename,
                          offset=info.header_offset)
    n, m = view.unpack("<HH", info.header_offset + 26, "zip local header", info.filename)
    start = info.header_offset + 30 + n + m
    view.require(start, info.compress_size, "zip member data", info.filename)
    return start


def _open_h5_member(path: str, zf: zipfile.ZipFile, info: zipfile.ZipInfo, allow_external=False) -> _Source:
    """The weights HDF5 inside a .keras zip: mapped in place when stored, else inflated to a
    temporary file (never the whole member in memory)."""
    h5py = _h5py()
    view = FileView(path)
    try:
        if info.compress_type == zipfile.ZIP_STORED:
            start = _zip_member_start(view, info)
            view.require(start, info.file_size, "zip member data", info.filename)
            region = _Region(view.buf, start, info.file_size)
            source = _Source(path, _open_h5(h5py, path, region, _WEIGHTS_MEMBER), view, start, info.file_size,
                             allow_external=allow_external)
        else:
            view.close()
            source = _inflate_member(h5py, path, zf, info, allow_external)
    except BaseException:
        view.close()
        raise
    try:
        source.index(h5py)
    except BaseException:
        source.close()
        raise
    return source


def _inflate_member(h5py, path: str, zf: zipfile.ZipFile, info: zipfile.ZipInfo, allow_external) -> _Source:
    check_inflation(info.file_size, info.compress_size, f"zip member {info.filename}", path, info.filename)
    fd, tmp = tempfile.mkstemp(suffix=".weights.h5")
    try:
        with os.fdopen(fd, "wb") as out, zf.open(info) as member:
            written = 0
            while chunk := member.read(1 << 20):
                written += len(chunk)
                if written > info.file_size:
                    raise FormatError(f"{_WEIGHTS_MEMBER} inflates past its declared {info.file_size} bytes",
                                      file=path, array=_WEIGHTS_MEMBER)
                out.write(chunk)
        view = FileView(tmp)
        try:
            h5 = _open_h5(h5py, path, tmp, _WEIGHTS_MEMBER)
        except BaseException:
            view.close()
            raise
    except FormatError as e:  # name the .keras file, not the temporary copy
        os.unlink(tmp)
        raise FormatError(e.message, file=path, array=_WEIGHTS_MEMBER, offset=e.offset, hint=e.hint) from None
    except PARSER_ERRORS as e:
        os.unlink(tmp)
        raise FormatError(f"cannot inflate {_WEIGHTS_MEMBER}: {type(e).__name__}: {e}", file=path,
                          array=_WEIGHTS_MEMBER) from None
    except BaseException:
        os.unlink(tmp)
        raise
    return _Source(path, h5, view, 0, view.size, cleanup=[lambda: os.path.exists(tmp) and os.unlink(tmp)],
                   allow_external=allow_external)


# ----------------------------------------------------------------------------- sniff / open


def sniff(path, head: bytes) -> bool:
    if head.startswith(HDF5_MAGIC):
        try:
            h5py = _h5py()
        except MissingDependencyError:
            return True  # no other reader takes HDF5: open() will say what to install
        try:
            with h5py.File(path, "r") as f:
                return _h5_kind(f) is not None
        except PARSER_ERRORS:
            return True  # damaged HDF5: let open() report where
    if head.startswith(_ZIP_MAGIC):
        if str(path).endswith(".keras"):
            return True
        first = head[30:30 + int.from_bytes(head[26:28], "little")]  # the first member's name
        if first.endswith(b"data.pkl"):
            return False  # torch.save writes its pickle first: no need to read the zip's directory
        try:
            with zipfile.ZipFile(path) as zf:
                names = set(zf.namelist())
        except PARSER_ERRORS:  # includes member names that are not UTF-8
            return False
        return "config.json" in names and (_WEIGHTS_MEMBER in names or "metadata.json" in names)
    return False


def open(path, config=None, allow_external: bool = False, **options) -> ArrayFile:
    """Open a Keras file. `config`: a model config (dict, config.json path or .keras path) used to
    name and order the arrays of a bare Keras 3 `.weights.h5` or Keras 2 weights-only file.
    allow_external: read HDF5 datasets whose bytes are in other files (external links, external
    raw storage, virtual datasets); refused by default."""
    path = os.fspath(path)
    with parser_errors(path, "Keras file"), _gc.paused():
        return _open(path, config, allow_external)


def _open(path: str, config, allow_external: bool) -> ArrayFile:
    with builtins.open(path, "rb") as fh:
        head = fh.read(8)
    if head.startswith(_ZIP_MAGIC):
        return _open_keras_zip(path, config, allow_external)
    if head.startswith(HDF5_MAGIC):
        source = _open_h5_path(path, allow_external)
        try:
            return _read_h5(source, _load_config_option(config, path), extra_meta={})
        except BaseException:
            source.close()
            raise
    raise FormatError("neither an HDF5 file (\\x89HDF) nor a .keras zip", file=path, offset=0,
                      hint="Keras files are .h5/.hdf5/.weights.h5 or .keras")


def _load_config_option(config, path):
    if config is None or isinstance(config, dict):
        return config
    cpath = os.fspath(config)
    try:
        if zipfile.is_zipfile(cpath):
            with zipfile.ZipFile(cpath) as zf:
                return json.loads(zf.read("config.json"))
        with builtins.open(cpath, "rb") as fh:
            return json.loads(fh.read())
    except (OSError, KeyError, ValueError) as e:
        raise FormatError(f"cannot read the model config given with config=: {e}", file=cpath) from None


def _open_keras_zip(path: str, config_option, allow_external: bool) -> ArrayFile:
    try:
        zf = zipfile.ZipFile(path)
    except zipfile.BadZipFile as e:
        raise FormatError(f"not a readable .keras zip: {e}", file=path, offset=0) from None
    with zf:
        names = zf.namelist()
        if _WEIGHTS_MEMBER not in names:
            raise FormatError(f"the .keras zip has no {_WEIGHTS_MEMBER} (members: {', '.join(names[:8])})",
                              file=path, array=_WEIGHTS_MEMBER, hint="was the model saved without weights?")
        meta = {"format": "keras3"}
        config = _zip_json(zf, path, "config.json")
        metadata = _zip_json(zf, path, "metadata.json") or {}
        if config_option is not None:
            config = _load_config_option(config_option, path)
        meta["metadata"] = metadata
        if metadata.get("keras_version"):
            meta["version"] = metadata["keras_version"]
        source = _open_h5_member(path, zf, zf.getinfo(_WEIGHTS_MEMBER), allow_external)
    try:
        return _read_h5(source, config, extra_meta=meta)
    except BaseException:
        source.close()
        raise


def _zip_json(zf: zipfile.ZipFile, path: str, member: str):
    if member not in zf.namelist():
        return None
    info = zf.getinfo(member)
    if info.file_size > 64 * 1024 * 1024:
        raise FormatError(f"{member} is implausibly large ({info.file_size} bytes)", file=path, array=member)
    with parser_errors(path, f"{member}", member):
        return json.loads(zf.read(member))


def _h5_kind(f) -> str | None:
    if "model_weights" in f:
        return "keras-h5"
    if "layer_names" in f.attrs or "layer_names0" in f.attrs:
        return "keras-h5-weights"
    if "layers" in f or ("vars" in f and "optimizer" in f):
        return "keras3-weights"
    return None


def _read_h5(source: _Source, config, extra_meta: dict) -> ArrayFile:
    f = source.root
    kind = _h5_kind(f)
    if kind is None:
        raise FormatError("HDF5 file without Keras structure (no model_weights group, no layer_names "
                          "attribute, no layers/ group)", file=source.path,
                          hint=f"top-level keys: {', '.join(list(f.keys())[:8]) or 'none'}")
    if kind.startswith("keras-h5"):
        arrays, layers, meta = _read_legacy(source, config, kind)
    else:
        arrays, layers, meta = _read_keras3(source, config)
        meta = {**meta, **extra_meta} if extra_meta else {**meta, "format": "keras3-weights"}
    return ArrayFile(source.path, NAME, arrays, meta=meta, layers=layers, closer=source.close)


# ----------------------------------------------------------------------------- Keras 2 / legacy HDF5

_OPT_COUNTER = re.compile(r"^iterations?(_\d+)?$")


def _strip_index(weight_name: str) -> str:
    """`conv2d_1/kernel:0` -> `conv2d_1/kernel` (the TF variable output index is not part of the name)."""
    return re.sub(r":\d+$", "", weight_name)


def _read_legacy(source: _Source, config, kind: str):
    f = source.root
    group = f["model_weights"] if kind == "keras-h5" else f
    meta = {"format": kind}
    for key in ("keras_version", "backend"):
        if key in f.attrs or key in group.attrs:
            meta["version" if key == "keras_version" else key] = _text(f.attrs.get(key, group.attrs.get(key)))
    if config is None and "model_config" in f.attrs:
        config = _parse_json_attr(f, "model_config", source.path)
    if "training_config" in f.attrs:
        meta["training_config"] = _parse_json_attr(f, "training_config", source.path)
    if config is not None:
        meta["config"] = config
    layer_names = _text_list(group.attrs, "layer_names") or []
    extra = [k for k in ("top_level_model_weights",) if k in group and k not in layer_names]
    layers = _config_layers(config) if config is not None else {}
    arrays: list[ArrayHandle] = []
    taken: set[str] = set()
    for layer_name in layer_names + extra:
        if layer_name not in group:
            raise FormatError(f"layer_names lists {layer_name!r} but the file has no such group",
                              file=source.path, array=layer_name, hint=f"looked in {group.name}")
        lgroup = group[layer_name]
        weight_names = _text_list(lgroup.attrs, "weight_names") or []
        if layer_name not in layers and (weight_names or layer_name in layer_names):
            layers[layer_name] = Layer(layer_name, "")
        for index, wn in enumerate(weight_names):
            if wn not in lgroup:
                raise FormatError(f"layer {layer_name!r} lists weight {wn!r} but the file has no such dataset",
                                  file=source.path, array=wn, hint=f"looked in {lgroup.name}")
            name = _strip_index(wn)
            if name in taken:
                name = f"{layer_name}/{name}"
            taken.add(name)
            owner = _owning_layer(layers, layer_name, name)
            layer = layers[owner]
            ds = lgroup[wn]
            var = name.rsplit("/", 1)[-1]
            cls = layer.type or None
            meta_a = {"layer": owner, "layer_type": cls, "index": index}
            if cls is None:  # weights-only file: guess from default names (lstm_cell, conv2d_1)
                cls = next((c for c in map(_class_from_key, [layer_name] + name.split("/")[:-1]) if c), None)
                meta_a["layout_guessed"] = True
            meta_a.update(_array_meta(var, cls, layer.params or None, len(ds.shape or ())))
            if "layout" not in meta_a:
                meta_a.pop("layout_guessed", None)
            arrays.append(source.handle(name, ds, meta_a))
            layer.arrays.append(name)
    arrays += _legacy_optimizer(source, f, taken)
    return arrays, layers, meta


def _owning_layer(layers: dict, top: str, weight_name: str) -> str:
    """The deepest configured layer a weight belongs to: a nested model's inner layer when the
    weight name mentions it (`inner_conv/kernel` inside `inner_block`), else the top-level layer."""
    owner = top
    parts = weight_name.split("/")[:-1]
    for part in parts:
        candidate = f"{owner}/{part}"
        if candidate in layers:
            owner = candidate
    return owner


def _parse_json_attr(f, key: str, path: str):
    try:
        return json.loads(_text(f.attrs[key]))
    except ValueError as e:
        raise FormatError(f"attribute {key} is not valid JSON: {e}", file=path, array=key) from None


def _legacy_optimizer(source: _Source, f, taken: set) -> list[ArrayHandle]:
    if "optimizer_weights" not in f:
        return []
    og = f["optimizer_weights"]
    weight_names = _text_list(og.attrs, "weight_names")
    if weight_names is None:  # no list: every dataset in the group, in HDF5 order
        weight_names = []
        og.visititems(lambda n, o: weight_names.append(n) if hasattr(o, "dtype") else None)
    out = []
    for index, wn in enumerate(weight_names):
        if wn not in og:
            raise FormatError(f"optimizer_weights lists {wn!r} but the file has no such dataset",
                              file=source.path, array=wn, hint=f"looked in {og.name}")
        name = "optimizer/" + _strip_index(wn)
        if name in taken:
            name = f"optimizer/{index}/{_strip_index(wn)}"
        taken.add(name)
        role = "counter" if _OPT_COUNTER.match(name.rsplit("/", 1)[-1]) else "optimizer"
        out.append(source.handle(name, og[wn], {"layer": "optimizer", "role": role, "index": index}))
    return out


# ----------------------------------------------------------------------------- Keras 3


def _read_keras3(source: _Source, config):
    f = source.root
    meta = {"format": "keras3-weights"}
    layers: dict[str, Layer] = {}
    if config is not None:
        meta["config"] = config
        layers = _config_layers(config)
    arrays: list[ArrayHandle] = []
    _walk_saveable(source, f, config, [], None, layers, arrays, is_root=True)
    if "optimizer" in f:
        arrays += _keras3_optimizer(source, f["optimizer"])
    return arrays, layers, meta


def _sorted_vars(group) -> list[str]:
    if "vars" not in group:
        return []
    keys = list(group["vars"].keys())
    return sorted(keys, key=lambda k: (0, int(k)) if k.isdigit() else (1, k))


def _group_layer_name(group, key: str) -> str:
    """The user's layer name saved beside the variables (vars/@name), else the HDF5 key."""
    if "vars" in group and "name" in group["vars"].attrs:
        return _text(group["vars"].attrs["name"])
    return key


def _walk_saveable(source, group, entry, names, owner, layers, arrays, *, is_root=False, cls=None):
    """One saved Keras 3 object: its own vars, then its sublayers (config order), then other
    attribute objects (an RNN's `cell`). That is Layer.weights order."""
    params = entry.get("config") if isinstance(entry, dict) and isinstance(entry.get("config"), dict) else None
    if cls is None:
        cls = entry.get("class_name") if isinstance(entry, dict) else None
    qualified = "/".join(names)
    if not is_root and owner is None:
        owner = qualified
        if owner not in layers:
            layers[owner] = Layer(owner, cls or "", params or {})
    var_keys = _sorted_vars(group)
    var_names = _k3_variable_names(cls, params, len(var_keys))
    owner_layer = layers.get(owner)
    for i, (key, var) in enumerate(zip(var_keys, var_names)):
        name = "/".join(names + [var if var else f"vars/{key}"])
        ds = group["vars"][key]
        if not hasattr(ds, "dtype"):
            continue
        ltype = owner_layer.type if owner_layer and owner_layer.type else cls
        lparams = owner_layer.params if owner_layer and owner_layer.params else params
        meta = {"layer": owner, "layer_type": ltype or None, "index": i,
                **(_array_meta(var, ltype, lparams, len(ds.shape or ())) if var else {"role": None})}
        arrays.append(source.handle(name, ds, meta))
        if owner_layer is not None:
            owner_layer.arrays.append(name)
    if "layers" in group:
        for key, sub_entry in _match_sublayers(group["layers"], entry, cls):
            sub = group["layers"][key]
            sub_name = _entry_name(sub_entry) if sub_entry else _group_layer_name(sub, key)
            sub_cls = sub_entry.get("class_name") if sub_entry else _class_from_key(key)
            _walk_saveable(source, sub, sub_entry, names + [sub_name], None, layers, arrays, cls=sub_cls)
    for key in group.keys():
        if key in ("vars", "layers") or (is_root and key == "optimizer") or not hasattr(group[key], "keys"):
            continue
        sub = group[key]
        sub_cls = _attribute_class(key, cls, params)
        sub_owner = owner if not is_root else None
        _walk_saveable(source, sub, None, names + [_group_layer_name(sub, key)], sub_owner, layers, arrays,
                       cls=sub_cls)


def _attribute_class(key: str, parent_cls: str | None, parent_params: dict | None) -> str | None:
    """The class of an object saved under an attribute name (LSTM.cell -> LSTMCell)."""
    if key == "cell" and parent_cls in _RNN_GATES:
        return parent_cls + "Cell"
    if key in ("forward_layer", "backward_layer", "layer") and parent_params and \
            isinstance(parent_params.get("layer"), dict):
        inner = parent_params["layer"].get("class_name")
        return inner
    return _class_from_key(key)


def _match_sublayers(layers_group, entry, cls) -> list[tuple[str, dict | None]]:
    """(HDF5 key, config entry) for each saved sublayer: config entries get their key by Keras 3's
    rule (snake_case class name, `_1`, `_2`... for repeats); keys without an entry follow."""
    _, entries = _layer_entries(entry) if isinstance(entry, dict) else (None, [])
    keys = list(layers_group.keys())
    out, used, seen = [], set(), {}
    for e in entries:
        if not isinstance(e, dict):
            continue
        if cls == "Sequential" and e.get("class_name") == "InputLayer":
            continue
        base = to_snake_case(e.get("class_name", ""))
        n = seen.get(base)
        seen[base] = 0 if n is None else n + 1
        key = base if n is None else f"{base}_{n + 1}"
        if key not in layers_group:  # fall back to the saved layer name
            key = next((k for k in keys if k not in used and
                        _group_layer_name(layers_group[k], k) == _entry_name(e)), None)
            if key is None:
                continue
        used.add(key)
        out.append((key, e))
    leftovers = sorted((k for k in keys if k not in used), key=lambda k: (
        re.sub(r"_\d+$", "", k), int(m.group(1)) if (m := re.search(r"_(\d+)$", k)) else -1))
    return out + [(k, None) for k in leftovers]


def _keras3_optimizer(source: _Source, group) -> list[ArrayHandle]:
    out = []
    opt_name = _group_layer_name(group, "optimizer")
    for i, key in enumerate(_sorted_vars(group)):
        ds = group["vars"][key]
        if not hasattr(ds, "dtype"):
            continue
        counter = i == 0 and ds.shape == () and ds.dtype.kind in "iu"
        meta = {"layer": "optimizer", "role": "counter" if counter else "optimizer", "index": i,
                "optimizer": opt_name}
        out.append(source.handle(f"optimizer/vars/{key}", ds, meta))
    return out
