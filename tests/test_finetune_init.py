"""init_params: each scheme's statistics, only= from a load report, seeding."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from converters.errors import ConvertersError
from converters.finetune import init_params, load_partial


def net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(64, 256, 3), nn.BatchNorm2d(256), nn.PReLU(256), nn.Flatten(),
                         nn.Linear(1024, 512))


def test_classic_conv_bn_and_linear():
    m = net()
    with torch.no_grad():
        m[1].running_var.fill_(3)
        m[1].num_batches_tracked.fill_(9)
        m[2].weight.fill_(0.7)
    report = init_params(m, "classic", seed=0)
    n = 3 * 3 * 256
    assert abs(m[0].weight.std().item() / math.sqrt(2 / n) - 1) < 0.02
    assert abs(m[0].weight.mean().item()) < 0.002
    assert torch.count_nonzero(m[0].bias) == 0
    assert torch.all(m[1].weight == 1) and torch.all(m[1].bias == 0)
    assert torch.all(m[1].running_mean == 0) and torch.all(m[1].running_var == 1) and m[1].num_batches_tracked == 0
    assert torch.all(m[2].weight == 0.25)  # PReLU keeps PyTorch's own default
    bound = 1 / math.sqrt(1024)  # Linear as PyTorch does: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for both
    for t in (m[4].weight, m[4].bias):
        assert t.abs().max() <= bound and t.abs().max() > 0.9 * bound
    assert dict(report.rows)["0.weight"] == f"normal(0, sqrt(2/{n}))"
    assert len(report.rows) == len(m.state_dict())


@pytest.mark.parametrize("mode,fan", [("fan_in", 64 * 9), ("fan_out", 256 * 9)])
def test_kaiming_fan_modes(mode, fan):
    m = net()
    init_params(m, "kaiming", mode=mode, seed=1)
    assert abs(m[0].weight.std().item() / math.sqrt(2 / fan) - 1) < 0.02
    assert torch.count_nonzero(m[4].bias) == 0 and torch.all(m[1].weight == 1)


def test_xavier_normal_zeros_constant():
    m = net()
    init_params(m, "xavier", seed=2)
    bound = math.sqrt(6 / (1024 + 512))
    assert m[4].weight.abs().max() <= bound and m[4].weight.abs().max() > 0.99 * bound
    init_params(m, "normal", std=0.02, seed=2)
    assert abs(m[4].weight.std().item() / 0.02 - 1) < 0.02
    init_params(m, "zeros")
    assert all(torch.count_nonzero(p) == 0 for p in m.parameters())
    init_params(m, "constant", value=0.5)
    assert all(torch.all(p == 0.5) for p in m.parameters())
    assert torch.all(m[1].running_var == 1)


def test_only_touches_what_was_not_loaded():
    torch.manual_seed(3)
    src = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.Flatten(), nn.Linear(8, 10))
    tgt = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.Flatten(), nn.Linear(8, 4))
    report = load_partial(tgt, src.state_dict())
    loaded = {k: v.clone() for k, v in tgt.state_dict().items() if k.startswith(("0.", "1."))}
    head = tgt[3].weight.detach().clone()
    init = init_params(tgt, "kaiming", only=report, seed=0)
    assert init.names == ["3.weight", "3.bias"]
    assert all(torch.equal(v, tgt.state_dict()[k]) for k, v in loaded.items())
    assert not torch.equal(head, tgt[3].weight)
    init_params(tgt, "zeros", only=["re:^3\\.bias$"])
    assert torch.count_nonzero(tgt[3].bias) == 0 and torch.count_nonzero(tgt[3].weight) > 0
    with pytest.raises(ConvertersError, match="does not have"):
        init_params(tgt, "zeros", only=["head.weight"])


def test_partial_module_default_keeps_loaded_sibling():
    lin = nn.Linear(16, 4)
    with torch.no_grad():
        lin.bias.fill_(5)
    init_params(lin, "pytorch", only=["weight"], seed=0)
    assert torch.all(lin.bias == 5) and lin.weight.abs().max() <= 0.25
    prelu = nn.PReLU(3)
    with torch.no_grad():
        prelu.weight.fill_(1)
    init_params(prelu, "kaiming", seed=0)
    assert torch.all(prelu.weight == 0.25)


def test_seeded_is_deterministic_and_leaves_global_rng_alone():
    a, b = net(), net()
    torch.manual_seed(42)
    expected = torch.rand(3)
    torch.manual_seed(42)
    init_params(a, "kaiming", seed=7)
    assert torch.equal(torch.rand(3), expected)
    init_params(b, "kaiming", seed=7)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    init_params(b, "kaiming", seed=8)
    assert not torch.equal(a[0].weight, b[0].weight)
    torch.manual_seed(5)
    init_params(a, "xavier")
    torch.manual_seed(5)
    init_params(b, "xavier")
    assert torch.equal(a[4].weight, b[4].weight)


def test_bad_scheme_and_report_rendering():
    with pytest.raises(ConvertersError, match="unknown init scheme"):
        init_params(net(), "orthogonal-ish")
    with pytest.raises(ConvertersError, match="fan_in or fan_out"):
        init_params(net(), "kaiming", mode="fan_avg")
    r = init_params(nn.Linear(2, 2), "xavier", seed=0)
    assert "initialised 2 tensors with xavier, seed 0" in str(r) and "weight" in r._repr_html_()
    assert r.to_dict()["initialised"][0] == {"name": "weight", "rule": "xavier uniform gain 1.0"}
