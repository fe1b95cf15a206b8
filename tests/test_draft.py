"""`convert draft`: for every shipped table's source model, a draft made WITHOUT the shipped table
must convert with no edits and pass `convert verify` (converters.parity.verify.verify: the source
model run by its own framework against the converted PyTorch model, default tolerances); a target
with a changed head or an extra layer must get exactly those listed as unmatched; ties are written
down.

Source models are built the way the table tests build them (their helpers are imported, not
copied): Keras in-process, mxnet in .venv-mxnet through tests/mxnet_side/make_tables_models.py,
the Caffe MTCNN P-Net from fixtures/ run by OpenCV. A Gluon `save_parameters` file holds no graph:
its draft is verified against mxnet running the same network's `export()` checkpoint.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import converters
from converters.cli import main
from converters.convert import convert
from converters.draft import draft
from converters.draft.emit import Item, _int_range_regex, compress
from converters.mapping import spec
from converters.models.mtcnn import PNet
from converters.parity.oracles.base import OracleUnavailable
from converters.parity.verify import build_oracle, verify

ROOT = Path(__file__).resolve().parents[1]
CAFFE = ROOT / "fixtures/caffe/mtcnn_pnet/det1.caffemodel"
MX_PNET = ROOT / "fixtures/mxnet/mtcnn_pnet/det1-0001.params"


def assert_clean(d):
    assert d.complete, d.problems
    assert d.stats["unmatched_sources"] == 0 and d.stats["unmatched_targets"] == 0 and d.stats["ambiguous"] == 0


def assert_verifies(source, table, **options):
    """The real verifier, default tolerances; an unavailable source framework skips."""
    try:
        rep = verify(source, table, **options)
    except OracleUnavailable as e:
        pytest.skip(f"verify: {e}")
    assert rep.passed, str(rep)
    return rep


# --------------------------------------------------------------------------- family compression

def test_int_range_regex():
    import re

    for lo, hi in ((0, 2), (4, 18), (1, 16), (7, 123), (10, 19)):
        rx = re.compile(_int_range_regex(lo, hi))
        hits = [n for n in range(0, 300) if rx.fullmatch(str(n))]
        assert hits == list(range(lo, hi + 1)), (lo, hi, rx.pattern)


def _items(pairs):
    return [Item(s, [t], 1, [], None) for s, t in pairs]


def test_families_vgg_blocks_and_resnet_counting():
    """VGG: features index = per-block offset + 2 (c - 1): one rule per block. ResNet exported names:
    conv k >= 4 is block (k-1)//3, conv (k-1)%3+1: one rule for all stages."""
    offsets = {1: 0, 2: 5, 3: 10, 4: 17, 5: 24}
    convs = {1: 2, 2: 2, 3: 3, 4: 3, 5: 3}
    vgg = [(f"block{b}_conv{c}/kernel", f"features.{offsets[b] + 2 * (c - 1)}.weight")
           for b in offsets for c in range(1, convs[b] + 1)]
    rules = compress(_items(vgg), {s for s, _ in vgg})
    assert len(rules) == 5
    assert rules[2].from_ == "block3_conv(?P<c>[1-3])/kernel" and rules[2].to == ["features.{2*c+8}.weight"]
    resnet = [(f"net_stage{s}_conv{k}_weight", f"layer{s}.{(k - 1) // 3}.conv{(k - 1) % 3 + 1}.weight")
              for s, n in ((1, 3), (2, 4)) for k in range(4, 4 + 3 * (n - 1))]
    universe = {s for s, _ in resnet} | {"net_stage1_conv3_weight"}  # a name the rule must not catch
    rules = compress(_items(resnet), universe)
    assert len(rules) == 1 and rules[0].to == ["layer{s}.{(c-1)//3}.conv{(c-1)%3+1}.weight"]


# ------------------------------------------------------------------------------------ MTCNN P-Net

def test_caffe_pnet_draft_verifies_against_opencv(tmp_path):
    pytest.importorskip("cv2")
    d = draft(CAFFE, "converters.models.mtcnn:PNet", out=tmp_path / "pnet.yaml")
    assert_clean(d)
    assert d.stats["matched_sources"] == 13 and len(d.rules) == 5  # conv w, conv b, prelu, two heads
    assert spec.load(tmp_path / "pnet.yaml").source == "caffe"
    model, rep = convert(CAFFE, tmp_path / "pnet.yaml")
    assert rep.ok and len(rep.rows) == 13
    # odd sizes: Caffe's ceil-mode pooling shows; both heads compared (prob1, conv4-2)
    report = assert_verifies(CAFFE, tmp_path / "pnet.yaml", model=model, input_shape=[2, 3, 31, 25])
    assert len(report.outputs) == 2
    # and it is the shipped table's model, tensor for tensor
    shipped, _ = convert(CAFFE, "caffe/mtcnn_pnet")
    for k, v in shipped.state_dict().items():
        assert torch.equal(v, model.state_dict()[k]), k
    assert "CHECK" in d.text and "flip: {axis: 1}" in d.text  # the channel-order question is asked


def test_mxnet_pnet_draft_converts_but_cannot_know_the_port_s_swaps(tmp_path):
    """The MXNet port stores the Caffe kernels with H and W swapped and conv1's input channels
    reversed. All kernels are square, so no shape, name or order tells: the draft matches every
    array (graph order fixes the file's scrambled order) and asks about the channel order; the
    swaps stay the user's call, so its conv kernels are the shipped table's before the swap.
    The draft's model therefore keeps the port's own input convention (BGR, H and W swapped) and
    verifies against mxnet fed the same input, with no parity section."""
    d = draft(MX_PNET, "converters.models.mtcnn:PNet", out=tmp_path / "pnet.yaml")
    assert_clean(d)
    assert "input channel order" in d.text
    model, _ = convert(MX_PNET, tmp_path / "pnet.yaml")
    shipped, _ = convert(MX_PNET, "mxnet/mtcnn_pnet")
    got, want = model.state_dict(), shipped.state_dict()
    for k in want:
        if k in ("conv1.weight", "conv2.weight", "conv3.weight"):
            w = want[k].transpose(2, 3)
            w = w.flip(1) if k == "conv1.weight" else w
            assert torch.equal(got[k], w), k
        else:
            assert torch.equal(got[k], want[k]), k
    assert_verifies(MX_PNET, tmp_path / "pnet.yaml", model=model, input_shape=[2, 3, 31, 25])


class PNetNewHead(PNet):
    """P-Net with a 3-class face head: conv4_1 no longer fits the source's (2, 32, 1, 1)."""

    def __init__(self):
        super().__init__()
        self.conv4_1 = nn.Conv2d(32, 3, 1)


class PNetExtraLayer(PNet):
    """P-Net with one more convolution between conv3 and the heads."""

    def __init__(self):
        super().__init__()
        self.extra = nn.Conv2d(32, 32, 3, padding=1)

    def forward(self, x):
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.prelu2(self.conv2(x))
        x = self.extra(self.prelu3(self.conv3(x)))
        return torch.softmax(self.conv4_1(x), dim=1), self.conv4_2(x)


def _unmatched(d):
    return ({n for n, _, _ in d.matching.unmatched_sources}, {n for n, _, _ in d.matching.unmatched_targets})


def test_changed_head_is_listed_exactly():
    d = draft(CAFFE, PNetNewHead())
    assert _unmatched(d) == ({"conv4-1/0", "conv4-1/1"}, {"conv4_1.weight", "conv4_1.bias"})
    assert not d.complete and "UNMATCHED source arrays" in d.text and "#   conv4_1.weight" in d.text
    spec.load(_save(d))  # still a loadable table, the gaps are comments


def test_extra_layer_is_listed_exactly():
    d = draft(CAFFE, PNetExtraLayer())
    assert _unmatched(d) == (set(), {"extra.weight", "extra.bias"})
    assert d.stats["matched_sources"] == 13


class TwinActivations(nn.Module):
    """Two PReLU(32) on parallel branches after c3, both run before the heads, uninformative names:
    the source's one PReLU3 fits both equally (by order, names and the graph: both read c3's output)."""

    def __init__(self):
        super().__init__()
        self.c1, self.a1, self.pool = nn.Conv2d(3, 10, 3), nn.PReLU(10), nn.MaxPool2d(2, 2, ceil_mode=True)
        self.c2, self.a2 = nn.Conv2d(10, 16, 3), nn.PReLU(16)
        self.c3, self.x, self.y = nn.Conv2d(16, 32, 3), nn.PReLU(32), nn.PReLU(32)
        self.h1, self.h2 = nn.Conv2d(32, 2, 1), nn.Conv2d(32, 4, 1)

    def forward(self, x):
        x = self.a2(self.c2(self.pool(self.a1(self.c1(x)))))
        x = self.c3(x)
        a, b = self.x(x), self.y(x)
        return self.h1(a), self.h2(b)


class TwinInARow(TwinActivations):
    """The same modules with the two PReLUs in a row: only x reads c3's output, as PReLU3 reads conv3's."""

    def forward(self, x):
        x = self.a2(self.c2(self.pool(self.a1(self.c1(x)))))
        x = self.y(self.x(self.c3(x)))
        return self.h1(x), self.h2(x)


def test_the_graph_decides_what_order_cannot():
    """Source PReLU3 reads conv3's output; in the trace x reads c3's (conv3's pair), y reads x's: the
    pair is decided by the graph and y, the extra layer, is listed."""
    d = draft(CAFFE, TwinInARow())
    pair = next(p for p in d.matching.pairs if p.source.name == "PReLU3")
    assert pair.target.name == "x" and pair.decided_by == "graph" and pair.confidence == 0.9
    assert any("reads conv3's output, as x reads c3's" in e for e in pair.evidence)
    assert _unmatched(d) == (set(), {"y.weight"}) and not d.matching.ambiguous


def test_ambiguity_is_written_down_not_decided():
    d = draft(CAFFE, TwinActivations())
    assert [(s.name, c) for s, c, _ in d.matching.ambiguous] == [("PReLU3", ["x", "y"])]
    assert _unmatched(d) == ({"PReLU3/0"}, {"x.weight", "y.weight"})
    assert "PReLU3 (PReLU; PReLU3/0) -> one of: x, y" in d.text.split("# AMBIGUOUS:")[1]
    assert d.stats["matched_sources"] == 12  # the rest is still matched (by order and shape)


def _save(d, tmp=None):
    import tempfile

    fd, path = tempfile.mkstemp(suffix=".yaml")
    with os.fdopen(fd, "w") as fh:
        fh.write(d.text)
    return path


def test_cli_writes_a_loadable_table_and_api_is_callable(tmp_path, capsys):
    out = tmp_path / "m.yaml"
    assert main(["draft", "--from", "caffe", str(CAFFE), "--target", "converters.models.mtcnn:PNet",
                 "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "wrote" in printed and "13/13 source arrays matched" in printed
    assert spec.load(out).rules
    assert main(["draft", str(CAFFE), "--target", "converters.models.mtcnn:PNet", "-o", str(out)]) == 2  # exists
    d = converters.draft(CAFFE, "converters.models.mtcnn:PNet")  # the package is callable
    assert d.complete and d.path is None


def test_cli_verify_names_the_implicated_rules(tmp_path, capsys):
    """--verify runs the parity check; on the Caffe P-Net (RGB as published) it passes."""
    pytest.importorskip("cv2")
    pytest.importorskip("converters.parity.verify")
    out = tmp_path / "m.yaml"
    code = main(["draft", str(CAFFE), "--target", "converters.models.mtcnn:PNet", "-o", str(out), "--verify"])
    text = capsys.readouterr().out
    assert code == 0, text


# ------------------------------------------------------------------------------------------ Keras

@pytest.fixture(scope="module")
def K():
    pytest.importorskip("keras")
    import test_tables_keras as k  # the table tests' helpers: randomize, keras_output, ...

    return k


@pytest.mark.parametrize("filename", ["mnv2.keras", "mnv2.h5"])
def test_keras_mobilenet_v2_draft(K, tmp_path, filename):
    K.keras.utils.set_random_seed(1)
    model = K.keras.applications.MobileNetV2(weights=None, classifier_activation=None, **K.SMALL)
    K.randomize(model, 1)
    model.save(tmp_path / filename)
    d = draft(tmp_path / filename, "converters.models.keras_mobilenet_v2:MobileNetV2",
              target_kwargs=K.SMALL_KWARGS, out=tmp_path / "m.yaml")
    assert_clean(d)
    assert d.stats["matched_sources"] == len(model.weights) and len(d.rules) < 50
    assert "tf_depthwise" in d.text and "tf_conv" in d.text
    assert_verifies(tmp_path / filename, tmp_path / "m.yaml", input_shape=[2, 96, 96, 3])


@pytest.mark.parametrize("cell,target", [("LSTM", "converters.models.rnn:KerasLSTM"),
                                         ("GRU", "converters.models.rnn:KerasGRU")])
def test_keras_rnn_draft_with_optimizer_state(K, tmp_path, cell, target):
    K.keras.utils.set_random_seed(8)
    model = K.rnn_model(getattr(K.keras.layers, cell)(K.UNITS, return_sequences=True))
    K.randomize(model, 8)
    model.compile(optimizer="adam", loss="mse")
    model.fit(np.ones((2, K.T, K.FEATURES), np.float32), np.ones((2, K.T, K.UNITS), np.float32), verbose=0)
    model.save(tmp_path / "rnn.h5")
    d = draft(tmp_path / "rnn.h5", target, target_kwargs={"input_size": K.FEATURES, "hidden_size": K.UNITS},
              out=tmp_path / "m.yaml")
    assert_clean(d)
    assert d.stats["matched_sources"] == 3 and d.stats["ignored"] == 8
    assert ("zrh, to: rzh" in d.text) == (cell == "GRU")  # the gate order is detected
    assert_verifies(tmp_path / "rnn.h5", tmp_path / "m.yaml", input_shape=[3, K.T, K.FEATURES])


@pytest.mark.heavy
def test_keras_vgg16_draft_finds_the_flatten_order(K, keras_vgg16, tmp_path):
    """On the run's shared random VGG16 .h5 (tests/conftest.py)."""
    if K.torchvision is None:
        pytest.skip("needs torchvision")
    source = keras_vgg16["source"]
    d = draft(source, "torchvision.models:vgg16", target_kwargs={"weights": None}, out=tmp_path / "m.yaml")
    assert_clean(d)
    assert "flatten_order: {h: 7, w: 7, c: 512}" in d.text
    assert_verifies(source, tmp_path / "m.yaml", n=keras_vgg16["n"])


# ------------------------------------------------------------------------------------ MXNet/Gluon

import test_tables_mxnet as MXT  # noqa: E402  (the table tests' mxnet generator and helpers)
from test_tables_mxnet import mx_model  # noqa: E402,F401  (module-scoped fixture, reused as is)


@pytest.fixture(scope="module")
def MX():
    return MXT


@pytest.fixture(scope="module")
def mx_oracle(mx_model):  # noqa: F811 - the imported fixture, requested by name
    """name -> one mxnet oracle on the model's export() checkpoint, shared by both file forms."""
    oracles = {}

    def get(name):
        if name not in oracles:
            oracles[name] = build_oracle("mxnet", MXT.source_file(mx_model(name), name, "exported"))
        return oracles[name]

    yield get
    for o in oracles.values():
        o.close()


def _check_mx(MX, d_dir, oracle, name, form, target, framework, kwargs=None, extra_inputs=None):
    src = MX.source_file(d_dir, name, form)
    out = d_dir / f"{name}-{form}-draft.yaml"
    d = draft(src, target, framework=framework, target_kwargs=kwargs, out=out, force=True)
    assert_clean(d)
    x, _ = MX.reference(d_dir, name)  # the generator's input, in the source's layout
    assert_verifies(src, out, framework=framework, oracle=oracle, inputs=[x], extra_inputs=extra_inputs)
    return d


@pytest.mark.mxnet
@pytest.mark.parametrize("form", ["exported", "gluon"])
@pytest.mark.parametrize("name", ["lstm_bi", "lstm_uni"])
def test_gluon_lstm_draft(MX, mx_model, mx_oracle, name, form):  # noqa: F811 - the fixture
    """The exported graph takes the initial states too (data1 = h, data2 = c): zeros, to the source only."""
    kwargs = {"batch_first": True, **MX.LSTM_KWARGS[name]}
    batch = 2 if kwargs["batch_first"] else 3  # the generator's batch sizes
    state = [kwargs["num_layers"] * (1 + kwargs.get("bidirectional", False)), batch, kwargs["hidden_size"]]
    d = _check_mx(MX, mx_model(name), mx_oracle(name), name, form, "torch.nn:LSTM",
                  "mxnet" if form == "exported" else "gluon", kwargs,
                  extra_inputs={"data1": {"shape": state}, "data2": {"shape": state}})
    assert len(d.rules) == (8 if kwargs.get("bidirectional") else 4)


@pytest.mark.heavy
@pytest.mark.mxnet
@pytest.mark.parametrize("form", ["exported", "gluon"])
@pytest.mark.parametrize("name, target, reader, matched, filled", [
    ("resnet50_v1", "converters.models.resnet_gluon:resnet50_v1", "mxnet", 299, 53),  # Gluon model zoo
    ("resnet50_v1b", "torchvision.models:resnet50", "gluon", 267, None),  # GluonCV
])
def test_mxnet_resnet50_draft(MX, mx_model, mx_oracle, form, name, target, reader, matched, filled):  # noqa: F811
    d = _check_mx(MX, mx_model(name), mx_oracle(name), name, form, target, reader)
    assert d.stats["matched_sources"] == matched and len(d.rules) <= 30
    assert filled is None or d.stats["filled"] == filled


# ------------------------------------------------- never confidently wrong (issue #10 items 4-8)

import test_draft_pairs as PAIRS  # noqa: E402  (the pair builders: real frameworks, tmp_path)


def _pair(d, target):
    return next(p for p in d.matching.pairs if p.target.name == target)


class TwoBranches(nn.Module):
    """Silero-style: a 16k and an 8k sub-network of the same shapes; the forward runs one."""

    def __init__(self):
        super().__init__()
        self.branch16k = nn.ModuleDict({"conv": nn.Conv2d(3, 8, 3, padding=1)})
        self.branch8k = nn.ModuleDict({"conv": nn.Conv2d(3, 8, 3, padding=1)})

    def forward(self, x, sr16k: bool = False):
        return (self.branch16k if sr16k else self.branch8k)["conv"](x)


def test_item4_names_beat_order_onnx_if_branches(tmp_path):
    """An ONNX If with two same-shaped sub-graphs whose arrays carry the target's names: the
    trace runs only the 8k branch (order [8k, 16k]) while the file lists 16k first; the names win."""
    import onnx
    from onnx import TensorProto as TP
    from onnx import helper as H
    from onnx import numpy_helper as NH

    rng = np.random.default_rng(0)

    def branch(name):
        w = NH.from_array(rng.standard_normal((8, 3, 3, 3)).astype(np.float32), f"{name}.conv.weight")
        b = NH.from_array(rng.standard_normal(8).astype(np.float32), f"{name}.conv.bias")
        node = H.make_node("Conv", ["x", w.name, b.name], [f"{name}_y"], pads=[1, 1, 1, 1])
        return H.make_graph([node], name, [], [H.make_tensor_value_info(f"{name}_y", TP.FLOAT, [1, 8, 8, 8])], [w, b])

    g = H.make_graph([H.make_node("If", ["cond"], ["y"], then_branch=branch("branch16k"),
                                  else_branch=branch("branch8k"))], "g",
                     [H.make_tensor_value_info("x", TP.FLOAT, [1, 3, 8, 8]),
                      H.make_tensor_value_info("cond", TP.BOOL, [])],
                     [H.make_tensor_value_info("y", TP.FLOAT, [1, 8, 8, 8])])
    model = H.make_model(g, opset_imports=[H.make_opsetid("", 13)])
    onnx.checker.check_model(model)
    onnx.save(model, tmp_path / "if.onnx")
    d = draft(tmp_path / "if.onnx", TwoBranches(), out=tmp_path / "m.yaml")
    assert_clean(d)
    for branch in ("branch16k", "branch8k"):
        p = _pair(d, f"{branch}.conv")
        assert p.decided_by == "name" and p.confidence >= 0.9
        assert {pr.source for pr in p.proposals} == {f"{branch}.conv.weight", f"{branch}.conv.bias"}
    converted, _ = convert(tmp_path / "if.onnx", tmp_path / "m.yaml")
    with converters.read(tmp_path / "if.onnx") as f:
        for name, t in converted.state_dict().items():
            assert np.array_equal(t.numpy(), f[name].numpy()), name


def test_item4_order_only_pairs_are_low_confidence(tmp_path):
    """A TF1 checkpoint lists keys alphabetically: its order says nothing about execution, so the
    three same-shaped context convs, decided by that order alone, are 0.3 (low) and the draft is
    unsure; with a graph (ONNX) order-only pairs are 0.6, still low."""
    d = draft(PAIRS.tf1_checkpoint_context(tmp_path).source, PAIRS.SshContext(), framework="tensorflow")
    assert d.stats["order_source"] == "alphabetical file order" and "alphabetically" in d.text
    by_order = [p for p in d.matching.pairs if p.decided_by == "order"]
    assert len(by_order) == 3 and all(p.confidence == 0.3 for p in by_order)
    assert "(low)" in d.text and len(d.unsure) == 3
    g = draft(PAIRS.onnx_torch_other_structure(tmp_path).source, PAIRS.SmallConvB())
    assert [(p.target.name, p.confidence) for p in g.matching.pairs if p.decided_by == "order"] == [
        ("body.first", 0.6), ("body.second", 0.6)]


def test_item5_split_biases_are_mapped_not_filled(tmp_path):
    """ONNX MatMul + Add and a frozen graph's Conv2D + BiasAdd (and MatMul + AddV2): each bias
    joins its layer through the graph; nothing is filled with 0."""
    for build, target in ((PAIRS.onnx_matmul_add, PAIRS.DensePort()), (PAIRS.tf_frozen_biasadd, PAIRS.FrozenPort())):
        case = build(tmp_path)
        d = draft(case.source, target, framework=case.framework)
        assert_clean(d)
        assert d.stats["filled"] == 0 and "value: 0" not in d.text
        assert all(any(t.endswith(".bias") for pr in p.proposals for t in pr.targets) for p in d.matching.pairs)
    assert "Mean/reduction_indices" in {n for n, *_ in d.matching.ignored}  # an int32 graph constant


def test_item5_no_zero_fill_beside_a_candidate_bias(tmp_path):
    """No graph joins them: the Linear's bias is left open, naming the candidate, not filled with 0."""
    from safetensors.numpy import save_file

    rng = np.random.default_rng(1)
    save_file({"fc.weight": rng.standard_normal((3, 6)).astype(np.float32),
               "fc_add.b": rng.standard_normal(3).astype(np.float32)}, tmp_path / "w.safetensors")
    d = draft(tmp_path / "w.safetensors", PAIRS.DensePort().logits.__class__(6, 3))
    assert not d.complete and d.stats["filled"] == 0
    (name, why, _), = d.matching.unmatched_targets
    assert name == "bias" and "fc_add.b" in why and "not filled with 0" in why


class ScaledFlatten(nn.Module):
    """A forward that changes the values between the map and the Linear: no permutation to read."""

    def __init__(self):
        super().__init__()
        self.features, self.classifier = nn.Conv2d(2, 4, 3, padding=1), nn.Linear(8 * 6 * 4, 3)

    def forward(self, x):
        return self.classifier(torch.flatten(self.features(x), 1).cumsum(1))


def test_item6_flatten_order_comes_from_the_traced_forward(tmp_path):
    d = draft(PAIRS.keras_cnn_permuted_port(tmp_path).source, PAIRS.FacenetStyleNet())
    assert "order: hwc_to_whc" in d.text and _pair(d, "dense5").confidence >= 0.9
    d = draft(PAIRS.keras_permute_flatten(tmp_path).source, PAIRS.PlainFlattenNet())
    assert "order: whc_to_chw" in d.text and "Permute + Flatten" in d.text
    d = draft(tmp_path / "perm.h5", ScaledFlatten())
    assert "cannot tell the feature order" in d.text and _pair(d, "classifier").confidence <= 0.5
    assert any("classifier" in u for u in d.unsure)


def test_item7_rule_kinds(tmp_path):
    """Conv1D -> Conv2d (k, 1), PReLU (1, 1, C) slopes, LSTMCell, folded BatchNorm (identity)."""
    audio = draft(PAIRS.keras_conv1d_audio(tmp_path).source, PAIRS.AudioPort())
    assert audio.text.count("tf_conv1d_as_2d") >= 1 and audio.complete
    assert "shape: [1, 64]" in audio.text and "layout: NC" in audio.text  # the graph's declared (N, L) input
    prelu = draft(PAIRS.keras_prelu(tmp_path).source, PAIRS.PreluPort())
    assert "reshape: [-1]" in prelu.text and prelu.complete
    cell = draft(PAIRS.keras_lstm_cell_port(tmp_path).source, PAIRS.CellPort())
    assert cell.complete and "bias_ih_hh" in cell.text and "cell.weight_ih" in cell.text
    folded = draft(PAIRS.onnx_bn_folded(tmp_path).source, PAIRS.ConvBnA())
    assert folded.complete and "BatchNorm folded" in folded.text and "bn1\\.running_var" in folded.text
    assert _pair(folded, "conv1+bn1").confidence < 0.7  # said, not hidden


class Conv3dNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv3d(2, 4, 3)

    def forward(self, x):
        return self.conv(x)


def test_item7_input_shapes_of_any_rank_and_true_unmatched_reasons(tmp_path):
    from safetensors.numpy import save_file

    d = draft(tmp_path / "audio.keras" if (tmp_path / "audio.keras").exists() else
              PAIRS.keras_conv1d_audio(tmp_path).source, PAIRS.AudioPort(), input_shape=[2, 64])
    assert d.matching is not None and "shape: [2, 64]" in d.text
    rng = np.random.default_rng(2)
    save_file({"conv.weight": rng.standard_normal((4, 2, 3, 3, 3)).astype(np.float32)}, tmp_path / "c3.safetensors")
    d = draft(tmp_path / "c3.safetensors", Conv3dNet(), input_shape=[1, 2, 5, 6, 6])
    assert "shape: [1, 2, 5, 6, 6]" in d.text and "[1, 2, 5, 6, 6]" in d.stats["order_target"]
    # same sizes, no layout recorded, several axis orders fit: say so
    save_file({"conv.weight": rng.standard_normal((3, 3, 4, 4)).astype(np.float32)}, tmp_path / "sq.safetensors")
    d = draft(tmp_path / "sq.safetensors", nn.Conv2d(4, 4, 3, bias=False))
    (_, why, _), = d.matching.unmatched_sources
    assert why.startswith("ambiguous layout") and "no layout preset says which" in why


def test_item8_like_reproduces_the_port_and_base_keeps_a_table(tmp_path, capsys):
    """--like: the MXNet P-Net drafted into the Caffe-frame port bit for bit (H/W swap + BGR flip
    found), and the draft says what the port's frame is. --base: a table missing the heads is kept
    and only the heads are drafted."""
    case = PAIRS.mxnet_pnet_like(tmp_path)
    out = tmp_path / "like.yaml"
    assert main(["draft", str(case.source), "--target", "converters.models.mtcnn:PNet", "--like", str(case.like),
                 "-o", str(out)]) == 0
    text = out.read_text()
    assert "permute: [0, 1, 3, 2]}, {flip: {axis: 1}}" in text and "H and W swapped" in text
    model, _ = convert(case.source, out)
    port = torch.load(case.like, weights_only=True)
    assert all(torch.equal(v, port[k]) for k, v in model.state_dict().items())
    # --base: the Caffe draft without its two head rules, then drafted again from it
    import yaml

    table = yaml.safe_load(draft(CAFFE, "converters.models.mtcnn:PNet").text)
    table["rules"] = [r for r in table["rules"] if "conv4" not in str(r["to"])]
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(table, sort_keys=False))
    d = draft(CAFFE, "converters.models.mtcnn:PNet", base=tmp_path / "base.yaml", out=tmp_path / "b2.yaml")
    assert_clean(d)
    assert {p.target.name for p in d.matching.pairs} == {"conv4_1", "conv4_2"} and "kept as they are" in d.text
    shipped, _ = convert(CAFFE, "caffe/mtcnn_pnet")
    again, _ = convert(CAFFE, tmp_path / "b2.yaml")
    assert all(torch.equal(v, again.state_dict()[k]) for k, v in shipped.state_dict().items())


def test_item8_like_settles_an_ambiguous_layer(tmp_path):
    """Two PReLU(32) in a row: the Caffe PReLU3 fits both (ambiguous without the port); the port
    holds its slopes in `y`, so --like picks y, and x stays open (nothing in the file fills it)."""
    rng = np.random.default_rng(3)
    with converters.read(CAFFE) as f:
        port = {"c1.weight": f["conv1/0"].numpy(), "c1.bias": f["conv1/1"].numpy(), "a1.weight": f["PReLU1/0"].numpy(),
                "c2.weight": f["conv2/0"].numpy(), "c2.bias": f["conv2/1"].numpy(), "a2.weight": f["PReLU2/0"].numpy(),
                "c3.weight": f["conv3/0"].numpy(), "c3.bias": f["conv3/1"].numpy(),
                "x.weight": rng.standard_normal(32).astype(np.float32), "y.weight": f["PReLU3/0"].numpy(),
                "h1.weight": f["conv4-1/0"].numpy(), "h1.bias": f["conv4-1/1"].numpy(),
                "h2.weight": f["conv4-2/0"].numpy(), "h2.bias": f["conv4-2/1"].numpy()}
    torch.save({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in port.items()}, tmp_path / "port.pth")
    d = draft(CAFFE, TwinActivations(), like=tmp_path / "port.pth")
    assert d.matching.ambiguous == []
    assert _pair(d, "y").decided_by == "like (bit-equal to the port)"
    assert _unmatched(d) == (set(), {"x.weight"})


def test_item4_names_that_decide_before_order():
    """Only names that identify each other are decided before order: a shared tail of two tokens
    (`..._batchnorm1` vs the stem's `bn1`) paired Gluon ResNet's stage BN with the stem BN."""
    from converters.draft.signals import names_identify

    assert names_identify("resnetv10_stage1_conv0", "stage1.conv0") and names_identify("conv4-1", "conv4_1")
    assert names_identify("branch8k.conv", "branch8k.conv")
    assert not names_identify("resnetv10_stage1_batchnorm1", "bn1") and not names_identify("c1", "conv1")


class NeedsTwoInputs(nn.Module):
    """A forward no dummy input runs: registration order, and no flatten check."""

    def __init__(self):
        super().__init__()
        self.features, self.classifier = nn.Conv2d(2, 4, 3, padding=1), nn.Linear(8 * 6 * 4, 3)

    def forward(self, x, scale):
        return self.classifier(torch.flatten(self.features(x), 1) * scale)


def test_item6_untraced_dense_is_not_confident(tmp_path):
    d = draft(PAIRS.keras_permute_flatten(tmp_path).source, NeedsTwoInputs())
    assert d.stats["order_target"] == "registration order"
    assert _pair(d, "classifier").confidence <= 0.5 and "could not be traced" in d.text
