"""The end-to-end example runs (on CPU, well under a minute) and tells the whole story."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_example_runs_and_resumes_bit_exactly(tmp_path):
    done = subprocess.run([sys.executable, str(ROOT / "examples/finetune_pnet.py"), "--workdir", str(tmp_path)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert "13 arrays from Caffe" in out
    assert "loaded 11 tensors" in out and "7 missing in source" in out and "2 ignored" in out
    assert "initialised 7 tensors with classic, seed 0" in out
    assert "163 trainable" in out
    assert "resumed from last.pt after epoch 1" in out
    assert "bit for bit: True; frozen backbone unchanged: True" in out
    assert sorted(p.name for p in (tmp_path / "interrupted").iterdir()) == ["best.pt", "last.pt"]
