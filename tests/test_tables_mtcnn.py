"""The MTCNN P-Net tables, proven against the source frameworks' own forward passes.

Caffe: OpenCV's Caffe importer runs det1.prototxt + det1.caffemodel. MXNet: mxnet 1.9.1 runs the
third-party port in its own interpreter. Both tables must also give the same tensors.
"""
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from converters.convert import convert

ROOT = Path(__file__).resolve().parents[1]
CAFFE_DIR = ROOT / "fixtures/caffe/mtcnn_pnet"
MX_DIR = ROOT / "fixtures/mxnet/mtcnn_pnet"
MX_PYTHON = ROOT / ".venv-mxnet/bin/python"


def tolerance(ref):
    return 1e-4 * max(1.0, float(np.abs(ref).max()))


def pnet_input(h=31, w=25, seed=0):
    """A preprocessed image batch as the Caffe model takes it: (x - 127.5) / 128."""
    img = np.random.default_rng(seed).uniform(0, 255, (2, 3, h, w)).astype(np.float32)
    return (img - 127.5) / 128


def torch_forward(model, x):
    with torch.no_grad():
        return [t.numpy() for t in model.eval()(torch.from_numpy(x))]


def test_caffe_table_matches_opencv_forward():
    cv2 = pytest.importorskip("cv2")
    model, rep = convert(CAFFE_DIR / "det1.caffemodel", "caffe/mtcnn_pnet")
    assert rep.ok and not rep.warnings
    net = cv2.dnn.readNetFromCaffe(str(CAFFE_DIR / "det1.prototxt"), str(CAFFE_DIR / "det1.caffemodel"))
    x = pnet_input()
    net.setInput(x)
    ref_prob, ref_box = net.forward(["prob1", "conv4-2"])
    prob, box = torch_forward(model, x)
    # odd sizes: 31x25 -> conv 29x23 -> Caffe's ceil pooling 15x12 (floor would give 14x11)
    assert prob.shape == ref_prob.shape == (2, 2, 11, 8)
    assert np.abs(prob - ref_prob).max() <= tolerance(ref_prob)
    assert np.abs(box - ref_box).max() <= tolerance(ref_box)


def test_caffe_and_mxnet_tables_give_the_same_model():
    a, _ = convert(CAFFE_DIR / "det1.caffemodel", "caffe/mtcnn_pnet")
    b, _ = convert(MX_DIR / "det1-0001.params", "mxnet/mtcnn_pnet")
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert ka == kb and torch.equal(va, vb), ka


@pytest.mark.mxnet
def test_mxnet_table_matches_mxnet_forward(tmp_path):
    if not MX_PYTHON.exists():
        pytest.skip(f"{MX_PYTHON} missing: run scripts/setup.sh to create the mxnet environment")
    model, rep = convert(MX_DIR / "det1-0001.params", "mxnet/mtcnn_pnet")
    assert rep.ok
    x = pnet_input()
    # the MXNet port takes untransposed BGR images: flip channels, swap height and width
    x_mx = np.ascontiguousarray(x[:, ::-1].transpose(0, 1, 3, 2))
    np.savez(tmp_path / "in.npz", data=x_mx)
    r = subprocess.run([str(MX_PYTHON), str(ROOT / "tests/mxnet_side/forward_checkpoint.py"), str(MX_DIR / "det1"), "1",
                        str(tmp_path / "in.npz"), str(tmp_path / "out.npz")],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    outs = np.load(tmp_path / "out.npz")
    ref_box, ref_prob = outs["out0"].transpose(0, 1, 3, 2), outs["out1"].transpose(0, 1, 3, 2)
    prob, box = torch_forward(model, x)
    assert prob.shape == ref_prob.shape and box.shape == ref_box.shape
    assert np.abs(prob - ref_prob).max() <= tolerance(ref_prob)
    assert np.abs(box - ref_box).max() <= tolerance(ref_box)
