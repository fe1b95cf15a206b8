"""How much memory a torch.save file may make torch.load allocate, checked before it runs.

torch.load trusts sizes: a zip record's declared (inflated) size is allocated before inflating it,
and a storage's element count from the pickle is allocated before its bytes are read. Both are
bounded here by what the file can hold, without unpickling anything (pickletools only parses):

* zip: every member lies inside the real file; a stored member holds exactly its size; a deflated
  one claims at most 1032:1 (`_limits.check_inflation`: deflate's own ceiling, so compressible data,
  zeros included, passes); every storage record is exactly the size the pickle declares for it;
  data.pkl and the small records torch reads are capped.
* legacy (pre-1.6): the storages the pickle declares fit in the bytes after it.
"""
from __future__ import annotations

import os
import pickletools
import warnings
import zipfile

from ..errors import FormatError, TruncatedError, UnsupportedError
from ._limits import check_inflation

MAX_PICKLE = 1 << 30     # data.pkl: names, shapes, plain values; weights live in the records
MAX_SMALL_RECORD = 1 << 20  # the metadata records below hold a few bytes each
_METADATA_RECORDS = ("version", ".data/version", "byteorder", ".format_version", ".storage_alignment",
                     ".data/serialization_id")  # what torch.load reads besides data.pkl and the storages
_MARK = object()


def _itemsize(torch, storage_type: str, path) -> int:
    """Bytes per element of a storage class named in the pickle ('torch FloatStorage')."""
    module, _, name = storage_type.replace(".", " ").rpartition(" ")
    if name == "UntypedStorage" and module in ("torch", "torch storage"):
        return 1
    cls = getattr(torch, name, None) if module == "torch" and name.endswith("Storage") else None
    with warnings.catch_warnings():  # the legacy storage classes warn that TypedStorage is deprecated
        warnings.simplefilter("ignore")
        dtype = getattr(cls, "dtype", None)
    if dtype is None:
        raise FormatError(f"the pickle names storage type {storage_type!r}, which torch.load does not read",
                          file=path, hint="not a file written by torch.save")
    return torch._utils._element_size(dtype)


def declared_storages(pickle_bytes, torch, path) -> dict:
    """{storage key: nbytes} from the persistent ids of one pickle, first declaration per key (as
    torch.load keeps it). `pickle_bytes`: bytes or a file positioned at the pickle (left after it)."""
    stack, memo, out = [], {}, {}
    for op, arg, _ in pickletools.genops(pickle_bytes):
        name = op.name
        if name == "MARK":
            stack.append(_MARK)
        elif name in ("GET", "BINGET", "LONG_BINGET"):
            stack.append(memo.get(arg))
        elif name in ("PUT", "BINPUT", "LONG_BINPUT", "MEMOIZE"):
            memo[len(memo) if arg is None else arg] = stack[-1] if stack else None
        elif name == "STACK_GLOBAL":
            module, qualname = _pop(stack, 2)
            stack.append(f"{module} {qualname}")
        elif name == "TUPLE":
            stack.append(tuple(_pop_to_mark(stack)))
        elif name in ("TUPLE1", "TUPLE2", "TUPLE3"):
            stack.append(tuple(_pop(stack, int(name[-1]))))
        elif name == "BINPERSID":
            _record(_pop(stack, 1)[0], out, torch, path)
            stack.append(None)
        elif not op.stack_before and len(op.stack_after) == 1 and arg is not None:
            stack.append(arg)  # ints, strings, bytes, floats; GLOBAL's 'module name'
        else:
            _generic(op, stack)
    return out


def _record(pid, out: dict, torch, path) -> None:
    """('storage', type, key, location, numel[, view]) -> out[key] = nbytes."""
    if not (isinstance(pid, tuple) and len(pid) in (5, 6) and pid[0] in ("storage", b"storage")):
        return
    _, storage_type, key, _, numel = pid[:5]
    if not isinstance(storage_type, str) or not isinstance(key, (str, bytes)) or not isinstance(numel, int) \
            or numel < 0:
        raise FormatError("a storage reference in the pickle is malformed", file=path,
                          hint="the file is corrupt or not written by torch.save")
    key = key.decode("ascii", "replace") if isinstance(key, bytes) else key
    out.setdefault(key, numel * _itemsize(torch, storage_type, path))


def _pop(stack: list, n: int) -> list:
    if n > len(stack) or any(x is _MARK for x in stack[len(stack) - n:]):
        raise ValueError("pickle stack underflow")
    items = stack[len(stack) - n:]
    del stack[len(stack) - n:]
    return items


def _pop_to_mark(stack: list) -> list:
    for i in range(len(stack) - 1, -1, -1):
        if stack[i] is _MARK:
            items = stack[i + 1:]
            del stack[i:]
            return items
    raise ValueError("pickle MARK missing")


def _generic(op, stack: list) -> None:
    """Any other opcode: its documented stack effect, values unknown."""
    before = op.stack_before
    if pickletools.markobject in before:
        _pop_to_mark(stack)
        _pop(stack, before.index(pickletools.markobject))
    else:
        _pop(stack, len(before))
    stack.extend([None] * len(op.stack_after))


# --------------------------------------------------------------------------- zip

def check_members(zf: zipfile.ZipFile, path) -> zipfile.ZipInfo:
    """Every member inside the file and within deflate's ratio; the data.pkl member (size-capped)."""
    size = os.path.getsize(path)
    infos = zf.infolist()
    for info in infos:
        _check_member(info, size, path)
    pkl = next(i for i in infos if i.filename == "data.pkl" or i.filename.endswith("/data.pkl"))
    if pkl.file_size > MAX_PICKLE:
        raise FormatError(f"data.pkl claims {pkl.file_size} bytes (more than {MAX_PICKLE >> 20} MiB)", file=path,
                          hint="a decompression bomb or a corrupt size field")
    return pkl


def check_zip(zf: zipfile.ZipFile, path, torch, declared: dict | None = None) -> bool:
    """Refuse size claims torch.load would trust; True when every storage record is stored
    uncompressed (only then can the file be memory-mapped: mmap reads records in place).
    `declared` ({key: nbytes}): the storages, when the pickle was already read (_torch_pickle);
    otherwise they are taken from the pickle with pickletools."""
    pkl = check_members(zf, path)
    prefix = pkl.filename[:-len("data.pkl")]
    if declared is None:
        try:
            declared = declared_storages(zf.read(pkl), torch, path)
        except (ValueError, EOFError, IndexError) as e:  # pickletools' answers to a damaged pickle
            raise FormatError(f"data.pkl is not a well-formed pickle ({e})", file=path,
                              hint="the file is truncated or corrupt") from None
    by_name = {i.filename: i for i in zf.infolist()}
    for key, nbytes in declared.items():
        info = by_name.get(f"{prefix}data/{key}")
        if info is None:
            raise FormatError(f"the pickle refers to storage {key!r} and the archive has no {prefix}data/{key}",
                              file=path, hint="the file is truncated or corrupt")
        if info.file_size != nbytes:
            raise FormatError(f"record {info.filename} holds {info.file_size} bytes, the pickle declares {nbytes}",
                              file=path, hint="a corrupt size field, or records from another file")
    for name in _METADATA_RECORDS:
        info = by_name.get(prefix + name)
        if info is not None and info.file_size > MAX_SMALL_RECORD:
            raise FormatError(f"record {info.filename} claims {info.file_size} bytes", file=path,
                              hint="torch's metadata records hold a few bytes; a corrupt size field or a bomb")
    return all(by_name[f"{prefix}data/{k}"].compress_type == zipfile.ZIP_STORED for k in declared)


def _check_member(info: zipfile.ZipInfo, size: int, path) -> None:
    name = info.filename
    if info.header_offset + info.compress_size > size:
        raise TruncatedError(f"zip member {name} claims {info.compress_size} stored bytes at offset "
                          f"{info.header_offset}, past the end of the {size}-byte file", file=path,
                          hint="the file is truncated or corrupt")
    if info.compress_type == zipfile.ZIP_STORED:
        if info.file_size != info.compress_size:
            raise FormatError(f"zip member {name} is stored ({info.compress_size} bytes) but claims "
                              f"{info.file_size}", file=path, hint="a corrupt size field")
    elif info.compress_type == zipfile.ZIP_DEFLATED:
        check_inflation(info.file_size, info.compress_size, f"zip member {name}", path)
    else:
        raise UnsupportedError(f"zip member {name} uses compression method {info.compress_type}; torch.load reads "
                               "stored or deflated members only", file=path,
                               hint="re-zip it without compression, or with deflate")


# --------------------------------------------------------------------------- legacy

def check_legacy(path, torch, magic: bytes) -> None:
    """Pre-1.6 files: magic, protocol, sys_info and the main pickle, the storage keys, then each
    storage as an 8-byte count and its bytes; the declared storages must fit in what follows."""
    with open(path, "rb") as fh:
        if not fh.read(len(magic) + 2).endswith(magic):
            return  # not torch's legacy layout; torch.load says what it is
        fh.seek(0)
        try:
            for _ in range(3):  # magic number, protocol version, sys_info
                for _ in pickletools.genops(fh):
                    pass
            declared = declared_storages(fh, torch, path)
            for _ in pickletools.genops(fh):  # the list of storage keys
                pass
        except (ValueError, EOFError, IndexError) as e:
            raise TruncatedError(f"not a well-formed torch pickle ({e})", file=path,
                                 hint="the file is truncated or corrupt") from None
        left = os.path.getsize(path) - fh.tell()
    need = sum(declared.values()) + 8 * len(declared)
    if need > left:
        raise TruncatedError(f"the pickle declares {len(declared)} storages of {need} bytes, the file holds {left} "
                          "after it", file=path, hint="the file is truncated, or a corrupt size field")
