"""Meta-device target builds (converters.target.build_model(meta=True)): torch.nn.init's
initialisers are skipped for meta tensors, and only there, so the build is fast and changes
nothing else."""
import threading

import pytest
import torch

from converters.target import build_model, describe


def _lstm_net() -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Embedding(50, 8), torch.nn.LSTM(8, 16, num_layers=2, bidirectional=True))


@pytest.mark.parametrize("spec", [
    {"model": "torchvision.models:resnet50"},
    {"model": "torchvision.models:vit_b_16"},  # MultiheadAttention imports its initialisers by name
    {"model": "torchvision.models:mobilenet_v3_small"},
    {"model": f"{__name__}:_lstm_net"},
], ids=lambda s: s["model"].rpartition(":")[2])
def test_a_meta_build_describes_the_same_tensors_as_a_real_one(spec):
    meta, real = build_model(spec, meta=True), build_model(spec)
    assert all(t.is_meta for t in meta.state_dict().values())
    assert describe(meta) == describe(real)
    assert list(meta.state_dict()) == list(real.state_dict())


def test_torch_init_is_restored_after_a_build():
    before = {n: getattr(torch.nn.init, n) for n in dir(torch.nn.init) if n.endswith("_") and not n.startswith("_")}
    build_model({"model": "torchvision.models:resnet18"}, meta=True)
    after = {n: getattr(torch.nn.init, n) for n in before}
    assert after == before
    t = torch.nn.init.constant_(torch.empty(3), 2.5)  # and draws values again
    assert t.tolist() == [2.5, 2.5, 2.5]


built_on_cpu = {}


def _net_with_a_real_tensor() -> torch.nn.Module:
    """A constructor that makes one real (CPU) tensor on purpose and initialises it."""
    t = torch.nn.init.constant_(torch.empty(4, device="cpu"), 7.0)
    built_on_cpu["t"] = t
    return torch.nn.Linear(3, 2)


def test_tensors_that_are_not_meta_are_still_initialised():
    build_model({"model": f"{__name__}:_net_with_a_real_tensor"}, meta=True)
    assert built_on_cpu["t"].tolist() == [7.0] * 4


gate = {}


def _net_that_waits() -> torch.nn.Module:
    """Initialises a meta tensor itself, then holds the build open while another thread does too."""
    torch.nn.init.constant_(torch.empty(2, device="meta"), 1.0)
    gate["building"].set()
    assert gate["done"].wait(30)
    return torch.nn.Linear(3, 2)


def test_other_threads_keep_the_real_initialisers_during_a_build(monkeypatch):
    real, seen = torch.nn.init.constant_, []

    def spy(tensor, value):
        seen.append((threading.current_thread().name, tensor.device.type))
        return real(tensor, value)
    monkeypatch.setattr(torch.nn.init, "constant_", spy)
    gate.update(building=threading.Event(), done=threading.Event())

    def other():
        gate["building"].wait(30)
        assert torch.nn.init.constant_ is not spy  # the build's wrapper is in place
        torch.nn.init.constant_(torch.empty(2, device="meta"), 1.5)
        gate["done"].set()

    thread = threading.Thread(target=other, name="other")
    thread.start()
    build_model({"model": f"{__name__}:_net_that_waits"}, meta=True)
    thread.join(30)
    assert seen == [("other", "meta")]  # the builder's own meta tensor was skipped, the other's was not
    assert torch.nn.init.constant_ is spy
