"""tests/conftest.py under CI=true: every skip fails, whatever its reason text, unless the test is
marked allowed_skip with a reason."""
import os
import re
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent

CASES = '''
import pytest

def test_skips_with_an_innocent_reason():
    pytest.skip("needs keras")

def test_importorskip():
    pytest.importorskip("a_module_that_does_not_exist_here")

@pytest.mark.skipif(True, reason="platform")
def test_skipif():
    pass

@pytest.mark.allowed_skip(reason="documented: no GPU on CI machines")
def test_allowed():
    pytest.skip("no GPU")

def test_passes():
    pass
'''


def run(tmp_path, ci):
    # the guard hook as it is; without the conftest's torchvision pre-import (slow, not under test)
    (tmp_path / "conftest.py").write_text((HERE / "conftest.py").read_text().replace("import torchvision", "pass  #"))
    (tmp_path / "test_cases.py").write_text(CASES)
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    if ci:
        env["CI"] = "true"
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:converters",
                        "--rootdir", str(tmp_path), "-c", os.devnull, str(tmp_path / "test_cases.py")],
                       capture_output=True, text=True, timeout=120, cwd=tmp_path, env=env)
    return r.stdout.splitlines()[-1] if r.stdout else r.stderr


def test_every_skip_fails_under_ci(tmp_path):
    last = run(tmp_path, ci=True)  # a skipif mark skips in setup, so it fails there: an error
    assert "2 failed, 1 passed, 1 skipped, 1 error" in last, last


def test_skips_stay_skips_outside_ci(tmp_path):
    assert "1 passed, 4 skipped" in run(tmp_path, ci=False)


def test_no_test_reads_files_outside_the_checkout():
    """Tests use copies under fixtures/ (fixtures/README.md), never ../shared beside the checkout."""
    outside = re.compile(r"ROOT\.parent\b|parents\[[2-9]\]|\.\./shared|[\"']shared[\"']\s*/\s*[\"']realdata|"
                         r"[\"']shared/realdata")
    files = [p for p in sorted(HERE.rglob("*.py")) + sorted(HERE.rglob("*.yaml")) if p != Path(__file__)]
    hits = [f"{p.name}:{i}" for p in files
            for i, line in enumerate(p.read_text().splitlines(), 1) if outside.search(line)]
    assert not hits, hits
