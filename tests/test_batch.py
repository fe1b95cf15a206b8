"""`convert batch`: a zoo of 20 ONNX files written by torch.onnx.export, one table made by
`convert port` from the first, converted by a process pool and by Ray; every output checked
against onnxruntime; a broken file fails alone; a rerun skips what is up to date."""
from __future__ import annotations

import importlib.util
import os

import numpy as np
import onnxruntime as ort
import pytest
import torch
import yaml
from safetensors.torch import load_file

from converters import port
from converters.batch import load_jobs, run_batch, summary
from converters.cli import main
from converters.errors import ConvertersError

N_FILES = 20


class TinyNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)
        self.bn = torch.nn.BatchNorm2d(4)
        self.fc = torch.nn.Linear(4 * 4 * 4, 5)

    def forward(self, x):
        x = torch.nn.functional.max_pool2d(torch.relu(self.bn(self.conv(x))), 2)
        return self.fc(torch.flatten(x, 1))


def export(path, seed):
    torch.manual_seed(seed)
    net = TinyNet().eval()
    with torch.no_grad():
        net.bn.running_mean.uniform_(-1, 1)
        net.bn.running_var.uniform_(0.5, 2)
    torch.onnx.export(net, (torch.randn(1, 3, 8, 8),), str(path), dynamo=False, input_names=["x"], opset_version=13)


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    root = tmp_path_factory.mktemp("zoo")
    (root / "models").mkdir()
    for i in range(N_FILES):
        export(root / "models" / f"net{i:02d}.onnx", seed=i)
    port(str(root / "models" / "net00.onnx"), str(root / "port"), name="TinyNet")
    return root


def write_jobs(root, jobs, name="jobs.yaml"):
    path = root / name
    path.write_text(yaml.safe_dump(jobs))
    return path


def load_ported(root, weights):
    spec = importlib.util.spec_from_file_location("tiny_port", root / "port" / "model.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    model = mod.TinyNet().eval()
    model.load_state_dict(load_file(weights))
    return model


def assert_matches_onnxruntime(root, onnx_path, weights):
    x = np.random.default_rng(0).standard_normal((1, 3, 8, 8)).astype(np.float32)
    want = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    with torch.no_grad():
        got = load_ported(root, weights)(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)


def zoo_jobs(root, out_dir):
    return {"defaults": {"from": "onnx", "map": "port/tiny_net.yaml"},
            "jobs": [{"glob": "models/*.onnx", "out": f"{out_dir}/{{stem}}.safetensors"}]}


def test_pool_converts_the_zoo_and_a_rerun_skips_it(zoo):
    jobs = load_jobs(write_jobs(zoo, zoo_jobs(zoo, "out_pool")))
    assert len(jobs) == N_FILES
    results = run_batch(jobs, workers=2)
    assert [r.status for r in results] == ["ok"] * N_FILES, [r.message for r in results]
    for i in (0, 7, 19):
        assert_matches_onnxruntime(zoo, zoo / "models" / f"net{i:02d}.onnx",
                                   zoo / "out_pool" / f"net{i:02d}.safetensors")
    again = run_batch(jobs, workers=0)
    assert [r.status for r in again] == ["skipped"] * N_FILES


def test_a_changed_source_is_reconverted_alone(zoo, tmp_path):
    models = tmp_path / "models"
    models.mkdir()
    for i in range(3):
        os.link(zoo / "models" / f"net{i:02d}.onnx", models / f"net{i:02d}.onnx")
    (tmp_path / "port").symlink_to(zoo / "port")
    jobs = load_jobs(write_jobs(tmp_path, zoo_jobs(tmp_path, "out")))
    assert [r.status for r in run_batch(jobs, workers=0)] == ["ok"] * 3
    (models / "net01.onnx").unlink()
    export(models / "net01.onnx", seed=99)
    assert [r.status for r in run_batch(jobs, workers=0)] == ["skipped", "ok", "skipped"]
    assert_matches_onnxruntime(zoo, models / "net01.onnx", tmp_path / "out" / "net01.safetensors")


def test_a_broken_file_fails_alone_with_its_error(zoo, tmp_path, capsys):
    good = zoo / "models" / "net03.onnx"
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(good.read_bytes()[:300])
    jobs_file = write_jobs(tmp_path, {"defaults": {"from": "onnx", "map": str(zoo / "port" / "tiny_net.yaml")},
                                      "jobs": [{"source": str(good), "out": "out/good.pth"},
                                               {"source": "broken.onnx", "out": "out/broken.pth"}]})
    code = main(["batch", str(jobs_file), "--workers", "0", "--report", str(tmp_path / "report.json")])
    out = capsys.readouterr().out
    assert code == 2
    assert "1 converted, 0 up to date, 1 failed" in out
    assert "broken.onnx" in out
    rows = yaml.safe_load((tmp_path / "report.json").read_text())["results"]
    assert [r["status"] for r in rows] == ["ok", "failed"]
    assert "broken.onnx" in rows[1]["message"]
    assert (tmp_path / "out" / "good.pth").exists() and not (tmp_path / "out" / "broken.pth").exists()


@pytest.mark.parametrize("jobs, message", [
    ([{"glob": "nothing/*.onnx", "map": "t.yaml", "out": "o.pth"}], "matches no file"),
    ([{"source": "a", "glob": "b", "map": "t.yaml", "out": "o.pth"}], "exactly one of"),
    ([{"source": "a", "map": "t.yaml", "out": "o.pth", "form": "onnx"}], "unknown key"),
    ([{"source": "a", "map": "t.yaml", "out": "o.pth"}, {"source": "b", "map": "t.yaml", "out": "o.pth"}],
     "both write"),
    ({"jobs": "a.onnx"}, "a list of jobs"),
    ([{"source": "a", "map": "t.yaml", "out": "{size}.pth"}], "template"),
])
def test_bad_jobs_files_name_the_entry(tmp_path, jobs, message):
    path = write_jobs(tmp_path, jobs)
    with pytest.raises(ConvertersError, match=message) as e:
        load_jobs(path)
    assert str(path) in str(e.value)


@pytest.mark.heavy
def test_ray_engine_converts_the_zoo(zoo):
    jobs = load_jobs(write_jobs(zoo, zoo_jobs(zoo, "out_ray"), name="jobs_ray.yaml"))
    results = run_batch(jobs, workers=2, engine="ray")
    s = summary(results)
    assert (s["ok"], s["failed"]) == (N_FILES, 0), [r.message for r in results]
    for i in (0, 11, 19):
        assert_matches_onnxruntime(zoo, zoo / "models" / f"net{i:02d}.onnx",
                                   zoo / "out_ray" / f"net{i:02d}.safetensors")
