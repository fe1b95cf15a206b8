"""Shared set-up for the `convert port` tests (not a test module)."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def caffe_port_nets(tmp_path_factory):
    """(make_nets module, caffe_pb2 compiled by protoc, an empty folder to build nets into):
    fixtures/port/caffe/make_nets.py loaded by path, as it is a script and not a package."""
    pytest.importorskip("grpc_tools")
    spec = importlib.util.spec_from_file_location("port_make_nets", ROOT / "fixtures/port/caffe/make_nets.py")
    mk = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mk)
    pb = mk.load_make_fixtures().compile_caffe_proto(tmp_path_factory.mktemp("caffe_pb2"))
    return mk, pb, tmp_path_factory.mktemp("port_nets")


def assert_ruff_formatted(path) -> None:
    """`ruff format --check` (the test extra's ruff, default settings) passes on a generated file."""
    import shutil
    import subprocess
    import sys

    ruff = shutil.which("ruff") or str(Path(sys.executable).with_name("ruff"))
    r = subprocess.run([ruff, "format", "--isolated", "--check", "--diff", str(path)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
