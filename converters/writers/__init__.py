"""Writing converted tensors: atomic outputs, streamed `.safetensors` and `.pth`.

The names are imported on first use: `writers.pth` needs torch (seconds to import), and callers
such as `convert batch` only want `atomic` (cleaning up partial files) in processes that never
write a `.pth`."""
from __future__ import annotations

import importlib

_WHERE = {"atomic_output": "atomic", "output_kind": "atomic", "remove_stale_partials": "atomic",
          "save_pth": "pth", "stream_pth": "pth", "stream_safetensors": "safetensors"}

__all__ = sorted(_WHERE)


def __getattr__(name):
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value
