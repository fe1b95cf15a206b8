"""Streaming `.safetensors`: the JSON header from the plan, then each tensor at its offset."""
from __future__ import annotations

import concurrent.futures
import json
import os

from ..dtypes import SAFETENSORS
from ..errors import ConvertersError
from .atomic import atomic_output
from .space import reserve
from .stream import little, nbytes, write_tensors

_SHA_PLACEHOLDER = "0" * 64


def stream_safetensors(entries, path, provenance: dict, force: bool = False, progress=None, fsync: bool = True) -> None:
    """Write tensors one at a time (entries: see writers.stream). Provenance values that are
    Futures (the source sha256, still being hashed) are written as placeholders of their final
    length and patched once the data is written."""
    header, offsets, offset = {}, [], 0
    for name, shape, dtype, *_ in entries:
        code = SAFETENSORS.code_of(little(dtype))
        if code is None:
            raise ConvertersError(f"safetensors cannot hold dtype {dtype}", array=name)
        n = nbytes(shape, dtype)
        header[name] = {"dtype": code, "shape": list(shape), "data_offsets": [offset, offset + n]}
        offsets.append(offset)
        offset += n
    pending = {k: v for k, v in provenance.items() if isinstance(v, concurrent.futures.Future)}
    header["__metadata__"] = {k: _SHA_PLACEHOLDER if k in pending else str(v) for k, v in provenance.items()}
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    start = 8 + len(blob)
    with atomic_output(path, force, fsync) as tmp:
        fd = os.open(tmp, os.O_RDWR)
        try:
            reserve(fd, start + offset, path)
            os.pwrite(fd, len(blob).to_bytes(8, "little") + blob, 0)
            write_tensors(fd, entries, [start + o for o in offsets], progress=progress,
                          core_busy=bool(pending))  # the source hash, still running
            for key, future in pending.items():
                digest = future.result()
                if len(digest) != len(_SHA_PLACEHOLDER):
                    raise ConvertersError(f"provenance {key} has an unexpected length", file=path)
                where = blob.index(f'"{key}":"{_SHA_PLACEHOLDER}"'.encode()) + len(key) + 4
                os.pwrite(fd, digest.encode(), 8 + where)
        finally:
            os.close(fd)
