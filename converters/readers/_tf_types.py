"""TensorFlow's DataType enum (tensorflow/core/framework/types.proto) as numpy dtypes.

Only the numeric types TF writes into checkpoints and constants are listed; *_REF variants
(enum + 100, seen in old graphs) map to their base type. Quantized types (qint8, ...) are plain
integers on disk and are exposed as such.
"""
from __future__ import annotations

from ..dtypes import TENSORFLOW, CodeTable

_NAMES = {1: "float32", 2: "float64", 3: "int32", 4: "uint8", 5: "int16", 6: "int8", 7: "string",
          8: "complex64", 9: "int64", 10: "bool", 11: "qint8", 12: "quint8", 13: "qint32", 14: "bfloat16",
          15: "qint16", 16: "quint16", 17: "uint16", 18: "complex128", 19: "float16", 20: "resource",
          21: "variant", 22: "uint32", 23: "uint64", 24: "float8_e5m2", 25: "float8_e4m3fn"}

DTYPES = CodeTable({**TENSORFLOW.names, **{k + 100: v for k, v in TENSORFLOW.names.items()}})

DT_STRING = 7


def dtype_name(code: int) -> str:
    base = code - 100 if code > 100 else code
    name = _NAMES.get(base, f"DataType {code}")
    return name + "_ref" if code > 100 else name


def tensor_shape(buf, span, file, name, at, allow_unknown: bool = False):
    """TensorShapeProto (dim=2 {size=1, name=2}, unknown_rank=3) as a tuple of sizes.

    Stored tensors must have a known shape; attribute shapes (allow_unknown) may hold -1 dims or
    be of unknown rank (returned as None).
    """
    from ..errors import FormatError
    from ._protowire import LEN, VARINT, iter_fields

    dims = []
    for f, w, v, off in iter_fields(buf, span[0], span[0] + span[1], file):
        if f == 2 and w == LEN:
            size = 0
            for f2, w2, v2, _o in iter_fields(buf, v[0], v[0] + v[1], file):
                if f2 == 1 and w2 == VARINT:
                    size = v2 - (1 << 64) if v2 >= 1 << 63 else v2
            if size < 0 and not allow_unknown:
                raise FormatError(f"dimension {len(dims)} is {size} (unknown) in a stored tensor", file=file,
                                  array=name, offset=off)
            dims.append(size)
        elif f == 3 and w == VARINT and v:
            if allow_unknown:
                return None
            raise FormatError("stored tensor has unknown rank", file=file, array=name, offset=off)
    return tuple(dims)
