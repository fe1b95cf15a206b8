"""What an output records about where it came from: tool, source files and their sha256, mapping.

Hashing a multi-GB source costs about a second per GB, so it runs in a background thread while
the conversion reads and writes (hashlib releases the GIL on large blocks); writers ask for the
digest only when they need it. At ~1.1 GB/s (sha256 on this project's 2-core test machine) the
hash takes about twice as long as copying the file in the page cache, so it is the floor of a
conversion's time; `hash_source=False` records an empty `source_sha256` and, instead, a
`source_fingerprint` (name, size and mtime_ns of each source file: one stat per file), on which
`convert batch` resumes, a weaker check than the hash (it says so in its summary).
"""
from __future__ import annotations

import concurrent.futures
import datetime
import glob
import hashlib
import json
import os

from . import __version__

_POOL = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="converters-sha256")


def source_files(path) -> list[str]:
    """The files a source consists of: the file itself, a TF checkpoint's index and shards, or every
    file below a directory (SavedModel), in a stable order."""
    path = os.fspath(path)
    if os.path.isfile(path):
        prefix = path[:-len(".index")] if path.endswith(".index") else None
        if prefix and glob.glob(glob.escape(prefix) + ".data-*"):
            return [path, *sorted(glob.glob(glob.escape(prefix) + ".data-*"))]
        return [path]
    if os.path.isfile(path + ".index"):
        return [path + ".index", *sorted(glob.glob(glob.escape(path) + ".data-*"))]
    if os.path.isdir(path):
        return sorted(os.path.join(d, f) for d, _, fs in os.walk(path) for f in fs)
    return []


def sha256_files(paths, chunk=1 << 18) -> str:
    """sha256 of one file, or of the files' bytes in order when there are several (read into one
    reused buffer: no new memory per block)."""
    h = hashlib.sha256()
    buf = bytearray(chunk)
    view = memoryview(buf)
    for p in paths:
        with open(p, "rb", buffering=0) as fh:
            while n := fh.readinto(buf):
                h.update(view[:n])
    return h.hexdigest()


def fingerprint(source_path) -> str:
    """The source files' names (relative to the source), sizes and mtime_ns as compact JSON: what
    tells a changed source without reading it, when its sha256 is not recorded. Misses only a
    rewrite to the same size that also restores the mtime. '' when the source has no files."""
    path = os.fspath(source_path)
    root = path if os.path.isdir(path) else os.path.dirname(path)
    rows = []
    for f in source_files(path):
        st = os.stat(f)
        rows.append([os.path.relpath(f, root), st.st_size, st.st_mtime_ns])
    return json.dumps(rows, separators=(",", ":")) if rows else ""


def record(source_path, framework, mapping, *, background: bool = False, hash_source: bool = True) -> dict:
    """Where an output made from `source_path` with `mapping` came from; built here only, for
    converted files and parity reference files alike. background=True: `source_sha256` is a Future
    until `resolve()` is called; hash_source=False: it is empty and `source_fingerprint` is recorded
    (taken before the conversion reads the source, so a change during it shows too)."""
    files = source_files(source_path) if hash_source else []
    digest = (_POOL.submit(sha256_files, files) if background else sha256_files(files)) if files else ""
    out = {
        "tool": f"converters {__version__}",
        "source_file": os.path.basename(os.path.normpath(os.fspath(source_path))),
        "source_sha256": digest,
        "source_framework": framework,
        "mapping": os.path.basename(mapping.path),
        "mapping_sha256": mapping.sha256,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    if not hash_source:
        out["source_fingerprint"] = fingerprint(source_path)
    return out


def start(arrays, mapping, hash_source: bool = True) -> dict:
    """Provenance with the source hash still being computed in the background."""
    return record(arrays.path, arrays.framework, mapping, background=True, hash_source=hash_source)


def resolve(provenance: dict) -> dict:
    return {k: (v.result() if isinstance(v, concurrent.futures.Future) else v) for k, v in provenance.items()}
