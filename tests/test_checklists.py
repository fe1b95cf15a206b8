"""CONTRIBUTING.md's checklists, enforced: what a new table, transform, reader, oracle or op emitter
must come with. Each test names what is missing and the checklist item that asks for it.

A gap that exists today and belongs to another part of the project is listed in KNOWN_GAPS with
its reason; the tests fail when a new gap appears and also when a listed gap is closed (so the
list cannot go stale).
"""
import ast
from pathlib import Path

import yaml

from converters import frameworks
from converters.mapping import spec, transforms
from converters.readers import FRAMEWORKS as READERS

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
DOCS_MAPPING = ROOT / "docs/mapping.md"

KNOWN_GAPS: dict = {}


def _text(pattern: str) -> str:
    return "\n".join(p.read_text() for p in sorted(TESTS.glob(pattern)))


def _check(kind: str, missing: set):
    known = set(KNOWN_GAPS.get(kind, {}))
    new, closed = sorted(missing - known), sorted(known - missing)
    assert not new, f"CONTRIBUTING.md: missing {kind} for {new}"
    assert not closed, f"{closed} now have a {kind}: remove them from KNOWN_GAPS[{kind!r}]"


def shipped_tables_without_parity_case(cases_file=TESTS / "parity_cases.yaml") -> set:
    cases = yaml.safe_load(Path(cases_file).read_text())["cases"]
    return set(spec.shipped_tables()) - {c["mapping"] for c in cases}


def test_every_shipped_table_has_a_parity_suite_case():
    _check("parity case", shipped_tables_without_parity_case())


def test_removing_a_parity_case_is_caught(tmp_path):
    """The check above really reads the suite: drop one case and its table is reported."""
    data = yaml.safe_load((TESTS / "parity_cases.yaml").read_text())
    names = [c["mapping"] for c in data["cases"]]
    dropped = next(n for n in names if names.count(n) == 1)
    data["cases"] = [c for c in data["cases"] if c["mapping"] != dropped]
    (tmp_path / "cases.yaml").write_text(yaml.safe_dump(data))
    assert dropped in shipped_tables_without_parity_case(tmp_path / "cases.yaml")
    assert dropped not in shipped_tables_without_parity_case()


def test_every_shipped_table_has_a_draft_test():
    """A draft test drafts the table's source model into its target (test_draft*.py names the
    target) or names the table itself."""
    text = _text("test_draft*.py")
    missing = set()
    for name, path in spec.shipped_tables().items():
        target = (spec.load(path).target or {}).get("model", "")
        if name not in text and not (target and target in text):
            missing.add(name)
    _check("draft test", missing)


def _schema_transform_lists() -> list[list]:
    t = spec.schema()["$defs"]["transform"]["oneOf"]
    return [t[0]["examples"], t[1]["propertyNames"]["examples"]]


def _documented_transforms() -> set:
    """Names in the first column of docs/mapping.md's transform table (`a` / `b` rows count both)."""
    names = set()
    for line in DOCS_MAPPING.read_text().splitlines():
        if line.startswith("| `"):
            first = line.split("|")[1]
            names.update(part.strip().strip("`") for part in first.split("/"))
    return names


def test_every_transform_is_in_the_schema_and_the_docs():
    registry = set(transforms.REGISTRY)
    for listed in _schema_transform_lists():
        assert set(listed) == registry, f"schema transform list differs: {sorted(set(listed) ^ registry)}"
    undocumented = registry - _documented_transforms()
    assert not undocumented, f"transforms missing from docs/mapping.md's table: {sorted(undocumented)}"


def test_init_schemes_and_source_names_agree_with_the_schema():
    from converters.initializers import SCHEMES

    props = spec.schema()["properties"]
    assert set(props["init"]["items"]["properties"]["scheme"]["enum"]) == set(SCHEMES)
    assert set(props["source"]["enum"]) == set(READERS) == set(frameworks.FRAMEWORKS)


def _fuzzed_readers() -> set:
    tree = ast.parse((TESTS / "fuzz/fuzz_readers.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "SOURCES" for t in node.targets):
            return {k.value for k in node.value.keys}
    raise AssertionError("tests/fuzz/fuzz_readers.py has no SOURCES")


def _hostile_cases_by_reader() -> set:
    tree = ast.parse((TESTS / "test_security_readers.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "_FRAMEWORK" for t in node.targets):
            return {v.value for v in node.value.values}
    return set()


def test_every_reader_has_bad_input_tests():
    """Mutants of its real files (fuzz harness) and at least one test expecting its error."""
    unfuzzed = set(READERS) - _fuzzed_readers()
    assert not unfuzzed, f"readers without fuzz sources (tests/fuzz/fuzz_readers.py SOURCES): {sorted(unfuzzed)}"
    hostile = _hostile_cases_by_reader()
    missing = set()
    for name in READERS:
        own = [TESTS / f"test_reader_{name}.py", TESTS / f"test_reader_{'mxnet' if name == 'gluon' else name}.py"]
        if name not in hostile and not any(p.is_file() and "pytest.raises(" in p.read_text() for p in own):
            missing.add(name)
    assert not missing, f"readers without a bad-input test (test_reader_<name>.py or HOSTILE): {sorted(missing)}"


def test_framework_facts_name_real_registry_entries():
    from converters.parity.oracles import ORACLES
    from converters.port.frontends import frontend_for

    for f in frameworks.FRAMEWORKS.values():
        assert f.oracle is None or f.oracle in ORACLES, (f.name, f.oracle)
        if f.graph is not None:
            assert frontend_for(f.graph).__name__.startswith("converters.port.frontends."), f.name
    unclaimed = set(ORACLES) - {"reference"} - {f.oracle for f in frameworks.FRAMEWORKS.values()}
    assert not unclaimed, f"oracles no framework in converters/frameworks.py names: {sorted(unclaimed)}"


def test_every_oracle_module_is_exercised_by_a_parity_test():
    from converters.parity.oracles import ORACLES

    text = _text("test_parity*.py") + _text("test_tables_*.py")
    untested = {module for module in set(ORACLES.values())
                if module.rsplit(".", 1)[-1] not in text
                and not any(f'"{k}"' in text for k, v in ORACLES.items() if v == module)}
    assert not untested, f"oracle modules no parity test names: {sorted(untested)}"


def test_every_op_emitter_is_run_by_a_port_test():
    from converters.port import graph, ops

    ops.load_all()
    assert set(ops.EMITTERS) <= set(graph.OPS), sorted(set(ops.EMITTERS) - set(graph.OPS))
    text = _text("test_port_*.py")
    untested = {op for op in ops.EMITTERS if f'"{op}"' not in text}
    assert not untested, f"emitters no tests/test_port_*.py graph uses: {sorted(untested)}"
