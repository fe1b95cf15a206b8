"""`convert port` MXNet frontend: the real MXNet P-Net (legacy symbol) and small checkpoints made
by mxnet 1.9.1 (fixtures/port/mxnet/make_fixtures.py), ported to PyTorch code and verified against
mxnet itself (the side interpreter .venv-mxnet) through the normal table + writer path."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import yaml

from converters.port import port
from converters.port.frontends.mxnet import build_graph
from converters.port.graph import PortError, UnsupportedOpError

ROOT = Path(__file__).resolve().parents[1]
FIX = ROOT / "fixtures" / "port" / "mxnet"
PNET = ROOT / "fixtures" / "mxnet" / "mtcnn_pnet" / "det1-0001.params"
MXNET_PY = ROOT / ".venv-mxnet" / "bin" / "python"

pytestmark = pytest.mark.mxnet


def _verified(tmp_path, source, shapes, **kw):
    """Port with --verify; every output within 1e-5 of mxnet's, relative to the output's scale."""
    if not MXNET_PY.exists():
        pytest.skip(f"the mxnet environment {MXNET_PY} is missing (scripts/setup.sh creates it)")
    result = port([str(source)], tmp_path / "out", framework="mxnet", input_shapes=shapes, verify=True, **kw)
    assert result.parity.passed, str(result.parity)
    for o in result.parity.outputs:
        assert o["max_abs"] <= 1e-5 * max(1.0, o["scale"]), o
    return result


def test_pnet_real_file_matches_mxnet(tmp_path):
    result = _verified(tmp_path, PNET, {"data": (1, 3, 12, 12)})
    source = Path(result.model_file).read_text()
    for layer in ("self.conv1 = nn.Conv2d(3, 10", "self.prelu1 = nn.PReLU(10)", "ceil_mode=True",
                  "# prob1: SoftmaxActivation", "torch.softmax(conv4_1, dim=1)"):
        assert layer in source
    table = yaml.safe_load(Path(result.table_file).read_text())
    # the MXNet port's own kernels, copied as they are (its H/W swap is the model's convention)
    assert {"from": "conv1_weight", "to": "conv1.weight"} in table["rules"]
    assert table["parity"]["outputs"] == ["conv4_2", "prob1"]


def test_pnet_without_input_shape_is_fully_convolutional(tmp_path):
    graph = build_graph([str(PNET)])
    assert graph.inputs[0].shape == (None, None, None, None)
    assert [n.op for n in graph.nodes].count("conv") == 5


@pytest.mark.parametrize("name, shape", [
    ("convbn", (2, 3, 15, 15)),
    pytest.param("shapes", (2, 3, 4, 4), marks=pytest.mark.heavy),
    pytest.param("upsample", (1, 2, 7, 8), marks=pytest.mark.heavy),
])
def test_op_families_match_mxnet(tmp_path, name, shape):
    _verified(tmp_path, FIX / f"{name}-0000.params", {"data": shape})


@pytest.mark.heavy
@pytest.mark.parametrize("name", ["mobilenet_v2_0_25", "resnet18_v1",
                                  "gluoncv:mobilenetv3_small"])   # hard-swish via _plus_scalar/clip/_div_scalar, SE
def test_gluon_model_zoo_networks_match_mxnet(tmp_path, name):
    """Whole Gluon networks (random weights) exported by mxnet at test time, ported and verified."""
    if not MXNET_PY.exists():
        pytest.skip(f"the mxnet environment {MXNET_PY} is missing (scripts/setup.sh creates it)")
    prefix = tmp_path / name.replace(":", "_")
    subprocess.run([str(MXNET_PY), str(FIX / "export_zoo.py"), name, str(prefix), "64"], check=True,
                   capture_output=True, timeout=300)
    _verified(tmp_path, f"{prefix}-0000.params", {"data": (1, 3, 64, 64)})


def test_batchnorm_defaults_and_fix_gamma():
    graph = build_graph([str(FIX / "convbn-0000.params")], input_shapes={"data": (2, 3, 15, 15)})
    bn = {n.name: n for n in graph.nodes if n.op == "batchnorm"}
    assert bn["bn1"].attrs["eps"] == 1e-3                       # the symbol op's default, not PyTorch's
    assert bn["bn1"].params["weight"].transforms == [{"constant": 1.0}]   # fix_gamma=True: gamma is 1
    assert bn["bn2"].attrs["eps"] == 2e-5 and bn["bn2"].params["weight"].transforms == []
    fc = next(n for n in graph.nodes if n.name == "fc1")
    assert fc.inputs == ["fc1_flatten"]                          # FullyConnected flattens a 4-d input
    pool = next(n for n in graph.nodes if n.name == "pool1")
    assert pool.attrs["ceil_mode"] is True                       # pooling_convention=full
    assert graph.extra_inputs == {"softmax_label": {"shape": ["d0"], "fill": "zeros"}}


def test_outputs_option_exposes_inner_heads(tmp_path):
    result = _verified(tmp_path, FIX / "convbn-0000.params", {"data": (2, 3, 15, 15)}, outputs=["bn2", "fc1"])
    table = yaml.safe_load(Path(result.table_file).read_text())
    assert table["parity"]["outputs"] == ["bn2", "fc1"]
    # no ported output needs the label, but mxnet binds the whole symbol: it is still fed
    assert table["parity"]["extra_inputs"] == {"softmax_label": {"shape": ["d0"], "fill": "zeros"}}
    graph = build_graph([str(FIX / "convbn-0000.params")], input_shapes={"data": (2, 3, 15, 15)}, outputs=["bn1"])
    assert graph.outputs == ["bn1"]
    assert "conv3_weight" in graph.unused_arrays and "bn2_gamma" in graph.unused_arrays


def test_sizes_needed_without_input_shape():
    with pytest.raises(PortError, match="SliceChannel \\(split sizes\\) needs the input's sizes.*--input-shape"):
        build_graph([str(FIX / "shapes-0000.params")])


def test_several_inputs_without_shapes_is_one_error():
    with pytest.raises(PortError, match="3 data inputs \\(data0, data1, data2\\) and no shapes"):
        build_graph([str(FIX / "lstm-0000.params")])


def test_unsupported_op_names_op_layer_and_file(tmp_path):
    doc = json.loads((FIX / "convbn-symbol.json").read_text())
    for node in doc["nodes"]:
        if node["name"] == "relu1":
            node["op"], node["attrs"] = "LRN", {"nsize": "3"}
    (tmp_path / "convbn-symbol.json").write_text(json.dumps(doc))
    (tmp_path / "convbn-0000.params").write_bytes((FIX / "convbn-0000.params").read_bytes())
    with pytest.raises(UnsupportedOpError) as e:
        port([str(tmp_path / "convbn-0000.params")], tmp_path / "out", framework="mxnet",
             input_shapes={"data": (1, 3, 15, 15)})
    assert "layer 'relu1': op LRN is not supported" in str(e.value)
    assert "convbn-symbol.json" in str(e.value)
    assert not (tmp_path / "out").exists()


def test_params_without_symbol_is_refused():
    with pytest.raises(PortError, match="needs the network's -symbol.json"):
        build_graph([str(ROOT / "fixtures" / "mxnet" / "smallnet_gluon.params")])
