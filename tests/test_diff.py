"""`convert diff A B`: exit codes, tolerances, renaming, JSON, real files."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.numpy import save_file

from converters.cli import main
from converters.diff import diff_files

ROOT = Path(__file__).resolve().parents[1]
PNET = ROOT / "fixtures/caffe/mtcnn_pnet/det1.caffemodel"


@pytest.fixture
def files(tmp_path):
    rng = np.random.default_rng(0)
    a = {"conv.weight": rng.standard_normal((4, 3, 3, 3)).astype(np.float32),
         "conv.bias": rng.standard_normal(4).astype(np.float32), "steps": np.array([3], np.int64)}
    save_file(a, tmp_path / "a.safetensors")
    return tmp_path, a


def run(argv, capsys):
    code = main(["diff", *map(str, argv)])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_same_files_exit_0_across_formats(files, capsys):
    tmp, a = files
    np.savez(tmp / "b.npz", **a)
    torch.save({k: torch.from_numpy(v) for k, v in a.items()}, tmp / "b.pth")
    for other in ("a.safetensors", "b.npz", "b.pth"):
        code, out, _ = run([tmp / "a.safetensors", tmp / other], capsys)
        assert code == 0, out
        assert out.startswith("same: 3 tensors compared")


def test_value_difference_exit_1_and_tolerances(files, capsys):
    tmp, a = files
    b = dict(a, **{"conv.bias": a["conv.bias"] + np.float32(1e-4)})
    save_file(b, tmp / "b.safetensors")
    code, out, _ = run([tmp / "a.safetensors", tmp / "b.safetensors"], capsys)
    assert code == 1 and "DIFFERENT" in out and "conv.bias" in out and "values differ (1)" in out
    assert run([tmp / "a.safetensors", tmp / "b.safetensors", "--atol", "2e-4"], capsys)[0] == 0
    assert run([tmp / "a.safetensors", tmp / "b.safetensors", "--rtol", "1e-9"], capsys)[0] == 1
    report = diff_files(tmp / "a.safetensors", tmp / "b.safetensors")
    assert report.values[0][0] == "conv.bias" and report.values[0][3] == 4
    assert report.max_abs["conv.bias"] == pytest.approx(1e-4, rel=0.01) and report.max_abs["conv.weight"] == 0


def test_names_shapes_dtypes_rename_and_json(files, capsys):
    tmp, a = files
    b = {"features.conv.weight": a["conv.weight"][:2], "features.conv.bias": a["conv.bias"].astype(np.float64),
         "extra": np.zeros(1, np.float32)}
    save_file(b, tmp / "b.safetensors")
    code, out, _ = run([tmp / "a.safetensors", tmp / "b.safetensors", "--json", "--rename", r"^features\.="], capsys)
    d = json.loads(out)
    assert code == 1 and not d["same"]
    assert d["only_a"] == ["steps"] and d["only_b"] == ["extra"]
    assert d["shape"] == [{"name": "conv.weight", "a": [4, 3, 3, 3], "b": [2, 3, 3, 3]}]
    assert d["dtype"] == [{"name": "conv.bias", "a": "float32", "b": "float64"}] and d["values"] == []
    report = diff_files(tmp / "a.safetensors", tmp / "b.safetensors", rename=[r"^features\.="], check_dtype=False)
    assert report.dtype and report.max_abs["conv.bias"] == 0  # float32 -> float64 is exact


def test_nan_and_inf_compare_by_position(tmp_path):
    x = np.array([np.nan, np.inf, 1.0], np.float32)
    save_file({"t": x}, tmp_path / "a.safetensors")
    save_file({"t": x.copy()}, tmp_path / "b.safetensors")
    save_file({"t": np.array([1.0, np.inf, 1.0], np.float32)}, tmp_path / "c.safetensors")
    assert diff_files(tmp_path / "a.safetensors", tmp_path / "b.safetensors").same
    r = diff_files(tmp_path / "a.safetensors", tmp_path / "c.safetensors", atol=10)
    assert not r.same and r.values[0][3] == 1


def test_usage_and_format_errors_exit_2(files, capsys):
    tmp, _ = files
    (tmp / "junk.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    code, _, err = run([tmp / "a.safetensors", tmp / "junk.safetensors"], capsys)
    assert code == 2 and "junk.safetensors" in err
    code, _, err = run([tmp / "a.safetensors", tmp / "missing.npz"], capsys)
    assert code == 2 and "missing.npz" in err
    code, _, err = run([tmp / "a.safetensors", tmp / "a.safetensors", "--rename", "(=x"], capsys)
    assert code == 2 and "regular expression" in err
    with pytest.raises(SystemExit) as e:
        main(["diff", str(tmp / "a.safetensors")])
    assert e.value.code == 2
    with pytest.raises(SystemExit) as e:
        main(["diff", str(tmp / "a.safetensors"), str(tmp / "a.safetensors"), "--rename", "noequals"])
    assert e.value.code == 2


def test_real_caffe_pnet_against_its_pytorch_port(tmp_path):
    """The intended use: check a conversion (here: the P-Net loaded into PyTorch) against its source."""
    from safetensors.torch import save_file as save_torch

    import converters

    with converters.read(PNET, "caffe") as f:
        arrays = f.numpy()
    ported = {n.replace("/0", ".weight").replace("/1", ".bias"): torch.from_numpy(v) for n, v in arrays.items()}
    save_torch(ported, tmp_path / "pnet.safetensors")
    cmd = [sys.executable, "-m", "converters", "diff", str(PNET), str(tmp_path / "pnet.safetensors"),
           "--from-a", "caffe", "--rename", r"\.weight$=/0", "--rename", r"\.bias$=/1"]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "same: 13 tensors compared" in done.stdout
    ported["conv2.weight"][0, 0, 0, 0] += 1e-3
    save_torch(ported, tmp_path / "pnet.safetensors")
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.returncode == 1 and "conv2/0" in done.stdout


def test_layout_difference_is_named_not_just_counted(tmp_path, capsys):
    """The MXNet P-Net port and the Caffe P-Net, both drafted as is into the same PyTorch model:
    the kernels differ only by the port's frame (H and W swapped, conv1's channels reversed), and
    diff says so instead of '3 differ'."""
    from converters.convert import convert
    from converters.draft import draft

    caffe, _ = convert(PNET, "caffe/mtcnn_pnet")
    torch.save(caffe.state_dict(), tmp_path / "caffe.pth")
    mx_src = ROOT / "fixtures/mxnet/mtcnn_pnet/det1-0001.params"
    draft(mx_src, "converters.models.mtcnn:PNet", out=tmp_path / "mx.yaml")  # the port's own frame
    mx, _ = convert(mx_src, tmp_path / "mx.yaml")
    torch.save(mx.state_dict(), tmp_path / "mx.pth")
    report = diff_files(tmp_path / "mx.pth", tmp_path / "caffe.pth")
    assert not report.same and {n for n, *_ in report.values} == {"conv1.weight", "conv2.weight", "conv3.weight"}
    assert report.explained == {"conv1.weight": "permute [0, 1, 3, 2] + flip axis 1",
                                "conv2.weight": "permute [0, 1, 3, 2]", "conv3.weight": "permute [0, 1, 3, 2]"}
    code, out, _ = run([tmp_path / "mx.pth", tmp_path / "caffe.pth"], capsys)
    assert code == 1 and "3 equal after a layout step" in out and "equal after permute [0, 1, 3, 2]" in out
    # a real value difference is not explained away
    sd = caffe.state_dict()
    sd["conv2.weight"][0, 0, 0, 0] += 1e-3
    torch.save(sd, tmp_path / "caffe2.pth")
    assert "conv2.weight" not in diff_files(tmp_path / "mx.pth", tmp_path / "caffe2.pth").explained
