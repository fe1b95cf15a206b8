"""What a hostile or corrupt file may make a reader do: one place that turns a parser library's
failures into a FormatError, and the bound on how much a compressed byte may expand into.

Parsers we do not write (h5py, zipfile/zlib, torch.load's unpickler, json) raise whatever their
internals raise on damaged input: OSError, RuntimeError and KeyError from h5py, struct.error,
UnicodeDecodeError, RecursionError, MemoryError from a length they trusted. Each reader runs its
parser calls inside `parser_errors(...)`, so the caller sees one ConvertersError naming the file.
"""
from __future__ import annotations

import contextlib
import struct
import zipfile
import zlib

from ..arrays import MAX_ARRAY_BYTES, element_count  # noqa: F401 - the array-size rule, for the readers
from ..errors import ConvertersError, FormatError

PARSER_ERRORS = (OSError, RuntimeError, KeyError, ValueError, TypeError, IndexError, AttributeError,
                 OverflowError, EOFError, UnicodeError, RecursionError, MemoryError, AssertionError,
                 struct.error, zlib.error, zipfile.BadZipFile, zipfile.LargeZipFile, NotImplementedError, SystemError)
"""What third-party parsers raise on damaged input (h5py's errors subclass these)."""

DEFLATE_MAX_RATIO = 1032
"""Decompressed bytes allowed per stored byte (plus INFLATE_SLACK): deflate's own ceiling (one
258-byte match per 2 bits), which zeros nearly reach (np.savez_compressed of 8 MiB of zeros is
~1030:1), so no real zip member or gzip'd HDF5 chunk is refused; a size claim past it is a forged
header (a zip bomb's), refused before anything is inflated or allocated."""
INFLATE_SLACK = 4 << 20


@contextlib.contextmanager
def parser_errors(path, what: str, array=None, hint: str = "the file is truncated or corrupt"):
    """Run parser calls; their failures become one FormatError naming `path` and `what`."""
    try:
        yield
    except ConvertersError as e:
        if e.file is None and path is not None:  # raised below the reader (an ArrayHandle): name the file
            e.file = str(path)
        raise
    except MemoryError:
        raise FormatError(f"{what}: out of memory (a corrupt size field, or data larger than memory)",
                          file=path, array=array, hint=hint) from None
    except PARSER_ERRORS as e:
        text = str(e).replace("\n", " ")[:300]
        raise FormatError(f"{what} is unreadable ({type(e).__name__}: {text})", file=path, array=array,
                          hint=hint) from None


def check_inflation(declared: int, stored: int, what: str, path, array=None) -> None:
    """Refuse `declared` decompressed bytes from `stored` compressed ones past deflate's ratio
    bound: the one check every zip-based reader (torch, npz, .keras) and HDF5 dataset goes through."""
    limit = stored * DEFLATE_MAX_RATIO + INFLATE_SLACK
    if declared < 0 or declared > limit:
        raise FormatError(f"{what} claims {declared} bytes from {stored} stored bytes (deflate expands at most "
                          f"{DEFLATE_MAX_RATIO}:1; + {INFLATE_SLACK >> 20} MiB)", file=path, array=array,
                          hint="a decompression bomb or a corrupt size field")
