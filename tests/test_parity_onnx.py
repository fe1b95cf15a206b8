"""The ONNX oracle and `verify`, proved on models written by torch.onnx.export and run by
onnxruntime: a correct table passes; deliberate faults (a missing transpose, a wrong BatchNorm
eps, a kernel with height and width swapped, floor where the source used ceil, a missing BGR flip)
fail and are localised to the layer that holds the fault.

The source model keeps its dense layer as an (in, out) matrix used as `x @ w + b` (how TF and
Keras store dense kernels), so the exported graph has MatMul + Add and the table needs a
transpose; its BatchNorm follows a ReLU so the exporter cannot fold it into the convolution.
Every array is random (BatchNorm statistics too, with small variances so eps matters).
"""
from __future__ import annotations

import json
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from converters.errors import ConvertersError  # noqa: E402
from converters.mapping import spec  # noqa: E402
from converters.parity.oracles.base import SourceModel  # noqa: E402
from converters.parity.oracles.onnx_oracle import OnnxOracle  # noqa: E402
from converters.parity.verify import verify  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


class SourceNet(nn.Module):
    """What gets exported: conv, ReLU, BatchNorm, max-pool, strided conv, dense as x @ w + b, dense."""

    def __init__(self, in_channels=3, ceil_mode=False):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 8, 3, padding=1)
        self.relu1 = nn.ReLU()
        self.bn1 = nn.BatchNorm2d(8)
        self.pool = nn.MaxPool2d(2, ceil_mode=ceil_mode)
        self.conv2 = nn.Conv2d(8, 8, 3, stride=2, padding=1)
        self.relu2 = nn.ReLU()
        self.flat = nn.Flatten()
        self.fc1 = nn.Module()
        self.fc1.w = nn.Parameter(torch.randn(128, 128) * 0.1)  # (in, out), like a TF dense kernel
        self.fc1.b = nn.Parameter(torch.randn(128) * 0.1)
        self.relu3 = nn.ReLU()
        self.fc2 = nn.Linear(128, 10)

    def forward(self, x):
        x = self.pool(self.bn1(self.relu1(self.conv1(x))))
        x = self.flat(self.relu2(self.conv2(x)))
        x = self.relu3(x @ self.fc1.w + self.fc1.b)
        return self.fc2(x)


class TargetNet(nn.Module):
    """The PyTorch model the table fills (plain nn.Linear for fc1)."""

    def __init__(self, eps=1e-5, ceil_mode=False):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.relu1 = nn.ReLU()
        self.bn1 = nn.BatchNorm2d(8, eps=eps)
        self.pool = nn.MaxPool2d(2, ceil_mode=ceil_mode)
        self.conv2 = nn.Conv2d(8, 8, 3, stride=2, padding=1)
        self.relu2 = nn.ReLU()
        self.flat = nn.Flatten()
        self.fc1 = nn.Linear(128, 128)
        self.relu3 = nn.ReLU()
        self.fc2 = nn.Linear(128, 10)

    def forward(self, x):
        x = self.pool(self.bn1(self.relu1(self.conv1(x))))
        x = self.flat(self.relu2(self.conv2(x)))
        return self.fc2(self.relu3(self.fc1(x)))


TABLE = """
description: test table, torch.onnx.export of SourceNet -> TargetNet
source: onnx
input: {shape: [1, 3, 16, 16], layout: NCHW, range: [0, 1], mean: [0.5, 0.4, 0.3], std: [0.2, 0.2, 0.2]}
parity:
  layers: {'/pool/MaxPool': pool}
rules:
  - from: 'conv(?P<n>[12])\\.weight'
    to: 'conv{n}.weight'
    transforms: CONV_TRANSFORMS
  - from: '(?P<m>conv[12]|fc2)\\.bias'
    to: '{m}.bias'
  - from: 'fc2\\.weight'
    to: 'fc2.weight'
  - from: 'bn1\\.(?P<p>weight|bias|running_mean|running_var)'
    to: 'bn1.{p}'
  - from: 'fc1\\.w'
    to: 'fc1.weight'
    transforms: FC_TRANSFORMS
  - from: 'fc1\\.b'
    to: 'fc1.bias'
fill:
  - {to: 'bn1\\.num_batches_tracked', value: 0}
"""


def write_table(path, fc="[transpose]", conv="[]", extra=""):
    text = TABLE.replace("FC_TRANSFORMS", fc).replace("CONV_TRANSFORMS", conv) + extra
    path.write_text(text)
    return path


def randomise(net, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _name, p in net.named_parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
        net.bn1.running_mean.copy_(torch.randn(8, generator=g) * 0.2)
        net.bn1.running_var.copy_(torch.rand(8, generator=g) * 0.02 + 0.002)  # small: eps 1e-3 vs 1e-5 shows
    return net.eval()


def export(net, path, size=16):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, torch.zeros(1, net.conv1.in_channels, size, size), str(path), dynamo=False,
                          input_names=["image"], output_names=["logits"],
                          dynamic_axes={"image": {0: "N", 2: "H", 3: "W"}})
    return path


@pytest.fixture(scope="module")
def onnx_model(tmp_path_factory):
    d = tmp_path_factory.mktemp("onnx_parity")
    net = randomise(SourceNet(), 0)
    return export(net, d / "net.onnx"), net, d


# ------------------------------------------------------------------------------------ the oracle

def test_oracle_runs_the_graph_and_taps_reader_layers(onnx_model):
    import converters

    path, net, _ = onnx_model
    oracle = OnnxOracle(SourceModel("onnx", weights=str(path)))
    assert oracle.input_names() == ["image"] and oracle.output_names() == ["logits"]
    layers = converters.read(path).layers
    assert [k for k in oracle.layer_order() if k in layers] == [k for k in layers if k in oracle.layer_order()]
    x = np.random.default_rng(0).normal(size=(2, 3, 16, 16)).astype(np.float32)
    out = oracle.run({"image": x}, ["/bn1/BatchNormalization", "/pool/MaxPool"])
    with torch.no_grad():
        expected = net(torch.from_numpy(x)).numpy()
        bn = net.bn1(net.relu1(net.conv1(torch.from_numpy(x)))).numpy()
    assert np.abs(out["logits"] - expected).max() < 1e-4
    assert np.abs(out["/bn1/BatchNormalization"] - bn).max() < 1e-4
    assert out["/pool/MaxPool"].shape == (2, 8, 8, 8)
    with pytest.raises(ConvertersError, match="no layer"):
        oracle.run({"image": x}, ["nope"])


def test_oracle_crash_is_reported_as_a_crash(tmp_path):
    from converters.parity.oracles.base import OracleCrashed

    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x08\x07\x12\x04junk" + b"\xff" * 40)
    with pytest.raises((OracleCrashed, ConvertersError)) as info:
        OnnxOracle(SourceModel("onnx", weights=str(bad))).run({}, [])
    assert "bad.onnx" in str(info.value)


# ---------------------------------------------------------------------------- passing + faults

def test_correct_table_passes(onnx_model, tmp_path):
    path, _, _ = onnx_model
    rep = verify(path, write_table(tmp_path / "t.yaml"), TargetNet(), localise="always")
    assert rep.passed, str(rep)
    (out,) = rep.outputs
    assert out["name"] == "logits" and out["shape"] == [2, 10] and out["max_abs"] < 1e-4
    assert out["cosine"] > 0.99999 and out["topk_agree"] == 1.0
    assert [r["module"] for r in rep.layers] == ["conv1", "bn1", "pool", "conv2", "fc1", "fc2"]
    assert all(r["passed"] for r in rep.layers) and rep.first_divergent is None
    # conv1's source output is compared before the ReLU: the module output itself matched
    assert rep.layers[0]["compared_with"] == "conv1"


def _fault(onnx_model, tmp_path, target=None, size=None, **table):
    path, net, d = onnx_model
    if size is not None:
        path = export(net, d / f"net{size}.onnx", size)
    rep = verify(path, write_table(tmp_path / "t.yaml", **table), target or TargetNet(),
                 input_shape=[2, 3, size, size] if size else None)
    assert not rep.passed, str(rep)
    assert rep.first_divergent is not None, str(rep)
    return rep


def test_missing_transpose_is_localised_to_the_dense_layer(onnx_model, tmp_path):
    rep = _fault(onnx_model, tmp_path, fc="[]")
    fd = rep.first_divergent
    assert fd["module"] == "fc1" and fd["source_layer"] == "/Add", str(rep)
    assert any("transpose" in c for c in fd["likely_causes"])
    assert any("flatten order" in c for c in fd["likely_causes"])  # a dense layer right after a flatten
    assert [r["passed"] for r in rep.layers[:4]] == [True] * 4


def test_wrong_batchnorm_eps_is_localised_to_the_batchnorm(onnx_model, tmp_path):
    rep = _fault(onnx_model, tmp_path, target=TargetNet(eps=1e-3))
    fd = rep.first_divergent
    assert fd["module"] == "bn1" and fd["source_layer"] == "/bn1/BatchNormalization", str(rep)
    assert any("eps" in c and "0.001" in c for c in fd["likely_causes"])
    assert rep.layers[0]["passed"]


def test_swapped_kernel_axes_are_localised_to_the_convolution(onnx_model, tmp_path):
    rep = _fault(onnx_model, tmp_path, conv="[{permute: [0, 1, 3, 2]}]")  # conv1, conv2 (and fc2 has 2 axes: no)
    assert rep.first_divergent["module"] == "conv1", str(rep)
    assert any("kernel layout" in c for c in rep.first_divergent["likely_causes"])


def test_ceil_where_the_source_floors_is_localised_to_the_pool(onnx_model, tmp_path):
    rep = _fault(onnx_model, tmp_path, target=TargetNet(ceil_mode=True), size=15)
    fd = rep.first_divergent
    assert fd["module"] == "pool" and fd["source_layer"] == "/pool/MaxPool", str(rep)
    assert fd["metrics"]["shape"] == [2, 8, 7, 7] and fd["metrics"]["got_shape"] == [2, 8, 8, 8]
    assert any("ceil" in c for c in fd["likely_causes"])


BGR_TABLE = """
description: test table, the exported SourceNet read as a BGR model, filled into an RGB TargetNet
source: onnx
input: {shape: [1, 3, 16, 16], layout: NCHW, channels: BGR, range: [0, 255], mean: [104, 117, 123]}
parity:
  target_input: {channels: RGB}
rules:
  FIRST_CONV
  - from: 'conv1\\.bias'
    to: 'conv1.bias'
  - from: '(?P<m>conv2|fc2)\\.(?P<p>weight|bias)'
    to: '{m}.{p}'
  - from: 'bn1\\.(?P<p>weight|bias|running_mean|running_var)'
    to: 'bn1.{p}'
  - from: 'fc1\\.w'
    to: 'fc1.weight'
    transforms: [transpose]
  - from: 'fc1\\.b'
    to: 'fc1.bias'
fill:
  - {to: 'bn1\\.num_batches_tracked', value: 0}
"""


def test_missing_bgr_flip_is_localised_to_the_first_convolution(onnx_model, tmp_path):
    """The source takes BGR, the PyTorch model RGB: verify flips the input's channels for the
    source (derived from input.channels and parity.target_input), so the table must flip the
    first conv's input channels. Without that rule the first conv diverges."""
    path, _, _ = onnx_model
    flip = "- from: 'conv1\\.weight'\n    to: 'conv1.weight'\n    transforms: [{flip: {axis: 1}}]"
    (tmp_path / "ok.yaml").write_text(BGR_TABLE.replace("FIRST_CONV", flip))
    no_flip = "- from: 'conv1\\.weight'\n    to: 'conv1.weight'"
    (tmp_path / "fault.yaml").write_text(BGR_TABLE.replace("FIRST_CONV", no_flip))
    good = verify(path, tmp_path / "ok.yaml", TargetNet())
    assert good.passed, str(good)
    assert good.conventions["source_input"] == ["flip(axis=1)"]
    bad = verify(path, tmp_path / "fault.yaml", TargetNet())
    assert not bad.passed and bad.first_divergent["module"] == "conv1", str(bad)
    assert any("RGB vs BGR" in c for c in bad.first_divergent["likely_causes"])


# -------------------------------------------------------------------------------- CLI and files

def run_cli(capsys, *args):
    """The `convert` command in-process (the subprocess test below covers the real entry point)."""
    from converters.cli import main

    try:
        code = main([str(a) for a in args])
    except SystemExit as e:  # argparse usage errors
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_exit_codes_json_and_reference_round_trip(onnx_model, tmp_path, capsys):
    path, _, _ = onnx_model
    good = write_table(tmp_path / "good.yaml", extra="target: test_parity_onnx:TargetNet\n")
    bad = write_table(tmp_path / "bad.yaml", fc="[]", extra="target: test_parity_onnx:TargetNet\n")
    code, out, err = run_cli(capsys, "verify", path, "--map", good, "--json-out", tmp_path / "ok.json")
    assert code == 0, err + out
    assert out.startswith("parity PASS") and json.loads((tmp_path / "ok.json").read_text())["passed"]
    code, out, err = run_cli(capsys, "verify", path, "--map", bad, "--html", tmp_path / "r.html")
    assert code == 1 and "first divergent layer: /Add -> fc1" in err, err
    assert "first divergent layer" in (tmp_path / "r.html").read_text()
    code, out, err = run_cli(capsys, "verify", path, "--map", tmp_path / "missing.yaml")
    assert code == 2 and "missing.yaml" in err
    code, out, err = run_cli(capsys, "verify", path, "--map", good, "--from", "caffe2")
    assert code == 2
    # a reference written where onnxruntime runs replays without it, localisation included
    ref = tmp_path / "ref.npz"
    code, out, err = run_cli(capsys, "reference", path, "--map", good, ref)
    assert code == 0 and "tapped layer" in out, err
    code, out, err = run_cli(capsys, "verify", path, "--map", bad, "--reference", ref)
    assert code == 1 and "first divergent layer: /Add -> fc1" in err, err
    # conversion with --verify checks the written file
    pth = tmp_path / "net.pth"
    code, out, err = run_cli(capsys, "--from", "onnx", "--map", good, path, pth, "--verify")
    assert code == 0 and pth.exists() and "parity PASS" in out, err


def test_cli_subprocess_exit_code_on_parity_failure(onnx_model, tmp_path):
    path, _, _ = onnx_model
    bad = write_table(tmp_path / "bad.yaml", fc="[]", extra="target: test_parity_onnx:TargetNet\n")
    r = subprocess.run([sys.executable, "-m", "converters", "verify", str(path), "--map", str(bad), "-q"],
                       capture_output=True, text=True, cwd=ROOT / "tests", timeout=120)
    assert r.returncode == 1 and r.stderr.startswith("parity FAIL"), r.stderr


def test_reference_refuses_other_inputs(onnx_model, tmp_path):
    from converters.parity.reference import write_reference

    path, _, _ = onnx_model
    table = write_table(tmp_path / "t.yaml")
    write_reference(path, table, tmp_path / "ref.npz", target=TargetNet())
    rep = verify(path, table, TargetNet(), reference=tmp_path / "ref.npz")
    assert rep.passed, str(rep)
    other = np.zeros((2, 3, 16, 16), np.float32)
    with pytest.raises(ConvertersError, match="other inputs"):
        verify(path, table, TargetNet(), reference=tmp_path / "ref.npz", inputs={"image": other})


def test_float64_and_tolerance_overrides(onnx_model, tmp_path):
    path, _, _ = onnx_model
    table = write_table(tmp_path / "t.yaml")
    rep = verify(path, table, TargetNet(), dtype="float64", n=3, seed=5)
    assert rep.passed and rep.inputs["image"]["shape"] == [3, 3, 16, 16] and rep.inputs["image"]["dtype"] == "float64"
    strict = verify(path, table, TargetNet(), tolerance={"atol": 1e-12, "cosine": 1.0}, localise=False)
    assert not strict.passed and not strict.layers and "atol" in " ".join(strict.outputs[0]["reasons"])
    assert spec.load(table).parity["layers"] == {"/pool/MaxPool": "pool"}
