"""Open any weight file as a name -> array mapping for partial loads and diffs.

The readers do it all: a PyTorch checkpoint is read by the torch reader (weights_only, the state
dict found by its rule), so there is no second loader here.
"""
from __future__ import annotations

from pathlib import Path

from ..errors import FormatError


def open_weights(path, framework: str | None = None):
    """An ArrayFile (name -> ArrayHandle) for `path`; a missing file is a FormatError naming it."""
    from .. import read

    path = Path(path)
    if not path.exists():
        raise FormatError("no such file or directory", file=path)
    return read(path, framework)
