"""[torch] reader against torch.load(weights_only=True), bit for bit; hostile pickles refused."""
from __future__ import annotations

import os
import pickle
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from hostile_files import RunsCommand, pth_that_runs_command  # noqa: E402

from converters import read  # noqa: E402
from converters.errors import FormatError, TruncatedError, UnsupportedError  # noqa: E402
from converters.readers import torch_files  # noqa: E402

FIX = Path(__file__).resolve().parents[1] / "fixtures" / "torch"
FILES = ["state_dict_dtypes.pt", "checkpoint_nested.pth", "legacy_format.pth"]


def flatten(obj, prefix=""):
    """Every tensor of a checkpoint with its dotted path, as torch itself loads it."""
    if isinstance(obj, torch.Tensor):
        yield prefix, obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield from flatten(v, f"{prefix}.{k}" if prefix else str(k))


def as_bytes(t: torch.Tensor) -> bytes:
    t = t.contiguous()
    if t.dtype == torch.bfloat16:
        t = t.view(torch.int16)
    return t.numpy().tobytes()


def reference(name):
    ckpt = torch.load(FIX / name, map_location="cpu", weights_only=True)
    out = {}
    for path, t in flatten(ckpt):
        out[path[len("state_dict."):] if path.startswith("state_dict.") else path] = t
    return out


@pytest.mark.parametrize("name", FILES)
def test_every_tensor_matches_torch_load_bit_exactly(name):
    ref = reference(name)
    with read(FIX / name, "torch") as f:
        assert list(f) == list(ref)
        for key, t in ref.items():
            a = f[key]
            assert a.shape == tuple(t.shape), key
            got = a.numpy()
            assert got.tobytes() == as_bytes(t), key
            assert got.dtype.itemsize == t.element_size()


def test_dtypes_and_state_dict_meta():
    with read(FIX / "state_dict_dtypes.pt", "torch") as f:
        assert f.meta["format"] == "torch-zip" and f.meta["state_dict_key"] is None
        assert f["half"].dtype == np.float16 and f["bf16"].dtype.name == "bfloat16"
        assert f["ids"].numpy().tolist() == [-(2**63), 2**63 - 1, 42]
        assert f["mask"].dtype == np.bool_ and f["scale"].shape == ()
        assert f["transposed"].numpy().tolist() == torch.arange(24.).reshape(4, 6).t().tolist()
        assert f["bn.num_batches_tracked"].role == "counter" and f["bn.num_batches_tracked"].numpy() == 123
        assert f["bn.running_var"].role == "running_var" and f["bn.running_var"].layer == "bn"
        assert f["conv.weight"].layout == "OIHW" and f["conv.weight"].meta["layout_guessed"] is True
        assert f["fc.weight"].layout == "OI" and f["conv.bias"].layout is None
        assert f["head.weight"].meta["same_as"] == "emb.weight"  # tied weights share one storage


def test_nested_checkpoint():
    with read(FIX / "checkpoint_nested.pth", "torch") as f:
        assert f.meta["state_dict_key"] == "state_dict"
        assert f.meta["checkpoint"]["epoch"] == 3 and f.meta["checkpoint"]["arch"] == "Net"
        assert f.meta["checkpoint"]["optimizer.param_groups"][0]["lr"] == 1e-3
        assert f["module.conv.weight"].role == "weight"  # DataParallel prefix kept
        assert f["optimizer.state.0.exp_avg"].role == "optimizer"
        assert f["optimizer.state.0.step"].role == "counter"
        assert f["optimizer.state.0.exp_avg"].meta["section"] == "optimizer"
        assert f["best_acc"].role == "other" and f["best_acc"].numpy() == np.float32(0.875)
        weights = [k for k in f if f[k].meta.get("section") is None]
        assert all(k.startswith("module.") for k in weights) and len(weights) == 11


def test_key_option():
    with read(FIX / "checkpoint_nested.pth", "torch", key="optimizer") as f:
        assert f.meta["state_dict_key"] == "optimizer"
        assert "state.0.exp_avg" in f and "state_dict.module.conv.weight" in f
    with pytest.raises(FormatError, match="no 'nope'") as e:
        read(FIX / "checkpoint_nested.pth", "torch", key="nope")
    assert "state_dict" in str(e.value)
    with pytest.raises(FormatError, match="holds no tensors"):
        read(FIX / "checkpoint_nested.pth", "torch", key="arch")


def test_zip_format_is_memory_mapped_legacy_is_not():
    with read(FIX / "state_dict_dtypes.pt", "torch") as f:
        view = f["conv.weight"].numpy(copy=False)
        assert not view.flags.owndata
        assert f["conv.weight"].numpy().flags.owndata  # the default copy outlives the file
    with read(FIX / "legacy_format.pth", "torch") as f:
        assert f.meta["format"] == "torch-legacy" and f["bf16"].dtype.name == "bfloat16"


class Custom:
    """A class torch's allow-list does not know."""

    def __init__(self):
        self.value = 1


@pytest.mark.parametrize("zip_format", [True, False])
def test_pickle_that_runs_code_is_refused_without_running(tmp_path, zip_format):
    path, marker = pth_that_runs_command(tmp_path, zip_format)
    with pytest.raises(FormatError) as e:
        read(path, "torch")
    msg = str(e.value)
    assert "system" in msg and str(path) in msg and "safetensors" in msg
    assert not marker.exists()


def test_plain_pickle_and_custom_class_refused(tmp_path):
    marker = tmp_path / "pwned"
    raw = tmp_path / "raw.pt"
    raw.write_bytes(pickle.dumps(RunsCommand(marker), protocol=2))
    with pytest.raises(FormatError, match="system"):
        read(raw, "torch")
    assert not marker.exists()
    custom = tmp_path / "custom.pt"
    torch.save({"obj": Custom(), "w": torch.zeros(1)}, custom)
    with pytest.raises(FormatError, match="Custom") as e:
        read(custom, "torch")
    assert e.value.hint and "state_dict" in e.value.hint


def test_truncated_files(tmp_path):
    for name in ("checkpoint_nested.pth", "legacy_format.pth"):
        data = (FIX / name).read_bytes()
        for cut in (len(data) // 2, len(data) - 10):
            p = tmp_path / f"cut{cut}_{name}"
            p.write_bytes(data[:cut])
            with pytest.raises(TruncatedError) as e:
                read(p, "torch")
            assert e.value.file == str(p)


def test_not_a_torch_file(tmp_path):
    p = tmp_path / "notes.pt"
    p.write_text("just text")
    with pytest.raises(FormatError, match="neither"):
        read(p, "torch")
    z = tmp_path / "other.pt"
    with zipfile.ZipFile(z, "w") as zf:
        zf.writestr("weights.npy", b"x")
    with pytest.raises(FormatError, match="data.pkl"):
        read(z, "torch")
    empty = tmp_path / "empty.pt"
    torch.save({"epoch": 1}, empty)
    with pytest.raises(FormatError, match="no tensors"):
        read(empty, "torch")


@pytest.mark.filterwarnings("ignore::FutureWarning")  # torch.jit is deprecated; the files still exist
def test_torchscript_archive_is_named(tmp_path):
    p = tmp_path / "scripted.pt"
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 3)), str(p))
    with pytest.raises(UnsupportedError, match="TorchScript"):
        read(p, "torch")


def test_sniff(tmp_path):
    for name in FILES:
        head = (FIX / name).read_bytes()[:64]
        assert torch_files.sniff(FIX / name, head)
        renamed = tmp_path / "renamed.dat"  # no telling extension: the bytes decide
        renamed.write_bytes((FIX / name).read_bytes())
        assert torch_files.sniff(renamed, head)
    legacy_head = (FIX / "legacy_format.pth").read_bytes()[:64]
    assert torch_files.sniff("weights.dat", legacy_head)
    p4 = tmp_path / "p4.pt"
    torch.save({"w": torch.ones(1)}, p4, _use_new_zipfile_serialization=False, pickle_protocol=4)
    assert torch_files.sniff("x.dat", p4.read_bytes()[:64])
    z = tmp_path / "archive.zip"
    with zipfile.ZipFile(z, "w") as zf:
        zf.writestr("weights.npy", b"x")
    assert not torch_files.sniff(z, z.read_bytes()[:64])
    assert not torch_files.sniff("model.ckpt", b"")  # a TF checkpoint prefix, not a file
    assert not torch_files.sniff("model.bin", b"\x08\x07\x12\x07pytorch")


def _checkpoint():
    """Zeros well past 4 MiB (deflate packs them ~1028:1), random data, a storage shared by two
    views, an empty tensor, bf16 and int64, nested under a checkpoint key, plain values beside."""
    g = torch.Generator().manual_seed(0)
    base = torch.randn(10, generator=g)
    sd = {"zeros": torch.zeros(3 << 20), "rand": torch.randn(1000, generator=g), "base": base, "view": base[2:5],
          "empty": torch.empty(0, 3), "bf16": torch.ones(7, dtype=torch.bfloat16), "step": torch.arange(5)}
    return {"epoch": 3, "state_dict": sd, "optimizer": {"state": {0: {"exp_avg": torch.zeros(6)}}, "lr": 0.1}}


def _zip_cli(src, dst, tmp_path):
    """Re-zip with Info-ZIP's `zip -9` (deflate), as someone repacking an archive by hand would."""
    import shutil
    import subprocess

    if shutil.which("zip") is None:
        pytest.skip("no zip command")
    with zipfile.ZipFile(src) as zf:
        zf.extractall(tmp_path / "unpacked")
        top = zf.namelist()[0].split("/")[0]
    subprocess.run(["zip", "-q", "-r", "-9", str(dst), top], cwd=tmp_path / "unpacked", check=True)
    return dst


@pytest.mark.parametrize("variant", ["zip", "legacy", "zipfile_deflated", "zip_cli"])
def test_compressible_and_rezipped_checkpoints_read_as_torch_loads_them(tmp_path, variant):
    """The size bounds refuse no real file: 12 MiB of zeros deflated ~1028:1 (past a 128:1 rule),
    archives re-zipped by other tools (deflated, so read rather than memory-mapped), legacy files."""
    from hostile_files import rezip

    plain = tmp_path / "plain.pth"
    torch.save(_checkpoint(), plain, _use_new_zipfile_serialization=variant != "legacy")
    path = {"zip": lambda: plain, "legacy": lambda: plain,
            "zipfile_deflated": lambda: rezip(plain, tmp_path / "d.pth", zipfile.ZIP_DEFLATED, 9),
            "zip_cli": lambda: _zip_cli(plain, tmp_path / "z.pth", tmp_path)}[variant]()
    if variant in ("zipfile_deflated", "zip_cli"):
        with zipfile.ZipFile(path) as zf:
            zeros = max(zf.infolist(), key=lambda i: i.file_size)
            assert zeros.compress_type == zipfile.ZIP_DEFLATED and zeros.file_size > 1000 * zeros.compress_size
    expected = dict(flatten(torch.load(path, map_location="cpu", weights_only=True)))
    assert torch.equal(expected["state_dict.zeros"], torch.zeros(3 << 20))
    with read(path, "torch") as f:
        assert f.meta["state_dict_key"] == "state_dict" and f.meta["checkpoint"]["epoch"] == 3
        for key, t in expected.items():
            name = key[len("state_dict."):] if key.startswith("state_dict.") else key
            got = f[name].numpy()
            assert got.shape == tuple(t.shape) and got.tobytes() == as_bytes(t), (variant, key)


# --------------------------------------------------------------------------- read without torch

def _tricky_checkpoint():
    """What a state dict or a checkpoint holds beyond plain contiguous weights."""
    base = torch.arange(24, dtype=torch.float32).reshape(4, 6)
    lin = torch.nn.Linear(3, 2)
    return {
        "model": {**lin.state_dict(), "transposed": base.t(), "strided": base[:, ::2], "slice": base[1:3],
                  "shared_a": base, "shared_b": base, "scalar": torch.tensor(3.5), "empty": torch.zeros(0, 3),
                  "size1": torch.ones(1, 5).expand(1, 5).clone().as_strided((1, 5), (99, 1)),
                  "param": torch.nn.Parameter(torch.ones(2, 2)), "bf16": torch.ones(3, dtype=torch.bfloat16),
                  "half": torch.full((2,), 0.5, dtype=torch.float16), "flags": torch.tensor([True, False]),
                  "ids": torch.arange(5, dtype=torch.int64), "bytes": torch.arange(4, dtype=torch.uint8),
                  "c64": torch.tensor([1 + 2j], dtype=torch.complex64), "ünïcode.weight": torch.ones(1)},
        "optimizer": {"state": {0: {"step": torch.tensor(7.0), "exp_avg": torch.zeros(2, 3)}}, "param_groups": [
            {"lr": 0.1, "params": [0]}]},
        "epoch": 3, "names": ("a", "b"),
    }


def _as_torch_reads_it(path, monkeypatch):
    """The same file through torch.load (the torch-free path switched off)."""
    from converters.readers import torch_files

    with monkeypatch.context() as m:
        m.setattr(torch_files, "_open_plain", lambda path: None)
        f = read(path, "torch")
        return f, {k: (h.shape, h.dtype, dict(h.meta), h.numpy()) for k, h in f.items()}


@pytest.mark.parametrize("case", ["state_dict_dtypes", "checkpoint_nested", "tricky", "module_state_dict"])
def test_read_without_torch_equals_the_torch_load_path(case, tmp_path, monkeypatch):
    if case in ("state_dict_dtypes", "checkpoint_nested"):
        path = FIX / (case + (".pt" if case == "state_dict_dtypes" else ".pth"))
    else:
        path = tmp_path / f"{case}.pt"
        obj = _tricky_checkpoint() if case == "tricky" else torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3),
                                                                                 torch.nn.BatchNorm2d(4)).state_dict()
        torch.save(obj, path)
    slow_file, slow = _as_torch_reads_it(path, monkeypatch)
    with read(path, "torch") as f:
        assert f.meta == slow_file.meta
        assert list(f) == list(slow)
        for name, h in f.items():
            shape, dtype, meta, data = slow[name]
            assert (h.shape, h.dtype, h.meta) == (shape, dtype, meta), name
            got = h.numpy()
            assert got.dtype == data.dtype and got.shape == data.shape and got.tobytes() == data.tobytes(), name
            assert got.flags.owndata and got.flags.writeable


def test_plain_state_dicts_are_read_without_importing_torch(tmp_path):
    """Reading a state dict needs no torch (import torch is ~1-2 s of a `convert inspect`)."""
    code = ("import sys, converters\n"
            f"f = converters.read({str(FIX / 'state_dict_dtypes.pt')!r})\n"
            "arrays = [h.numpy() for h in f.values()]\n"
            "print(len(arrays), 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert int(out[0]) > 0 and out[1] == "False"


def test_storage_smaller_than_its_tensor_is_refused(tmp_path):
    """A pickle whose tensor reaches past its storage record (a hand-edited size, re-zipped with a
    valid CRC) is an error naming the file and the tensor, from the torch-free path."""
    src, path = tmp_path / "src.pt", tmp_path / "lie.pt"
    torch.save({"w": torch.zeros(4)}, src)
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zout:
        for info in zin.infolist():
            data = zin.read(info)
            if info.filename.endswith("/data.pkl"):
                assert data.count(b"K\x04\x85") == 1, "expected one (4,) size tuple in data.pkl"
                data = data.replace(b"K\x04\x85", b"K\x09\x85")  # shape (9,) on a 4-element storage
            zout.writestr(info.filename, data)
    with pytest.raises(FormatError) as e:
        read(path, "torch")
    assert "'w'" in str(e.value) and str(path) in str(e.value) and "past its storage" in str(e.value)


def test_cut_short_while_open(tmp_path):
    """A torch.save state dict cut in the middle under the open reader (torch-free path), in a
    child: every tensor still whole reads as before, the others (C-order ones through SmallReads'
    shared pread, a big one read alone, a transposed one gathered from its storage's pread) are a
    TruncatedError naming file and tensor, never a SIGBUS."""
    from test_reader_binary import _check_cut

    g = torch.Generator().manual_seed(4)
    state = {f"layer{i}.weight" if i % 2 else f"layer{i}.bias": torch.randn((16, 16) if i % 2 else (64,), generator=g)
             for i in range(300)}
    state["big"] = torch.arange(1 << 16, dtype=torch.int64)  # past SmallReads' window: read on its own
    state["transposed"] = torch.randn(40, 30, generator=g).t()  # strided: no stored span, read by pread
    path = tmp_path / "m.pt"
    torch.save(state, path)
    with read(path, "torch") as f:
        assert type(f["layer3.weight"]).__name__ == "WindowArray" and f["transposed"].stored_span() is None
        assert np.array_equal(f["transposed"].numpy(), state["transposed"].numpy())
    got = _check_cut(path)
    assert got["transposed"] == {"file": str(path), "array": "transposed"} and isinstance(got["layer1.weight"], str)


def _torch_load_file(path, variant, tmp_path):
    """A checkpoint only torch.load reads: legacy (pre-1.6 serialisation), a stored zip holding a
    global the torch-free path does not know (torch.Size), or re-zipped with deflate."""
    from hostile_files import rezip

    g = torch.Generator().manual_seed(5)
    state = {f"layer{i}.weight": torch.randn(64, 64, generator=g) for i in range(6)}
    state["bf16"] = torch.randn(5, generator=g).to(torch.bfloat16)
    if variant == "legacy":
        torch.save(state, path, _use_new_zipfile_serialization=False)
    elif variant == "stored_zip":
        torch.save({**state, "input_size": torch.Size([3, 224, 224])}, path)
    else:
        torch.save(state, tmp_path / "src.pth")
        rezip(tmp_path / "src.pth", path, zipfile.ZIP_DEFLATED, 6)
    assert torch_files._open_plain(str(path)) is None  # torch.load's path, not the torch-free one
    return state


@pytest.mark.parametrize("variant", ["legacy", "stored_zip", "deflated_zip"])
def test_torch_load_path_cut_short_while_open(tmp_path, variant):
    """Files torch.load reads are read whole while opening (never through torch's memory map): cut
    to half under the open reader (in a child: a copy out of a map past the file's end would be a
    SIGBUS, the child's exit status), every tensor still reads, bit-exact."""
    import hashlib

    from test_reader_binary import _cut_while_open

    path = tmp_path / "m.pth"
    state = _torch_load_file(path, variant, tmp_path)
    with read(path, "torch") as f:
        assert f.meta["format"] == ("torch-legacy" if variant == "legacy" else "torch-zip")
        before = {k: hashlib.sha1(h.numpy().tobytes()).hexdigest() for k, h in f.items()}
        assert before["layer0.weight"] == hashlib.sha1(as_bytes(state["layer0.weight"])).hexdigest()
    assert _cut_while_open(path, path, path.stat().st_size // 2) == before


@pytest.mark.parametrize("variant", ["legacy", "stored_zip", "deflated_zip"])
def test_torch_load_path_cut_while_torch_reads(tmp_path, monkeypatch, variant):
    """The file cut short between the bounds checks and torch.load reading it: a TruncatedError
    naming the file and both sizes."""
    path = tmp_path / "m.pth"
    _torch_load_file(path, variant, tmp_path)
    size = path.stat().st_size
    real = torch.load

    def cut_then_load(*args, **kwargs):
        assert kwargs.get("mmap") is False and kwargs.get("weights_only") is True
        os.truncate(path, size * 3 // 4)
        return real(*args, **kwargs)
    monkeypatch.setattr(torch, "load", cut_then_load)
    with pytest.raises(TruncatedError) as e:
        read(path, "torch")
    assert e.value.file == str(path) and f"{size * 3 // 4} bytes, {size} when torch.load started" in str(e.value)
