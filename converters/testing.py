"""Parity suites: declare conversions to verify in YAML, run them as pytest tests.

    # models.parity.yaml (paths are relative to this file)
    cases:
      - name: mtcnn-caffe
        source: ../fixtures/caffe/mtcnn_pnet/det1.caffemodel
        mapping: caffe/mtcnn_pnet          # shipped name or path
        input_shape: [2, 3, 31, 25]        # optional, in the table's input layout
        tolerance: {atol: 1e-4}            # optional, overrides the table's parity.tolerance
      - name: keras-lstm
        build: parity_builders:keras_lstm  # module:function(directory) -> source path or {source, architecture, ...}
        mapping: keras/lstm
        target_kwargs: {input_size: 5, hidden_size: 4}
        marks: [heavy]                     # pytest marks; `requires: [cv2]` skips when a module is missing
        expect: fail                       # a fault case: must fail ...
        first_divergent: conv1             # ... and name this source layer first

Case keys: name, source | build, mapping, framework, architecture, target, target_kwargs,
reader_options, source_python, reference, inputs, input_shape, n, seed, tolerance, dtype,
localise, extra_inputs, requires, marks, expect, first_divergent.

Two ways to run a file:
  * in a test module: `@pytest.mark.parametrize("case", converters.testing.parametrize(PATH))`
    and `def test_parity(case, tmp_path): converters.testing.check(case, tmp_path)`;
  * the pytest plugin (entry point `converters = "converters.testing"` in pytest11) collects every
    file named `*.parity.yaml` / `*.parity.yml` as a suite by itself (other names need the first way).
    The plugin is loaded by every pytest run where the package is installed, so this module
    imports nothing heavy at import time (yaml, numpy and the verifier load with the first suite).
An unavailable source framework (OracleUnavailable) skips the case with the reason; anything else
that goes wrong fails it, with the parity report as the message.
"""
from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

from .errors import ConvertersError

CASE_KEYS = {"name", "source", "build", "mapping", "framework", "architecture", "target", "target_kwargs",
             "reader_options", "source_python", "reference", "inputs", "input_shape", "n", "seed", "tolerance",
             "dtype", "localise", "requires", "marks", "expect", "first_divergent", "description",
             "extra_inputs"}
VERIFY_KEYS = ("framework", "target", "target_kwargs", "reader_options", "source_python", "input_shape", "n",
               "seed", "tolerance", "dtype", "localise", "extra_inputs")


@dataclass
class ParityCase:
    name: str
    mapping: str
    base: Path                      # the YAML file's folder: relative paths start here
    source: str | None = None
    build: str | None = None
    architecture: str | None = None
    reference: str | None = None
    inputs: str | None = None
    options: dict = field(default_factory=dict)  # passed to verify()
    requires: list = field(default_factory=list)
    marks: list = field(default_factory=list)
    expect: str = "pass"
    first_divergent: str | None = None

    def path(self, value):
        if value is None:
            return None
        p = Path(os.path.expandvars(str(value)))
        return p if p.is_absolute() else self.base / p


def load_cases(path) -> list[ParityCase]:
    """The cases of a suite file, checked: unknown keys and missing fields stop with file and case."""
    import yaml

    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ConvertersError(f"not valid YAML: {e}", file=path) from None
    if not isinstance(data, dict) or not isinstance(data.get("cases"), list):
        raise ConvertersError("a parity suite is a mapping with a `cases:` list", file=path)
    cases, names = [], set()
    for i, raw in enumerate(data["cases"]):
        where = f"case {i + 1}"
        if not isinstance(raw, dict):
            raise ConvertersError(f"{where} is not a mapping", file=path)
        unknown = set(raw) - CASE_KEYS
        if unknown:
            raise ConvertersError(f"{where}: unknown key(s) {sorted(unknown)}", file=path,
                                  hint=f"known: {', '.join(sorted(CASE_KEYS))}")
        if "mapping" not in raw or not ("source" in raw or "build" in raw):
            raise ConvertersError(f"{where} needs `mapping:` and `source:` (or `build:`)", file=path)
        name = str(raw.get("name") or f"{raw['mapping']}#{i + 1}")
        if name in names:
            raise ConvertersError(f"two cases are named {name!r}", file=path)
        names.add(name)
        expect = raw.get("expect", "pass")
        if expect not in ("pass", "fail"):
            raise ConvertersError(f"{where}: expect is pass or fail, not {expect!r}", file=path)
        cases.append(ParityCase(
            name=name, mapping=str(raw["mapping"]), base=path.parent, source=raw.get("source"),
            build=raw.get("build"), architecture=raw.get("architecture"), reference=raw.get("reference"),
            inputs=raw.get("inputs"), options={k: raw[k] for k in VERIFY_KEYS if k in raw},
            requires=list(raw.get("requires") or []), marks=list(raw.get("marks") or []), expect=expect,
            first_divergent=raw.get("first_divergent")))
    return cases


def _mapping_ref(case: ParityCase) -> str:
    candidate = case.base / case.mapping
    return str(candidate) if candidate.is_file() else case.mapping


def _call_builder(case: ParityCase, directory: Path) -> dict:
    module_name, _, fn = case.build.partition(":")
    if not fn:
        raise ConvertersError(f"case {case.name}: build is 'module:function', not {case.build!r}")
    sys.path.insert(0, str(case.base))
    try:
        module = importlib.import_module(module_name)
    finally:
        sys.path.remove(str(case.base))
    result = getattr(module, fn)(Path(directory))
    return {"source": result} if isinstance(result, (str, os.PathLike)) else dict(result)


def missing_requirements(case: ParityCase) -> list[str]:
    return [r for r in case.requires if importlib.util.find_spec(r) is None]


def run_case(case: ParityCase, directory):
    """Build the source files if the case says how, then verify. Returns the ParityReport."""
    from .parity.verify import verify

    built = _call_builder(case, Path(directory)) if case.build else {}
    source = built.pop("source", None) or case.path(case.source)
    options = {**case.options, **{k: v for k, v in built.items() if k in VERIFY_KEYS}}
    architecture = built.get("architecture") or case.path(case.architecture)
    return verify(source, _mapping_ref(case), options.pop("target", None), architecture=architecture,
                  reference=case.path(case.reference), inputs=case.path(case.inputs), **options)


def check(case: ParityCase, directory) -> object:
    """Run a case under pytest: skip when its framework or a required module is missing, fail with
    the report unless the verdict (and the first divergent layer) is what the case expects."""
    import pytest

    from .parity.oracles.base import OracleUnavailable

    missing = missing_requirements(case)
    if missing:
        pytest.skip(f"{case.name}: needs {', '.join(missing)}")
    try:
        rep = run_case(case, directory)
    except OracleUnavailable as e:
        pytest.skip(f"{case.name}: {e}")
    if case.expect == "pass":
        assert rep.passed, f"{case.name}: parity failed\n{rep}"
    else:
        assert not rep.passed, f"{case.name}: expected a parity failure\n{rep}"
        if case.first_divergent:
            got = (rep.first_divergent or {}).get("source_layer")
            assert got == case.first_divergent, f"{case.name}: first divergent {got!r}, expected " \
                                                f"{case.first_divergent!r}\n{rep}"
    return rep


def parametrize(path) -> list:
    """pytest.param(case, id=name, marks=...) for every case of a suite file."""
    import pytest

    return [pytest.param(c, id=c.name, marks=[getattr(pytest.mark, m) for m in c.marks])
            for c in load_cases(path)]


# ---- pytest plugin ------------------------------------------------------------------------------

def pytest_collect_file(parent, file_path):
    if file_path.name.endswith((".parity.yaml", ".parity.yml")):
        return ParityFile.from_parent(parent, path=file_path)
    return None


def _plugin_classes():
    import pytest

    class _ParityFile(pytest.File):
        def collect(self):
            for case in load_cases(self.path):
                item = ParityItem.from_parent(self, name=case.name, case=case)
                for m in case.marks:
                    item.add_marker(m)
                yield item

    class _ParityItem(pytest.Item):
        def __init__(self, *, case, **kw):
            super().__init__(**kw)
            self.case = case

        def runtest(self):
            directory = self.config._tmp_path_factory.mktemp(self.case.name.replace("/", "_")[:40])
            check(self.case, directory)

        def repr_failure(self, excinfo):
            return str(excinfo.value)

        def reportinfo(self):
            return self.path, 0, f"parity case {self.case.name}"

    return _ParityFile, _ParityItem


try:
    ParityFile, ParityItem = _plugin_classes()
except ImportError:  # pytest is not installed: the helpers above still work
    ParityFile = ParityItem = None
