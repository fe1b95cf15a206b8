"""MXNet parity on Conv-BN nets built by mxnet 1.9.1 (tests/mxnet_side/make_parity_nets.py):
localisation names the layer a fault is in although mxnet's MKLDNN backend would fuse
Conv+BN+ReLU (the oracle runs with MXNET_SUBGRAPH_BACKEND=NONE); fix_gamma=True with a stored
gamma that is not 1 is a conversion warning; a symbol whose head does not reach converted layers
is a clear error naming them.
"""
from __future__ import annotations

import subprocess
import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn

from converters.convert import convert
from converters.errors import ConvertersError
from converters.parity.oracles import mxnet_oracle
from converters.parity.verify import build_oracle, verify

ROOT = Path(__file__).resolve().parents[1]
MX_PYTHON = ROOT / ".venv-mxnet/bin/python"
pytestmark = pytest.mark.mxnet


@pytest.fixture(scope="module")
def nets(tmp_path_factory):
    if not MX_PYTHON.exists():
        pytest.skip(f"{MX_PYTHON} missing: run scripts/setup.sh to create the mxnet environment")
    out = tmp_path_factory.mktemp("mxnets")
    subprocess.run([str(MX_PYTHON), str(ROOT / "tests/mxnet_side/make_parity_nets.py"), str(out)], check=True,
                   capture_output=True, timeout=300)
    return out


@pytest.fixture(scope="module")
def convbn(nets):
    """One running mxnet oracle for the `convbn` checkpoint, shared by the tests (a start costs seconds)."""
    oracle = build_oracle("mxnet", nets / "convbn-0000.params")
    yield oracle
    oracle.close()


class ConvBN(nn.Module):
    """The PyTorch side of `convbn`: (conv, BN, ReLU) x 2, max pool, flatten, dense."""

    def __init__(self, eps=(1e-3, 1e-3)):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6, eps=eps[0])
        self.conv2, self.bn2 = nn.Conv2d(6, 8, 3, padding=1), nn.BatchNorm2d(8, eps=eps[1])
        self.relu, self.pool, self.fc = nn.ReLU(), nn.MaxPool2d(2), nn.Linear(8 * 6 * 6, 5)

    def forward(self, x):
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.relu(self.bn2(self.conv2(x)))
        return self.fc(torch.flatten(self.pool(x), 1))


class FixGamma(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4, eps=1e-3)
        self.relu, self.fc = nn.ReLU(), nn.Linear(4 * 12 * 12, 3)

    def forward(self, x):
        return self.fc(torch.flatten(self.relu(self.bn1(self.conv1(x))), 1))


def table(tmp_path, gamma="gamma", beta="beta", gamma_transforms=""):
    """The table for `convbn` / `fixgamma`; gamma/beta name the source array each PyTorch
    BatchNorm parameter is filled from (swapped: a fault)."""
    text = """
    source: mxnet
    input: {shape: [2, 3, 12, 12], layout: NCHW}
    rules:
      - {from: 'conv(?P<i>\\d)_(?P<p>weight|bias)', to: 'conv{i}.{p}'}
      - {from: 'bn(?P<i>\\d)_GAMMA', to: 'bn{i}.weight'TRANSFORMS}
      - {from: 'bn(?P<i>\\d)_BETA', to: 'bn{i}.bias'}
      - {from: 'bn(?P<i>\\d)_moving_(?P<s>mean|var)', to: 'bn{i}.running_{s}'}
      - {from: 'fc_(?P<p>weight|bias)', to: 'fc.{p}'}
    fill:
      - {to: '.*\\.num_batches_tracked', value: 0}
    parity:
      layers: {pool: pool}
    """
    text = text.replace("GAMMA", gamma).replace("BETA", beta).replace("TRANSFORMS", gamma_transforms)
    path = tmp_path / "t.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def test_correct_table_passes_with_every_layer_tapped_unfused(nets, convbn, tmp_path):
    rep = verify(nets / "convbn-0000.params", table(tmp_path), ConvBN(), localise="always", oracle=convbn)
    assert rep.passed, str(rep)
    assert [r["name"] for r in rep.layers] == ["conv1", "bn1", "conv2", "bn2", "pool", "fc"], str(rep)
    assert all(r["passed"] for r in rep.layers), str(rep)
    assert any("MXNET_SUBGRAPH_BACKEND=NONE" in n for n in rep.notes), rep.notes


@pytest.mark.parametrize("fault,layer", [("eps", "bn2"), ("swap", "bn1")])
def test_batchnorm_faults_are_named_at_the_batchnorm_not_the_fused_conv(nets, convbn, tmp_path, fault, layer):
    params = nets / "convbn-0000.params"
    if fault == "eps":  # PyTorch's default eps where the symbol uses 1e-3
        rep = verify(params, table(tmp_path), ConvBN(eps=(1e-3, 1e-5)), oracle=convbn)
    else:  # gamma and beta swapped on the first BatchNorm
        rep = verify(params, table(tmp_path, gamma="beta", beta="gamma"), ConvBN(), oracle=convbn)
    assert not rep.passed and rep.first_divergent is not None, str(rep)
    assert rep.first_divergent["source_layer"] == layer, str(rep)
    before = [r for r in rep.layers[:[r["name"] for r in rep.layers].index(layer)]]
    assert all(r["passed"] for r in before), str(rep)
    if fault == "eps":  # the hint quotes the file's eps, not a framework default
        assert any("the source file 0.001" in c for c in rep.first_divergent["likely_causes"]), str(rep)


def test_the_default_mkldnn_backend_would_return_the_fused_conv(nets, tmp_path, monkeypatch):
    """Why the oracle turns fusion off: with mxnet's default backend, the correct table's conv1 tap
    is conv1 + bn1 + relu1 and differs from the plain convolution."""
    monkeypatch.setattr(mxnet_oracle, "SUBGRAPH_BACKEND", "MKLDNN")
    rep = verify(nets / "convbn-0000.params", table(tmp_path), ConvBN(), localise="always")
    assert rep.passed and rep.layers[0]["name"] == "conv1" and not rep.layers[0]["passed"], str(rep)
    assert rep.first_divergent is None and "first divergent" not in str(rep)  # a PASS names no layer


def test_fix_gamma_with_stored_gamma_not_one_warns_at_conversion(nets, tmp_path):
    params = nets / "fixgamma-0000.params"
    _, report = convert(params, table(tmp_path), FixGamma())
    assert any("fix_gamma=True" in w and "bn1 -> bn1.weight" in w for w in report.warnings), report.warnings
    rep = verify(params, table(tmp_path), FixGamma())
    assert not rep.passed and rep.first_divergent["source_layer"] == "bn1", str(rep)
    assert any("fix_gamma" in n for n in rep.notes), rep.notes
    fixed = table(tmp_path, gamma_transforms=", transforms: [{constant: {value: 1}}]")
    _, report = convert(params, fixed, FixGamma())
    assert not any("fix_gamma" in w for w in report.warnings), report.warnings
    assert verify(params, fixed, FixGamma()).passed


def test_a_symbol_cut_before_converted_layers_is_an_error_naming_them(nets, tmp_path):
    with pytest.raises(ConvertersError, match=r"do not reach .*conv2.*bn2.*fc") as e:
        verify(nets / "convbn-0000.params", table(tmp_path), ConvBN(), architecture=nets / "convbn_cut-symbol.json")
    assert "convbn_cut-symbol.json" in str(e.value) and "relu1" in str(e.value)
