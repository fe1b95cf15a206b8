"""Every dtype the toolkit moves, named once, and each format's codes for it.

Numpy's dtype names are the common language: each format's table below maps its own codes to
those names, so the readers, the writer and the torch side agree on what a code means (float8
included) instead of keeping tables of their own. bfloat16 and the float8 types come from
ml_dtypes as real numpy dtypes; ml_dtypes is imported on the first lookup of one of them, not at
`import converters`: it costs about half a second and most conversions never meet such an array.
"""
from __future__ import annotations

import functools
from collections.abc import Mapping

import numpy as np

ML_DTYPES = frozenset({"bfloat16", "float8_e4m3fn", "float8_e4m3fnuz", "float8_e5m2", "float8_e5m2fnuz",
                       "float8_e8m0fnu"})
"""Names numpy lacks and ml_dtypes supplies (each stored as raw bits of its width)."""


@functools.cache
def np_dtype(name: str) -> np.dtype | None:
    """The numpy dtype called `name`, little-endian; None when ml_dtypes is missing or lacks it."""
    if name in ML_DTYPES:
        try:
            import ml_dtypes
        except ImportError:  # pragma: no cover - ml_dtypes is a declared dependency
            return None
        found = getattr(ml_dtypes, name, None)
        return np.dtype(found) if found is not None else None
    dtype = np.dtype(name)
    return dtype.newbyteorder("<") if dtype.kind in "iufc" and dtype.itemsize > 1 else dtype


def bfloat16() -> np.dtype | None:
    return np_dtype("bfloat16")


class CodeTable(Mapping):
    """A format's code -> numpy dtype, resolved on lookup (so ml_dtypes loads only when needed).
    Codes whose dtype this installation cannot make are absent."""

    def __init__(self, names: dict):
        self.names = dict(names)

    def __getitem__(self, code) -> np.dtype:
        try:
            dtype = np_dtype(self.names[code])
        except TypeError:  # an unhashable code from a corrupt file
            raise KeyError(code) from None
        if dtype is None:
            raise KeyError(code)
        return dtype

    def __contains__(self, code) -> bool:
        try:
            return code in self.names and np_dtype(self.names[code]) is not None
        except TypeError:
            return False

    def __iter__(self):
        return (code for code in self.names if code in self)

    def __len__(self) -> int:
        return sum(1 for _ in self)

    def code_of(self, dtype):
        """The code for numpy `dtype` (byte order included), or None."""
        dtype = np.dtype(dtype)
        for code, name in self.names.items():
            if name == dtype.name and np_dtype(name) == dtype:
                return code
        return None


# safetensors header "dtype" strings (the format's README)
SAFETENSORS = CodeTable({
    "F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16", "F8_E4M3": "float8_e4m3fn",
    "F8_E5M2": "float8_e5m2", "F8_E4M3FNUZ": "float8_e4m3fnuz", "F8_E5M2FNUZ": "float8_e5m2fnuz",
    "C64": "complex64", "I64": "int64", "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8",
    "U16": "uint16", "U32": "uint32", "U64": "uint64", "BOOL": "bool"})

# TensorFlow DataType (tensorflow/core/framework/types.proto): the numeric types; quantized types are
# plain integers on disk. Strings, resources and variants are not arrays of numbers and are absent.
TENSORFLOW = CodeTable({
    1: "float32", 2: "float64", 3: "int32", 4: "uint8", 5: "int16", 6: "int8", 8: "complex64", 9: "int64",
    10: "bool", 11: "int8", 12: "uint8", 13: "int32", 14: "bfloat16", 15: "int16", 16: "uint16",
    17: "uint16", 18: "complex128", 19: "float16", 22: "uint32", 23: "uint64", 24: "float8_e5m2",
    25: "float8_e4m3fn"})

# ONNX TensorProto.DataType (onnx/onnx.proto); STRING (8) is an object array of bytes/str.
# Packed sub-byte types (int4, float4, ...) have no one-element-per-item numpy form and are absent.
ONNX = CodeTable({
    1: "float32", 2: "uint8", 3: "int8", 4: "uint16", 5: "int16", 6: "int32", 7: "int64", 8: "object",
    9: "bool", 10: "float16", 11: "float64", 12: "uint32", 13: "uint64", 14: "complex64", 15: "complex128",
    16: "bfloat16", 17: "float8_e4m3fn", 18: "float8_e4m3fnuz", 19: "float8_e5m2", 20: "float8_e5m2fnuz",
    24: "float8_e8m0fnu"})

# mshadow TypeFlag (mshadow/base.h); 8-11 exist from mxnet 1.9's headers on
MXNET = CodeTable({
    0: "float32", 1: "float64", 2: "float16", 3: "uint8", 4: "int32", 5: "int8", 6: "int64", 7: "bool",
    8: "int16", 9: "uint16", 10: "uint32", 11: "uint64", 12: "bfloat16"})

# torch dtype names (`str(torch.float32)` without "torch.") that have a numpy equivalent
TORCH = CodeTable({n: n for n in (
    "float64", "float32", "float16", "bfloat16", "float8_e4m3fn", "float8_e4m3fnuz", "float8_e5m2",
    "float8_e5m2fnuz", "float8_e8m0fnu", "complex64", "complex128", "int64", "int32", "int16", "int8",
    "uint8", "uint16", "uint32", "uint64", "bool")})


def of_torch(torch_dtype) -> np.dtype | None:
    """numpy dtype of a torch dtype, or None."""
    return TORCH.get(str(torch_dtype).removeprefix("torch."))
