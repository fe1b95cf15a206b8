"""save_checkpoint / resume: bit-exact resumption, wrappers, atomicity, bad files."""
from __future__ import annotations

import copy
import random

import numpy as np
import pytest
import torch
from torch import nn

from converters.errors import ConvertersError, FormatError
from converters.finetune import checkpoint_paths, load_checkpoint, resume, save_checkpoint


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)
        self.bn = nn.BatchNorm2d(8)
        self.drop = nn.Dropout(0.5)
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        x = self.bn(self.conv(x)).relu().mean((2, 3))
        return self.fc(self.drop(x))


def make(seed=0):
    torch.manual_seed(seed)
    model = Net()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.05, total_steps=20)
    return model, opt, sched


def step(model, opt, sched):
    """One training step drawing from all three RNGs: torch (data, dropout), numpy, python."""
    model.train()
    x = torch.randn(4, 3, 8, 8) + float(np.random.rand()) + random.random()
    y = torch.randint(0, 4, (4,))
    loss = nn.functional.cross_entropy(model(x), y)
    opt.zero_grad()
    loss.backward()
    opt.step()
    sched.step()


def seed_all(seed):
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)


def assert_same_state(a, b):
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    elif isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            assert_same_state(a[k], b[k])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            assert_same_state(x, y)
    else:
        assert a == b


def test_resume_is_bit_exact_and_training_continues_identically(tmp_path):
    model, opt, sched = make()
    seed_all(7)
    for _ in range(5):
        step(model, opt, sched)
    saved = copy.deepcopy([model.state_dict(), opt.state_dict(), sched.state_dict()])
    save_checkpoint(tmp_path, model, opt, sched, epoch=4, metrics={"loss": np.float32(0.5)}, note="x")
    for _ in range(5):  # the run that never stopped
        step(model, opt, sched)
    reference = {k: v.clone() for k, v in model.state_dict().items()}

    model2, opt2, sched2 = make(seed=123)  # different init, fresh optimizer and schedule
    seed_all(999)  # and different RNG streams: resume must restore them
    state = resume(tmp_path, model2, opt2, sched2)
    assert state.epoch == 4 and state.metrics == {"loss": 0.5} and state.extra == {"note": "x"}
    assert state.path == tmp_path / "last.pt"
    assert_same_state(saved[0], model2.state_dict())
    assert_same_state(saved[1], opt2.state_dict())
    assert_same_state(saved[2], sched2.state_dict())
    for _ in range(5):
        step(model2, opt2, sched2)
    for k, v in reference.items():
        assert torch.equal(v, model2.state_dict()[k]), k
    assert sched2.get_last_lr() == sched.get_last_lr()


def test_dataparallel_saves_plain_names_and_loads_both_ways(tmp_path):
    model, opt, _ = make()
    wrapped = nn.DataParallel(model)
    save_checkpoint(tmp_path / "dp.pt", wrapped, opt)
    names = list(load_checkpoint(tmp_path / "dp.pt")["model"])
    assert names == list(model.state_dict()) and not any(n.startswith("module.") for n in names)
    plain, _, _ = make(seed=5)
    resume(tmp_path / "dp.pt", plain)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), plain.state_dict().values()))
    # a file written elsewhere with module. prefixes loads into a wrapped model too
    prefixed = {"module." + k: v for k, v in model.state_dict().items()}
    torch.save({**load_checkpoint(tmp_path / "dp.pt"), "model": prefixed}, tmp_path / "prefixed.pt")
    other = nn.DataParallel(make(seed=9)[0])
    resume(tmp_path / "prefixed.pt", other)
    assert torch.equal(other.module.fc.weight, model.fc.weight)


def test_best_copy_and_paths(tmp_path):
    model, opt, sched = make()
    assert checkpoint_paths(tmp_path / "run") == (tmp_path / "run/last.pt", tmp_path / "run/best.pt")
    assert checkpoint_paths(tmp_path / "a.pt") == (tmp_path / "a.pt", tmp_path / "a.best.pt")
    save_checkpoint(tmp_path / "run", model, epoch=0, is_best=True)
    original = model.fc.weight.detach().clone()
    with torch.no_grad():
        model.fc.weight.add_(1)
    save_checkpoint(tmp_path / "run", model, epoch=1, is_best=False)
    assert resume(tmp_path / "run").epoch == 1
    best, _, _ = make(seed=3)
    assert resume(tmp_path / "run/best.pt", best).epoch == 0
    assert torch.equal(best.fc.weight, original)
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["best.pt", "last.pt"]


def test_failed_save_keeps_previous_last_and_best(tmp_path, monkeypatch):
    model, opt, sched = make()
    save_checkpoint(tmp_path, model, opt, sched, epoch=1, is_best=True)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    real_save = torch.save

    def disk_full(obj, f, *a, **k):
        f.write(b"PK\x03\x04 partial bytes")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(OSError):
        save_checkpoint(tmp_path, model, opt, sched, epoch=2, is_best=True)
    monkeypatch.setattr(torch, "save", real_save)
    after = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    assert after == before  # nothing replaced, no temporary file left behind
    assert resume(tmp_path, make(seed=4)[0]).epoch == 1


def test_interrupted_best_copy_keeps_previous_best(tmp_path, monkeypatch):
    model, _, _ = make()
    save_checkpoint(tmp_path, model, epoch=1, is_best=True)
    best = (tmp_path / "best.pt").read_bytes()
    import converters.finetune.checkpoints as ck

    def interrupted(src, fh):
        fh.write(b"half")
        raise KeyboardInterrupt

    monkeypatch.setattr(ck, "_copy_into", interrupted)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(tmp_path, model, epoch=2, is_best=True)
    assert (tmp_path / "best.pt").read_bytes() == best
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.pt", "last.pt"]


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty"])
def test_damaged_checkpoint_names_the_file(tmp_path, damage):
    model, opt, _ = make()
    path = save_checkpoint(tmp_path, model, opt, epoch=0)
    data = path.read_bytes()
    path.write_bytes({"truncate": data[: len(data) // 2], "garbage": b"\x00garbage" * 50, "empty": b""}[damage])
    with pytest.raises(FormatError) as err:
        resume(tmp_path, make()[0])
    assert str(path) in str(err.value) and "checkpoint" in str(err.value)


def test_missing_file_and_foreign_dict(tmp_path):
    with pytest.raises(FormatError, match="no such checkpoint"):
        resume(tmp_path / "nope.pt")
    torch.save(make()[0].state_dict(), tmp_path / "weights.pt")
    with pytest.raises(FormatError, match="not a converters checkpoint"):
        resume(tmp_path / "weights.pt", make()[0])


class Pickled:
    pass


def test_pickled_objects_are_refused_not_executed(tmp_path):
    torch.save({"format": "converters.checkpoint", "obj": Pickled()}, tmp_path / "evil.pt")
    with pytest.raises(FormatError) as err:
        load_checkpoint(tmp_path / "evil.pt")
    assert "Pickled" in str(err.value) and "evil.pt" in str(err.value)


def test_extras_plain_and_stateful(tmp_path):
    model, _, _ = make()
    ema = Net()
    save_checkpoint(tmp_path, model, epoch=3, ema=ema, arr=np.arange(3), where=tmp_path, n=np.int64(5),
                    nested={"a": [1, (2, 3)]})
    target = Net()
    state = resume(tmp_path, ema=target)
    assert torch.equal(target.fc.weight, ema.fc.weight)
    assert torch.equal(state.extra["arr"], torch.arange(3)) and state.extra["where"] == str(tmp_path)
    assert state.extra["n"] == 5 and type(state.extra["n"]) is int and state.extra["nested"] == {"a": [1, (2, 3)]}
    with pytest.raises(ConvertersError, match="set"):
        save_checkpoint(tmp_path, model, bad={1, 2})
    with pytest.raises(FormatError, match="no state for this object"):
        resume(tmp_path, other=Net())


def test_rng_streams_are_restored(tmp_path):
    seed_all(1)
    save_checkpoint(tmp_path, make()[0])
    expected = (torch.rand(3), np.random.rand(3), random.random())
    seed_all(2)
    resume(tmp_path)
    assert torch.equal(torch.rand(3), expected[0])
    assert np.array_equal(np.random.rand(3), expected[1]) and random.random() == expected[2]


def test_shape_mismatch_on_resume_is_a_clear_error(tmp_path):
    save_checkpoint(tmp_path, make()[0])
    other = Net()
    other.fc = nn.Linear(8, 5)
    with pytest.raises(FormatError, match="model state does not fit") as err:
        resume(tmp_path, other)
    assert "last.pt" in str(err.value)
