"""Test-session set-up.

torchvision (through torch._dynamo) crashes with a segmentation fault when it is first imported
after TensorFlow in the same process; importing it before any test can import TensorFlow keeps
the suite independent of test order.
"""
try:
    import torchvision  # noqa: F401
except ImportError:  # the suite still runs the tests that do not need it
    pass


import os  # noqa: E402

import pytest  # noqa: E402

_MISSING_TOOL = ("could not import", "missing", "not installed", "run scripts/setup.sh")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Under CI (CI=true), a test skipped because a tool or environment is missing fails instead:
    the set-up script must install everything, and a green run must not hide that it did not."""
    outcome = yield
    report = outcome.get_result()
    if os.environ.get("CI") == "true" and report.skipped and isinstance(report.longrepr, tuple):
        reason = str(report.longrepr[2])
        if any(s in reason for s in _MISSING_TOOL):
            report.outcome = "failed"
            report.longrepr = f"skipped under CI because something the set-up should install is missing: {reason}"
