"""Parity core without a source framework: metrics, input conventions, the table's `parity:`
section, localisation against an oracle written here (a PyTorch "source" model in NHWC whose
convolution has its ReLU fused, as Keras does), reports, reference files and the suite helpers."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from converters import testing
from converters.errors import ConvertersError, FormatError, MappingError
from converters.mapping import spec
from converters.parity import inputs as I
from converters.parity.compare import Tolerance, compare, topk_agreement
from converters.parity.oracles.base import Oracle, SourceModel
from converters.parity.oracles.reference import ReferenceOracle
from converters.parity.verify import verify

ROOT = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------------- metrics

def test_compare_metrics_and_reasons():
    ref = np.array([[1.0, 2.0, 3.0], [0.5, 0.1, 0.0]], np.float32)
    m = compare(ref, ref.copy(), Tolerance())
    assert m["passed"] and m["max_abs"] == 0 and m["cosine"] == 1.0 and m["topk_agree"] == 1.0
    assert m["atol"] == pytest.approx(3e-4)  # 1e-4 * max(1, max|ref|)
    got = ref.copy()
    got[0, 0] += 1e-3
    m = compare(ref, got, Tolerance())
    assert not m["passed"] and "atol" in m["reasons"][0]
    assert m["max_rel"] == pytest.approx(1e-3, rel=1e-3)
    m = compare(ref, ref[:, :2], Tolerance())
    assert not m["passed"] and "shape" in m["reasons"][0]
    # order matters: a permuted output is a different output even with the same values
    assert not compare(ref, ref[:, ::-1], Tolerance())["passed"]
    # NaN where both have NaN is equal; NaN on one side is a difference
    a = np.array([1.0, np.nan])
    assert compare(a, a.copy(), Tolerance())["passed"]
    assert not compare(a, np.array([1.0, 2.0]), Tolerance())["passed"]


def test_topk_counts_near_ties_as_agreement():
    ref = np.array([[1.0, 1.0 + 1e-6, 0.0], [0.0, 1.0, 5.0]])
    got = np.array([[1.0 + 2e-6, 1.0, 0.0], [0.0, 5.0, 1.0]])
    assert topk_agreement(ref, got, 1, tie=1e-5) == 0.5
    assert topk_agreement(ref, got, 2, tie=1e-5) == 1.0  # row 2's best class is the runner-up
    assert topk_agreement(ref, got, 1, tie=0.0) == 0.0  # without the tie allowance row 1 disagrees too


def test_tolerance_forms():
    assert Tolerance.from_any(1e-3).atol == 1e-3
    assert Tolerance.from_any({"cosine": 0.99}).merged({"atol": 1e-2, "rtol": None}).to_dict() == \
        {"atol": 1e-2, "rtol": None, "cosine": 0.99, "topk": 1}
    with pytest.raises(ConvertersError, match="unknown tolerance"):
        Tolerance.from_any({"atl": 1})


# ------------------------------------------------------------------------------ input conventions

def test_conventions_of_an_nhwc_bgr_table():
    c = I.Conventions.from_mapping(spec.load("keras/vgg16"))
    assert c.target["layout"] == "NCHW" and c.target["shape"] == [1, 3, 224, 224]
    assert [repr(t) for t in c.source_input] == ["permute(axes=[0, 2, 3, 1])"]
    assert [repr(t) for t in c.activations] == ["permute(axes=[0, 3, 1, 2])"]
    x = I.make_target_input(c, n=2, seed=0)
    assert x.shape == (2, 3, 224, 224) and x.dtype == np.float32
    # mean subtracted per channel in the table's (BGR) order: channel 0 is B (103.939)
    assert abs(float(x[:, 0].mean()) - (127.5 - 103.939)) < 1.0
    assert abs(float(x[:, 2].mean()) - (127.5 - 123.68)) < 1.0
    src = I.to_source(c.source_input, x)
    assert src.shape == (2, 224, 224, 3) and np.array_equal(src[:, 5, 7, :], x[:, :, 5, 7])
    assert np.array_equal(I.from_source(c.source_input, src), x)
    # 4-d activations come back NCHW, 2-d ones (dense outputs) pass as they are
    assert I.to_target(c.activations, src).shape == (2, 3, 224, 224)
    assert I.to_target(c.activations, np.zeros((2, 10))).shape == (2, 10)


def test_channel_flip_is_derived_and_mean_follows_it(tmp_path):
    table = tmp_path / "t.yaml"
    table.write_text("source: onnx\ninput: {shape: [1, 3, 4, 4], layout: NCHW, channels: BGR, range: [0, 0], "
                     "mean: [1, 2, 3]}\nparity:\n  target_input: {channels: RGB}\nrules: []\n")
    c = I.Conventions.from_mapping(spec.load(table))
    assert [repr(t) for t in c.source_input] == ["flip(axis=1)"]
    x = I.make_target_input(c, n=1)  # range [0, 0]: the value is -mean, in RGB order for the target
    assert x[0, :, 0, 0].tolist() == [-3, -2, -1]
    assert I.to_source(c.source_input, x)[0, :, 0, 0].tolist() == [-1, -2, -3]


def test_inputs_need_a_shape_and_match_by_name_or_order():
    c = I.Conventions.from_mapping(spec.load("keras/lstm"))
    with pytest.raises(ConvertersError, match="no shape"):
        I.make_target_input(c)
    assert I.make_target_input(c, n=3, shape=[1, 6, 5]).shape == (3, 6, 5)
    a = np.zeros(2)
    assert list(I.load_inputs({"x": a}, ["x"])) == ["x"]
    assert list(I.load_inputs([a], ["input_1"])) == ["input_1"]
    with pytest.raises(ConvertersError, match="hold"):
        I.load_inputs({"a": a, "b": a}, ["x"])


# ------------------------------------------------------------------------------ the parity: section

@pytest.mark.parametrize("section, message", [
    ("parity:\n  tolerence: {atol: 1}\n", "tolerence"),
    ("parity:\n  source_input: [{permut: [0, 1]}]\n", "unknown transform 'permut'"),
    ("parity:\n  layers: [a, b]\n", "parity/layers"),
])
def test_bad_parity_sections_name_file_and_line(tmp_path, section, message):
    table = tmp_path / "t.yaml"
    table.write_text("source: onnx\nrules: []\n" + section)
    with pytest.raises(MappingError) as info:
        spec.load(table)
    assert message in str(info.value) and "t.yaml:" in str(info.value)


def test_parity_section_survives_include(tmp_path):
    (tmp_path / "base.yaml").write_text("source: onnx\nrules: []\nparity:\n  outputs: [y]\n"
                                        "  activations: [{permute: [0, 2, 1]}]\n")
    (tmp_path / "t.yaml").write_text("include: [base.yaml]\nrules: []\n")
    m = spec.load(tmp_path / "t.yaml")
    assert m.parity["outputs"] == ["y"] and [repr(t) for t in m.parity_activations] == ["permute(axes=[0, 2, 1])"]


# -------------------------------------------------------------------- localisation, fake oracle

class KerasLikeSource(nn.Module):
    """The 'source framework': NHWC in and out, its conv layer has the ReLU fused (Keras style)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.c1 = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 6 * 6, 5)

    def acts(self, x_nhwc):
        x = torch.from_numpy(x_nhwc).permute(0, 3, 1, 2)
        h = torch.relu(self.c1(x))
        flat = h.permute(0, 2, 3, 1).reshape(len(h), -1)  # NHWC flatten, like Keras
        w = self.fc.weight.view(5, 4, 6, 6).permute(0, 2, 3, 1).reshape(5, -1)
        return {"conv": h.permute(0, 2, 3, 1).detach().numpy(),
                "dense": (flat @ w.T + self.fc.bias).detach().numpy()}


class FakeOracle(Oracle):
    framework = "fake"

    def __init__(self, net):
        super().__init__(SourceModel("fake", weights=""))
        self.net = net

    def input_names(self):
        return ["x"]

    def output_names(self):
        return ["dense"]

    def layer_order(self):
        return ["conv", "dense"]

    def run(self, inputs, taps=()):
        with torch.no_grad():
            acts = self.net.acts(np.asarray(inputs["x"], np.float32))
        return {"dense": acts["dense"], **{t: acts[t] for t in taps}}


class Target(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.relu = nn.ReLU()
        self.flat = nn.Flatten()
        self.fc = nn.Linear(4 * 6 * 6, 5)

    def forward(self, x):
        return self.fc(self.flat(self.relu(self.conv(x))))


FAKE_TABLE = """
source: numpy
input: {shape: [1, 6, 6, 3], layout: NHWC}
rules:
  - {from: 'conv\\.(?P<p>weight|bias)', to: 'conv.{p}'}
  - {from: 'fc\\.(?P<p>weight|bias)', to: 'fc.{p}'}
"""


def _fake_case(tmp_path, fc_weight):
    src = KerasLikeSource()
    np.savez(tmp_path / "w.npz", **{"conv.weight": src.c1.weight.detach().numpy(),
                                    "conv.bias": src.c1.bias.detach().numpy(),
                                    "fc.weight": fc_weight(src), "fc.bias": src.fc.bias.detach().numpy()})
    (tmp_path / "t.yaml").write_text(FAKE_TABLE)
    import converters

    arrays = converters.read(tmp_path / "w.npz")
    for name, h in arrays.items():  # what a real reader records: the layer each array belongs to
        h.meta["layer"] = "conv" if name.startswith("conv") else "dense"
    return verify(arrays, tmp_path / "t.yaml", Target(), oracle=FakeOracle(src), localise="always")


def test_fused_activation_and_nhwc_activations_are_matched(tmp_path):
    rep = _fake_case(tmp_path, lambda s: s.fc.weight.detach().numpy())
    assert rep.passed, str(rep)
    conv = rep.layers[0]
    assert conv["name"] == "conv" and conv["module"] == "conv" and conv["compared_with"] == "relu"
    assert conv["shape"] == [2, 4, 6, 6]  # the NHWC source activation came back NCHW


def test_flatten_order_fault_is_named_at_the_dense_layer(tmp_path):
    hwc = lambda s: s.fc.weight.detach().view(5, 4, 6, 6).permute(0, 2, 3, 1).reshape(5, -1).numpy()  # noqa: E731
    rep = _fake_case(tmp_path, hwc)
    assert not rep.passed and rep.first_divergent["source_layer"] == "dense", str(rep)
    assert rep.layers[0]["passed"]
    assert any("flatten order" in c for c in rep.first_divergent["likely_causes"])
    d = json.loads(rep.to_json())
    assert d["verdict"] == "FAIL" and d["first_divergent"]["module"] == "fc"
    html = rep._repr_html_()
    assert "first divergent layer" in html and "<table>" in html
    assert "first divergent layer: dense -> fc (Linear)" in str(rep)


def test_plot_needs_matplotlib_or_draws(tmp_path):
    rep = _fake_case(tmp_path, lambda s: s.fc.weight.detach().numpy())
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        with pytest.raises(ConvertersError, match="matplotlib"):
            rep.plot(tmp_path / "p.png")
    else:
        rep.plot(tmp_path / "p.png")
        assert (tmp_path / "p.png").stat().st_size > 0


# ------------------------------------------------------- extra source inputs (initial states)

class StateSource(Oracle):
    """A 'source' graph with two inputs, like an exported RNN: y = x W^T + b + h0 (h0: the state)."""
    framework = "fake"

    def __init__(self, w, b):
        super().__init__(SourceModel("fake", weights=""))
        self.w, self.b = w, b

    def input_names(self):
        return ["x", "h0"]

    def output_names(self):
        return ["y"]

    def layer_order(self):
        return ["fc"]

    def run(self, inputs, taps=()):
        y = inputs["x"] @ self.w.T + self.b + inputs["h0"]
        return {"y": y, **{t: y for t in taps}}


class StateTarget(nn.Module):
    """The PyTorch side: the state is optional, zeros when not given (as nn.LSTM / Gluon do)."""

    def __init__(self):
        super().__init__()
        self.units = 3
        self.fc = nn.Linear(4, 3)

    def forward(self, x, h=None):
        return self.fc(x) + (h if h is not None else 0)


def _state_case(tmp_path, extra, table_extra=None, inputs=None):
    rng = np.random.default_rng(5)
    w, b = rng.normal(size=(3, 4)).astype(np.float32), rng.normal(size=3).astype(np.float32)
    np.savez(tmp_path / "w.npz", **{"fc.weight": w, "fc.bias": b})
    (tmp_path / "t.yaml").write_text("source: numpy\ninput: {shape: [2, 4], layout: NC}\n"
                                     "rules:\n  - {from: 'fc\\.(?P<p>weight|bias)', to: 'fc.{p}'}\n"
                                     + (f"parity:\n  extra_inputs: {table_extra}\n" if table_extra else ""))
    return verify(tmp_path / "w.npz", tmp_path / "t.yaml", StateTarget(), oracle=StateSource(w, b),
                  extra_inputs=extra, inputs=inputs)


def rep_oracle(tmp_path):
    with np.load(tmp_path / "w.npz") as w:
        return StateSource(w["fc.weight"], w["fc.bias"])


def test_one_setup_object_serves_verify_and_write_reference(tmp_path):
    """ParitySetup resolves verify's keywords once; verify_setup and write_reference_setup take it."""
    from converters.parity.reference import write_reference_setup
    from converters.parity.setup import ParitySetup
    from converters.parity.verify import verify_setup

    _state_case(tmp_path, None, "{h0: {shape: [N, units], fill: zeros}}")  # writes w.npz and t.yaml
    setup = ParitySetup.create(tmp_path / "w.npz", tmp_path / "t.yaml", StateTarget(), n=3, seed=4,
                               tolerance={"atol": 1e-5}, extra_inputs={"h0": {"shape": [3, 3], "fill": "random",
                                                                           "target_arg": 1}})
    assert (setup.framework, setup.inputs.n, setup.inputs.seed, setup.tolerance.atol) == ("numpy", 3, 4, 1e-5)
    assert setup.conventions.source["layout"] == "NC" and setup.source_model().framework == "numpy"
    rep = verify_setup(setup, oracle=rep_oracle(tmp_path))
    assert rep.passed and rep.inputs["x"]["shape"] == [3, 4] and rep.tolerance["atol"] == 1e-5, str(rep)
    meta = write_reference_setup(setup, tmp_path / "ref.npz", oracle=rep_oracle(tmp_path), taps="none")
    with np.load(tmp_path / "ref.npz") as ref:
        assert meta["n"] == 3 and ref["input/x"].shape == (3, 4) and ref["input/h0"].shape == (3, 3)
    assert verify_setup(setup, reference=tmp_path / "ref.npz").passed
    with pytest.raises(ConvertersError, match="dtype is float32 or float64"):
        ParitySetup.create(tmp_path / "w.npz", tmp_path / "t.yaml", dtype="float16")


def test_extra_source_inputs_fill_feed_and_shape_expressions(tmp_path):
    with pytest.raises(ConvertersError, match="parity.extra_inputs"):  # two inputs, one declared: say how
        _state_case(tmp_path, None)
    # zeros fed to the source only: the target's default state is zeros too; N and units are computed
    rep = _state_case(tmp_path, None, "{h0: {shape: [N, units], fill: zeros}}")
    assert rep.passed and rep.inputs["h0"] == {"shape": [2, 3], "source_shape": [2, 3], "dtype": "float32",
                                               "fill": "zeros", "fed_to": "source"}
    # a random state the PyTorch model does not get is a parity failure ...
    rep = _state_case(tmp_path, {"h0": {"shape": ["d0", 3], "fill": "random"}})
    assert not rep.passed
    # ... and passes once fed to it as its second positional argument (verify's option wins over the table)
    rep = _state_case(tmp_path, {"h0": {"shape": [2, 3], "fill": "random", "target_arg": 1}},
                      "{h0: {shape: [2, 3], fill: zeros}}")
    assert rep.passed and rep.inputs["h0"]["fed_to"] == "both"
    # given inputs holding every input are used as they are
    h = np.full((2, 3), 7.0, np.float32)
    rep = _state_case(tmp_path, {"h0": {"shape": [2, 3], "target_arg": 1}},
                      inputs={"x": np.ones((2, 4), np.float32), "h0": h})
    assert rep.passed and rep.outputs[0]["max_abs"] < 1e-5
    # a reference file keeps the extra inputs and replays them
    from converters.parity.reference import write_reference

    rep = _state_case(tmp_path, {"h0": {"shape": [2, 3], "fill": "random", "target_arg": 1}})
    meta = write_reference(tmp_path / "w.npz", tmp_path / "t.yaml", tmp_path / "ref.npz", oracle=rep_oracle(tmp_path),
                           target=StateTarget(), extra_inputs={"h0": {"shape": ["N", "units"], "fill": "random"}},
                           taps="none")
    assert meta["input_names"] == ["x", "h0"]
    with np.load(tmp_path / "ref.npz") as ref:
        assert ref["input/h0"].shape == (2, 3) and np.abs(ref["input/h0"]).max() > 0
    replay = verify(tmp_path / "w.npz", tmp_path / "t.yaml", StateTarget(), reference=tmp_path / "ref.npz",
                    extra_inputs={"h0": {"shape": [2, 3], "target_arg": 1}})
    assert replay.passed and replay.inputs["h0"]["fed_to"] == "both"
    with pytest.raises(MappingError, match="hidden_size"):  # a name the model does not have
        _state_case(tmp_path, {"h0": {"shape": ["hidden_size", 3]}})
    with pytest.raises(MappingError, match="not among|does not take"):
        _state_case(tmp_path, {"h0": {"shape": [2, 3]}, "c0": {"shape": [2, 3]}})


@pytest.mark.parametrize("extra, message", [  # the JSON schema speaks first where jsonschema is installed
    ("{h0: {fill: zeros}}", ("shape required", "'shape' is a required")),
    ("{h0: {shape: [2], fill: noise}}", ("fill is zeros, ones, random", "fill: 'noise'")),
    ("{h0: {shape: [2], target_arg: 0}}", ("target_arg",)),
    ("{h0: {shape: ['n +']}}", ("not an expression",)),
])
def test_bad_extra_inputs_name_file_and_line(tmp_path, extra, message):
    table = tmp_path / "t.yaml"
    table.write_text(f"source: onnx\nrules: []\nparity:\n  extra_inputs: {extra}\n")
    with pytest.raises(MappingError) as info:
        spec.load(table)
    assert "t.yaml:4" in str(info.value) and any(m in str(info.value) for m in message), str(info.value)


# ---------------------------------------------------------------------------------- references

def test_reference_files_are_checked(tmp_path):
    np.savez(tmp_path / "plain.npz", x=np.zeros(2))
    with pytest.raises(FormatError, match="__meta__"):
        ReferenceOracle(SourceModel("reference", weights=str(tmp_path / "plain.npz")))
    np.savez(tmp_path / "other.npz", __meta__=np.array(json.dumps({"format": "something"})))
    with pytest.raises(FormatError, match="format"):
        ReferenceOracle(SourceModel("reference", weights=str(tmp_path / "other.npz")))
    (tmp_path / "junk.npz").write_bytes(b"PK\x03\x04 not a zip")
    with pytest.raises(FormatError, match="junk.npz"):
        ReferenceOracle(SourceModel("reference", weights=str(tmp_path / "junk.npz")))


def test_unknown_framework_says_how_to_verify_anyway(tmp_path, capsys):
    from converters.cli import main

    np.savez(tmp_path / "w.npz", a=np.zeros(2))
    code = main(["verify", str(tmp_path / "w.npz"), "--map", "keras/lstm", "--from", "numpy"])
    assert code == 2 and "--reference" in capsys.readouterr().err


# ------------------------------------------------------------------------------------- suites

def test_suite_files_are_checked(tmp_path):
    bad = tmp_path / "s.yaml"
    bad.write_text("cases:\n  - {mapping: x, source: y, tolerence: 1}\n")
    with pytest.raises(ConvertersError, match="tolerence"):
        testing.load_cases(bad)
    bad.write_text("cases:\n  - {mapping: x}\n")
    with pytest.raises(ConvertersError, match="source"):
        testing.load_cases(bad)
    cases = testing.load_cases(ROOT / "tests/parity_cases.yaml")
    assert {c.mapping for c in cases} >= {"caffe/mtcnn_pnet", "mxnet/mtcnn_pnet", "keras/vgg16"}


def test_pytest_plugin_collects_parity_yaml_files(tmp_path):
    pytest.importorskip("cv2")
    caffe = ROOT / "fixtures/caffe/mtcnn_pnet/det1.caffemodel"
    (tmp_path / "suite.parity.yaml").write_text(f"""cases:
  - name: pnet
    source: {caffe}
    mapping: caffe/mtcnn_pnet
  - name: pnet-floor-fault
    source: {caffe}
    mapping: {tmp_path / 'floor.yaml'}
    input_shape: [1, 3, 31, 25]
    expect: fail
    first_divergent: pool1
""")
    table = (ROOT / "converters/mappings/caffe/mtcnn_pnet.yaml").read_text()
    (tmp_path / "floor.yaml").write_text(table.replace("target: converters.models.mtcnn:PNet",
                                                       "target: floor_pnet:FloorPNet"))
    (tmp_path / "floor_pnet.py").write_text("from torch import nn\nfrom converters.models.mtcnn import PNet\n"
                                            "def FloorPNet() -> nn.Module:\n    m = PNet()\n"
                                            "    m.pool1.ceil_mode = False\n"
                                            "    return m\n")
    from importlib.metadata import entry_points

    installed = any(e.value == "converters.testing" for e in entry_points(group="pytest11"))
    plugin = [] if installed else ["-p", "converters.testing"]  # the entry point loads it when installed
    r = subprocess.run([sys.executable, "-m", "pytest", *plugin, "-q", "-p", "no:cacheprovider",
                        str(tmp_path / "suite.parity.yaml")], capture_output=True, text=True, cwd=tmp_path,
                       timeout=300, env={**__import__("os").environ, "PYTHONPATH": str(tmp_path)})
    assert r.returncode == 0 and "2 passed" in r.stdout, r.stdout[-3000:] + r.stderr[-2000:]
