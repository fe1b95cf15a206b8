"""Packaging: a plain (non-editable) `pip install .` carries the shipped tables, the schema and
py.typed; a fresh virtual environment with the core dependencies only gets working commands.

The fresh environment reuses this environment's installed core dependencies (torch is several GB)
through a .pth file naming a folder of links to exactly those distributions, the closure of
weightport's non-extra requirements; pip then installs the package with --no-index, so a missing
core dependency fails the install instead of being fetched.
"""
import os
import re
import shutil
import subprocess
import sys
import sysconfig
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path

import pytest
from packaging.markers import default_environment
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]
PNET = ROOT / "fixtures/caffe/mtcnn_pnet/det1.caffemodel"


def _source_copy(tmp_path) -> Path:
    """The files a build reads, copied, so building leaves nothing in the checkout."""
    src = tmp_path / "src"
    shutil.copytree(ROOT / "converters", src / "converters", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    return src


@pytest.mark.heavy
def test_plain_install_ships_tables_schema_and_py_typed(tmp_path):
    r = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "-q",
                        "--target", str(tmp_path / "site"), str(_source_copy(tmp_path))],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert (tmp_path / "site/converters/py.typed").is_file()
    code = ("import converters, sys; from converters.mapping import spec; "
            "assert converters.__file__.startswith(sys.argv[1]), converters.__file__; "
            "t = spec.shipped_tables(); assert 'caffe/mtcnn_pnet' in t, t; "
            "[spec.load(p) for p in t.values()]; spec.schema(); print(len(t))")
    r = subprocess.run([sys.executable, "-c", code, str(tmp_path / "site")], capture_output=True, text=True,
                       cwd=tmp_path, env={"PYTHONPATH": str(tmp_path / "site"), "PATH": "/usr/bin:/bin"}, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert int(r.stdout.strip()) >= 2


def _closure(names) -> dict:
    """{normalised name: Distribution} for `names` and everything they require, markers evaluated
    with the extras each requirement asks for (torch's CUDA build needs cuda-toolkit[cublas,...])."""
    seen, todo = {}, [(Requirement(n), "") for n in names]
    while todo:
        req, extra = todo.pop()
        env = {**default_environment(), "extra": extra}
        if req.marker is not None and not req.marker.evaluate(env):
            continue
        key = re.sub(r"[-_.]+", "-", req.name).lower()
        try:
            dist = distribution(req.name)
        except PackageNotFoundError:
            raise AssertionError(f"{req.name} (needed by the core install) is not installed here") from None
        wanted = {(key, e) for e in ("", *sorted(req.extras))}
        if wanted <= seen.keys():
            continue
        for _, e in wanted - seen.keys():
            seen[(key, e)] = dist
            todo.extend((Requirement(r), e) for r in dist.requires or [])
    return {k: d for (k, _), d in seen.items()}


def _link_distributions(dists, folder: Path) -> None:
    """A folder holding links to each distribution's top-level packages, modules and metadata."""
    folder.mkdir()
    for dist in dists.values():
        tops = {Path(str(f)).parts[0] for f in dist.files or [] if not str(f).startswith("..")}
        for top in tops:
            source = Path(dist.locate_file(top))
            if source.exists() and not (folder / top).exists():
                (folder / top).symlink_to(source)


@pytest.mark.heavy
def test_fresh_venv_core_install_commands_work(tmp_path):
    core = [r for r in distribution("weightport").requires if "extra ==" not in r]
    dists = _closure(core + ["setuptools"])  # setuptools: the build backend, for --no-build-isolation
    assert not {"tensorflow", "onnx", "h5py", "opencv-python-headless"} & set(dists)
    _link_distributions(dists, tmp_path / "core")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    py = venv / "bin/python"
    site = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                          capture_output=True, text=True, check=True).stdout.strip()
    Path(site, "_core_deps.pth").write_text(str(tmp_path / "core") + "\n")
    r = subprocess.run([sys.executable, "-m", "pip", "--python", str(py), "install", "-q", "--no-index",
                        "--no-build-isolation", "--disable-pip-version-check", str(_source_copy(tmp_path))],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    # the linked core dependencies satisfied every requirement: pip installed the package alone
    assert [p.name for p in Path(site).glob("*.dist-info")] == ["weightport-0.1.0.dist-info"]
    env = {"PATH": f"{venv / 'bin'}:/usr/bin:/bin", "HOME": str(tmp_path)}

    def sh(*argv, tty=False):
        if tty:  # a 100-column pseudo-terminal, as a person's shell gives
            argv = ["script", "-q", "-e", "-c", "stty cols 100 rows 40; " + " ".join(map(str, argv)), os.devnull]
        return subprocess.run([str(a) for a in argv], capture_output=True, text=True, timeout=300, env=env,
                              cwd=tmp_path)

    version = sh("weightport", "--version")
    assert version.returncode == 0 and "0.1.0" in version.stdout, version.stderr
    assert sh("convert", "--version").stdout == version.stdout.replace("weightport", "convert")
    helped = sh("weightport", "--help")
    assert helped.returncode == 0 and "--map" in helped.stdout and "inspect" in helped.stdout
    inspected = sh("weightport", "inspect", PNET)
    assert inspected.returncode == 0 and "13 arrays" in inspected.stdout, inspected.stderr
    converted = sh("weightport", "--from", "caffe", "--map", "caffe/mtcnn_pnet", PNET, "out/pnet.pth", tty=True)
    assert converted.returncode == 0 and "converting:" in converted.stdout and "wrote out/pnet.pth" in converted.stdout
    assert sh("weightport", "inspect", "out/pnet.pth").stdout.splitlines()[1].startswith("written by converters")
    where = sh(py, "-c", "import converters, importlib.util as u; print(converters.__file__); "
                         "print(u.find_spec('tensorflow'), u.find_spec('onnx'))")
    assert where.stdout.split()[0].startswith(site) and where.stdout.split()[1:] == ["None", "None"], where.stdout
    assert Path(site, "converters/py.typed").is_file()
    assert sysconfig.get_path("purelib") != site  # really another environment


@pytest.mark.heavy
@pytest.mark.exclusive  # pip reinstalls the editable package: no other test may import it meanwhile
def test_setup_script_prints_its_steps():
    """scripts/setup.sh on this (already set-up) checkout: idempotent, and every step says what it
    does on stderr (pip's own output goes to .venv/setup.log)."""
    r = subprocess.run(["bash", str(ROOT / "scripts/setup.sh")], capture_output=True, text=True, timeout=900,
                       env={**os.environ, "CONVERTERS_SKIP_MXNET": "1"})
    assert r.returncode == 0, r.stderr[-3000:]
    steps = [line for line in r.stderr.splitlines() if line.startswith("setup [")]
    assert [s.split("]")[0] for s in steps] == ["setup [1/6", "setup [2/6", "setup [3/6", "setup [4/6", "setup [5-6/6"]
    assert "torch==2.14.1" in steps[1] and "already installed" in r.stderr and "setup: ready" in r.stderr
