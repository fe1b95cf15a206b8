"""convert port, Caffe frontend: real files and one small net per op family, OpenCV as the oracle.

Real files: the MTCNN P-Net (fixtures/caffe/mtcnn_pnet) and OpenCV's res10 SSD face detector (the
10.7 MB training snapshot + deploy.prototxt, read beside the checkout as tests/test_tables_res10.py
does). The generated modules are also compared with the hand-written ones (converters/models)
filled by the shipped tables: same outputs on the same weights. Small nets are built by
google.protobuf (fixtures/port/caffe/make_nets.py) into tmp_path.
"""
from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest
import torch
from port_helpers import caffe_port_nets

import converters
from converters.convert import convert
from converters.mapping import spec as mapping_spec
from converters.target import load_converted

ROOT = Path(__file__).resolve().parents[1]
PNET = ROOT / "fixtures/caffe/mtcnn_pnet/det1.caffemodel"
RES10 = ROOT / "fixtures/caffe/res10_ssd"  # the real file, copied from shared/realdata (fixtures/README.md)
RES10_WEIGHTS = RES10 / "res10_300x300_ssd_iter_140000.caffemodel"
RES10_PROTOTXT = RES10 / "deploy.prototxt"
REL_TOL = 1e-5  # max |diff| relative to the output's scale (max |reference|)

pytest.importorskip("cv2", reason="OpenCV (opencv-python-headless<5) is the Caffe oracle")


def _rel(rep) -> dict:
    return {o["name"]: o["max_abs"] / max(o["scale"] or 1.0, 1e-12) for o in rep.outputs}


def _assert_pass(rep):
    assert rep.passed, str(rep)
    worst = _rel(rep)
    assert max(worst.values()) <= REL_TOL, worst
    return worst


def test_pnet_real_file_ports_verifies_and_names_its_layers(tmp_path):
    result = converters.port(str(PNET), tmp_path / "pnet", name="PNetPort", verify=True)
    worst = _assert_pass(result.parity)
    print("P-Net max|diff| / scale:", worst)
    assert [o["name"] for o in result.parity.outputs] == ["conv4-2", "prob1"]
    # model.py read back: one submodule per weighted Caffe layer, a comment per statement
    text = Path(result.model_file).read_text()
    tree = ast.parse(text)
    (cls,) = [n for n in tree.body if isinstance(n, ast.ClassDef)]
    init = next(f for f in cls.body if isinstance(f, ast.FunctionDef) and f.name == "__init__")
    attrs = [t.attr for s in init.body if isinstance(s, ast.Assign) for t in s.targets if isinstance(t, ast.Attribute)]
    assert attrs == ["conv1", "PReLU1", "pool1", "conv2", "PReLU2", "conv3", "PReLU3", "conv4_1", "conv4_2"]
    for layer, op in [("conv1", "Convolution"), ("PReLU1", "PReLU"), ("pool1", "Pooling"), ("conv4-2", "Convolution"),
                      ("prob1", "Softmax")]:
        assert f"# {layer}: {op}\n" in text
    rows = {r["layer"]: r for r in result.layers}
    lines = text.splitlines()
    assert "self.conv4_2(" in lines[rows["conv4-2"]["lines"][0] - 1]
    table = mapping_spec.load(result.table_file)
    assert table.input["shape"] == [1, 3, 12, 12] and table.input["layout"] == "NCHW"
    assert "channels" not in table.input and "mean" not in table.input  # not recorded in a Caffe file


def test_pnet_port_equals_the_hand_written_pnet(tmp_path):
    result = converters.port(str(PNET), tmp_path / "pnet", name="PNetPort")
    ported = load_converted(result.weights_file, result.table_file)
    hand, rep = convert(str(PNET), "caffe/mtcnn_pnet")
    assert rep.ok
    x = torch.randn(3, 3, 24, 31, generator=torch.Generator().manual_seed(0)) * 100
    with torch.no_grad():
        box, prob = ported(x)
        prob_h, box_h = hand(x)
    assert torch.equal(box, box_h) and torch.equal(prob, prob_h)


@pytest.mark.heavy
@pytest.mark.skipif(not (RES10_WEIGHTS.is_file() and RES10_PROTOTXT.is_file()),
                    reason="res10 SSD real file not present beside the checkout")
def test_res10_real_file_ports_to_the_raw_heads_and_equals_the_hand_written_model(tmp_path, capsys):
    from converters.cli import main

    out = tmp_path / "res10"
    code = main(["port", str(RES10_WEIGHTS), str(RES10_PROTOTXT), "-o", str(out), "--name", "Res10SSDPort",
                 "--outputs", "mbox_loc,mbox_conf_flatten", "--verify"])
    stdout = capsys.readouterr().out
    assert code == 0, stdout
    assert "parity PASS" in stdout
    table = out / "res10_ssdport.yaml"
    m = mapping_spec.load(table)
    assert m.parity["outputs"] == ["mbox_loc", "mbox_conf_flatten"]
    ported = load_converted(out / "weights.safetensors", table)
    hand, rep = convert(str(RES10_WEIGHTS), "caffe/res10_ssd")
    x = torch.randn(2, 3, 300, 300, generator=torch.Generator().manual_seed(0)) * 50
    with torch.no_grad():
        got, want = ported(x), hand(x)
    for g, w in zip(got, want):
        assert (g - w).abs().max() <= REL_TOL * w.abs().max()
    # BatchNorm + Scale pairs are folded into one BatchNorm2d named after the BatchNorm layer
    assert sum(isinstance(mod, torch.nn.BatchNorm2d) for mod in ported.modules()) == 10
    assert isinstance(ported.layer_512_1_conv2_h, torch.nn.Conv2d) and ported.layer_512_1_conv2_h.dilation == (2, 2)


def test_ssd_box_decoder_is_refused_with_a_hint_to_stop_before_it(nets, tmp_path, capsys):
    from converters.cli import main

    mk, pb, d = nets
    text, blobs = mk.NETS["convs"]
    text += mk.L("priors", "PriorBox", ["conv1", "data"], "priors", "prior_box_param { min_size: 30 }")
    model, proto = mk.build(pb, "ssd_like", d, prototxt=text, blobs=blobs)
    code = main(["port", str(model), str(proto), "-o", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and "'priors'" in err and "PriorBox" in err and "--outputs" in err
    assert not (tmp_path / "out").exists()
    code = main(["port", str(model), str(proto), "-o", str(tmp_path / "out"), "--outputs", "deconv"])
    assert code == 0 and (tmp_path / "out" / "model.py").is_file()


# ------------------------------------------------------------------- one small net per op family

@pytest.fixture(scope="module")
def nets(tmp_path_factory):
    return caffe_port_nets(tmp_path_factory)


# the blobs compared: every layer whose semantics could differ, not only the net's final outputs
# (not sc1: OpenCV fuses bn1 + sc1 + the in-place relu1 and returns no usable sc1 blob; relu1,
# a leaky ReLU, shows any fault of the folded bn1 + sc1; bn2 requested keeps bn2 and sc2 apart)
OUTPUTS = {
    "axes": ["ip_a2", "flat_12", "ip_last", "se", "interp"],
    "convs": ["conv1", "conv_g", "conv_hw", "dw", "deconv"],
    "norm_act": ["relu1", "bn2", "sc2", "prelu_c", "prelu_s", "sig", "tanh", "elu", "absval", "bnll", "power",
                 "lrn", "cat"],
    "pool_shape": ["pool_max", "pool_ave", "pool_ave2", "gpool", "sum", "prod", "emax", "cat", "crop", "norm", "perm",
                   "flat", "reshape", "fc", "fc_t", "prob"],
}


@pytest.mark.parametrize("name", sorted(OUTPUTS))
def test_op_family_net_verifies_against_opencv(nets, tmp_path, name):
    mk, pb, d = nets
    model, proto = mk.build(pb, name, d)
    result = converters.port([str(model), str(proto)], tmp_path / name, outputs=OUTPUTS[name], verify=True)
    worst = _assert_pass(result.parity)
    assert sorted(worst) == sorted(OUTPUTS[name])
    print(name, "max|diff| / scale:", max(worst.values()))
    assert result.report.ok


def test_caffemodel_alone_is_its_own_net(nets, tmp_path):
    """Without a prototxt the caffemodel's layers (with their params) are the graph."""
    mk, pb, d = nets
    model, _ = mk.build(pb, "norm_act", d / "alone")
    result = converters.port(str(model), tmp_path / "out", reader_options={"prototxt": False}, verify=True)
    _assert_pass(result.parity)


def test_outputs_cut_the_graph_and_ignore_the_rest_with_a_reason(nets, tmp_path):
    mk, pb, d = nets
    model, proto = mk.build(pb, "pool_shape", d)
    result = converters.port([str(model), str(proto)], tmp_path / "out", outputs=["norm"], verify=True)
    _assert_pass(result.parity)
    table = mapping_spec.load(result.table_file)
    ignored = {i.pattern.pattern: i.reason for i in table.ignore}
    assert set(ignored) == {"fc/0", "fc/1", "fc_t/0", "fc_t/1"}
    assert all("--outputs" in r for r in ignored.values())
    assert {r["layer"] for r in result.layers} >= {"pool_max", "crop", "norm"}
    assert "prob" not in {r["layer"] for r in result.layers}


def test_inner_product_transpose_is_caffe_semantics(nets, tmp_path):
    """`transpose: true` stores the weight (in, out): y = x W + b. OpenCV ignores the flag (it reads
    the blob as (out, in)), so the reference is Caffe's definition computed with numpy."""
    mk, pb, d = nets
    text = mk._input([2, 6]) + mk.L("fc", "InnerProduct", "data", "fc", "inner_product_param { num_output: 3 "
                                                                        "transpose: true }")
    model, proto = mk.build(pb, "ip_t", d, prototxt=text, blobs={"fc": [(6, 3), (3,)]})
    result = converters.port([str(model), str(proto)], tmp_path / "out")
    net = load_converted(result.weights_file, result.table_file)
    f = converters.read(str(model), prototxt=str(proto))
    x = np.random.default_rng(1).standard_normal((2, 6)).astype(np.float32)
    with torch.no_grad():
        y = net(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(y, x @ f["fc/0"].numpy() + f["fc/1"].numpy(), rtol=1e-6, atol=1e-6)


def test_legacy_v1_caffemodel_alone_ports_and_runs_like_opencv(tmp_path):
    """A V1 (`layers`, enum types) caffemodel with legacy 4-d blob shapes and no prototxt: the port
    reshapes the InnerProduct blobs; OpenCV runs the same net from a deploy prototxt written here."""
    weights = ROOT / "fixtures/caffe/v1_layers.caffemodel"
    proto = tmp_path / "deploy.prototxt"
    proto.write_text('input: "data"\ninput_dim: 1\ninput_dim: 1\ninput_dim: 8\ninput_dim: 8\n'
                     'layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1" '
                     'convolution_param { num_output: 4 kernel_size: 3 pad: 1 } }\n'
                     'layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }\n'
                     'layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1" '
                     'pooling_param { pool: AVE kernel_size: 2 stride: 2 } }\n'
                     'layer { name: "ip1" type: "InnerProduct" bottom: "pool1" top: "ip1" '
                     'inner_product_param { num_output: 3 } }\n'
                     'layer { name: "prob" type: "Softmax" bottom: "ip1" top: "prob" }\n')
    result = converters.port(str(weights), tmp_path / "out", reader_options={"prototxt": False}, verify=True,
                             verify_options={"architecture": str(proto)})
    _assert_pass(result.parity)
    import yaml

    rules = {r["from"]: r for r in yaml.safe_load(Path(result.table_file).read_text())["rules"]}
    assert rules["ip1/0"]["transforms"] == [{"reshape": [3, 64]}] and rules["ip1/1"]["transforms"] == [{"reshape": [3]}]


def test_training_net_alone_skips_its_loss_and_label_and_equals_the_deploy_port(tmp_path):
    """bn_scale.caffemodel holds its training net (an Input layer with data + label, a loss layer):
    ported without the prototxt it is the deploy net (the label, read only by the loss, dropped)."""
    weights = ROOT / "fixtures/caffe/bn_scale/bn_scale.caffemodel"
    alone = converters.port(str(weights), tmp_path / "alone", reader_options={"prototxt": False})
    deploy = converters.port(str(weights), tmp_path / "deploy")  # deploy.prototxt found beside it
    a, b = (load_converted(r.weights_file, r.table_file) for r in (alone, deploy))
    assert "label" not in Path(alone.model_file).read_text().split("def forward")[1].split(":")[0]
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():  # the deploy net ends in a Softmax `prob`, the training net in its loss
        torch.testing.assert_close(torch.softmax(a(x), dim=1), b(x), rtol=1e-6, atol=1e-7)
    assert "SoftmaxWithLoss" not in Path(alone.model_file).read_text()


def test_fork_layer_params_the_caffemodel_cannot_name_need_the_prototxt(tmp_path, capsys):
    from converters.cli import main

    weights = ROOT / "fixtures/caffe/res10_head/res10_head.caffemodel"
    code = main(["port", str(weights), "-o", str(tmp_path / "out"), "--option", "prototxt=false"])
    err = capsys.readouterr().err
    assert code == 2 and "'conv4_3_norm'" in err and "norm_param" in err and "prototxt" in err
    assert not (tmp_path / "out").exists()


def test_lrn_k_is_caffe_semantics(nets, tmp_path):
    """LRN: b = a / (k + alpha/size * sum of a^2 over `size` channels)^beta. OpenCV's importer
    ignores `k` (takes 1), so k != 1 is checked against Caffe's formula in numpy."""
    mk, pb, d = nets
    text = mk._input([2, 6, 3, 3]) + mk.L("lrn", "LRN", "data", "lrn", "lrn_param { local_size: 5 alpha: 0.5 "
                                                                       "beta: 0.75 k: 2 }")
    model, proto = mk.build(pb, "lrn_k", d, prototxt=text, blobs={})
    result = converters.port([str(model), str(proto)], tmp_path / "out")
    net = load_converted(result.weights_file, result.table_file)
    x = np.random.default_rng(2).standard_normal((2, 6, 3, 3)).astype(np.float32) * 2
    sq = np.pad(x ** 2, ((0, 0), (2, 2), (0, 0), (0, 0)))
    window = sum(sq[:, i:i + 6] for i in range(5))
    with torch.no_grad():
        y = net(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(y, x / (2 + 0.5 / 5 * window) ** 0.75, rtol=1e-5, atol=1e-6)


def test_train_val_prototxt_layers_of_the_train_phase_are_skipped(nets, tmp_path):
    mk, pb, d = nets
    text, blobs = mk.NETS["convs"]
    text += mk.L("drop_train", "Dropout", "deconv", "deconv", "include { phase: TRAIN }")
    text += mk.L("extra", "Convolution", "deconv", "extra", "include { phase: TRAIN } convolution_param { "
                                                             "num_output: 2 kernel_size: 1 }")
    model, proto = mk.build(pb, "train_val", d, prototxt=text, blobs={**blobs, "extra": [(2, 6, 1, 1), (2,)]})
    result = converters.port([str(model), str(proto)], tmp_path / "out", verify=True)
    _assert_pass(result.parity)
    assert {r["layer"] for r in result.layers} == {"conv1", "conv_g", "conv_hw", "dw", "deconv"}
    ignored = {i.pattern.pattern: i.reason for i in mapping_spec.load(result.table_file).ignore}
    assert set(ignored) == {"extra/0", "extra/1"} and all("TRAIN" in r for r in ignored.values())


def test_inner_product_features_that_the_prototxt_does_not_give_are_refused(nets, tmp_path, capsys):
    """Sizes are followed through the prototxt (Caffe's conv / ceil-pool arithmetic): an
    InnerProduct blob for another input size stops the port before anything is written."""
    from converters.cli import main

    mk, pb, d = nets
    text = mk._input([1, 2, 9, 9]) + mk.L("pool", "Pooling", "data", "pool", "pooling_param { pool: MAX kernel_size: 3 "
                                                                            "stride: 2 pad: 1 }")
    text += mk.L("fc", "InnerProduct", "pool", "fc", "inner_product_param { num_output: 3 }")
    model, proto = mk.build(pb, "ip_bad", d, prototxt=text, blobs={"fc": [(3, 2 * 4 * 4), (3,)]})
    code = main(["port", str(model), str(proto), "-o", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "'fc'" in err and "32 input features" in err and "2x5x5 = 50" in err
    assert not (tmp_path / "out").exists()
