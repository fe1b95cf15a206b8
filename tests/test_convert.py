"""The conversion command and API: coverage, dry runs, outputs, atomic writes, exit codes."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import converters
from converters.convert import convert
from converters.errors import CoverageError, MappingError, OutputExistsError
from converters.mapping import spec
from converters.models.mtcnn import PNet

ROOT = Path(__file__).resolve().parents[1]
CAFFE = ROOT / "fixtures/caffe/mtcnn_pnet/det1.caffemodel"
TABLE = "caffe/mtcnn_pnet"


def run_cli_process(*args, cwd=None):
    """`python -m converters ARGS` in a child: what a shell sees (exit code, no traceback)."""
    return subprocess.run([sys.executable, "-m", "converters", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, timeout=300)


@pytest.fixture
def run_cli(capsys, monkeypatch):
    """The command in this process: converters.cli.main(ARGS), its exit code and output as a
    subprocess.run result (a child costs seconds of imports; one test keeps a real process)."""
    from converters.cli import main

    def run(*args, cwd=None):
        monkeypatch.setattr(sys, "path", list(sys.path))  # main() puts the cwd on sys.path, as `python -m` does
        if cwd is not None:
            monkeypatch.chdir(cwd)
        capsys.readouterr()
        try:
            code = main([str(a) for a in args])
        except SystemExit as e:  # argparse's own usage errors
            code = e.code
        out, err = capsys.readouterr()
        return subprocess.CompletedProcess(["converters", *map(str, args)], code, out, err)

    return run


def write_table(tmp_path, text, name="m.yaml"):
    p = tmp_path / name
    p.write_text(text)
    return p


BASE = (ROOT / "mappings/caffe/mtcnn_pnet.yaml").read_text()


def test_api_fills_the_module_with_every_array_exactly():
    model, rep = convert(CAFFE, TABLE)
    assert rep.ok and len(rep.rows) == 13 and not rep.problems
    src = converters.read(CAFFE)
    sd = model.state_dict()
    np.testing.assert_array_equal(sd["conv1.weight"].numpy(), src["conv1/0"].numpy())
    np.testing.assert_array_equal(sd["prelu3.weight"].numpy(), src["PReLU3/0"].numpy())
    np.testing.assert_array_equal(sd["conv4_2.bias"].numpy(), src["conv4-2/1"].numpy())


def test_without_a_target_the_result_is_a_state_dict(tmp_path):
    table = write_table(tmp_path, BASE.replace("target: converters.models.mtcnn:PNet\n", ""))
    sd, rep = convert(CAFFE, table)
    assert isinstance(sd, dict) and set(sd) == set(PNet().state_dict())
    PNet().load_state_dict(sd)


@pytest.mark.parametrize("ext", [".pth", ".safetensors"])
def test_file_outputs_load_and_carry_provenance(tmp_path, ext):
    out = tmp_path / f"pnet{ext}"
    result, rep = convert(CAFFE, TABLE, out=out)
    assert result == out and rep.output == str(out)
    if ext == ".pth":
        sd = torch.load(out, weights_only=True)
        prov = sd._metadata[""]["converters"]
    else:
        from safetensors import safe_open
        from safetensors.torch import load_file

        sd = load_file(out)
        with safe_open(out, "pt") as f:
            prov = f.metadata()
    model = PNet()
    model.load_state_dict(sd, strict=True)
    ref, _ = convert(CAFFE, TABLE)
    for k, v in ref.state_dict().items():
        assert torch.equal(sd[k], v), k
    import hashlib

    assert prov["source_sha256"] == hashlib.sha256(CAFFE.read_bytes()).hexdigest()
    assert prov["mapping_sha256"] == spec.load(TABLE).sha256
    assert prov["tool"].startswith("converters ")
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".partial")]


def test_existing_output_is_kept_without_force(tmp_path):
    out = tmp_path / "pnet.pth"
    out.write_bytes(b"precious")
    with pytest.raises(OutputExistsError):
        convert(CAFFE, TABLE, out=out)
    assert out.read_bytes() == b"precious"
    convert(CAFFE, TABLE, out=out, force=True)
    assert torch.load(out, weights_only=True)["conv1.weight"].shape == (10, 3, 3, 3)


def test_interrupted_write_leaves_no_output(tmp_path, monkeypatch):
    from converters.writers import pth, stream

    out = tmp_path / "pnet.safetensors"
    calls = {"n": 0}

    def fail_midway(real):  # the 5th tensor, whether copied from memory or file to file
        def check(*args, **kw):
            calls["n"] += 1
            if calls["n"] == 5:
                raise KeyboardInterrupt
            return real(*args, **kw)
        return check
    monkeypatch.setattr(stream, "_checked", fail_midway(stream._checked))
    monkeypatch.setattr(stream, "_span_fits", fail_midway(stream._span_fits))
    with pytest.raises(KeyboardInterrupt):
        convert(CAFFE, TABLE, out=out)
    assert os.listdir(tmp_path) == []
    monkeypatch.undo()

    out2 = tmp_path / "pnet.pth"

    def disk_full(fd, *a, **k):
        os.write(fd, b"half")
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(pth, "write_tensors", disk_full)
    with pytest.raises(OSError):
        convert(CAFFE, TABLE, out=out2)
    assert os.listdir(tmp_path) == []


def test_unused_source_and_missing_target_stop_the_conversion(tmp_path):
    table = write_table(tmp_path, BASE.replace("  - from: 'PReLU(?P<n>[1-3])/0'\n    to: 'prelu{n}.weight'\n", ""))
    with pytest.raises(CoverageError) as e:
        convert(CAFFE, table)
    rep = e.value.report
    assert sorted(p.name for p in rep.problems if p.kind == "unused_source") == ["PReLU1/0", "PReLU2/0", "PReLU3/0"]
    missing = {p.name: p for p in rep.problems if p.kind == "missing_target"}
    assert sorted(missing) == ["prelu1.weight", "prelu2.weight", "prelu3.weight"]
    assert "unused" in str(rep) and "PReLU1/0" in rep.problem_table()
    # relaxed on purpose: both flags needed, and the untouched tensors keep their init
    with pytest.raises(CoverageError):
        convert(CAFFE, table, allow_unused=True)
    model, rep = convert(CAFFE, table, allow_unused=True, allow_missing=True)
    assert rep.ok and rep.count("unused_source") == 3


def test_ignore_fill_and_init_cover_what_rules_do_not(tmp_path):
    table = write_table(tmp_path, BASE.replace("  - from: 'PReLU(?P<n>[1-3])/0'\n    to: 'prelu{n}.weight'\n", "")
                        + "ignore:\n  - {pattern: 'PReLU.*', reason: relu instead}\n"
                          "fill:\n  - {to: 'prelu1\\.weight', value: 0.25}\n"
                          "init:\n  - {to: 'prelu[23]\\.weight', scheme: constant, value: 0.5}\n")
    model, rep = convert(CAFFE, table)
    assert len(rep.ignored) == 3 and [f[0] for f in rep.filled] == ["prelu1.weight"]
    assert torch.all(model.prelu1.weight == 0.25) and torch.all(model.prelu3.weight == 0.5)
    d = rep.to_dict()
    json.dumps(d)
    assert d["ignored"][0]["reason"] == "relu instead" and "<table>" in rep._repr_html_()


def test_shape_mismatch_two_rules_one_target_and_one_array_two_rules(tmp_path):
    bad_shape = write_table(tmp_path, BASE.replace(
        "to: 'conv{n}.weight'", "to: 'conv{n}.weight'\n    transforms: [{permute: [1, 0, 2, 3]}]"), "a.yaml")
    with pytest.raises(CoverageError) as e:
        convert(CAFFE, bad_shape)
    mism = [p for p in e.value.report.problems if p.kind == "shape_mismatch"]
    assert mism and "[3, 10, 3, 3]" in mism[0].detail and "[10, 3, 3, 3]" in mism[0].detail
    twice = write_table(tmp_path, BASE + "  - from: 'conv4-2/0'\n    to: 'conv4_1.weight'\n", "b.yaml")
    with pytest.raises(CoverageError) as e:
        convert(CAFFE, twice)
    kinds = {p.kind for p in e.value.report.problems}
    assert "source_twice" in kinds
    both = write_table(tmp_path, BASE.replace("'conv4-(?P<head>[12])/0'", "'conv4-(?P<head>1)/0'")
                       + "  - from: 'conv4-2/0'\n    to: 'conv4_1.weight'\n", "c.yaml")
    with pytest.raises(CoverageError) as e:
        convert(CAFFE, both)
    assert {p.kind for p in e.value.report.problems} >= {"target_twice", "missing_target"}


def test_unknown_target_names_get_suggestions(tmp_path):
    table = write_table(tmp_path, BASE.replace("to: 'prelu{n}.weight'", "to: 'prelu{n}.wieght'"))
    with pytest.raises(CoverageError) as e:
        convert(CAFFE, table)
    unknown = [p for p in e.value.report.problems if p.kind == "unknown_target"]
    assert unknown[0].suggestions[0] == "prelu1.weight"


def test_dtype_changes_must_be_explicit(tmp_path):
    table = write_table(tmp_path, BASE.replace(
        "to: 'conv{n}.bias'", "to: 'conv{n}.bias'\n    transforms: [{cast: float64}]"))
    with pytest.raises(CoverageError) as e:
        convert(CAFFE, table)
    assert any(p.kind == "dtype_mismatch" for p in e.value.report.problems)


@pytest.mark.parametrize("text,message", [
    ("- just a list\n", "YAML mapping"),
    ("rules: [\n", "not valid YAML"),
    ("rules:\n  - from: '(unclosed'\n    to: x\n", "invalid regular expression"),
    ("rules:\n  - from: 'a(?P<n>\\d)'\n    to: 'x{m}'\n", "uses \\['m'\\]"),
    ("rules:\n  - from: a\n    to: b\n    transforms: [tf_cnov]\n", "unknown transform"),
    ("rules:\n  - from: a\n    to: b\n    transforms: [{flip: {axis: 1}, permute: [0]}]\n", "rules/0/transforms/0"),
    ("rulez: []\n", "unknown top-level key"),
    ("rules:\n  - from: a\n    to: 'x{__import__(1)}'\n", "only capture names"),
    ("init:\n  - {to: x, scheme: magic}\n", "scheme"),
])
def test_bad_tables_name_file_and_line(tmp_path, text, message):
    p = write_table(tmp_path, text)
    with pytest.raises(MappingError, match=message) as e:
        spec.load(p)
    assert str(p) in str(e.value)
    if "\n  " in text:
        assert f"{p}:" in str(e.value)  # a line number, not only the file


def test_transform_that_does_not_fit_names_rule_array_and_shapes(tmp_path):
    table = write_table(tmp_path, BASE.replace(
        "to: 'prelu{n}.weight'", "to: 'prelu{n}.weight'\n    transforms: [tf_conv]"))
    with pytest.raises(MappingError) as e:
        convert(CAFFE, table)
    text = str(e.value)
    assert f"{table}:" in text and "PReLU1/0" in text and "[10]" in text


def test_include_composes_tables(tmp_path):
    head, _, rules = BASE.partition("rules:\n")
    write_table(tmp_path, "rules:\n" + rules, "rules.yaml")
    main = write_table(tmp_path, head + "include: [rules.yaml]\n", "main.yaml")
    model, rep = convert(CAFFE, main)
    assert rep.ok and len(rep.rows) == 13
    loop = write_table(tmp_path, "include: [loop.yaml]\n", "loop.yaml")
    with pytest.raises(MappingError, match="include cycle"):
        spec.load(loop)


def test_bn_eps_difference_is_reported(tmp_path):
    """A Keras-like source BatchNorm eps (1e-3) against PyTorch's default (1e-5) gives a warning."""
    from converters.arrays import ArrayFile, ArrayHandle, Layer

    meta = {"layer": "bn", "layer_type": "BatchNormalization"}
    arrays = ArrayFile("mem", "keras", [
        ArrayHandle(f"bn/{n}", (4,), "f4", lambda: np.ones(4, np.float32), dict(meta))
        for n in ("gamma", "beta", "moving_mean", "moving_variance")],
        layers={"bn": Layer("bn", "BatchNormalization", {"epsilon": 1e-3})})
    table = write_table(tmp_path, "rules:\n"
                        "  - {from: 'bn/gamma', to: weight}\n  - {from: 'bn/beta', to: bias}\n"
                        "  - {from: 'bn/moving_mean', to: running_mean}\n"
                        "  - {from: 'bn/moving_variance', to: running_var}\n"
                        "fill:\n  - {to: num_batches_tracked, value: 0}\n")
    _, rep = convert(arrays, table, target=torch.nn.BatchNorm1d(4))
    assert rep.ok and any("eps differs" in w and "0.001" in w for w in rep.warnings)
    _, rep = convert(arrays, table, target=torch.nn.BatchNorm1d(4, eps=1e-3))
    assert not rep.warnings


# ---- CLI ----------------------------------------------------------------------------------------

def test_cli_converts_dry_runs_lists_and_reports(tmp_path, run_cli):
    out = tmp_path / "pnet.pth"
    r = run_cli("--from", "caffe", "--map", TABLE, CAFFE, out, "--report", tmp_path / "r.json")
    assert r.returncode == 0, r.stderr
    assert out.exists() and json.loads((tmp_path / "r.json").read_text())["ok"] is True
    r = run_cli("--map", TABLE, CAFFE, "--dry-run")
    assert r.returncode == 0 and "conv1/0 [10x3x3x3]" in r.stdout and "conv1.weight [10x3x3x3]" in r.stdout
    r = run_cli("maps")
    assert r.returncode == 0 and "caffe/mtcnn_pnet" in r.stdout and "mxnet/mtcnn_pnet" in r.stdout


@pytest.mark.parametrize("args,needle", [
    (["--map", "nope", "IN", "OUT.pth"], "no mapping file or shipped table"),
    (["--map", TABLE, "missing.caffemodel", "OUT.pth"], "No such file"),
    (["--map", TABLE, "IN", "OUT.txt"], "cannot tell the output format"),
    (["--map", TABLE, "IN", "EXISTS"], "output exists"),
])
def test_cli_usage_errors_exit_2_with_one_line(tmp_path, run_cli, args, needle):
    (tmp_path / "EXISTS.pth").write_bytes(b"x")
    args = [str(CAFFE) if a == "IN" else str(tmp_path / "EXISTS.pth") if a == "EXISTS" else a for a in args]
    r = run_cli(*args, cwd=tmp_path)
    assert r.returncode == 2, r
    assert needle in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert not list(tmp_path.glob("OUT*")), "a refused conversion wrote an output"


def test_cli_usage_error_in_a_real_process_exits_2_without_a_traceback(tmp_path):
    """The console entry point as a shell runs it: exit status 2 and one line on stderr."""
    r = run_cli_process("--map", TABLE, CAFFE, tmp_path / "OUT.txt", cwd=tmp_path)
    assert r.returncode == 2, r
    assert "cannot tell the output format" in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and r.stdout == ""


def test_cli_coverage_failure_prints_the_table_and_exits_2(tmp_path, run_cli):
    table = write_table(tmp_path, BASE.replace("  - from: 'PReLU(?P<n>[1-3])/0'\n    to: 'prelu{n}.weight'\n", ""))
    r = run_cli("--map", table, CAFFE, tmp_path / "o.pth")
    assert r.returncode == 2 and "PReLU2/0" in r.stderr and "prelu2.weight" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "o.pth").exists()


def test_fsync_and_source_hash_are_optional(tmp_path):
    """fsync=False / hash_source=False still give a complete, loadable output; without the hash the
    provenance says so with an empty source_sha256."""
    from safetensors import safe_open

    for ext in (".pth", ".safetensors"):
        out = tmp_path / f"pnet{ext}"
        convert(CAFFE, TABLE, out=out, fsync=False, hash_source=False)
        if ext == ".pth":
            sd = torch.load(out, weights_only=True, mmap=True)
            meta = sd._metadata[""]["converters"]
        else:
            with safe_open(out, "pt") as fh:
                meta, sd = fh.metadata(), {k: fh.get_tensor(k) for k in fh.keys()}
        assert meta["source_sha256"] == "" and meta["mapping_sha256"]
        assert sd["conv1.weight"].shape == (10, 3, 3, 3)
        convert(CAFFE, TABLE, out=out, force=True)
        if ext == ".pth":
            assert len(torch.load(out, weights_only=True)._metadata[""]["converters"]["source_sha256"]) == 64


def test_cli_no_fsync_and_no_source_hash_flags(tmp_path):
    """`--no-fsync --no-source-hash` reach convert(): the output is complete, its provenance has
    no source hash (and with the defaults it has one)."""
    from converters.cli import main

    out = tmp_path / "pnet.pth"
    assert main([str(CAFFE), "--map", str(TABLE), str(out), "--no-fsync", "--no-source-hash", "-q"]) == 0
    assert torch.load(out, weights_only=True)._metadata[""]["converters"]["source_sha256"] == ""
    assert main([str(CAFFE), "--map", str(TABLE), str(out), "--force", "-q"]) == 0
    assert len(torch.load(out, weights_only=True)._metadata[""]["converters"]["source_sha256"]) == 64
