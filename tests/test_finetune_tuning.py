"""freeze/unfreeze (with BatchNorm statistics), replace_head, param_groups, summary."""
from __future__ import annotations

import json

import pytest
import torch
import torchvision
from torch import nn

from converters.errors import ConvertersError
from converters.finetune import freeze, param_groups, replace_head, summary, unfreeze
from converters.finetune.tuning import is_bn_locked


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.backbone = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 3),
                                      nn.BatchNorm2d(8))
        self.neck = nn.Linear(8, 8)
        self.fc = nn.Linear(8, 3)

    def forward(self, x):
        return self.fc(self.neck(self.backbone(x).mean((2, 3))))


def test_freeze_excludes_patterns_and_locks_bn_statistics():
    m = Net()
    frozen = freeze(m, exclude=[r"^fc\.", r"^neck\."], bn_stats=True)
    assert frozen == [n for n, _ in m.backbone.named_parameters(prefix="backbone")]
    assert all(p.requires_grad for p in m.fc.parameters()) and all(p.requires_grad for p in m.neck.parameters())
    m.train()  # must not wake the frozen BatchNorm layers up
    mean = m.backbone[1].running_mean.clone()
    m(torch.randn(4, 3, 8, 8) + 3)
    assert torch.equal(m.backbone[1].running_mean, mean) and not m.backbone[1].training
    assert is_bn_locked(m.backbone[1]) and m.fc.training
    unfreeze(m, include=[r"^backbone\.1\."])
    assert not is_bn_locked(m.backbone[1]) and is_bn_locked(m.backbone[4])
    assert m.backbone[1].training
    m(torch.randn(4, 3, 8, 8) + 3)
    assert not torch.equal(m.backbone[1].running_mean, mean)
    assert unfreeze(m) == [n for n, _ in m.named_parameters()] and not is_bn_locked(m.backbone[4])


def test_freeze_without_bn_stats_leaves_bn_training():
    m = Net()
    freeze(m)
    m.train()
    mean = m.backbone[1].running_mean.clone()
    m(torch.randn(2, 3, 8, 8) + 3)
    assert not torch.equal(m.backbone[1].running_mean, mean)
    with pytest.raises(ConvertersError, match="regular expression"):
        freeze(m, exclude=["(fc"])


def test_param_groups_cover_every_trainable_parameter_once():
    m = Net()
    freeze(m, exclude=[r"^fc\.", r"^neck\.", r"^backbone\.3\."])
    groups = param_groups(m, {r"^fc\.": "x10", r"^neck\.": 0.5, r"^backbone": {"lr_mult": 0.1, "weight_decay": 0}},
                          base_lr=0.01, weight_decay=1e-4)
    ids = [id(p) for g in groups for p in g["params"]]
    trainable = [p for p in m.parameters() if p.requires_grad]
    assert len(ids) == len(set(ids)) == len(trainable) and set(ids) == {id(p) for p in trainable}
    by_name = {n: (g["lr"], g["weight_decay"]) for g in groups for n in g["param_names"]}
    assert by_name == {"backbone.3.weight": (pytest.approx(0.001), 0.0), "backbone.3.bias": (pytest.approx(0.001), 0.0),
                       "neck.weight": (0.5, 1e-4), "neck.bias": (0.5, 0.0),
                       "fc.weight": (pytest.approx(0.1), 1e-4), "fc.bias": (pytest.approx(0.1), 0.0)}
    opt = torch.optim.AdamW(groups, lr=0.01)  # the groups are what optimizers take
    m(torch.randn(2, 3, 8, 8)).sum().backward()
    opt.step()


def test_param_groups_norm_no_decay_and_tied_weights():
    m = nn.Sequential(nn.Embedding(10, 4), nn.LayerNorm(4), nn.Linear(4, 10))
    m[2].weight = m[0].weight  # tied
    groups = param_groups(m, base_lr=1.0, weight_decay=0.1)
    names = {n: g["weight_decay"] for g in groups for n in g["param_names"]}
    assert names == {"0.weight": 0.1, "1.weight": 0.0, "1.bias": 0.0, "2.bias": 0.0}
    assert sum(len(g["params"]) for g in groups) == 4
    custom = param_groups(m, base_lr=1.0, weight_decay=0.1, no_decay=[r"^0\."])
    assert {n: g["weight_decay"] for g in custom for n in g["param_names"]}["0.weight"] == 0.0
    with pytest.raises(ConvertersError, match="multiplier"):
        param_groups(m, {"0": "ten times"})
    with pytest.raises(ConvertersError, match="not both"):
        param_groups(m, {"0": {"lr": 1, "lr_mult": 2}})


@pytest.mark.parametrize("build,expected", [
    (torchvision.models.resnet18, "fc"),
    (torchvision.models.mobilenet_v3_small, "classifier.3"),
    (torchvision.models.squeezenet1_1, "classifier.1"),
    (torchvision.models.shufflenet_v2_x0_5, "fc"),
])
def test_replace_head_torchvision(build, expected):
    torch.manual_seed(0)
    m = build(weights=None).eval()
    name = replace_head(m, 7)
    assert name == expected
    with torch.no_grad():
        assert m(torch.randn(1, 3, 64, 64)).shape == (1, 7)


def test_replace_head_vit_style_and_timm_style():
    class ViTLike(nn.Module):
        def __init__(self):
            super().__init__()
            self.encoder = nn.Linear(4, 4)
            self.heads = nn.Sequential()
            self.heads.add_module("head", nn.Linear(4, 1000))

    m = ViTLike()
    assert replace_head(m, 3) == "heads.head" and m.heads.head.out_features == 3

    class TimmLike(nn.Module):
        def __init__(self):
            super().__init__()
            self.head = nn.Linear(4, 1000)
            self.num_classes = 1000

        def get_classifier(self):
            return self.head

        def reset_classifier(self, num_classes):
            self.num_classes = num_classes
            self.head = nn.Linear(4, num_classes)

    t = TimmLike()
    assert replace_head(t, 5) == "head" and t.head.out_features == 5 and t.num_classes == 5
    with pytest.raises(ConvertersError, match="cannot find a classifier head"):
        replace_head(nn.Sequential(nn.ReLU()), 3)
    double = nn.Linear(4, 10).double()
    holder = nn.Module()
    holder.fc = double
    replace_head(holder, 2)
    assert holder.fc.weight.dtype == torch.float64


def test_summary_counts_per_top_level_module():
    m = Net()
    freeze(m, exclude=[r"^fc\."], bn_stats=True)
    s = summary(m)
    rows = {r[0]: r for r in s.rows}
    assert rows["backbone"][2:] == (0, 8 * 3 * 9 + 8 + 16 + 8 * 8 * 9 + 8 + 16, 2)
    assert rows["fc"][2:4] == (27, 0) and rows["neck"][2:4] == (0, 72)
    assert s.trainable == 27 and s.frozen == sum(p.numel() for p in m.parameters()) - 27
    assert "trainable" in str(s) and "backbone" in s._repr_html_()
    json.dumps(s.to_dict())
