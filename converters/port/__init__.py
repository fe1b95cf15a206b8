"""`convert port`: a readable PyTorch module, a mapping table and weights from a source model's graph.

    import converters
    result = converters.port("det1.caffemodel", "pnet_port", verify=True)
    print(result.summary())

Pieces: frontends/ (source -> graph.Graph), ops/ (canonical op -> code), codegen.py (model.py),
table.py (the mapping table), run.py (the atomic write + normal conversion + verify), cli.py.
The package itself is callable (`converters.port(...)` is `converters.port.run.port`), since
importing it makes `converters.port` this module rather than the function.
"""
from __future__ import annotations

import sys
import types


def port(*args, **kwargs):
    """converters.port.run.port: port a source model into a folder (docs/port.md)."""
    from .run import port as _port

    return _port(*args, **kwargs)


class _CallableModule(types.ModuleType):
    def __call__(self, *args, **kwargs):
        return port(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
