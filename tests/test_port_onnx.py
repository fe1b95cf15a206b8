"""`convert port` ONNX frontend: graphs made by torch.onnx.export and onnx.helper, and the real
PP-OCR cls model, ported to PyTorch code and compared with onnxruntime on the same inputs."""
from __future__ import annotations

import types
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from port_helpers import assert_ruff_formatted

import converters
from converters.mapping.transforms import build, chain_apply
from converters.port import codegen
from converters.port.frontends.onnx import build_graph
from converters.port.graph import PortError, UnsupportedOpError
from converters.port.run import port

PPOCR = "fixtures/onnx/ch_ppocr_mobile_v2.0_cls_infer.onnx"
RNG = np.random.RandomState(0)


# --------------------------------------------------------------------------- helpers

def ported(path, input_shapes=None):
    """Graph -> model.py source -> an instance filled from the Params' arrays and transforms."""
    graph = build_graph([str(path)], reader_options={}, outputs=None, input_shapes=input_shapes)
    gen = codegen.generate(graph, "Ported")
    mod = types.ModuleType("ported_model")
    exec(compile(gen.source, "model.py", "exec"), mod.__dict__)  # noqa: S102 - our own generated code
    model = mod.Ported().eval()
    state = model.state_dict()
    with converters.read(str(path)) as f:
        for binding in gen.bindings:
            for key, param in binding.node.params.items():
                to = binding.targets[key]
                if param.source is None:
                    value = np.full(tuple(state[to].shape), param.fill, dtype=np.float32)
                else:
                    value = chain_apply([build(t) for t in param.transforms], f[param.source].numpy())
                assert tuple(value.shape) == tuple(state[to].shape), (to, value.shape, tuple(state[to].shape))
                state[to] = torch.from_numpy(np.ascontiguousarray(value))
    model.load_state_dict(state)
    return graph, model, gen.source


def assert_ports_and_verifies(path, tmp_path, input_shapes=None, batch=2):
    """The real path: `convert port --verify` (table + writer + onnxruntime oracle) must PASS."""
    result = port([str(path)], tmp_path / "port_out", input_shapes=input_shapes, verify=True, force=True,
                  verify_options={"n": batch})
    assert result.parity.passed, str(result.parity)
    assert result.report.summary()
    return result, max(o["max_abs"] for o in result.parity.outputs)


def assert_matches_ort(path, feeds: dict, input_shapes=None, rtol=1e-5):
    """Every output of the generated module against onnxruntime on `feeds` (verify checks the first set)."""
    graph, model, source = ported(path, input_shapes)
    want = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feeds)
    with torch.no_grad():
        got = model(*[torch.from_numpy(feeds[i.name]) for i in graph.inputs])
    got = got if isinstance(got, tuple) else (got,)
    assert len(got) == len(want)
    errors = []
    for w, g in zip(want, got):
        assert tuple(g.shape) == w.shape
        err = float(np.abs(g.numpy() - w).max())
        assert err <= rtol * max(1.0, float(np.abs(w).max())), (err, source)
        errors.append(err)
    return graph, source, max(errors)


def export(module, args, path, opset=13, batch_axis=0):
    """torch.onnx.export (TorchScript exporter) with input `x` and a symbolic batch dim."""
    module.eval()
    torch.onnx.export(module, args, str(path), opset_version=opset, dynamo=False, input_names=["x"],
                      dynamic_axes={"x": {batch_axis: "batch"}})
    return path


def save(nodes, inputs, outputs, inits, path, opset=13):
    graph = helper.make_graph(nodes, "g", inputs, outputs, [numpy_helper.from_array(v, k) for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    onnx.save(model, str(path))
    return path


def vi(name, shape):
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def rand(*shape):
    return RNG.randn(*shape).astype(np.float32)


# --------------------------------------------------------------------------- torch.onnx.export graphs

class _Cnn(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.dw = torch.nn.Conv2d(8, 8, 3, padding=2, dilation=2, groups=8, bias=False)
        self.bn = torch.nn.BatchNorm2d(16, eps=1e-3)
        self.fc = torch.nn.Linear(16 * 4 * 4, 10)
        self.bn1d = torch.nn.BatchNorm1d(10)
        for bn in (self.bn, self.bn1d):
            bn.running_mean.uniform_(-1, 1)
            bn.running_var.uniform_(0.5, 2)
            bn.weight.data.uniform_(0.5, 1.5)

    def forward(self, x):
        a = torch.relu(self.conv(x))
        b = torch.nn.functional.leaky_relu(self.dw(a), 0.1)
        y = self.bn(torch.cat([a, b], 1))  # BN after concat stays a BatchNormalization node
        y = torch.nn.functional.max_pool2d(y, 3, 2, ceil_mode=True)
        y = torch.nn.functional.avg_pool2d(y, 3, 1, padding=1, count_include_pad=False)
        y = torch.nn.functional.adaptive_avg_pool2d(y, 4)
        y = torch.nn.functional.hardswish(y) + torch.nn.functional.elu(y) * torch.sigmoid(y)
        y = self.bn1d(self.fc(torch.flatten(y, 1)))
        return torch.softmax(torch.tanh(y), dim=1), torch.nn.functional.hardsigmoid(y)


@pytest.mark.parametrize("opset", [11, 13])
def test_torch_cnn(tmp_path, opset):
    path = export(_Cnn(), torch.zeros(1, 3, 16, 16), tmp_path / "cnn.onnx", opset)
    graph, source, _err = assert_matches_ort(path, {"x": rand(2, 3, 16, 16)})
    assert_ports_and_verifies(path, tmp_path)
    ops = {n.op for n in graph.nodes}
    assert {"conv", "batchnorm", "pool", "concat", "flatten", "linear", "softmax"} <= ops
    assert "groups=8" in source and "dilation=(2, 2)" in source or "dilation=2" in source


class _Resample(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.up = torch.nn.ConvTranspose2d(4, 3, 3, stride=2, padding=1, output_padding=1)
        self.prelu = torch.nn.PReLU(3)
        self.prelu.weight.data.uniform_(0.1, 0.5)

    def forward(self, x):
        n = torch.nn.functional.interpolate(x, scale_factor=2, mode="nearest")
        b = torch.nn.functional.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
        c = torch.nn.functional.interpolate(x, size=(10, 14), mode="bilinear", align_corners=True)
        t = self.prelu(self.up(x))
        left, right = torch.split(x, [1, 3], dim=1)
        s = right[:, :, 1:-1, ::2].permute(0, 2, 3, 1).reshape(x.shape[0], -1)
        return n + b, c, t.clamp(-0.5, 0.5), left.mean(dim=(2, 3), keepdim=True), s


@pytest.mark.parametrize("opset", [11, 13])
def test_torch_resize_transpose_pad_split(tmp_path, opset):
    path = export(_Resample(), torch.zeros(1, 4, 5, 7), tmp_path / "resample.onnx", opset)
    graph, _source, _err = assert_matches_ort(path, {"x": rand(2, 4, 5, 7)})
    assert_ports_and_verifies(path, tmp_path)
    ups = [n for n in graph.nodes if n.op == "upsample"]
    assert {(n.attrs["mode"], n.attrs["align_corners"]) for n in ups} == {("nearest", False), ("bilinear", False),
                                                                         ("bilinear", True)}


@pytest.mark.parametrize("cls", ["LSTM", "GRU"])
def test_torch_rnn(tmp_path, cls):
    rnn = getattr(torch.nn, cls)(5, 4, bidirectional=False)
    path = export(rnn, torch.zeros(7, 2, 5), tmp_path / "rnn.onnx", 13, batch_axis=1)
    graph, _source, _err = assert_matches_ort(path, {"x": rand(7, 3, 5)})
    assert_ports_and_verifies(path, tmp_path)
    node = next(n for n in graph.nodes if n.op == cls.lower())
    assert node.params["weight_ih_l0"].transforms[-1]["gates"]["from"] == ("iofc" if cls == "LSTM" else "zrh")


# --------------------------------------------------------------------------- onnx.helper graphs

def test_conv_pads_asymmetric_and_auto_pad(tmp_path):
    w1, w2, w3 = rand(4, 3, 3, 3), rand(4, 4, 3, 3), rand(2, 4, 2, 2)
    nodes = [helper.make_node("Conv", ["x", "w1"], ["a"], pads=[0, 1, 2, 0], name="asym"),
             helper.make_node("Conv", ["a", "w2"], ["b"], auto_pad="SAME_UPPER", strides=[2, 2], name="same_up"),
             helper.make_node("Conv", ["b", "w3"], ["y"], auto_pad="SAME_LOWER", strides=[1, 1], name="same_low")]
    path = save(nodes, [vi("x", ["N", 3, 9, 8])], [vi("y", None)], {"w1": w1, "w2": w2, "w3": w3}, tmp_path / "c.onnx")
    graph, _s, _e = assert_matches_ort(path, {"x": rand(1, 3, 9, 8)})
    assert_ports_and_verifies(path, tmp_path)
    pads = {n.name: n.attrs["padding"] for n in graph.nodes}
    assert pads["asym"] == ((0, 2), (1, 0))
    assert pads["same_low"] == ((1, 0), (1, 0))  # SAME_LOWER: the extra pixel at the beginning


def test_gemm_matmul_add_and_opset11_softmax(tmp_path):
    inits = {"wg": rand(6, 5), "cg": rand(1, 5), "wm": rand(5, 4), "bm": rand(4)}
    nodes = [helper.make_node("Flatten", ["x"], ["f"], axis=1),
             helper.make_node("Gemm", ["f", "wg", "cg"], ["g"], alpha=0.5, beta=2.0, transB=0, name="gemm"),
             helper.make_node("MatMul", ["g", "wm"], ["m"], name="dense/MatMul"),
             helper.make_node("Add", ["m", "bm"], ["d"], name="dense/BiasAdd"),
             helper.make_node("Reshape", ["d", "shape"], ["r"]),
             helper.make_node("Softmax", ["r"], ["y"], axis=1)]
    inits["shape"] = np.array([0, 2, -1], dtype=np.int64)
    path = save(nodes, [vi("x", ["N", 6, 1, 1])], [vi("y", None)], inits, tmp_path / "g.onnx", opset=11)
    graph, _s, _e = assert_matches_ort(path, {"x": rand(3, 6, 1, 1)})
    assert_ports_and_verifies(path, tmp_path)
    linear = [n for n in graph.nodes if n.op == "linear"]
    assert [sorted(n.params) for n in linear] == [["bias", "weight"], ["bias", "weight"]]
    assert linear[1].params["bias"].source == "bm"  # the Add's constant is the Linear bias
    assert [n.op for n in graph.nodes][-3:] == ["flatten", "softmax", "reshape"]  # opset < 13: coerced to 2-d


def test_shape_ops_and_attribute_opsets(tmp_path):
    nodes = [helper.make_node("Unsqueeze", ["x"], ["u"], axes=[1]),
             helper.make_node("Squeeze", ["u"], ["s"], axes=[1]),
             helper.make_node("Transpose", ["s"], ["t"], perm=[0, 2, 3, 1]),
             helper.make_node("Clip", ["t"], ["c"], min=-0.3, max=0.4),
             helper.make_node("Flatten", ["c"], ["f"], axis=2),
             helper.make_node("Split", ["x"], ["p0", "p1"], axis=1, split=[1, 2]),
             helper.make_node("Upsample", ["p1", "scales"], ["up"], mode="nearest"),
             helper.make_node("ReduceMean", ["up"], ["y2"], axes=[2, 3], keepdims=0),
             helper.make_node("GlobalMaxPool", ["p0"], ["y3"])]
    inits = {"scales": np.array([1, 1, 2, 3], dtype=np.float32)}
    path = save(nodes, [vi("x", ["N", 3, 4, 5])], [vi("f", None), vi("y2", None), vi("y3", None)], inits,
                tmp_path / "s.onnx", opset=9)
    assert_matches_ort(path, {"x": rand(2, 3, 4, 5)})


def test_slice_resize_pad_inputs_opset13(tmp_path):
    inits = {"pads": np.array([0, 0, 1, 0, 0, 0, 2, 1], np.int64), "pv": np.array(0.5, np.float32),
             "starts": np.array([1, 0], np.int64), "ends": np.array([-1, 2 ** 62], np.int64),
             "axes": np.array([2, 3], np.int64), "steps": np.array([1, 2], np.int64),
             "ax": np.array([0], np.int64), "roi": np.zeros(0, np.float32),
             "sizes": np.array([1, 3, 6, 9], np.int64), "k": rand(1, 3, 1, 1)}
    nodes = [helper.make_node("Pad", ["x0", "pads", "pv"], ["x"], mode="constant"),
             helper.make_node("Slice", ["x", "starts", "ends", "axes", "steps"], ["sl"]),
             helper.make_node("Resize", ["sl", "roi", "", "sizes"], ["rs"], mode="linear",
                              coordinate_transformation_mode="half_pixel"),
             helper.make_node("Mul", ["rs", "k"], ["y"]),
             helper.make_node("Squeeze", ["y", "ax"], ["y1"]),
             helper.make_node("Pow", ["y1", "two"], ["y0"])]
    inits["two"] = np.array(2.0, np.float32)
    nodes.append(helper.make_node("Pad", ["x0", "pads"], ["reflected"], mode="reflect"))
    inits["half"] = np.array([1, 1, 0.5, 0.5], np.float32)  # downscaling: every source coordinate is a tie
    nodes.append(helper.make_node("Resize", ["reflected", "roi", "half"], ["exact"], mode="nearest",
                                  coordinate_transformation_mode="half_pixel", nearest_mode="round_prefer_ceil"))
    path = save(nodes, [vi("x0", [1, 3, 3, 6])], [vi("y0", None), vi("reflected", None), vi("exact", None)], inits,
                tmp_path / "r.onnx", opset=13)
    graph, _s, _e = assert_matches_ort(path, {"x0": rand(1, 3, 3, 6)})
    assert_ports_and_verifies(path, tmp_path, batch=1)  # Resize sizes fix the batch
    const = [n for n in graph.nodes if n.op == "constant"]
    assert [n.params["value"].source for n in const] == ["k"]
    assert "starts" in graph.unused_arrays and "attribute" in graph.unused_arrays["starts"]


def test_unsupported_op_names_op_layer_and_file(tmp_path):
    nodes = [helper.make_node("Relu", ["x"], ["r"]),
             helper.make_node("Resize", ["r", "", "scales"], ["y"], mode="cubic", name="the_resize")]
    path = save(nodes, [vi("x", ["N", 1, 4, 4])], [vi("y", None)], {"scales": np.array([1, 1, 2, 2], np.float32)},
                tmp_path / "u.onnx")
    with pytest.raises(UnsupportedOpError) as e:
        build_graph([str(path)], reader_options={}, outputs=None, input_shapes=None)
    text = str(e.value)
    assert "the_resize" in text and "Resize" in text and "cubic" in text and "u.onnx" in text and "\n" not in text
    nodes = [helper.make_node("TopK", ["x", "k"], ["v", "i"], name="topk")]
    path = save(nodes, [vi("x", [1, 5])], [vi("v", None)], {"k": np.array([2], np.int64)}, tmp_path / "t.onnx")
    with pytest.raises(UnsupportedOpError, match="topk.*TopK"):
        build_graph([str(path)], reader_options={}, outputs=None, input_shapes=None)


def test_symbolic_dims_need_a_shape(tmp_path):
    nodes = [helper.make_node("Conv", ["x", "w"], ["y"], auto_pad="SAME_LOWER", strides=[2, 2])]
    path = save(nodes, [vi("x", ["N", 1, "H", "W"])], [vi("y", None)], {"w": rand(1, 1, 3, 3)}, tmp_path / "d.onnx")
    with pytest.raises(PortError, match="input-shape"):
        build_graph([str(path)], reader_options={}, outputs=None, input_shapes=None)
    assert_matches_ort(path, {"x": rand(1, 1, 7, 9)}, input_shapes={"x": [1, 1, 7, 9]})


# --------------------------------------------------------------------------- the real PP-OCR cls model

def test_ppocr_cls_real_model():
    """Paddle2ONNX export, weights as Constant nodes, hardswish as Add/Clip/Mul/Div, SE blocks whose
    conv bias is Reshape + Add (fused into the conv), a Shape -> Slice -> Concat -> Reshape head."""
    x = np.random.RandomState(1).rand(2, 3, 48, 192).astype(np.float32)
    graph, source, err = assert_matches_ort(PPOCR, {"x": x}, input_shapes={"x": [1, 3, 48, 192]})
    assert err < 1e-5
    convs = [n for n in graph.nodes if n.op == "conv"]
    assert len(convs) == 53 and sum(n.attrs["bias"] for n in convs) == 18  # the 9 SE blocks' two convs each
    assert ".reshape(pool2d_10_tmp_0.shape[0], 200)" in source  # the folded Shape chain, batch kept free
    # x * clip(x + 3, 0, 6) / 6 is one hard-swish line each; its constants are attributes, not buffers
    assert sum(n.attrs.get("kind") == "hard_swish" for n in graph.nodes) == 18 and "F.hardswish(" in source
    assert not any(n.op == "constant" for n in graph.nodes)


def test_ppocr_cls_port_verify(tmp_path):
    """`convert port --verify` on the real file: the table fills every tensor, onnxruntime agrees."""
    result, err = assert_ports_and_verifies(PPOCR, tmp_path, input_shapes={"x": (1, 3, 48, 192)})
    assert err < 1e-5
    text = Path(result.model_file).read_text()
    assert "# Conv@0: Conv" in text and "self.Conv_0 = nn.Conv2d(3, 8, kernel_size=3, stride=2, padding=1" in text
    table = Path(result.table_file).read_text()
    assert "conv1_weights" in table and "layout: NCHW" in table


def test_nhwc_input_tf2onnx_style_and_outputs_cut(tmp_path):
    """tf2onnx/keras2onnx graphs take NHWC and transpose themselves: the module keeps that
    transpose and takes the same array; --outputs cuts the graph at an inner tensor."""
    inits = {"w": rand(4, 3, 3, 3), "b": rand(4), "k": rand(4 * 3 * 3, 5), "kb": rand(5)}
    nodes = [helper.make_node("Transpose", ["img"], ["nchw"], perm=[0, 3, 1, 2], name="to_nchw"),
             helper.make_node("Conv", ["nchw", "w", "b"], ["c"], name="conv"),
             helper.make_node("Relu", ["c"], ["r"], name="relu"),
             helper.make_node("Transpose", ["r"], ["nhwc"], perm=[0, 2, 3, 1], name="to_nhwc"),
             helper.make_node("Reshape", ["nhwc", "shape"], ["flat"], name="flatten"),
             helper.make_node("MatMul", ["flat", "k"], ["mm"], name="dense/MatMul"),
             helper.make_node("Add", ["mm", "kb"], ["y"], name="dense/BiasAdd")]
    inits["shape"] = np.array([-1, 36], np.int64)
    path = save(nodes, [vi("img", ["N", 5, 5, 3])], [vi("y", None)], inits, tmp_path / "nhwc.onnx")
    graph, _s, _e = assert_matches_ort(path, {"img": rand(2, 5, 5, 3)})
    assert graph.inputs[0].shape == (1, 5, 5, 3) and "channels-last" in graph.notes[0]
    assert_ports_and_verifies(path, tmp_path)
    cut = build_graph([str(path)], reader_options={}, outputs=["relu"], input_shapes=None)
    assert cut.outputs == ["r"] and [n.op for n in cut.nodes] == ["transpose", "conv", "activation"]
    assert "--outputs" in cut.unused_arrays["k"]
    result = port([str(path)], tmp_path / "cut", outputs=["relu"], verify=True)
    assert result.parity.passed, str(result.parity)


def test_shared_initializer_fills_two_layers(tmp_path):
    """torch.onnx stores equal initializers once (BN-folded biases of zeros, ...): one array fills
    two tensors, one rule reading it twice."""
    inits = {"w1": rand(3, 3, 1, 1), "w2": rand(3, 3, 1, 1), "b": rand(3)}
    nodes = [helper.make_node("Conv", ["x", "w1", "b"], ["a"], name="c1"),
             helper.make_node("Conv", ["a", "w2", "b"], ["y"], name="c2")]
    path = save(nodes, [vi("x", ["N", 3, 4, 4])], [vi("y", None)], inits, tmp_path / "shared.onnx")
    result, _err = assert_ports_and_verifies(path, tmp_path)
    assert "with: [b]" in Path(result.table_file).read_text()


@pytest.mark.heavy
def test_torchvision_mobilenet_v3_export(tmp_path):
    """A whole torchvision network (hardswish, SE blocks, shared initializers) through torch.onnx."""
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.mobilenet_v3_small(weights=None).eval()
    for bn in (m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)):
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2)
    path = export(model, torch.zeros(1, 3, 64, 64), tmp_path / "mnv3.onnx", 13)
    _result, err = assert_ports_and_verifies(path, tmp_path)
    assert err < 1e-5


class _Mlp(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.norm, self.fc2 = torch.nn.Linear(6, 8), torch.nn.LayerNorm(8), torch.nn.Linear(8, 3)

    def forward(self, x):
        return self.fc2(torch.nn.functional.gelu(self.norm(self.fc1(x))))


def test_layernorm_decomposed_and_erf_gelu(tmp_path):
    """opset 13: LayerNorm is ReduceMean/Sub/Pow/Sqrt/Div (+ weight, bias buffers), GELU is
    x * 0.5 * (1 + erf(x / sqrt 2)), folded into one exact F.gelu; Linear on a 3-d input."""
    path = export(_Mlp(), torch.zeros(1, 5, 6), tmp_path / "mlp.onnx", 13)
    graph, source, _err = assert_matches_ort(path, {"x": rand(2, 5, 6)})
    assert [n.attrs.get("kind") for n in graph.nodes if n.op == "activation"] == ["power", "sqrt", "gelu"]
    assert "F.gelu(" in source
    assert_ports_and_verifies(path, tmp_path)


def test_fixed_batch_graph_verifies_with_the_tables_batch(tmp_path, capsys):
    """A graph whose input fixes batch 1 (and a Resize with `sizes` spelling it): the port writes
    parity.batch: 1 and `convert port --verify` passes with no verify options; a symbolic batch
    writes no key (verify keeps its default batch of 2)."""
    import yaml

    from converters.port.cli import cmd_port

    inits = {"w": rand(4, 2, 3, 3), "b": rand(4), "roi": np.zeros(0, np.float32),
             "sizes": np.array([1, 4, 10, 7], np.int64)}
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Resize", ["c", "roi", "", "sizes"], ["y"], mode="linear",
                              coordinate_transformation_mode="half_pixel")]
    fixed = save(nodes, [vi("x", [1, 2, 5, 5])], [vi("y", None)], dict(inits), tmp_path / "fixed.onnx")
    assert cmd_port([str(fixed), "-o", str(tmp_path / "fixed"), "--verify", "-q"]) == 0, capsys.readouterr()
    assert "PASS" in capsys.readouterr().out
    table = yaml.safe_load(next((tmp_path / "fixed").glob("*.yaml")).read_text())
    assert table["parity"]["batch"] == 1
    with pytest.raises(converters.ConvertersError):  # what the key spares: onnxruntime refuses a batch of 2
        converters.verify(str(fixed), str(next((tmp_path / "fixed").glob("*.yaml"))), n=2)
    free = save(nodes, [vi("x", ["N", 2, 5, 5])], [vi("y", None)],
                {**inits, "sizes": np.array([2, 4, 10, 7], np.int64)}, tmp_path / "free.onnx")
    result = port([str(free)], tmp_path / "free", verify=True)
    assert result.parity.passed and "batch" not in yaml.safe_load(Path(result.table_file).read_text())["parity"]


@pytest.mark.parametrize("length", [45, 100])
def test_long_names_stay_ruff_formatted(tmp_path, length):
    """Node and tensor names of 45 and 100 characters (statements whose `name = self.layer(` head
    alone is past 88 columns, a two-output Split): model.py is `ruff format`-clean and verifies."""
    def long(tag):
        return (tag + "_" + "very_long_tensor_name" * 5)[:length]

    x, c, r, p, s1, s2, cat, flat, y = (long(t) for t in ("x", "c", "r", "p", "s1", "s2", "cat", "flat", "y"))
    inits = {long("w"): rand(4, 3, 3, 3), long("b"): rand(4), long("fw"): rand(4 * 3 * 3, 5), long("fb"): rand(5)}
    nodes = [helper.make_node("Conv", [x, long("w"), long("b")], [c], name=long("conv"), pads=[1, 1, 1, 1]),
             helper.make_node("Relu", [c], [r], name=long("relu")),
             helper.make_node("MaxPool", [r], [p], name=long("pool"), kernel_shape=[2, 2], strides=[2, 2]),
             helper.make_node("Split", [p], [s1, s2], name=long("split"), axis=1),
             helper.make_node("Concat", [s2, s1], [cat], name=long("concat"), axis=1),
             helper.make_node("Flatten", [cat], [flat], name=long("flatten"), axis=1),
             helper.make_node("Gemm", [flat, long("fw"), long("fb")], [y], name=long("fc"))]
    path = save(nodes, [vi(x, ["N", 3, 6, 6])], [vi(y, None)], inits, tmp_path / "long.onnx")
    result, _err = assert_ports_and_verifies(path, tmp_path)  # PASS at verify's tolerance
    assert max(len(line) for line in Path(result.model_file).read_text().splitlines()) > 88  # names past 88
    assert_ruff_formatted(result.model_file)


def test_weight_free_layers_are_paired_so_a_pooling_fault_is_named(tmp_path):
    """The table pairs the MaxPool (no weights) with its module in parity.layers; a ceil -> floor
    fault edited into the generated model.py is localised to that pooling layer."""
    import yaml

    inits = {"w1": rand(4, 3, 3, 3), "b1": rand(4), "w2": rand(2, 4, 1, 1), "b2": rand(2)}
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
             helper.make_node("MaxPool", ["c1"], ["p"], name="pool1", kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1),
             helper.make_node("Conv", ["p", "w2", "b2"], ["y"], name="conv2")]
    path = save(nodes, [vi("x", ["N", 3, 8, 8])], [vi("y", None)], inits, tmp_path / "pool.onnx")
    result, _err = assert_ports_and_verifies(path, tmp_path)
    table = yaml.safe_load(Path(result.table_file).read_text())
    assert table["parity"]["layers"] == {"pool1": "pool1"}
    model_py = Path(result.model_file)
    source = model_py.read_text()
    assert "ceil_mode=True" in source
    model_py.write_text(source.replace("ceil_mode=True", "ceil_mode=False"))
    report = converters.verify(str(path), result.table_file, localise="always")
    assert not report.passed
    assert report.first_divergent is not None and report.first_divergent["source_layer"] == "pool1", str(report)
    del table["parity"]["layers"]  # without the pair the fault is blamed on the conv after the pooling
    bare = Path(result.table_file).with_name("bare.yaml")
    bare.write_text(yaml.safe_dump(table, sort_keys=False))
    report = converters.verify(str(path), str(bare), localise="always")
    assert (report.first_divergent or {}).get("source_layer") != "pool1", str(report)
