"""Hostile mapping tables: every one ends in one MappingError line naming file and line, quickly.

A table may arrive with downloaded weights, so reading one must not hang (catastrophic regex
backtracking, YAML alias bombs), exhaust the stack (deep nesting) or leak a Python exception
(binary or UTF-16 text, list keys, numbers of thousands of digits).
"""
import time
from pathlib import Path

import numpy as np
import pytest

from converters.cli import main
from converters.convert import convert
from converters.errors import MappingError
from converters.mapping import spec

ROOT = Path(__file__).resolve().parents[1]
CAFFE = ROOT / "fixtures/caffe/mtcnn_pnet/det1.caffemodel"
RULE = "rules:\n  - from: 'a'\n    to: 'b'\n"


def laughs(levels=9) -> str:
    """The billion-laughs document: each anchor repeats the previous one nine times."""
    lines = ["notes:", "  l0: &l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    for i in range(1, levels + 1):
        lines.append(f"  l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * 9) + "]")
    return "\n".join(lines) + "\n" + RULE


BAD_TABLES = {
    "utf16": (RULE.encode("utf-16"), 1, "not UTF-8 text"),
    "binary": (bytes(range(256)) * 4, 1, "not UTF-8 text"),
    "latin1": ("description: caf\xe9\n".encode("latin-1") + RULE.encode(), 1, "not UTF-8 text"),
    "control_char": (b"description: bell\x07\n" + RULE.encode(), 1, "special characters"),
    "list_key": (b"rules:\n  - ? [a, b]\n    : c\n", 2, "a key must be a plain name"),
    "map_key": (b"rules:\n  - from: a\n    to: b\n    ? {x: 1}\n    : c\n", 4, "a key must be a plain name"),
    "deep_flow": (b"notes: " + b"[" * 20000 + b"]" * 20000 + b"\n" + RULE.encode(), 1, "nested deeper than"),
    "deep_block": (b"notes:\n" + b"".join(b"  " * i + b"k:\n" for i in range(1, 3000)), 64, "nested deeper than"),
    "billion_laughs": (laughs().encode(), 1, "expands to more than"),
    "huge_yaml_int": (b"fill:\n  - to: x\n    value: " + b"9" * 5000 + b"\n", 3, "cannot read the value"),
    "huge_fill_value": (b"fill:\n  - to: x\n    value: " + b"9" * 4000 + b"\n", 2, "not a number"),
    "huge_template_literal": (b"rules:\n  - from: 'l(?P<n>\\d+)'\n    to: 'x{n*" + b"9" * 4000 + b"}'\n", 2,
                              "longer than 200 characters"),
    "big_template_literal": (b"rules:\n  - from: 'l(?P<n>\\d+)'\n    to: 'x{n*" + b"9" * 30 + b"}'\n", 2,
                             "integer literals are at most"),
    "lookahead": (b"rules:\n  - from: 'a(?=b)'\n    to: x\n", 2, "RE2 syntax"),
    "pattern_too_big": (b"rules:\n  - from: '((a{1000}){1000}){1000}'\n    to: x\n", 2, "invalid regular expression"),
}


@pytest.mark.parametrize("name", sorted(BAD_TABLES))
def test_hostile_table_is_one_mapping_error_naming_file_and_line(tmp_path, name):
    data, line, needle = BAD_TABLES[name]
    path = tmp_path / f"{name}.yaml"
    path.write_bytes(data)
    t0 = time.perf_counter()
    with pytest.raises(MappingError) as e:
        spec.load(path)
    assert time.perf_counter() - t0 < 5
    text = str(e.value)
    assert f"{path}:{line}" in text and needle in text and "\n" not in text, text
    assert len(text) < 400


def test_the_cli_prints_one_line_and_exits_2_for_a_binary_table(tmp_path, capsys):
    table = tmp_path / "t.yaml"
    table.write_bytes(RULE.encode("utf-16"))
    code = main(["--map", str(table), str(CAFFE), "--dry-run"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert f"{table}:1" in err and "not UTF-8 text" in err


def test_catastrophic_pattern_against_a_long_array_name_finishes_in_linear_time(tmp_path):
    """`(a+)+b` against 'aaaa...a' takes 2^n steps in Python's re; RE2 answers in microseconds."""
    src = tmp_path / "weights.npz"
    np.savez(src, **{"a" * 5000: np.zeros(3, np.float32), "conv.weight": np.ones(2, np.float32)})
    table = tmp_path / "t.yaml"
    table.write_text("source: numpy\nrules:\n  - from: '(a+)+b'\n    to: never\n"
                     "  - from: '(?P<name>(\\w+)+)\\.weight'\n    to: '{name}'\nignore:\n  - pattern: '(a|aa)+'\n")
    t0 = time.perf_counter()
    _, rep = convert(src, table, dry_run=True)
    assert time.perf_counter() - t0 < 5
    assert rep.ok and [r["targets"] for r in rep.rows] == [["conv"]] and len(rep.ignored) == 1


def test_long_digit_captures_stay_text_and_refuse_arithmetic(tmp_path):
    src = tmp_path / "weights.npz"
    digits = "7" * 5000  # int() of this would raise: Python refuses more than 4,300 digits
    np.savez(src, **{f"l{digits}": np.zeros(1, np.float32)})
    table = tmp_path / "t.yaml"
    table.write_text("source: numpy\nrules:\n  - from: 'l(?P<n>\\d+)'\n    to: 'x{n}'\n")
    _, rep = convert(src, table, dry_run=True)
    assert rep.rows[0]["targets"] == [f"x{digits}"]
    table.write_text("source: numpy\nrules:\n  - from: 'l(?P<n>\\d+)'\n    to: 'x{n+1}'\n")
    with pytest.raises(MappingError, match="non-integer capture") as e:
        convert(src, table, dry_run=True)
    assert len(str(e.value)) < 400


def test_template_arithmetic_stays_bounded(tmp_path):
    src = tmp_path / "weights.npz"
    np.savez(src, **{"l999999999": np.zeros(1, np.float32)})
    table = tmp_path / "t.yaml"
    table.write_text("source: numpy\nrules:\n  - from: 'l(?P<n>\\d+)'\n    to: 'x{n*n*n}'\n")
    with pytest.raises(MappingError, match="beyond"):
        convert(src, table, dry_run=True)


def test_ordinary_aliases_and_shipped_tables_still_load(tmp_path):
    table = tmp_path / "t.yaml"
    table.write_text("notes: &n shared\ndescription: *n\n" + RULE)
    assert spec.load(table).description == "shared"
    for name, path in spec.shipped_tables().items():
        assert spec.load(path).rules, name


def test_include_cannot_read_files_outside_the_table_directory(tmp_path):
    outside = tmp_path / "secret.yaml"
    outside.write_text("password_hunter2: 1\n")
    (tmp_path / "tables").mkdir()
    for inc in (str(outside), "../secret.yaml"):
        table = tmp_path / "tables" / "t.yaml"
        table.write_text(f"include: [{inc!r}]\n" + RULE)
        with pytest.raises(MappingError, match="outside the table's directory") as e:
            spec.load(table)
        assert "hunter2" not in str(e.value) and f"{table}:1" in str(e.value)
    (tmp_path / "tables" / "base.yaml").write_text(RULE.replace("'b'", "'c'"))
    table.write_text("include: [base.yaml, caffe/mtcnn_pnet]\n" + RULE)
    assert len(spec.load(table).rules) > 2  # beside the table, and a shipped name, still work
