"""convert port, the format-independent core: codegen, emitters, the generated file, the CLI contract.

The generated model.py is checked with the real formatter (`ruff format --check`) and imported
in a fresh interpreter where `converters` cannot be imported; emitter semantics that no Caffe
model exercises (TF SAME padding, average pooling that excludes padding) are compared with
TensorFlow's own ops. Caffe files for the CLI cases are built by google.protobuf
(fixtures/port/caffe/make_nets.py) into tmp_path.
"""
from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from port_helpers import assert_ruff_formatted, caffe_port_nets

from converters.cli import main as cli_main
from converters.port import codegen
from converters.port.graph import Graph, GraphInput, Node, UnsupportedOpError

ROOT = Path(__file__).resolve().parents[1]
PNET = ROOT / "fixtures/caffe/mtcnn_pnet/det1.caffemodel"


def _load(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(f"port_core_{name}_{abs(hash(str(path)))}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return getattr(module, name)


def _node(name, op, ins, outs, **attrs):
    return Node(name, op, list(ins), list(outs), attrs, source_op=f"Src{op.title()}")


def _every_op_graph() -> Graph:
    """One node (or more) per canonical op and padding variant, shapes chosen to chain."""
    same = dict(dims=2, in_channels=3, out_channels=4, kernel=(3, 3), stride=(2, 2), dilation=(1, 1), groups=1,
                bias=True)
    n = [
        _node("conv-same", "conv", ["x"], ["c1"], padding="same", **same),
        _node("conv asym", "conv", ["c1"], ["c2"], padding=[(0, 1), (1, 0)], **{**same, "in_channels": 4,
                                                                              "stride": (1, 1)}),
        _node("dw", "conv", ["c2"], ["c3"], padding=[(1, 1), (1, 1)], **{**same, "in_channels": 4, "groups": 4,
                                                                       "stride": (1, 1), "dilation": (1, 1)}),
        _node("deconv", "conv_transpose", ["c3"], ["d1"], dims=2, in_channels=4, out_channels=4, kernel=(3, 3),
              stride=(2, 2), dilation=(1, 1), groups=1, padding=[(1, 0), (0, 1)], output_padding=(0, 0), bias=False),
        _node("bn", "batchnorm", ["d1"], ["b1"], dims=2, num_features=4, eps=1e-3, affine=False),
        _node("scale", "scale", ["b1"], ["s1"], num_features=4, bias=True),
        _node("prelu", "prelu", ["s1"], ["p1"], num_parameters=4),
        _node("norm", "normalize", ["p1"], ["n1"], num_features=4, across_spatial=False, channel_shared=False,
              eps=1e-10),
        _node("maxsame", "pool", ["n1"], ["m1"], kind="max", dims=2, kernel=(3, 3), stride=(2, 2), padding="same"),
        _node("avgsame", "pool", ["n1"], ["m2"], kind="avg", dims=2, kernel=(3, 3), stride=(2, 2), padding="same"),
        _node("avgpad", "pool", ["n1"], ["m3"], kind="avg", dims=2, kernel=(3, 3), stride=(2, 2),
              padding=[(1, 1), (1, 1)], ceil_mode=False, count_include_pad=False),
        _node("sum", "add", ["m1", "m2", "m3"], ["e1"], coeffs=[1.0, -0.5, 2.0]),
        _node("diff", "sub", ["e1", "m1"], ["e2"]),
        _node("prod", "mul", ["e2", "m2"], ["e3"]),
        _node("quot", "div", ["e3", "m1"], ["e4"]),
        _node("hi", "max", ["e4", "m2"], ["e5"]),
        _node("lo", "min", ["e5", "m3"], ["e6"]),
        _node("clip", "clip", ["e6"], ["k1"], min=-1.0, max=None),
        _node("up", "upsample", ["k1"], ["u1"], mode="bilinear", scale=(2.0, 2.0), size=None, align_corners=False,
              half_pixel=True),
        _node("up-nearest", "upsample", ["u1"], ["u2"], mode="nearest", scale=None, size=(10, 10),
              align_corners=False),
        _node("pad", "pad", ["u2"], ["q1"], pads=[(0, 0), (0, 0), (1, 2), (2, 1)], mode="reflect", value=0.0),
        _node("crop", "crop", ["q1", "u2"], ["q2"], offsets=[None, None, 1, 1]),
        _node("cat", "concat", ["q2", "u2"], ["j1"], axis=1),
        _node("split", "split", ["j1"], ["j2", "j3"], axis=1, sizes=[3, 5]),
        _node("slice", "slice", ["j3"], ["j4"], axis=1, start=1, stop=4, step=2),
        _node("perm", "transpose", ["j4"], ["t1"], perm=(0, 2, 3, 1)),
        _node("unsq", "unsqueeze", ["t1"], ["t2"], axes=(1,)),
        _node("sq", "squeeze", ["t2"], ["t3"], axes=(1,)),
        _node("mean", "reduce", ["t3"], ["r1"], kind="mean", axes=[3], keepdims=False),
        _node("flat", "flatten", ["r1"], ["f1"], start_dim=1),
        _node("reshape", "reshape", ["f1"], ["f2"], shape=(0, -1)),
        _node("fc", "linear", ["f2"], ["l1"], in_features=100, out_features=6, bias=True),
        _node("const", "constant", [], ["w"], shape=(6, 6)),
        _node("mm", "matmul", ["l1", "w"], ["l2"]),
        _node("gap", "global_pool", ["j2"], ["g1"], kind="avg", keepdims=False),
        _node("drop", "identity", ["g1"], ["g2"]),
        _node("softmax", "softmax", ["l2"], ["y1"], axis=1),
        _node("logsoftmax", "softmax", ["l2"], ["y2"], axis=-1, log=True),
    ]
    acts = ["relu", "relu6", "selu", "sigmoid", "tanh", "hard_swish", "silu", "softplus", "softsign", "exp", "abs",
            "neg", "linear", "leaky_relu", "elu", "gelu", "hard_sigmoid", "power"]
    extra = {"leaky_relu": {"negative_slope": 0.2}, "elu": {"alpha": 0.5}, "gelu": {"approximate": "tanh"},
             "hard_sigmoid": {"alpha": 0.2, "beta": 0.5}, "power": {"power": 2.0, "scale": 0.5, "shift": 1.0}}
    prev = "g2"
    for k in acts:
        n.append(_node(f"act {k}", "activation", [prev], [f"a_{k}"], kind=k, **extra.get(k, {})))
        prev = f"a_{k}"
    return Graph("every op", "test", ["<none>"], [GraphInput("x", (1, 3, 9, 9))], ["y1", "y2", prev], n)


def test_every_emitter_gives_ruff_formatted_code_that_runs_with_only_torch(tmp_path):
    graph = _every_op_graph()
    graph.check()
    gen = codegen.generate(graph, "EveryOp")
    path = tmp_path / "model.py"
    path.write_text(gen.source)
    assert_ruff_formatted(path)
    # a fresh interpreter where the toolkit cannot be imported: the file needs torch only
    code = ("import sys, importlib.util; sys.modules['converters'] = None\n"
            f"spec = importlib.util.spec_from_file_location('m', {str(path)!r})\n"
            "m = importlib.util.module_from_spec(spec)\n"
            "spec.loader.exec_module(m); import torch; net = m.EveryOp().eval()\n"
            "outs = net(torch.randn(1, 3, 9, 9))\n"
            "assert all(torch.isfinite(o).all() for o in outs), 'non-finite output'\n"
            "print([tuple(o.shape) for o in outs])")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[(1, 6), (1, 6), (1, 3)]"
    text = gen.source
    assert "# conv-same: SrcConv" in text and "self.conv_same = nn.Conv2d(3, 4" in text
    assert "import converters" not in text and "from converters" not in text
    assert [b.attr for b in gen.bindings][:3] == ["conv_same", "conv_asym", "dw"]


def test_emitter_refuses_what_it_cannot_express_exactly():
    g = Graph("bad", "test", ["net.file"], [GraphInput("x", (1, 3, 8, 8))], ["y"],
              [_node("up1", "upsample", ["x"], ["y"], mode="bilinear", scale=(2.0, 2.0), size=None,
                     align_corners=False, half_pixel=False)])
    with pytest.raises(UnsupportedOpError) as e:
        codegen.generate(g, "Bad")
    msg = str(e.value)
    assert "up1" in msg and "asymmetric bilinear" in msg and "net.file" in msg and "\n" not in msg


@pytest.fixture(scope="module")
def tf():
    return pytest.importorskip("tensorflow")


@pytest.mark.heavy  # importing TensorFlow dominates this file's time
def test_tf_same_padding_and_pooling_match_tensorflow(tf, tmp_path):
    """TF SAME conv / max / avg (padding excluded from the count) on odd and even sizes, strides 1-3."""
    rng = np.random.default_rng(0)
    for size, stride in [(9, 2), (10, 2), (7, 3), (8, 1)]:
        x = rng.standard_normal((1, 3, size, size + 1)).astype(np.float32)
        w = rng.standard_normal((3, 3, 3, 4)).astype(np.float32)  # HWIO
        g = Graph("same", "test", ["-"], [GraphInput("x", (1, 3, size, size + 1))], ["c", "m", "a"], [
            _node("c", "conv", ["x"], ["c"], dims=2, in_channels=3, out_channels=4, kernel=(3, 3),
                  stride=(stride, stride), dilation=(1, 1), groups=1, padding="same", bias=False),
            _node("m", "pool", ["x"], ["m"], kind="max", dims=2, kernel=(3, 3), stride=(stride, stride),
                  padding="same"),
            _node("a", "pool", ["x"], ["a"], kind="avg", dims=2, kernel=(3, 3), stride=(stride, stride),
                  padding="same")])
        path = tmp_path / f"same_{size}_{stride}.py"
        path.write_text(codegen.generate(g, "Same").source)
        net = _load(path, "Same")().eval()
        net.c.weight.data = torch.from_numpy(w.transpose(3, 2, 0, 1).copy())
        with torch.no_grad():
            c, m, a = (t.numpy().transpose(0, 2, 3, 1) for t in net(torch.from_numpy(x)))
        xt = x.transpose(0, 2, 3, 1)
        np.testing.assert_allclose(c, tf.nn.conv2d(xt, w, stride, "SAME").numpy(), atol=1e-5)
        np.testing.assert_allclose(m, tf.nn.max_pool2d(xt, 3, stride, "SAME").numpy(), atol=1e-6)
        np.testing.assert_allclose(a, tf.nn.avg_pool2d(xt, 3, stride, "SAME").numpy(), atol=1e-6)


# ------------------------------------------------------------------------------ the CLI contract

@pytest.fixture(scope="module")
def nets(tmp_path_factory):
    return caffe_port_nets(tmp_path_factory)


def _port(capsys, *argv):
    code = cli_main(["port", *map(str, argv)])
    out = capsys.readouterr()
    return code, out.out, out.err


def _leftovers(parent: Path) -> list:
    return [p.name for p in parent.iterdir() if ".port-" in p.name]


def test_unsupported_op_is_one_line_exit_2_and_writes_nothing(nets, tmp_path, capsys):
    mk, pb, d = nets
    text = mk._input([1, 3, 8, 8]) + mk.L("spp1", "SPP", "data", "spp1", "spp_param { pyramid_height: 2 }")
    model, proto = mk.build(pb, "spp", d, prototxt=text, blobs={})
    out = tmp_path / "out"
    code, _, err = _port(capsys, model, proto, "-o", out)
    assert code == 2
    assert err.count("\n") == 1 and "'spp1'" in err and "SPP" in err and "spp.caffemodel" in err
    assert not out.exists() and _leftovers(tmp_path) == []


def test_prototxt_that_disagrees_with_the_weights_is_refused(nets, tmp_path, capsys):
    mk, pb, d = nets
    model, _ = mk.build(pb, "convs", d / "good")
    text = mk.NETS["convs"][0].replace("num_output: 8 kernel_size: 3 pad: 1", "num_output: 6 kernel_size: 3 pad: 1")
    bad = d / "bad.prototxt"
    bad.write_text(text)
    out = tmp_path / "out"
    code, _, err = _port(capsys, model, bad, "-o", out)
    assert code == 2 and err.count("\n") == 1
    assert "'conv1'" in err and "num_output 6" in err and "(8, 3, 3, 3)" in err
    assert not out.exists() and _leftovers(tmp_path) == []


def test_several_inputs_without_shapes_is_refused(nets, tmp_path, capsys):
    mk, pb, d = nets
    text = ('input: "a"\ninput: "b"\n' + mk.L("sum", "Eltwise", ["a", "b"], "sum"))
    model, proto = mk.build(pb, "two_inputs", d, prototxt=text, blobs={})
    out = tmp_path / "out"
    code, _, err = _port(capsys, model, proto, "-o", out)
    assert code == 2 and err.count("\n") == 1 and "several inputs" in err and "--input-shape" in err
    assert not out.exists() and _leftovers(tmp_path) == []
    code, stdout, err = _port(capsys, model, proto, "-o", out, "--input-shape", "a=1,2,3,3",
                              "--input-shape", "b=1,2,3,3", "--verify")
    assert code == 0, err
    assert "parity PASS" in stdout


def test_existing_dir_needs_force_and_pth_format(tmp_path, capsys):
    out = tmp_path / "pnet"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    code, _, err = _port(capsys, PNET, "-o", out)
    assert code == 2 and "--force" in err and (out / "keep.txt").read_text() == "mine"
    code, stdout, err = _port(capsys, PNET, "-o", out, "--force", "--format", "pth", "--name", "PNetPort")
    assert code == 0, err
    assert sorted(p.name for p in out.iterdir()) == ["model.py", "pnet_port.yaml", "weights.pth"]
    sd = torch.load(out / "weights.pth", weights_only=True)
    assert set(sd) == set(_load(out / "model.py", "PNetPort")().state_dict())
    assert "conv4-2 (Convolution) -> line" in stdout and _leftovers(tmp_path) == []


def test_table_target_is_the_file_beside_it_from_any_directory(tmp_path, monkeypatch):
    import converters
    from converters.convert import convert

    result = converters.port(str(PNET), tmp_path / "a" / "pnet", name="PNetPort")
    moved = tmp_path / "b"
    shutil.move(str(tmp_path / "a" / "pnet"), str(moved))  # the folder is self-contained
    monkeypatch.chdir(tmp_path)
    model, rep = convert(str(PNET), str(moved / os.path.basename(result.table_file)))
    assert rep.ok and type(model).__name__ == "PNetPort"
    assert type(model).__module__.startswith("_converters_target_")


def test_long_statements_and_awkward_names_stay_formatted_and_valid(tmp_path):
    """Long signatures and operator chains wrap as ruff wraps them; layer / tensor names that are
    keywords, nn.Module attributes or helper names do not shadow anything."""
    ins = [GraphInput(f"input_tensor_number_{i}", (1, 4, 5, 5)) for i in range(6)]
    nodes = [Node("parameters", "add", [i.name for i in ins], ["tf_same_pad"], {"coeffs": [1, 2, 3, 4, 5, -1.5]}),
             Node("class", "pool", ["tf_same_pad"], ["lambda"], {"kind": "max", "dims": 2, "kernel": (2, 2),
                                                                  "stride": (2, 2), "padding": "same"})]
    gen = codegen.generate(Graph("awkward", "test", ["-"], ins, ["lambda"], nodes), "Awkward")
    path = tmp_path / "model.py"
    path.write_text(gen.source)
    assert_ruff_formatted(path)
    net = _load(path, "Awkward")()
    attrs = [b.attr for b in gen.bindings]
    assert attrs[0].startswith("parameters_") and attrs[1] == "class_"
    assert not set(attrs) & set(dir(torch.nn.Module))
    xs = [torch.full((1, 4, 5, 5), float(i)) for i in range(6)]
    with torch.no_grad():
        y = net(*xs)
    assert y.shape == (1, 4, 3, 3) and torch.allclose(y, torch.full_like(y, 1 * 0 + 2 + 6 + 12 + 20 - 7.5))
