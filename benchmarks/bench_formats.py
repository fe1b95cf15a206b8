#!/usr/bin/env python
"""The readers bench_readers.py does not cover, and the many-small-tensor case for every format:
converters.read + materialise against each format's own loader, in-process, in fresh children.

    .venv/bin/python benchmarks/bench_formats.py                          # 128 MB + 5,000 tensors
    .venv/bin/python benchmarks/bench_formats.py --size-mb 1024 --layouts large --formats torch,npz

Layouts (the same arrays for every format):
  large   --size-mb spread over 64 float32 matrices and 8 vectors (bench_readers.layout)
  many    --tensors float32 arrays, alternately 16x16 and 64 (a model zoo's small-layer case)

Formats and the baseline each is compared with, every file written by the real library:
  keras_h5     Keras 3 `save_weights` of a Sequential of Dense layers (.weights.h5) | h5py, every dataset read
  torch        torch.save of a state dict                  | torch.load(weights_only=True)
  safetensors  safetensors.numpy.save_file                 | safetensors.numpy.load_file
  npz          numpy.savez                                 | numpy.load, every member read
  caffe, tensorflow, mxnet  (many layout only; large is bench_readers.py's) | bench_readers.py's baselines

Both sides report a checksum of what they produced (count, bytes, sum of words); they must agree.
Writes results_formats.json; prints median ours / baseline per case (target: <= 1.0).
"""
from __future__ import annotations

import argparse
import datetime
import json
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _bench as B  # noqa: E402
import bench_readers as R  # noqa: E402  (layout, builders and baselines for caffe / tensorflow / mxnet)

HERE = Path(__file__).resolve().parent
OWN_FORMATS = ("keras_h5", "torch", "safetensors", "npz")
PROTO_FORMATS = ("caffe", "tensorflow", "mxnet")
FORMATS = OWN_FORMATS + PROTO_FORMATS
LAYOUTS = ("large", "many")
MODES = ("reader_load", "framework_load")
SUFFIX = {"keras_h5": "model.weights.h5", "torch": "model.pt", "safetensors": "model.safetensors", "npz": "model.npz",
          "caffe": "model.caffemodel", "tensorflow": "tf/ckpt", "mxnet": "model.params"}


def arrays_of(layout: str, size_mb: int, n: int) -> list[tuple[str, tuple, int]]:
    if layout == "large":
        return R.layout(size_mb)
    # weight / bias pairs, so the Caffe builder makes one InnerProduct layer per pair
    return [(f"l{i // 2}_bias", (64,), i) if i % 2 else (f"l{i // 2}_weight", (16, 16), i) for i in range(n)]


# ---------------------------------------------------------------------------------- building

def build_keras_h5(path: Path, layout: str, size_mb: int, n: int) -> None:
    """Dense layers of square kernels: `large` has 64 of width sqrt(size/64/4), `many` n/2 of 16;
    side by side on one input (a chain of thousands of layers exceeds Keras' recursion limit)."""
    import keras
    import numpy as np

    if layout == "large":
        layers, width = 64, int(math.sqrt(size_mb * B.MB / 64 / 4))
    else:
        layers, width = n // 2, 16
    x = keras.Input((width,))
    model = keras.Model(x, [keras.layers.Dense(width, name=f"d{i}")(x) for i in range(layers)])
    rng = np.random.default_rng(0)
    model.set_weights([rng.standard_normal(w.shape, dtype=np.float32) for w in model.weights])
    model.save_weights(str(path))


def build_torch(path: Path, arrays) -> None:
    import torch

    torch.save({name: torch.from_numpy(R.make_array(shape, seed)) for name, shape, seed in arrays}, str(path))


def build_safetensors(path: Path, arrays) -> None:
    from safetensors.numpy import save_file

    save_file({name: R.make_array(shape, seed) for name, shape, seed in arrays}, str(path))


def build_npz(path: Path, arrays) -> None:
    import numpy as np

    np.savez(str(path), **{name: R.make_array(shape, seed) for name, shape, seed in arrays})


def build(fmt: str, path: Path, layout: str, size_mb: int, n: int) -> None:
    arrays = arrays_of(layout, size_mb, n)
    if fmt == "keras_h5":
        build_keras_h5(path, layout, size_mb, n)
    elif fmt in PROTO_FORMATS:
        R.BUILDERS[fmt](path, arrays)
    else:
        {"torch": build_torch, "safetensors": build_safetensors, "npz": build_npz}[fmt](path, arrays)


def ensure_built(workdir: Path, fmt: str, layouts, size_mb: int, n: int, rebuild: bool) -> dict[str, Path]:
    """{layout: path} of a format's files; the missing ones built in one child (its framework
    imported once: Keras and torch take seconds to import, longer than a small file takes to write)."""
    paths, todo = {}, []
    for layout in layouts:
        tag = f"{size_mb}mb" if layout == "large" else f"{n}tensors"
        paths[layout] = path = workdir / f"formats_{layout}_{tag}" / fmt / SUFFIX[fmt]
        if rebuild or not (path.parent / ".built").exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            todo.append({"path": str(path), "layout": layout})
    if todo:
        py = B.MXNET_PY if fmt == "mxnet" else sys.executable
        out = B.run_child(py, __file__, "build", {"format": fmt, "files": todo, "size_mb": size_mb, "n": n})
        if "error" in out:
            raise SystemExit(f"building {fmt} ({', '.join(t['layout'] for t in todo)}) failed: {out['error']}")
        for t in todo:
            (Path(t["path"]).parent / ".built").write_text("built\n")
    return paths


# -------------------------------------------------------------------------------- measuring

def child_framework(spec: dict) -> dict:
    fmt, path = spec["format"], spec["path"]
    if fmt in PROTO_FORMATS:
        return R.child_framework(spec, load=True)
    import numpy as np

    if fmt == "keras_h5":
        import h5py

        meter = B.Meter()
        with meter:
            arrays = []
            with h5py.File(path, "r") as fh:
                fh.visititems(lambda _name, obj: arrays.append(obj[()]) if isinstance(obj, h5py.Dataset) else None)
    elif fmt == "torch":
        import torch

        meter = B.Meter()
        with meter:
            arrays = [t.numpy() for t in torch.load(path, weights_only=True).values()]
    elif fmt == "safetensors":
        from safetensors.numpy import load_file

        meter = B.Meter()
        with meter:
            arrays = list(load_file(path).values())
    else:
        meter = B.Meter()
        with meter:
            with np.load(path) as z:
                arrays = [z[k] for k in z.files]
    out = meter.result()
    out["count"], out["bytes"], out["checksum"] = B.checksum(arrays)
    return out


def child_main(mode: str, spec: dict) -> None:
    if mode == "build":
        for f in spec["files"]:
            build(spec["format"], Path(f["path"]), f["layout"], spec["size_mb"], spec["n"])
        B.emit({"built": [f["path"] for f in spec["files"]]})
    elif mode == "reader_load":
        # the library a reader needs is imported before timing, as the baselines' imports are
        __import__({"keras_h5": "h5py", "torch": "torch"}.get(spec["format"], "numpy"))
        B.emit(R.child_reader(spec, load=True))
    elif mode == "framework_load":
        B.emit(child_framework(spec))
    else:
        raise SystemExit(f"unknown child mode {mode}")


def measure(fmt: str, path: Path, workdir: Path, repeat: int, label: str) -> dict:
    runs: dict[str, list] = {m: [] for m in MODES}
    files = R.data_files(fmt, path) if fmt in PROTO_FORMATS else [path]
    for r in range(repeat):
        for mode in MODES:  # interleaved, each from a warm page cache, so both sides start alike
            B.warm_page_cache(files)
            py = B.MXNET_PY if fmt == "mxnet" and mode == "framework_load" else sys.executable
            res = B.run_child(py, __file__, mode, {"format": fmt, "path": str(path), "workdir": str(workdir)})
            runs[mode].append(res)
            status = res.get("error") or f"{res['time_s']:.3f} s"
            print(f"  {label:22s} {mode:15s} run {r + 1}: {status}", flush=True)
    return {m: B.best_of(v) for m, v in runs.items()}


def table(results: dict) -> str:
    rows = [("format", "layout", "tensors", "file MB", "ours median s", "baseline median s", "ours/baseline",
             "runs", "same data")]
    for r in results["cases"].values():
        m, t = r["measurements"], r["targets"]
        rl, fl = m["reader_load"], m["framework_load"]
        x = t["speed"]["ours_over_framework_median"] if t else None
        rows.append((r["format"], r["layout"], rl.get("count", "-"), f"{r['file_bytes'] / B.MB:,.1f}",
                     B.fmt_s(rl.get("median_s")), B.fmt_s(fl.get("median_s")),
                     "error" if x is None else f"{x:.2f}" + ("" if x <= 1 else " (missed)"), rl.get("runs", 0),
                     "yes" if t and t["same_data"]["met"] else "NO"))
    return B.text_table(rows)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--formats", default=",".join(FORMATS))
    p.add_argument("--layouts", default=",".join(LAYOUTS))
    p.add_argument("--size-mb", type=int, default=128, help="size of the `large` layout")
    p.add_argument("--tensors", type=int, default=5000, help="tensors in the `many` layout")
    p.add_argument("--repeat", type=int, default=5, help="runs per measurement; ratios use the median")
    p.add_argument("--workdir", type=Path, default=HERE / "work")
    p.add_argument("--out", type=Path, default=HERE / "results_formats.json")
    p.add_argument("--rebuild", action="store_true")
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--spec", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        child_main(args.child, json.loads(args.spec))
        return 0
    formats = [f for f in args.formats.split(",") if f]
    layouts = [x for x in args.layouts.split(",") if x]
    if set(formats) - set(FORMATS) or set(layouts) - set(LAYOUTS):
        p.error(f"--formats: a subset of {','.join(FORMATS)}; --layouts: of {','.join(LAYOUTS)}")
    workdir = args.workdir.resolve()
    results = {"benchmark": "formats", "size_mb": args.size_mb, "tensors": args.tensors, "repeat": args.repeat,
               "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"), "cases": {}}
    if "caffe" in formats:
        R.caffe_pb2(workdir)  # compiled once, out of process
    cases = [(layout, fmt) for layout in layouts for fmt in formats
             if not (fmt in PROTO_FORMATS and layout == "large")]  # bench_readers.py measures these
    if "mxnet" in formats and not B.MXNET_PY.exists():
        print("  mxnet: no .venv-mxnet, skipped", flush=True)
        cases = [c for c in cases if c[1] != "mxnet"]
    built = {fmt: ensure_built(workdir, fmt, [lay for lay, f in cases if f == fmt], args.size_mb, args.tensors,
                               args.rebuild) for fmt in dict.fromkeys(f for _, f in cases)}
    for layout, fmt in cases:
        path = built[fmt][layout]
        label = f"{fmt} {layout}"
        m = measure(fmt, path, workdir, args.repeat, label)
        files = R.data_files(fmt, path) if fmt in PROTO_FORMATS else [path]
        results["cases"][label] = {"format": fmt, "layout": layout, "path": str(path),
                                   "file_bytes": sum(f.stat().st_size for f in files),
                                   "measurements": m, "targets": B.reader_targets(m)}
    B.publish(results, table(results), args.out)
    bad = [k for k, r in results["cases"].items() if not r["targets"] or not r["targets"]["same_data"]["met"]]
    for k in bad:
        print(f"ERROR or DIFFERENT DATA: {k}: {results['cases'][k]['measurements']}", file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
