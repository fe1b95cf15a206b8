"""Test-session set-up.

torchvision (through torch._dynamo) crashes with a segmentation fault when it is first imported
after TensorFlow in the same process; importing it before any test can import TensorFlow keeps
the suite independent of test order.

The suite runs on pytest-xdist workers (`-n 2 --dist loadgroup` in pyproject.toml; `-n 0` runs it
in one process). Under xdist:
  * each worker's math libraries use one thread (two workers on two cores: no oversubscription;
    an exported OMP_NUM_THREADS etc. wins);
  * a module with a module- or session-scoped fixture of its own runs whole on one worker (its
    fixture is built once, as in a serial run); the other tests are spread one by one, the heavy
    ones first so no long test is left for the end;
  * a test marked `exclusive` runs while no other test of the run does (a file lock: every test
    holds it shared, an exclusive one holds it alone).
"""
import os

if os.environ.get("PYTEST_XDIST_WORKER") and int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")) > 1:
    for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "TF_NUM_INTRAOP_THREADS"):
        os.environ.setdefault(_var, "1")

try:
    import torchvision  # noqa: F401
except ImportError:  # the suite still runs the tests that do not need it
    pass


import fcntl  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402


def pytest_configure(config):
    config.addinivalue_line("markers", "allowed_skip(reason): this test may skip under CI=true, for the documented "
                                       "reason given (none does today)")


def _own_wide_fixture(item) -> bool:
    """Whether the test uses a module/class/package/session-scoped fixture defined in tests/
    (pytest's own, like tmp_path_factory, do not count)."""
    info = getattr(item, "_fixtureinfo", None)
    if info is None:  # pytest internals moved: keep the module whole, as a serial run does
        return True
    tests = Path(__file__).resolve().parent
    for defs in info.name2fixturedefs.values():
        for d in defs:
            if d.scope == "function" or d.func is None:
                continue
            source = getattr(d.func, "__code__", None)
            if source is not None and Path(source.co_filename).resolve().is_relative_to(tests):
                return True
    return False


def pytest_collection_modifyitems(config, items):
    if getattr(config.option, "dist", "no") == "no":
        return
    wide = {}
    for item in items:
        if item.get_closest_marker("xdist_group") is None:
            module = item.nodeid.split("::", 1)[0]
            if wide.setdefault(module, False) or _own_wide_fixture(item):
                wide[module] = True
    for item in items:
        module = item.nodeid.split("::", 1)[0]
        if wide.get(module) and item.get_closest_marker("xdist_group") is None:
            item.add_marker(pytest.mark.xdist_group(module))
    # with --no-loadscope-reorder the workers take groups in this order: heavy cases first
    items.sort(key=lambda item: item.get_closest_marker("heavy") is None)


def _lock_path(config):
    """The run's lock file: in the folder its workers' basetemps share (pytest keeps the last
    three runs' and removes older ones), in the temporary folder where that is not known."""
    run = os.environ.get("PYTEST_XDIST_TESTRUNUID")
    if not run or not hasattr(config, "workerinput"):  # not a worker: a pytest that a test runs inherits the variable
        return None
    factory = getattr(config, "_tmp_path_factory", None)
    folder = factory.getbasetemp().parent if factory is not None else Path(tempfile.gettempdir())
    return folder / f"converters-tests-{run}.lock"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    """Under xdist, an `exclusive` test (it changes .venv, say) runs alone: it takes the gate, so
    no test starts, then the lock alone, once the running ones end."""
    path = _lock_path(item.config)
    if path is None:
        yield
        return
    exclusive = item.get_closest_marker("exclusive") is not None
    with open(path, "a") as lock, open(path.with_suffix(".gate"), "a") as gate:
        fcntl.flock(gate, fcntl.LOCK_EX)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        finally:
            fcntl.flock(gate, fcntl.LOCK_UN)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Under CI (CI=true) every skip fails, whatever its reason says: the set-up script must
    install everything, and a green run must not hide that it did not. The only exception is a
    test marked `@pytest.mark.allowed_skip(reason="...")` with the documented reason why CI may
    lack what it needs."""
    outcome = yield
    report = outcome.get_result()
    if os.environ.get("CI") != "true" or not report.skipped or hasattr(report, "wasxfail"):
        return
    allowed = item.get_closest_marker("allowed_skip")
    if allowed is not None and (allowed.kwargs.get("reason") or allowed.args):
        return
    reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
    report.outcome = "failed"
    report.longrepr = f"skipped under CI=true (a skip must not hide a missing install step): {reason}"


def _run_folder(tmp_path_factory) -> Path:
    """A folder every worker of this run shares (the parent of their basetemps; the basetemp itself
    in a run without xdist)."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


def shared_build(tmp_path_factory, name: str, build):
    """`build(folder)`'s result, built once per run in a folder the workers share: the first caller
    builds under a lock, the others (and later calls) reuse what it wrote."""
    import json

    folder = _run_folder(tmp_path_factory) / f"shared-{name}"
    with open(folder.with_suffix(".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            done = folder / "built.json"
            if not done.exists():
                folder.mkdir(exist_ok=True)
                result = build(folder)
                done.write_text(json.dumps({k: str(v) if isinstance(v, Path) else v for k, v in result.items()}))
            result = json.loads(done.read_text())
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    result["source"] = Path(result["source"])
    return result


@pytest.fixture(scope="session")
def keras_vgg16(tmp_path_factory):
    """tests/parity_builders.py's random VGG16 (keras.applications, 138M parameters, a 528 MB legacy
    .h5): {'source': path, 'n': 1}, made by Keras once per run for the table, draft and parity tests."""
    pytest.importorskip("keras")
    import parity_builders

    return shared_build(tmp_path_factory, "keras_vgg16", parity_builders.keras_vgg16)


@pytest.fixture(scope="session")
def mxnet_generated(tmp_path_factory):
    """name -> the `name-0000.params` that tests/mxnet_side/make_tables_models.py writes (with the
    Gluon file and mxnet's reference output beside it), generated by mxnet once per run for the
    table, draft and parity tests (parity_builders._mxnet: OracleUnavailable without mxnet/gluoncv)."""
    import parity_builders

    generate = parity_builders._mxnet  # bound now: test_parity_suite points the builders at this fixture

    def get(name: str) -> Path:
        built = shared_build(tmp_path_factory, f"mxnet-{name}", lambda folder: {"source": generate(folder, name)})
        return built["source"]

    return get
