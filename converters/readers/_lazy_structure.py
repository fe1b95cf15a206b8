"""Layers and per-array metadata worked out on first access, by a reader's reference walk.

The fast open paths (_onnx_fast, _caffe_fast) hand out arrays without roles, layouts or layers;
the first `.meta` / `.layers` runs the field-by-field walk once for all of them. After the file
was closed the walk reopens it, and refuses a file that changed on disk meanwhile.
"""
from __future__ import annotations

import os

from ..errors import FormatError, TruncatedError
from ._limits import parser_errors


class LazyStructure:
    """Subclasses name `what` (for errors) and implement `walk(check_unchanged)` -> (meta by
    array name, layers); `check_unchanged()` must be called before reopening a closed file."""

    what = "model"

    def __init__(self, path: str):
        self.path = path
        st = os.stat(path)
        self.stamp = (st.st_size, st.st_mtime_ns)
        self._meta: dict | None = None
        self._layers: dict = {}

    def meta_of(self, handle) -> dict:
        try:
            self._build()
        except TruncatedError as e:  # the file was cut short before the walk: say whose meta it was
            if e.array is None:
                e.array = handle.name
            raise
        return self._meta[handle.name]

    def layers(self) -> dict:
        self._build()
        return self._layers

    def _build(self) -> None:
        if self._meta is not None:
            return
        with parser_errors(self.path, self.what):
            meta, layers = self.walk(self._check_unchanged)
        self._meta, self._layers = meta, layers

    def _check_unchanged(self) -> None:
        st = os.stat(self.path)
        if (st.st_size, st.st_mtime_ns) != self.stamp:
            raise FormatError("the file changed on disk after it was opened", file=self.path,
                              hint="open it again to read its layers and array metadata")

    def walk(self, check_unchanged) -> tuple[dict, dict]:
        raise NotImplementedError
