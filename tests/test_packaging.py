"""A plain (non-editable) `pip install .` carries the shipped tables and the schema."""
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.heavy
def test_plain_install_ships_tables_and_schema(tmp_path):
    r = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "-q",
                        "--target", str(tmp_path / "site"), str(ROOT)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    code = ("import converters, sys; from converters.mapping import spec; "
            "assert converters.__file__.startswith(sys.argv[1]), converters.__file__; "
            "t = spec.shipped_tables(); assert 'caffe/mtcnn_pnet' in t, t; "
            "[spec.load(p) for p in t.values()]; spec.schema(); print(len(t))")
    r = subprocess.run([sys.executable, "-c", code, str(tmp_path / "site")], capture_output=True, text=True,
                       cwd=tmp_path, env={"PYTHONPATH": str(tmp_path / "site"), "PATH": "/usr/bin:/bin"}, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert int(r.stdout.strip()) >= 2
