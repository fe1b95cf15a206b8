"""The shipped table caffe/res10_ssd on the REAL third-party file: OpenCV's ResNet-10 SSD face
detector (res10_300x300_ssd_iter_140000.caffemodel, a training snapshot, + deploy.prototxt).

The two files (10.7 MB) are copied into fixtures/caffe/res10_ssd (provenance in
fixtures/README.md). The oracle is OpenCV's Caffe importer, which reads the same two files
independently of this project's reader.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from converters.convert import convert
from converters.mapping import spec as mapping_spec
from converters.models.res10_ssd import ResNet10SSD, feature_sizes, prior_boxes
from converters.parity.verify import verify
from converters.readers import caffe as caffe_reader

REAL = Path(__file__).resolve().parents[1] / "fixtures/caffe/res10_ssd"
WEIGHTS = REAL / "res10_300x300_ssd_iter_140000.caffemodel"
PROTOTXT = REAL / "deploy.prototxt"
TABLE = "caffe/res10_ssd"
TRAINING_ONLY_TYPES = {"AnnotatedData", "Split", "MultiBoxLoss"}
N_PRIORS = 8892  # 38*38*4 + 19*19*6 + 10*10*6 + 5*5*6 + 5*5*4 + 5*5*4

pytestmark = pytest.mark.skipif(not (WEIGHTS.is_file() and PROTOTXT.is_file()),
                                reason="res10 SSD real file not present beside the checkout")


def _need_opencv():
    pytest.importorskip("cv2", reason="OpenCV (opencv-python-headless<5) is not installed: the Caffe oracle needs it")


def _convert():
    return convert(str(WEIGHTS), TABLE)


def test_every_array_of_the_training_snapshot_is_accounted_for():
    arrays = caffe_reader.open(str(WEIGHTS), prototxt=str(PROTOTXT))
    model, rep = _convert()
    assert rep.ok, str(rep)
    assert isinstance(model, ResNet10SSD)
    used = {s for row in rep.rows for s in row["sources"]} | {name for name, _, _ in rep.ignored}
    assert used == set(arrays), f"dropped: {sorted(set(arrays) - used)}"
    assert len(arrays) == 104 and len(rep.rows) == 94  # the 10 BatchNorm factors ride along (`with:`)
    # the layers only the training net has carry no arrays; the table names their types on purpose
    training_only = arrays.meta["layers_not_in_prototxt"]
    assert {d["type"] for d in training_only} == TRAINING_ONLY_TYPES
    assert {"data", "mbox_loss"} <= {d["name"] for d in training_only}
    assert all(d["arrays"] == 0 for d in training_only)
    table = mapping_spec.load(TABLE)
    assert {i.layer_type for i in table.ignore} >= TRAINING_ONLY_TYPES
    assert all(i.reason for i in table.ignore)
    # every target tensor written or (num_batches_tracked) filled
    assert {t for t, _, _ in rep.filled} == {f"{n}.num_batches_tracked" for n, m in model.named_modules()
                                             if isinstance(m, torch.nn.BatchNorm2d)}


def test_batchnorm_statistics_divided_by_the_scale_factor_and_scale_into_affine():
    arrays = caffe_reader.open(str(WEIGHTS), prototxt=str(PROTOTXT))
    model, rep = _convert()
    factor = float(arrays["layer_128_1_bn2/2"].numpy()[0])
    assert factor not in (0.0, 1.0)  # the real file stores running sums: the division matters
    bn = model.layer_128_1_bn2
    np.testing.assert_array_equal(bn.running_mean.numpy(), arrays["layer_128_1_bn2/0"].numpy() / factor)
    np.testing.assert_array_equal(bn.running_var.numpy(), arrays["layer_128_1_bn2/1"].numpy() / factor)
    np.testing.assert_array_equal(bn.weight.detach().numpy(), arrays["layer_128_1_scale2/0"].numpy())
    np.testing.assert_array_equal(bn.bias.detach().numpy(), arrays["layer_128_1_scale2/1"].numpy())
    assert set(rep.bn_eps.values()) == {1e-5}
    assert all(m.eps == 1e-5 for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    assert model.conv1_pool.ceil_mode
    assert model.layer_64_1_conv1_h.bias is None and model.conv1_h.bias is not None
    np.testing.assert_array_equal(model.conv4_3_norm.weight.detach().numpy(), arrays["conv4_3_norm/0"].numpy())


def test_verify_against_opencv_passes_with_default_tolerances():
    _need_opencv()
    report = verify(str(WEIGHTS), TABLE, architecture=str(PROTOTXT), n=1, localise="always")
    assert report.passed, str(report)
    assert report.tolerance["atol"] == 1e-4  # the defaults: the table sets none
    assert report.inputs["data"]["shape"] == [1, 3, 300, 300]
    by_name = {o["name"]: o for o in report.outputs}
    assert list(by_name) == ["mbox_loc", "mbox_conf_flatten"]
    assert by_name["mbox_loc"]["shape"] == [1, 4 * N_PRIORS]
    assert by_name["mbox_conf_flatten"]["shape"] == [1, 2 * N_PRIORS]
    for o in report.outputs:
        assert o["max_abs"] <= 1e-4 * o["scale"] and o["cosine"] > 0.99999
    # every paired layer agrees too, the Normalize layer and the hand-paired pooling included
    names = [row["name"] for row in report.layers]
    assert {"data_scale", "conv1_pool", "layer_512_1_conv2_h", "last_scale_h", "conv4_3_norm"} <= set(names)
    assert all(row["passed"] for row in report.layers), str(report)


def test_pooling_rounding_fault_is_named_at_conv1_pool():
    _need_opencv()
    model, _ = _convert()
    model.conv1_pool.ceil_mode = False  # floor where Caffe rounds up: 74x74 instead of 75x75
    report = verify(str(WEIGHTS), TABLE, architecture=str(PROTOTXT), n=1, model=model)
    assert not report.passed
    assert report.first_divergent["source_layer"] == "conv1_pool"
    assert any("ceil" in c for c in report.first_divergent["likely_causes"])


def test_batchnorm_eps_fault_is_named_at_its_layer():
    _need_opencv()
    model, _ = _convert()
    model.layer_128_1_bn2.eps = 1e-2
    report = verify(str(WEIGHTS), TABLE, architecture=str(PROTOTXT), n=1, model=model)
    assert not report.passed
    # the BatchNorm module holds the BatchNorm and Scale layers: compared at the Scale's output
    assert report.first_divergent["source_layer"] == "layer_128_1_scale2"
    assert report.first_divergent["module"] == "layer_128_1_bn2"


def test_prior_boxes_equal_the_prototxt_priorbox_layers():
    _need_opencv()
    from converters.parity.oracles.base import SourceModel
    from converters.parity.oracles.caffe_oracle import CaffeOracle

    assert feature_sizes(300, 300) == [(38, 38), (19, 19), (10, 10), (5, 5), (5, 5), (5, 5)]
    oracle = CaffeOracle(SourceModel("caffe", weights=str(WEIGHTS), architecture=str(PROTOTXT)))
    x = np.zeros((1, 3, 300, 300), np.float32)
    reference = oracle.run({"data": x}, ["mbox_priorbox"])["mbox_priorbox"]
    ours = prior_boxes(300, 300)
    assert ours.shape == reference.shape == (1, 2, 4 * N_PRIORS)
    np.testing.assert_allclose(ours, reference, rtol=0, atol=1e-6)
