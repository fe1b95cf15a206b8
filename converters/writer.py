"""Writing converted tensors: into a module, to `.pth`, or streamed to `.safetensors`.

Files appear whole or not at all: bytes go to a temporary file beside the output, which is
renamed over the output only after it was completely written and flushed. A run killed mid-write
(kill -9, SIGTERM) leaves `.<name>.<pid>.<random>.partial`; the next write of the same output
removes partials whose process is gone. Outputs get 0666 minus the umask, or, with --force, the
mode of the file they replace; any existing path, a dangling symlink included, needs --force.
"""
from __future__ import annotations

import concurrent.futures
import contextlib
import json
import os
import stat
import tempfile
from collections import OrderedDict

import numpy as np
import torch

from .arrays import c_contiguous
from .errors import ConvertersError, OutputExistsError
from .dtypes import SAFETENSORS

_SHA_PLACEHOLDER = "0" * 64


@contextlib.contextmanager
def atomic_output(path, force: bool = False):
    """Yield a temporary path; on success it replaces `path`, on any failure it is removed.

    The temporary file is `.<name>.<pid>.<random>.partial` beside the output; partials of the same
    output left by a process that no longer runs (kill -9, SIGTERM, power loss) are removed first.
    The output gets the mode of the file it replaces, or 0666 minus the umask when new.
    """
    path = os.fspath(path)
    if os.path.lexists(path) and not force:  # lexists: a dangling symlink is an existing path too
        raise OutputExistsError("output exists", file=path, hint="pass --force to overwrite it")
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise ConvertersError("output directory does not exist", file=directory)
    remove_stale_partials(path)
    mode = _output_mode(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.{os.getpid()}.", suffix=".partial", dir=directory)
    os.close(fd)
    try:
        yield tmp
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def remove_stale_partials(path) -> list[str]:
    """Delete `.<name>.<pid>.*.partial` files beside `path` whose writing process is gone."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    prefix = f".{os.path.basename(path)}."
    removed = []
    try:
        names = os.listdir(directory)
    except OSError:
        return removed
    for name in names:
        if not (name.startswith(prefix) and name.endswith(".partial")):
            continue
        pid = name[len(prefix):].split(".", 1)[0]
        if not pid.isdigit() or _process_alive(int(pid)):
            continue
        with contextlib.suppress(OSError):
            os.unlink(os.path.join(directory, name))
            removed.append(name)
    return removed


def _process_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True  # alive under another user (or not a pid we can judge): leave it
    return True


def _output_mode(path) -> int:
    try:
        return stat.S_IMODE(os.stat(path).st_mode)  # --force keeps the replaced file's mode
    except OSError:
        umask = os.umask(0o22)
        os.umask(umask)
        return 0o666 & ~umask


def output_kind(path) -> str:
    ext = os.path.splitext(os.fspath(path))[1].lower()
    if ext in (".pth", ".pt", ".bin", ".ckpt"):
        return "pth"
    if ext == ".safetensors":
        return "safetensors"
    raise ConvertersError(f"cannot tell the output format from {ext or 'no extension'!r}", file=path,
                          hint="use .pth/.pt or .safetensors")


def save_pth(state_dict: dict, path, provenance: dict, force: bool = False, metadata=None) -> None:
    """torch.save of a plain state dict; provenance rides in `_metadata[''].converters`, which
    load_state_dict ignores and torch.load(weights_only=True) reads."""
    sd = OrderedDict(state_dict)
    meta = OrderedDict((k, dict(v)) for k, v in (metadata or {}).items())
    meta.setdefault("", {})["converters"] = dict(provenance)
    sd._metadata = meta
    with atomic_output(path, force) as tmp:
        torch.save(sd, tmp)


def stream_safetensors(entries, path, provenance: dict, force: bool = False, progress=None) -> None:
    """Write tensors one at a time: entries = [(name, shape, np_dtype, produce)], produce() -> ndarray.

    The header is built from shapes and dtypes known before any data is read, so only one tensor
    is in memory at a time.
    """
    header, offset = {}, 0
    for name, shape, dtype, _ in entries:
        dtype = np.dtype(dtype)
        code = SAFETENSORS.code_of(dtype)
        if code is None:
            raise ConvertersError(f"safetensors cannot hold dtype {dtype}", array=name)
        n = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        header[name] = {"dtype": code, "shape": list(shape), "data_offsets": [offset, offset + n]}
        offset += n
    # values still being computed (the source sha256, hashed in a background thread) are written as
    # placeholders of their final length and patched in once the data is written
    pending = {k: v for k, v in provenance.items() if isinstance(v, concurrent.futures.Future)}
    header["__metadata__"] = {k: _SHA_PLACEHOLDER if k in pending else str(v) for k, v in provenance.items()}
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    with atomic_output(path, force) as tmp, open(tmp, "wb") as fh:
        fh.write(len(blob).to_bytes(8, "little"))
        fh.write(blob)
        for name, shape, dtype, produce in entries:
            arr = c_contiguous(produce())
            if arr.shape != tuple(shape) or arr.dtype != np.dtype(dtype):
                raise ConvertersError(f"produced {arr.dtype}{list(arr.shape)}, planned {np.dtype(dtype)}{list(shape)}",
                                      array=name)
            fh.write(arr.astype(arr.dtype.newbyteorder("<"), copy=False).tobytes() if arr.dtype.byteorder == ">"
                     else memoryview(arr.reshape(-1).view(np.uint8)))
            del arr
            if progress is not None:
                progress.update(1)
        for key, future in pending.items():
            digest = future.result()
            where = blob.index(f'"{key}":"{_SHA_PLACEHOLDER}"'.encode()) + len(key) + 4
            if len(digest) != len(_SHA_PLACEHOLDER):
                raise ConvertersError(f"provenance {key} has an unexpected length", file=path)
            fh.seek(8 + where)
            fh.write(digest.encode())
