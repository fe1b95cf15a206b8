"""converters/dtypes.py against each framework's own dtype table, and ml_dtypes stays lazy."""
import subprocess
import sys

import numpy as np
import torch

from converters import dtypes


def test_onnx_codes_match_the_onnx_package():
    from onnx import helper

    for code, name in dtypes.ONNX.names.items():
        assert np.dtype(helper.tensor_dtype_to_np_dtype(code)) == dtypes.ONNX[code], (code, name)


def test_tensorflow_codes_match_tensorflow():
    import tensorflow as tf
    quantized = {11, 12, 13, 15, 16}  # TF's numpy forms are structured; on disk they are plain integers
    for code, name in dtypes.TENSORFLOW.names.items():
        if code not in quantized:
            assert np.dtype(tf.dtypes.as_dtype(code).as_numpy_dtype) == dtypes.TENSORFLOW[code], (code, name)


def test_safetensors_codes_match_the_safetensors_package():
    from safetensors.torch import _TYPES

    for code, name in dtypes.SAFETENSORS.names.items():
        assert str(_TYPES[code]).removeprefix("torch.") == name, code


def test_torch_dtypes_round_trip_through_numpy():
    for name in dtypes.TORCH.names:
        tdt = getattr(torch, name)
        assert dtypes.of_torch(tdt) == dtypes.np_dtype(name)
        if name not in dtypes.ML_DTYPES and not name.startswith("uint") or name == "uint8":
            assert torch.empty(0, dtype=tdt).numpy().dtype == dtypes.of_torch(tdt), name


def test_code_of_is_exact_about_byte_order():
    assert dtypes.SAFETENSORS.code_of(np.float32) == "F32"
    assert dtypes.SAFETENSORS.code_of(dtypes.bfloat16()) == "BF16"
    assert dtypes.SAFETENSORS.code_of(np.dtype(">f4")) is None
    assert "nope" not in dtypes.SAFETENSORS and [1] not in dtypes.SAFETENSORS


def test_import_converters_does_not_import_ml_dtypes():
    code = "import sys, converters, converters.arrays; print('ml_dtypes' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
