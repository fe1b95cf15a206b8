"""load_partial: exact reports, every kind of source, renaming, suffix matching, a real Caffe file."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import converters
from converters.errors import ConvertersError, CoverageError, FormatError
from converters.finetune import load_partial, save_checkpoint

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures/caffe"  # the real P-Net, kept by the caffe reader


class Source(nn.Module):
    def __init__(self, classes=10):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 16, 3))
        self.fc = nn.Linear(16, classes)


class Target(Source):
    """Same backbone, a changed head (5 classes) and an extra layer."""

    def __init__(self):
        super().__init__(classes=5)
        self.extra = nn.Conv2d(16, 16, 1)


FEATURES = ["features.0.weight", "features.0.bias", "features.1.weight", "features.1.bias",
            "features.1.running_mean", "features.1.running_var", "features.1.num_batches_tracked",
            "features.3.weight", "features.3.bias"]


def check_exact(report, src, tgt, source_label=None):
    assert report.loaded == [(n, n) for n in FEATURES]
    assert report.skipped_shape == [("fc.weight", "fc.weight", (10, 16), (5, 16)), ("fc.bias", "fc.bias", (10,), (5,))]
    assert report.missing == ["extra.weight", "extra.bias"]
    assert report.unexpected == [] and report.ambiguous == [] and report.reshaped == []
    assert report.not_loaded == ["extra.bias", "extra.weight", "fc.bias", "fc.weight"]
    assert not report.ok
    for n in FEATURES:
        assert torch.equal(tgt.state_dict()[n], src.state_dict()[n]), n
    if source_label is not None:
        assert report.source == source_label


@pytest.fixture
def models():
    torch.manual_seed(0)
    src = Source()
    with torch.no_grad():  # non-default statistics, so loading them is visible
        src.features[1].running_mean.uniform_()
        src.features[1].num_batches_tracked.fill_(7)
    torch.manual_seed(1)
    return src, Target()


def test_report_is_exact_for_changed_head_and_extra_layer(models):
    src, tgt = models
    head_before = tgt.fc.weight.detach().clone()
    report = load_partial(tgt, src.state_dict())
    check_exact(report, src, tgt)
    assert torch.equal(tgt.fc.weight, head_before)  # skipped means untouched


@pytest.mark.parametrize("wrap", ["module", "nested", "double", "nn_module", "dataparallel_target"])
def test_wrapped_and_nested_sources(models, wrap):
    src, tgt = models
    sd = src.state_dict()
    source = {
        "module": {"module." + k: v for k, v in sd.items()},
        "nested": {"epoch": 3, "arch": "x", "state_dict": sd, "optimizer": {"state": {}}},
        "double": {"checkpoint": {"model": {"module." + k: v for k, v in sd.items()}}, "step": 1},
        "nn_module": nn.DataParallel(src),
        "dataparallel_target": sd,
    }[wrap]
    target = nn.DataParallel(tgt) if wrap == "dataparallel_target" else tgt
    check_exact(load_partial(target, source), src, tgt)


def test_files_safetensors_torch_and_own_checkpoint(models, tmp_path):
    from safetensors.torch import save_file

    src, _ = models
    sd = {k: v.contiguous() for k, v in src.state_dict().items()}
    save_file(sd, tmp_path / "w.safetensors")
    torch.save({"state_dict": sd, "epoch": 1}, tmp_path / "w.pth")
    save_checkpoint(tmp_path / "ck", src, epoch=1)
    for path in (tmp_path / "w.safetensors", tmp_path / "w.pth", tmp_path / "ck/last.pt"):
        torch.manual_seed(1)
        tgt = Target()
        check_exact(load_partial(tgt, path), src, tgt, str(path))


def test_flattened_nested_names_lose_their_prefix(models):
    src, tgt = models
    flat = {"model_state." + k: v for k, v in src.state_dict().items()}
    flat["optimizer.state.0.exp_avg"] = torch.zeros(3)
    report = load_partial(tgt, flat)
    check_exact(report, src, tgt)
    assert report.prefix == "model_state." and report.ignored == ["optimizer.state.0.exp_avg"]


def test_strict_loads_nothing_and_carries_the_report(models):
    src, tgt = models
    before = {k: v.clone() for k, v in tgt.state_dict().items()}
    with pytest.raises(CoverageError) as err:
        load_partial(tgt, src.state_dict(), strict=True)
    assert err.value.report.missing == ["extra.weight", "extra.bias"]
    assert all(torch.equal(before[k], v) for k, v in tgt.state_dict().items())
    same = Source()
    assert load_partial(same, src.state_dict(), strict=True).ok


def test_name_mode_reshapes_singleton_axes_only(models):
    src, tgt = models
    sd = dict(src.state_dict())
    sd["fc.weight"] = torch.randn(5, 16, 1, 1)  # an fc stored as a 1x1 convolution
    sd["fc.bias"] = torch.randn(5)
    report = load_partial(tgt, sd)
    assert report.reshaped == [("fc.weight", (5, 16, 1, 1), (5, 16))]
    assert torch.equal(tgt.fc.weight, sd["fc.weight"][:, :, 0, 0])
    report = load_partial(Target(), sd, match="name+shape")
    assert report.reshaped == [] and report.skipped_shape == [("fc.weight", "fc.weight", (5, 16, 1, 1), (5, 16))]


def test_mapping_rename_and_transform(models):
    src, tgt = models
    sd = {k.replace("features.", "backbone/"): v for k, v in src.state_dict().items()}
    sd["fc.weight"] = src.fc.weight[:5].T.contiguous()  # stored transposed
    sd["fc.bias"] = src.fc.bias[:5]
    sd["aux.weight"] = torch.zeros(2)
    mapping = {"aux.weight": None, "fc.weight": ("fc.weight", lambda t: t.T)}
    report = load_partial(tgt, sd, mapping=mapping, rename=[(r"^backbone/", "features.")])
    assert report.ignored == ["aux.weight"] and report.skipped_shape == []
    assert [m for m, _ in report.loaded] == FEATURES + ["fc.weight", "fc.bias"]
    assert ("features.0.weight", "backbone/0.weight") in report.loaded
    assert torch.equal(tgt.fc.weight, src.fc.weight[:5])
    callable_report = load_partial(Target(), sd, mapping=lambda n: None if n.startswith("aux") else n,
                                   rename=[(r"^backbone/", "features.")])
    assert callable_report.ignored == ["aux.weight"]
    assert callable_report.skipped_shape == [("fc.weight", "fc.weight", (16, 5), (5, 16))]


def test_unexpected_names_show_their_renaming(models):
    src, tgt = models
    sd = dict(src.state_dict(), **{"head/w": torch.zeros(1)})
    report = load_partial(tgt, sd, rename=[(r"^head/w$", "headw")])
    assert report.unexpected == ["head/w -> headw"]


def test_suffix_matching_longest_unique_and_ambiguity(models):
    src, _ = models
    sd = {"backbone." + k: v for k, v in src.state_dict().items() if k.startswith("features.")}

    class Encoder(nn.Module):
        def __init__(self):
            super().__init__()
            self.enc = Source(classes=10)

    tgt = Encoder()
    report = load_partial(tgt, sd, match="suffix")
    assert [m for m, _ in report.loaded] == ["enc." + n for n in FEATURES]
    assert ("enc.features.0.weight", "backbone.features.0.weight") in report.loaded
    assert report.missing == ["enc.fc.weight", "enc.fc.bias"]

    class Two(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(2, 2), nn.Linear(2, 2)

    two = {"x.a.weight": torch.ones(2, 2), "y.a.weight": torch.ones(2, 2), "z.b.bias": torch.ones(2)}
    report = load_partial(Two(), two, match="suffix")
    assert report.ambiguous == [("a.weight", ["x.a.weight", "y.a.weight"])]
    assert report.loaded == [("b.bias", "z.b.bias")]
    assert report.missing == ["a.bias", "b.weight"] and report.unexpected == []
    # one source claimed by two model tensors: both ambiguous, nothing guessed
    claimed = load_partial(Two(), {"q.weight": torch.ones(2, 2)}, match="suffix")
    assert claimed.loaded == [] and claimed.ambiguous == []  # 'weight' alone is never a match
    shared = {"net.lin.weight": torch.ones(2, 2)}

    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.p, self.q = nn.Module(), nn.Module()
            self.p.lin, self.q.lin = nn.Linear(2, 2, bias=False), nn.Linear(2, 2, bias=False)

    report = load_partial(Twice(), shared, match="suffix")
    assert report.ambiguous == [("p.lin.weight", ["net.lin.weight"]), ("q.lin.weight", ["net.lin.weight"])]


def test_report_renders_as_text_json_and_html(models):
    src, tgt = models
    report = load_partial(tgt, src.state_dict())
    text = str(report)
    assert "loaded 9 tensors" in text and "2 skipped for shape" in text
    assert "fc.weight" in text and "10x16" in text and "5x16" in text and "extra.weight" in text
    d = json.loads(json.dumps(report.to_dict()))
    assert d["skipped_shape"][0] == {"model": "fc.weight", "source": "fc.weight", "source_shape": [10, 16],
                                     "model_shape": [5, 16]}
    assert "<table>" in report._repr_html_() and "extra.weight" in report._repr_html_()


def test_bad_inputs(models, tmp_path):
    src, tgt = models
    with pytest.raises(ConvertersError, match="match mode"):
        load_partial(tgt, {}, match="fuzzy")
    with pytest.raises(ConvertersError, match="regular expression"):
        load_partial(tgt, {}, rename=[("(", "x")])
    with pytest.raises(ConvertersError, match="same name"):
        load_partial(tgt, {"a": torch.zeros(1), "b": torch.zeros(1)}, rename=[(".*", "c")])
    with pytest.raises(FormatError, match="no such file"):
        load_partial(tgt, tmp_path / "missing.safetensors")
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in src.state_dict().items()}, tmp_path / "w.safetensors")
    data = (tmp_path / "w.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) - 100])
    with pytest.raises(FormatError) as err:
        load_partial(tgt, tmp_path / "cut.safetensors")
    assert "cut.safetensors" in str(err.value)
    (tmp_path / "cut.pt").write_bytes(b"PK\x03\x04" + b"\x00" * 30)
    with pytest.raises(ConvertersError, match="cut.pt"):
        load_partial(tgt, tmp_path / "cut.pt")


# ---------------------------------------------------------------------------- a real Caffe file

class PNet(nn.Module):
    """MTCNN P-Net as in det1.prototxt (Caffe pools with ceil rounding)."""

    def __init__(self):
        super().__init__()
        self.conv1, self.prelu1 = nn.Conv2d(3, 10, 3), nn.PReLU(10)
        self.pool1 = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.conv2, self.prelu2 = nn.Conv2d(10, 16, 3), nn.PReLU(16)
        self.conv3, self.prelu3 = nn.Conv2d(16, 32, 3), nn.PReLU(32)
        self.cls, self.bbox = nn.Conv2d(32, 2, 1), nn.Conv2d(32, 4, 1)

    def forward(self, x):
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.prelu3(self.conv3(self.prelu2(self.conv2(x))))
        return self.cls(x).softmax(1), self.bbox(x)


PNET_RENAME = [(r"^conv4-1/", "cls/"), (r"^conv4-2/", "bbox/"), (r"^PReLU(\d)/0$", r"prelu\1.weight"),
               (r"/0$", ".weight"), (r"/1$", ".bias")]


def test_real_caffe_pnet_loads_completely_and_runs_like_opencv():
    caffemodel = FIXTURES / "mtcnn_pnet/det1.caffemodel"
    net = PNet().eval()
    with converters.read(caffemodel, "caffe") as f:
        report = load_partial(net, f, rename=PNET_RENAME, strict=True)
        arrays = f.numpy()
    assert report.ok and len(report.loaded) == 13
    assert np.array_equal(net.conv1.weight.detach().numpy(), arrays["conv1/0"])
    assert np.array_equal(net.prelu3.weight.detach().numpy(), arrays["PReLU3/0"])
    cv2 = pytest.importorskip("cv2")
    if not hasattr(cv2.dnn, "readNetFromCaffe"):
        pytest.skip("this OpenCV has no Caffe importer")
    x = np.random.default_rng(0).uniform(-1, 1, (1, 3, 24, 24)).astype(np.float32)
    oracle = cv2.dnn.readNetFromCaffe(str(FIXTURES / "mtcnn_pnet/det1.prototxt"), str(caffemodel))
    oracle.setInput(x)
    prob, boxes = oracle.forward(["prob1", "conv4-2"])
    with torch.no_grad():
        ours_prob, ours_boxes = net(torch.from_numpy(x))
    np.testing.assert_allclose(ours_prob.numpy(), prob, atol=1e-5)
    np.testing.assert_allclose(ours_boxes.numpy(), boxes, atol=1e-5)
