"""`ruff check` with the project's selection (pyproject.toml [tool.ruff.lint]) stays clean.

Every Python file is checked, so a new module starts clean. Files that had findings when the
config was added are listed in NOT_YET_CLEAN, each for its owner to fix; the test fails on a
finding in any other file, and also when a listed file has become clean (delete its line, so the
list cannot go stale). Generated `convert port` code has its own check (`ruff format`, 88 columns,
tests/port_helpers.py), which this config does not touch.
"""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

NOT_YET_CLEAN = {
}


@pytest.fixture(scope="module")
def findings() -> dict:
    """{relative path: ['line:col CODE message', ...]} for the whole tree, from the test extra's ruff."""
    ruff = shutil.which("ruff") or str(Path(sys.executable).with_name("ruff"))
    assert Path(ruff).exists(), "ruff is missing: it is in the test extra, pip install -e '.[test]'"
    r = subprocess.run([ruff, "check", "--no-cache", "--exit-zero", "--output-format", "json", "."], cwd=ROOT,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    out: dict = {}
    for f in json.loads(r.stdout):
        where = f"{f['location']['row']}:{f['location']['column']} {f['code']} {f['message']}"
        out.setdefault(Path(f["filename"]).resolve().relative_to(ROOT).as_posix(), []).append(where)
    return out


def test_the_config_is_the_one_ruff_reads():
    text = (ROOT / "pyproject.toml").read_text()
    assert "[tool.ruff.lint]" in text and "line-length = 120" in text


def test_no_finding_outside_the_files_not_yet_clean(findings):
    new = {path: lines for path, lines in findings.items() if path not in NOT_YET_CLEAN}
    assert not new, "ruff check findings (fix them; `ruff check --fix` handles the [*] ones):\n" + "\n".join(
        f"{path}:{line}" for path, lines in sorted(new.items()) for line in lines)


def test_files_not_yet_clean_still_have_findings(findings):
    cleaned = sorted(p for p in NOT_YET_CLEAN if p not in findings)
    assert not cleaned, f"{cleaned} are clean now: delete them from NOT_YET_CLEAN in tests/test_lint.py"
