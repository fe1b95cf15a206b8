"""MXNet / Gluon oracle: runs a checkpoint (PREFIX-symbol.json + PREFIX-EPOCH.params, the form
`mx.model.save_checkpoint` and Gluon's `HybridBlock.export` write) in mxnet 1.9.1.

mxnet 1.9 imports only with numpy<1.24, so it cannot live beside TensorFlow or onnx: it runs in
another Python interpreter, started once per oracle with `_mxnet_side.py` and kept alive for all
`run` calls (importing mxnet takes seconds). Requests go over its stdin as JSON lines; arrays
travel through .npz files in a private temporary folder. Its stderr goes to a log file whose last
lines are quoted when it dies, so a crash in mxnet is reported as a crash, not as a parity failure.

The interpreter: options["source_python"], else the environment variable CONVERTERS_SOURCE_PYTHON,
else <repo>/.venv-mxnet/bin/python (what scripts/setup.sh creates). Arrays are in the source's
conventions (NCHW, the model's own channel order). Taps are symbol node names (`conv1`, `prelu1`,
...); a node's first output is returned.

The side interpreter runs with MXNET_SUBGRAPH_BACKEND=NONE: mxnet 1.9's default MKLDNN subgraph
backend fuses Convolution + BatchNorm + ReLU when binding, and a tapped convolution would then
return the fused result (every fault on a Conv-BN net would look like the first convolution's).
mxnet's own message saying so stays in the side interpreter's log, and the report notes it.

Gluon parameter files saved with `save_parameters` (structural names, no symbol) cannot be run
without the Python code that defines the network: export the network (net.export) first.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
import weakref
from pathlib import Path

import numpy as np

from ...errors import ConvertersError
from .base import Oracle, OracleCrashed, OracleUnavailable, SourceModel, require_source

REPO = Path(__file__).resolve().parents[3]
SIDE_SCRIPT = Path(__file__).with_name("_mxnet_side.py")
SETUP_HINT = ("create an environment with mxnet 1.9.1 and numpy<1.24 (scripts/setup.sh makes "
              ".venv-mxnet) and pass its interpreter with --source-python PATH or set "
              "CONVERTERS_SOURCE_PYTHON")
DEFAULT_TIMEOUT = 600.0
SUBGRAPH_BACKEND = "NONE"  # no operator fusion: every symbol node's own output can be tapped


def find_source_python(option=None) -> Path:
    """The interpreter that has mxnet, in order of precedence; OracleUnavailable if there is none."""
    for candidate, origin in ((option, "--source-python"),
                              (os.environ.get("CONVERTERS_SOURCE_PYTHON"), "CONVERTERS_SOURCE_PYTHON")):
        if candidate:
            path = Path(candidate)
            if not path.exists():
                raise OracleUnavailable(f"the interpreter given by {origin} does not exist", file=path,
                                        hint=SETUP_HINT)
            return Path(os.path.abspath(path))  # absolute, not resolved: a venv's python is a symlink
    default = REPO / ".venv-mxnet" / "bin" / "python"
    if default.exists():
        return default
    raise OracleUnavailable("the MXNet oracle needs a Python interpreter with mxnet 1.9.1 and none was "
                            "given or found", hint=SETUP_HINT)


def checkpoint_files(weights: Path, architecture=None) -> Path:
    """The symbol file for PREFIX-EPOCH.params: the given one, or PREFIX-symbol.json beside it."""
    if architecture:
        symbol = Path(architecture)
    else:
        match = re.fullmatch(r"(.+)-\d+\.params", weights.name)
        symbol = weights.with_name(f"{match.group(1)}-symbol.json") if match else weights.with_suffix(".json")
    if not symbol.is_file():
        raise ConvertersError("the MXNet oracle needs the network's -symbol.json and none was given or "
                              "found beside the weights", file=weights,
                              hint=f"looked for {symbol.name}; a Gluon save_parameters file must be exported "
                                   "with net.export(prefix) to be run")
    return symbol


class _SideProcess:
    """The running side interpreter: one request at a time, answers read line by line."""

    def __init__(self, python: Path, timeout: float):
        self.python, self.timeout = python, timeout
        self.folder = Path(tempfile.mkdtemp(prefix="converters-mxnet-"))
        self.log_path = self.folder / "stderr.log"
        self._log = open(self.log_path, "wb")
        env = {**os.environ, "PYTHONNOUSERSITE": "1", "MXNET_SUBGRAPH_BACKEND": SUBGRAPH_BACKEND}
        env.pop("PYTHONPATH", None)  # the project's path would put numpy>=1.24 packages in its way
        try:
            self.proc = subprocess.Popen([str(python), "-u", str(SIDE_SCRIPT)], stdin=subprocess.PIPE,
                                         stdout=subprocess.PIPE, stderr=self._log, env=env, text=True,
                                         cwd=self.folder)
        except OSError as e:
            raise OracleUnavailable(f"cannot start the side interpreter: {e}", file=python, hint=SETUP_HINT) from e
        self._closer = weakref.finalize(self, _stop, self.proc, self._log, self.folder)
        hello = self.hello = self._read("starting mxnet")
        if not hello.get("ok"):
            self.close()
            raise OracleUnavailable(f"{python} cannot import mxnet ({hello.get('error')})", file=python,
                                    hint=SETUP_HINT)

    def request(self, message: dict, doing: str) -> dict:
        if self.proc.poll() is not None:
            raise self._crashed(doing)
        try:
            self.proc.stdin.write(json.dumps(message) + "\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            raise self._crashed(doing) from None
        answer = self._read(doing)
        if not answer.get("ok"):
            detail = answer.get("traceback") or answer.get("error", "")
            raise OracleCrashed(f"mxnet failed while {doing}: {answer.get('error')}\n"
                                f"last lines:\n{_tail(detail)}", file=self.python)
        return answer

    def _read(self, doing: str) -> dict:
        import selectors

        with selectors.DefaultSelector() as sel:
            sel.register(self.proc.stdout, selectors.EVENT_READ)
            if not sel.select(self.timeout):
                self.close()
                raise OracleCrashed(f"the mxnet side interpreter gave no answer in {self.timeout:.0f} s while "
                                    f"{doing}; last lines of its log:\n{self._log_tail()}", file=self.python)
        line = self.proc.stdout.readline()
        if not line:
            raise self._crashed(doing)
        try:
            return json.loads(line)
        except json.JSONDecodeError:
            raise OracleCrashed(f"the mxnet side interpreter answered garbage while {doing}: {line[:200]!r}",
                                file=self.python) from None

    def _crashed(self, doing: str) -> OracleCrashed:
        try:
            code = self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            code = None
        return OracleCrashed(f"the mxnet side interpreter died (exit code {code}) while {doing}; "
                             f"last lines of its output:\n{self._log_tail()}", file=self.python)

    def _log_tail(self) -> str:
        self._log.flush()
        try:
            return _tail(self.log_path.read_text(errors="replace"))
        except OSError:
            return "(no log)"

    def close(self):
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write(json.dumps({"cmd": "quit"}) + "\n")
                self.proc.stdin.flush()
                self.proc.wait(timeout=10)
            except (OSError, subprocess.TimeoutExpired, ValueError):
                pass
        self._closer()


def _stop(proc, log, folder):
    """Finalizer: never leave a side interpreter or its temporary files behind."""
    if proc.poll() is None:
        proc.kill()
        proc.wait()
    for stream in (proc.stdin, proc.stdout):
        try:
            stream.close()
        except OSError:
            pass
    log.close()
    shutil.rmtree(folder, ignore_errors=True)


def _layer_of_output(name: str) -> str:
    return name[: -len("_output")] if name.endswith("_output") else name


def _tail(text: str, n: int = 12) -> str:
    return "\n".join(text.strip().splitlines()[-n:])


class MXNetOracle(Oracle):
    framework = "mxnet"

    def __init__(self, model: SourceModel):
        super().__init__(model)
        self.weights = require_source(Path(model.weights), "MXNet params file")
        self.symbol = checkpoint_files(self.weights, model.architecture)
        python = find_source_python(model.options.get("source_python"))
        self.side = _SideProcess(python, float(model.options.get("timeout", DEFAULT_TIMEOUT)))
        self.info = self.side.request({"cmd": "load", "symbol": str(self.symbol.resolve()),
                                       "params": str(self.weights.resolve())}, "loading the model")
        self._calls = 0

    def input_names(self) -> list[str]:
        return list(self.info["inputs"])

    def output_names(self) -> list[str]:
        """Named by their layer, like taps: mxnet's `prob1_output` is `prob1` here."""
        return [_layer_of_output(name) for name in self.info["outputs"]]

    def layer_order(self) -> list[str]:
        return list(self.info["layers"])

    def unreached_layers(self, layers) -> list[str]:
        """Of `layers`, those whose weights are in the params file but that no head of the symbol
        computes (a symbol cut short before them)."""
        unreached = set(self.info.get("unreached_params") or [])
        known = set(self.layer_order())
        return [layer for layer in layers if layer not in known
                and any(p == layer or p.startswith(layer + "_") for p in unreached)]

    def notes(self) -> list[str]:
        backend = self.side.hello.get("subgraph_backend")
        return [f"mxnet {self.info.get('mxnet', '')} ran with MXNET_SUBGRAPH_BACKEND={backend} (no Conv+BN+ReLU "
                "fusion: each tapped layer is that layer's own output)"]

    def run(self, inputs, taps=()):
        names = self.input_names()
        missing = [n for n in names if n not in inputs]
        if missing:
            raise ConvertersError(f"no value for the model input(s) {missing}; the model takes {names}",
                                  file=self.symbol)
        taps = [t for t in dict.fromkeys(taps)]
        unknown = [t for t in taps if t not in set(self.layer_order())]
        if unknown:
            raise ConvertersError(f"the MXNet symbol has no layer(s) {unknown} to tap", file=self.symbol)
        self._calls += 1
        folder = self.side.folder
        src, dst = folder / f"in{self._calls}.npz", folder / f"out{self._calls}.npz"
        np.savez(src, **{f"a{i}": np.ascontiguousarray(inputs[n], dtype=np.float32) for i, n in enumerate(names)})
        try:
            answer = self.side.request({"cmd": "run", "inputs": str(src), "names": names, "taps": taps,
                                        "out": str(dst)}, "running the model")
            with np.load(dst) as data:
                results = {name: data[f"a{i}"] for i, name in enumerate(answer["names"])}
        finally:
            for f in (src, dst):
                f.unlink(missing_ok=True)
        values = list(results.values())
        outputs = self.output_names()
        renamed = dict(zip(outputs, values))
        renamed.update(zip(taps, values[len(outputs):]))
        return renamed

    def close(self) -> None:
        side = getattr(self, "side", None)
        if side is not None:
            side.close()


ORACLE = MXNetOracle


def create(model: SourceModel) -> MXNetOracle:
    """Registry entry point (converters.parity.oracles.ORACLES -> module -> create)."""
    return MXNetOracle(model)
