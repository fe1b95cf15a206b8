"""The shipped tables, verified through the parity suite (tests/parity_cases.yaml)."""
import dataclasses
from pathlib import Path

import pytest

from converters import testing

CASES = Path(__file__).with_name("parity_cases.yaml")
# cases whose builder's result a session fixture of tests/conftest.py shares with other tests:
# the same builder, run once per run instead of once per test
SHARED_BUILDS = {"keras-vgg16": ("parity_builders:keras_vgg16", "keras_vgg16")}


@pytest.mark.parametrize("case", testing.parametrize(CASES))
def test_shipped_table_parity(case, tmp_path, request, monkeypatch):
    if case.name in SHARED_BUILDS:
        builder, fixture = SHARED_BUILDS[case.name]
        assert case.build == builder, f"{case.name} is built by {case.build} now: update SHARED_BUILDS"
        missing = testing.missing_requirements(case)
        if missing:
            pytest.skip(f"{case.name}: needs {', '.join(missing)}")
        built = dict(request.getfixturevalue(fixture))
        source = built.pop("source")
        case = dataclasses.replace(case, build=None, source=str(source), options={**case.options, **built})
    elif "mxnet" in case.marks and case.build:
        import parity_builders

        # the builders' generator run (parity_builders._mxnet) is the one the table and draft tests use
        shared = request.getfixturevalue("mxnet_generated")  # before the patch: it calls the real one
        monkeypatch.setattr(parity_builders, "_mxnet", lambda _folder, name: shared(name))
    rep = testing.check(case, tmp_path)
    print(rep)  # the measured errors, shown with pytest -s
