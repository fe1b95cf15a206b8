"""A table's `target:` cannot make the toolkit run anything but a model's import and constructor.

Each attack names a callable that would create a marker file if it were called; every entry point
(convert, --dry-run, convert(), verify, draft) must refuse it with one ConvertersError line and
leave no marker behind.
"""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import converters
from converters.cli import main
from converters.convert import convert
from converters.errors import ConvertersError
from converters.mapping import spec
from converters.target import build_model, load_factory

ROOT = Path(__file__).resolve().parents[1]
CAFFE = ROOT / "fixtures/caffe/mtcnn_pnet/det1.caffemodel"
PROTOTXT = ROOT / "fixtures/caffe/mtcnn_pnet/det1.prototxt"
BASE = (ROOT / "mappings/caffe/mtcnn_pnet.yaml").read_text()
SHIPPED_TARGET = "target: converters.models.mtcnn:PNet\n"


def table_with_target(tmp_path, target_yaml: str, name="evil.yaml") -> Path:
    assert SHIPPED_TARGET in BASE
    p = tmp_path / name
    p.write_text(BASE.replace(SHIPPED_TARGET, target_yaml))
    return p


def os_system_target(marker: Path) -> str:
    return f"target:\n  model: 'os:system'\n  kwargs: {{command: 'touch {marker}'}}\n"


def run_cli(capsys, *args):
    """The CLI in-process (what `convert ...` runs): (exit code, stderr)."""
    code = main([str(a) for a in args])
    return code, capsys.readouterr().err


def assert_one_line_refusal(code, err, needle):
    assert code == 2, (code, err)
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert needle in err, err


def test_the_console_command_refuses_it_too(tmp_path):
    marker = tmp_path / "PWNED"
    table = table_with_target(tmp_path, os_system_target(marker))
    r = subprocess.run([sys.executable, "-m", "converters", "--map", str(table), str(CAFFE), "--dry-run"],
                       capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert_one_line_refusal(r.returncode, r.stderr, "standard library")
    assert not marker.exists()


@pytest.mark.parametrize("entry", ["convert", "dry-run", "verify", "draft"])
def test_cli_refuses_os_system_target_and_runs_nothing(tmp_path, capsys, entry):
    marker = tmp_path / "PWNED"
    table = table_with_target(tmp_path, os_system_target(marker))
    args = {"convert": ["--map", table, CAFFE, tmp_path / "out.pth"],
            "dry-run": ["--map", table, CAFFE, "--dry-run"],
            "verify": ["verify", CAFFE, "--map", table, "--architecture", PROTOTXT],
            "draft": ["draft", CAFFE, "--target", "os:system", "--target-kwargs",
                      json.dumps({"command": f"touch {marker}"}), "-o", tmp_path / "out.pth"]}[entry]
    code, err = run_cli(capsys, *args)
    assert_one_line_refusal(code, err, "standard library")
    assert not marker.exists() and not (tmp_path / "out.pth").exists()


def test_draft_base_table_with_a_hostile_target_runs_nothing(tmp_path, capsys):
    """`draft --base` reads a table: its target is never called (the draft's own --target is)."""
    marker = tmp_path / "PWNED"
    table = table_with_target(tmp_path, os_system_target(marker))
    code, err = run_cli(capsys, "draft", CAFFE, "--target", "converters.models.mtcnn:PNet", "--base", table,
                        "-o", tmp_path / "d.yaml")
    assert not marker.exists(), err
    assert code == 0 and (tmp_path / "d.yaml").is_file(), err


def test_api_convert_and_draft_refuse_os_system(tmp_path):
    marker = tmp_path / "PWNED"
    table = table_with_target(tmp_path, os_system_target(marker))
    with pytest.raises(ConvertersError, match="standard library"):
        convert(CAFFE, table)
    with pytest.raises(ConvertersError, match="standard library"):
        convert(CAFFE, table, dry_run=True)
    with pytest.raises(ConvertersError, match="standard library"):
        convert(CAFFE, "caffe/mtcnn_pnet", target="os:system", target_kwargs={"command": f"touch {marker}"})
    with pytest.raises(ConvertersError, match="standard library"):
        converters.draft(CAFFE, "os:system", target_kwargs={"command": f"touch {marker}"})
    assert not marker.exists()


@pytest.mark.parametrize("target,needle", [
    ("subprocess:run", "standard library"),
    ("builtins:exec", "standard library"),
    ("shutil:rmtree", "standard library"),
    ("importlib:import_module", "standard library"),
    ("runpy:run_path", "standard library"),
    ("antigravity:geohash", "standard library"),  # acts on import: refused before importing
    ("torch:load", "not declared to return a torch.nn.Module"),  # unpickles
    ("yaml:unsafe_load", "not declared to return a torch.nn.Module"),
    ("numpy:load", "not declared to return a torch.nn.Module"),
    ("converters.convert:convert", "not declared to return a torch.nn.Module"),  # writes files
    ("torch.nn:Module.__init__", "dunder"),
    ("torch.nn:LSTM.__subclasses__", "dunder"),
    ("collections:OrderedDict", "standard library"),
    ("torch:Tensor", "not a torch.nn.Module subclass"),
    (".relative:Net", "not of the form"),
])
def test_non_model_callables_are_refused_before_any_call(target, needle):
    with pytest.raises(ConvertersError, match=needle):
        load_factory(target)


def test_stdlib_module_is_not_even_imported():
    sys.modules.pop("antigravity", None)
    with pytest.raises(ConvertersError):
        load_factory("antigravity:geohash")
    assert "antigravity" not in sys.modules


def test_yaml_unsafe_load_payload_in_a_table_runs_nothing(tmp_path):
    marker = tmp_path / "PWNED"
    payload = f"!!python/object/apply:os.system ['touch {marker}']"
    table = table_with_target(tmp_path, f"target:\n  model: 'yaml:unsafe_load'\n  kwargs: {{stream: \"{payload}\"}}\n")
    with pytest.raises(ConvertersError, match="not declared to return"):
        convert(CAFFE, table, dry_run=True)
    assert not marker.exists()


@pytest.mark.parametrize("kwargs_yaml,needle", [
    ("{input_size: 2020-01-01, hidden_size: 3}", "date"),
    ("{input_size: !!binary aGVsbG8=, hidden_size: 3}", "bytes"),
    ("{input_size: !!set {a: null}, hidden_size: 3}", "set"),
])
def test_kwargs_must_be_plain_yaml_data(tmp_path, kwargs_yaml, needle):
    table = tmp_path / "t.yaml"
    table.write_text(f"target:\n  model: torch.nn:LSTM\n  kwargs: {kwargs_yaml}\nrules: []\n")
    m = spec.load(table)
    with pytest.raises(ConvertersError, match=needle):
        build_model(m.target)


def test_model_classes_and_annotated_factories_still_work():
    assert isinstance(build_model({"model": "torch.nn:LSTM", "kwargs": {"input_size": 3, "hidden_size": 4}}),
                      torch.nn.LSTM)
    from converters.models.resnet_gluon import ResNet

    assert load_factory("converters.models.resnet_gluon:resnet50_v1").__annotations__["return"] in (ResNet, "ResNet")
    assert load_factory("torchvision.models:resnet50") is not None  # `-> ResNet`, behind decorators


MODEL_FILE = '''
import os

import torch
from torch import nn

from converters.models.mtcnn import PNet

system = os.system  # a builtin re-exported from a model file is still refused


class GeneratedPNet(PNet):
    pass


def make_pnet() -> nn.Module:
    return PNet()


def unannotated():
    open({marker!r}, "w").close()
'''


def test_file_targets_allow_model_classes_and_refuse_the_rest(tmp_path):
    marker = tmp_path / "PWNED"
    (tmp_path / "model.py").write_text(MODEL_FILE.format(marker=str(marker)))
    for good in ("GeneratedPNet", "make_pnet"):
        table = table_with_target(tmp_path, f"target: model.py:{good}\n", name=f"{good}.yaml")
        _, rep = convert(CAFFE, table, dry_run=True)
        assert rep.ok
    for bad, needle in (("system", "builtin_function_or_method"), ("unannotated", "not declared to return")):
        table = table_with_target(tmp_path, f"target: model.py:{bad}\n", name=f"{bad}.yaml")
        with pytest.raises(ConvertersError, match=needle):
            convert(CAFFE, table, dry_run=True)
    assert not marker.exists()
