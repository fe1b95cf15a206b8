"""Shipped MXNet/Gluon tables (mappings/mxnet/resnet50, gluon/resnet50_v1b, gluon/lstm), proved
against mxnet 1.9.1 itself.

mxnet lives in its own interpreter (.venv-mxnet). tests/mxnet_side/make_tables_models.py runs
there: it builds each source model (Gluon model zoo, GluonCV, gluon.rnn), randomises every array
(BatchNorm statistics and biases too, so a swapped or dropped array shows), saves it both ways
Gluon users meet (net.export(): -symbol.json + -0000.params with arg:/aux: names; and
net.save_parameters(): structural names) and writes mxnet's own forward output for a fixed input.
The tests convert each file with `converters.convert` through the project's reader and compare
the PyTorch output: max |difference| <= 1e-4 * max(1, max |output|). Everything is written to
pytest's tmp directories (a ResNet-50 is 100 MB per file), nothing is committed.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import converters
from converters.convert import convert
from converters.errors import ConvertersError, CoverageError, MappingError
from converters.mapping import spec
from converters.models.resnet_gluon import resnet50_v1
from converters.parity.oracles.base import OracleUnavailable

ROOT = Path(__file__).resolve().parents[1]
MXNET_PY = ROOT / ".venv-mxnet" / "bin" / "python"
GLUONCV_PIP = (".venv-mxnet/bin/pip install --no-deps gluoncv==0.10.5.post0 tqdm portalocker "
               "pyyaml yacs Pillow 'scipy<1.12'")

LSTM_KWARGS = {  # the sizes the generator uses; the table cannot know them (see its notes)
    "lstm_bi": {"input_size": 6, "hidden_size": 7, "num_layers": 2, "bidirectional": True},
    "lstm_uni": {"input_size": 5, "hidden_size": 9, "num_layers": 2, "batch_first": False},
}


# ---------------------------------------------------------------------------------------- helpers

@pytest.fixture(scope="module")
def mx_model(mxnet_generated):
    """name -> directory holding the generator's files for that model (generated once per run and
    shared with the draft and parity tests: tests/conftest.py)."""
    if not MXNET_PY.exists():
        pytest.skip(f"the mxnet environment {MXNET_PY} is missing (scripts/setup.sh creates it)")

    def get(name: str) -> Path:
        try:
            return mxnet_generated(name).parent
        except OracleUnavailable as e:  # the generator ran but could not build it (gluoncv missing)
            pytest.skip(f"{e}; install it with: {GLUONCV_PIP}")

    return get


def source_file(directory: Path, name: str, form: str) -> Path:
    return directory / (f"{name}-0000.params" if form == "exported" else f"{name}_gluon.params")


def reference(directory: Path, name: str):
    data = np.load(directory / f"{name}.npz")
    return data["x"], data["y"]


def assert_close(expected, got):
    assert expected.shape == got.shape
    scale = max(1.0, float(np.abs(expected).max()))
    diff = float(np.abs(expected - got).max())
    assert diff <= 1e-4 * scale, f"max |diff| {diff:.3g} > {1e-4 * scale:.3g}"
    return diff


def torch_forward(model, x):
    with torch.no_grad():
        out = model.eval()(torch.from_numpy(x))
    return (out[0] if isinstance(out, tuple) else out).numpy()


# ---------------------------------------------------------------------------- tables and names

def test_shipped_names_resolve():
    """`--map resnet50.yaml` (no such file in the cwd) and `--map resnet50` find the shipped table."""
    assert spec.resolve("resnet50.yaml") == spec.shipped_tables()["mxnet/resnet50"]
    assert spec.resolve("resnet50") == spec.shipped_tables()["mxnet/resnet50"]
    assert spec.resolve("resnet50_v1b") == spec.shipped_tables()["gluon/resnet50_v1b"]
    assert spec.resolve("gluon/lstm.yaml") == spec.shipped_tables()["gluon/lstm"]


def test_ambiguous_stem_names_the_candidates():
    tables = spec.shipped_tables()
    if sum(k.rsplit("/", 1)[-1] == "lstm" for k in tables) < 2:
        pytest.skip("only one shipped table is called lstm")
    with pytest.raises(MappingError, match="gluon/lstm") as e:
        spec.resolve("lstm")
    assert "several shipped tables" in e.value.message


@pytest.mark.parametrize("table", ["mxnet/resnet50", "gluon/resnet50_v1b", "gluon/lstm"])
def test_tables_load(table):
    m = spec.load(table)
    assert m.source in ("mxnet", "gluon") and m.target and m.rules
    assert m.description and "notes" in Path(m.path).read_text()


def test_gluon_v1_block_moves_the_stride():
    """The target's downsampling blocks stride in conv1 (1x1) and carry conv1/conv3 biases."""
    model = resnet50_v1()
    for layer, stride in ((model.layer1, 1), (model.layer2, 2), (model.layer3, 2), (model.layer4, 2)):
        block = layer[0]
        assert block.conv1.stride == (stride, stride) and block.conv2.stride == (1, 1)
        assert block.downsample[0].stride == (stride, stride)
        assert block.conv1.bias is not None and block.conv3.bias is not None and block.conv2.bias is None
    x = torch.zeros(1, 3, 64, 64)
    assert model.eval()(x).shape == (1, 1000)


# ------------------------------------------------------------------------------------------ LSTM

@pytest.mark.mxnet
@pytest.mark.parametrize("form", ["exported", "gluon"])
@pytest.mark.parametrize("name", ["lstm_bi", "lstm_uni"])
def test_lstm(mx_model, name, form):
    d = mx_model(name)
    x, y = reference(d, name)
    model, rep = convert(source_file(d, name, form), "gluon/lstm", framework="mxnet",
                         target_kwargs=LSTM_KWARGS[name])
    assert rep.ok and not rep.ignored and not rep.filled and not rep.initialised
    per_layer = 8 if LSTM_KWARGS[name].get("bidirectional") else 4
    assert len(rep.rows) == 2 * per_layer  # every array, one rule each
    assert_close(y, torch_forward(model, x))


@pytest.mark.mxnet
def test_lstm_needs_its_sizes(mx_model):
    src = source_file(mx_model("lstm_bi"), "lstm_bi", "gluon")
    with pytest.raises(ConvertersError, match="input_size"):
        convert(src, "gluon/lstm")
    wrong = {**LSTM_KWARGS["lstm_bi"], "hidden_size": 8}
    with pytest.raises(CoverageError) as e:
        convert(src, "gluon/lstm", target_kwargs=wrong)
    problems = {p.kind for p in e.value.report.problems}
    assert problems == {"shape_mismatch"}


@pytest.mark.mxnet
def test_lstm_one_way_file_into_two_way_model_stops(mx_model):
    """A one-way file leaves the `_reverse` tensors unfilled: stop, do not invent them."""
    src = source_file(mx_model("lstm_uni"), "lstm_uni", "exported")
    kwargs = {**LSTM_KWARGS["lstm_uni"], "bidirectional": True}
    with pytest.raises(CoverageError) as e:
        convert(src, "gluon/lstm", target_kwargs=kwargs)
    missing = {p.name for p in e.value.report.problems if p.kind == "missing_target"}
    assert missing and all(n.endswith("_reverse") for n in missing)


# -------------------------------------------------------------------------------------- ResNet-50

def check_bn_recorded_eps(arrays):
    """Gluon's export records eps=1e-05 and fix_gamma=False on every BatchNorm (not the symbol
    default 1e-3): the premise of copying gamma/beta/mean/var into PyTorch's eps-1e-5 modules."""
    bns = [layer for layer in arrays.layers.values() if layer.type == "BatchNorm"]
    assert len(bns) == 53
    assert {float(b.params["eps"]) for b in bns} == {1e-5}
    assert {b.params["fix_gamma"] for b in bns} == {"False"}


def convert_resnet50(mx_model, name, form, reader, n_arrays, table, **convert_kwargs):
    """(x, y, model, report) for one generated ResNet-50 read as `reader`: every array read and
    every one mapped, with nothing warned or ignored (the two ResNet-50 tests share this)."""
    d = mx_model(name)
    x, y = reference(d, name)
    with converters.read(source_file(d, name, form), reader) as arrays:
        assert len(arrays) == n_arrays
        if form == "exported":
            check_bn_recorded_eps(arrays)
        model, rep = convert(arrays, table, **convert_kwargs)
    assert rep.ok and not rep.warnings and not rep.ignored and len(rep.rows) == n_arrays
    return x, y, model, rep


@pytest.mark.heavy
@pytest.mark.mxnet
@pytest.mark.parametrize("form", ["exported", "gluon"])
def test_resnet50_v1(mx_model, form):
    x, y, model, rep = convert_resnet50(mx_model, "resnet50_v1", form, "mxnet", 299, "resnet50", framework="mxnet")
    assert len(rep.filled) == 53  # num_batches_tracked, one per BatchNorm
    got = torch_forward(model, x)
    assert_close(y, got)
    if form == "exported":
        # The reason for converters.models.resnet_gluon: with the stride in the 3x3 convolution, as
        # torchvision places it, the same weights give a clearly different output.
        for layer in (model.layer2, model.layer3, model.layer4):
            layer[0].conv1.stride, layer[0].conv2.stride = (1, 1), (2, 2)
        moved = torch_forward(model, x)
        assert np.abs(moved - y).max() > 1e-2 * max(1.0, np.abs(y).max())


@pytest.mark.heavy
@pytest.mark.mxnet
@pytest.mark.parametrize("form", ["exported", "gluon"])
def test_resnet50_v1b(mx_model, form):
    x, y, model, rep = convert_resnet50(mx_model, "resnet50_v1b", form, "gluon", 267, "gluon/resnet50_v1b")
    assert type(model).__module__ == "torchvision.models.resnet"
    assert_close(y, torch_forward(model, x))


@pytest.mark.heavy
@pytest.mark.mxnet
def test_cli_exact_form(mx_model, tmp_path, monkeypatch, capsys):
    """`convert --from mxnet --map resnet50.yaml in.params out.pth`, typed as a user would, in a
    directory without a resnet50.yaml: the shipped table is found by its stem. The command's
    main() runs in this process (tests/test_convert.py runs the console command in a child)."""
    from converters.cli import main

    d = mx_model("resnet50_v1")
    x, y = reference(d, "resnet50_v1")
    os.symlink(source_file(d, "resnet50_v1", "exported"), tmp_path / "in.params")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))  # main() puts the cwd on sys.path, as `python -m` does
    code = main(["--from", "mxnet", "--map", "resnet50.yaml", "in.params", "out.pth"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "out.pth" in out
    state = torch.load(tmp_path / "out.pth", weights_only=True)
    model = resnet50_v1()
    model.load_state_dict(state, strict=True)
    assert_close(y, torch_forward(model, x))
