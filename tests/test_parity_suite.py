"""The shipped tables, verified through the parity suite (tests/parity_cases.yaml)."""
from pathlib import Path

import pytest

from converters import testing

CASES = Path(__file__).with_name("parity_cases.yaml")


@pytest.mark.parametrize("case", testing.parametrize(CASES))
def test_shipped_table_parity(case, tmp_path):
    rep = testing.check(case, tmp_path)
    print(rep)  # the measured errors, shown with pytest -s
