#!/usr/bin/env python
"""Many-small-tensor benchmark: converters.read on ONNX files with thousands of tiny tensors.

    .venv/bin/python benchmarks/bench_small_tensors.py                  # 5,000 tensors per file
    .venv/bin/python benchmarks/bench_small_tensors.py --tensors 500    # quick run

Large-file benchmarks (bench_readers.py) measure bytes; these files measure the per-tensor cost
of the protobuf walk, which is what a real model zoo mostly looks like (PP-OCR, Paddle2ONNX
exports). Files, written by the real `onnx` package (onnx.helper / numpy_helper):

  initializers  N initializers (alternately float32 16x16 and 64), each used by an Identity node
  constants     N Constant nodes with a float32 `value` tensor, the way Paddle2ONNX stores weights
  ppocr_cls     fixtures/onnx/ch_ppocr_mobile_v2.0_cls_infer.onnx (a real PaddleOCR export)

Each measurement runs in a fresh child: `converters.read(path)` + `.numpy()` of every array
against `onnx.load(path)` + `numpy_helper.to_array` of every initializer and Constant value.
Both report a checksum of what they produced; they must agree. `reader_meta` also reads every
array's meta and the layers (worked out on first access: not part of the target, reported so the
cost of the lazy part is visible). Writes results_small_tensors.json.
"""
from __future__ import annotations

import argparse
import datetime
import json
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _bench as B  # noqa: E402

HERE = Path(__file__).resolve().parent
FIXTURE = B.ROOT / "fixtures" / "onnx" / "ch_ppocr_mobile_v2.0_cls_infer.onnx"
CASES = ("initializers", "constants", "ppocr_cls")
MODES = ("reader_load", "reader_meta", "framework_load")


# ---------------------------------------------------------------------------------- building

def _tensors(n: int):
    import numpy as np

    rng = np.random.default_rng(0)
    for i in range(n):
        yield i, rng.standard_normal((16, 16) if i % 2 else (64,), dtype=np.float32)


def build(case: str, path: Path, n: int) -> None:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    if case == "initializers":
        inits = [numpy_helper.from_array(a, f"p{i}") for i, a in _tensors(n)]
        nodes = [helper.make_node("Identity", [f"p{i}"], [f"o{i}"], name=f"n{i}") for i in range(n)]
    else:
        inits = []
        nodes = [helper.make_node("Constant", [], [f"c{i}"], name=f"const{i}",
                                  value=numpy_helper.from_array(a, f"c{i}")) for i, a in _tensors(n)]
    out = "o0" if case == "initializers" else "c0"
    graph = helper.make_graph(nodes, case, [], [helper.make_tensor_value_info(out, TensorProto.FLOAT, None)],
                              initializer=inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))


def ensure_built(workdir: Path, n: int, rebuild: bool) -> dict[str, Path]:
    d = workdir / f"small_tensors_{n}"
    d.mkdir(parents=True, exist_ok=True)
    files = {"initializers": d / "initializers.onnx", "constants": d / "constants.onnx", "ppocr_cls": FIXTURE}
    for case in ("initializers", "constants"):
        if rebuild or not files[case].exists():
            out = B.run_child(sys.executable, __file__, "build", {"case": case, "path": str(files[case]), "n": n})
            if "error" in out:
                raise SystemExit(f"building {case} failed: {out['error']}")
    return files


# -------------------------------------------------------------------------------- measuring

def child_reader(spec: dict, meta: bool = False) -> dict:
    import numpy as np  # noqa: F401

    import converters

    B.import_converters_readers()  # imports are not the file's cost (nor are the framework's)
    meter = B.Meter()
    with meter:
        f = converters.read(spec["path"])
        arrays = [h.numpy() for h in f.values()]
        if meta:
            roles = [h.meta.get("role") for h in f.values()]
            layers = len(f.layers)
    out = meter.result(arrays=len(f), **({"roles": len(roles), "layers": layers} if meta else {}))
    out["count"], out["bytes"], out["checksum"] = B.checksum(arrays)
    return out


def child_framework(spec: dict) -> dict:
    import onnx
    from onnx import numpy_helper

    meter = B.Meter()
    with meter:
        model = onnx.load(spec["path"])
        arrays = [numpy_helper.to_array(t) for t in model.graph.initializer]
        arrays += [numpy_helper.to_array(a.t) for node in model.graph.node if node.op_type == "Constant"
                   for a in node.attribute if a.name == "value"]
    out = meter.result(arrays=len(arrays), onnx=onnx.__version__)
    out["count"], out["bytes"], out["checksum"] = B.checksum(arrays)
    return out


def child_main(mode: str, spec: dict) -> None:
    if mode == "build":
        build(spec["case"], Path(spec["path"]), spec["n"])
        B.emit({"built": spec["path"]})
    elif mode in ("reader_load", "reader_meta"):
        B.emit(child_reader(spec, meta=mode == "reader_meta"))
    elif mode == "framework_load":
        B.emit(child_framework(spec))
    else:
        raise SystemExit(f"unknown child mode {mode}")


def measure(path: Path, case: str, repeat: int) -> dict:
    runs: dict[str, list] = {m: [] for m in MODES}
    for r in range(repeat):
        for mode in MODES:  # interleaved, so machine load hits both sides alike
            B.warm_page_cache([path])
            res = B.run_child(sys.executable, __file__, mode, {"path": str(path)})
            runs[mode].append(res)
            status = res.get("error") or f"{res['time_s']:.3f} s"
            print(f"  {case:12s} {mode:15s} run {r + 1}: {status}", flush=True)
    return {m: B.best_of(v) for m, v in runs.items()}


def table(results: dict) -> str:
    head = ("case", "tensors", "file MB", "ours median s", "onnx median s", "ours/onnx", "runs", "same data",
            "ours + meta/layers s")
    rows = [head]
    for case, r in results["cases"].items():
        m, t = r["measurements"], r["targets"]
        rl, fl, rm = m["reader_load"], m["framework_load"], m.get("reader_meta", {})
        rows.append((case, rl.get("count", "-"), f"{r['file_bytes'] / B.MB:.1f}", B.fmt_s(rl.get("median_s")),
                     B.fmt_s(fl.get("median_s")),
                     f"{t['speed']['ours_over_framework_median']:.2f}x" if t else "error", rl.get("runs", 0),
                     "yes" if t and t["same_data"]["met"] else "NO", B.fmt_s(rm.get("median_s"))))
    return B.text_table(rows)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tensors", type=int, default=5000, help="tensors per generated file (default 5000)")
    p.add_argument("--workdir", type=Path, default=HERE / "work")
    p.add_argument("--out", type=Path, default=HERE / "results_small_tensors.json")
    p.add_argument("--repeat", type=int, default=5, help="runs per measurement; ratios use the median")
    p.add_argument("--rebuild", action="store_true")
    p.add_argument("--clean", action="store_true", help="delete the built files afterwards")
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--spec", help=argparse.SUPPRESS)
    # --size-mb is accepted (and ignored) so run_all.py and the smoke test can pass one option set
    p.add_argument("--size-mb", type=int, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        child_main(args.child, json.loads(args.spec))
        return 0
    files = ensure_built(args.workdir.resolve(), args.tensors, args.rebuild)
    results = {"benchmark": "small_tensors", "tensors": args.tensors, "repeat": args.repeat,
               "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"), "cases": {}}
    for case in CASES:
        m = measure(files[case], case, args.repeat)
        results["cases"][case] = {"path": str(files[case]), "file_bytes": files[case].stat().st_size,
                                  "measurements": m, "targets": B.reader_targets(m)}
    B.publish(results, table(results), args.out)
    if args.clean:
        shutil.rmtree(files["initializers"].parent, ignore_errors=True)
    failed = [(c, k) for c, r in results["cases"].items() for k, v in r["measurements"].items() if "error" in v]
    wrong = [c for c, r in results["cases"].items() if r["targets"] and not r["targets"]["same_data"]["met"]]
    for c, k in failed:
        print(f"ERROR {c} {k}: {results['cases'][c]['measurements'][k]['error']}", file=sys.stderr)
    for c in wrong:
        print(f"DIFFERENT DATA {c}: {results['cases'][c]['targets']['same_data']}", file=sys.stderr)
    return 1 if failed or wrong else 0


if __name__ == "__main__":
    sys.exit(main())
