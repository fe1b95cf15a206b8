#!/usr/bin/env python
"""Conversion benchmark: converters.convert on a ~1 GB TensorFlow checkpoint, against a file copy.

    .venv/bin/python benchmarks/bench_convert.py                 # 1024 MB model
    .venv/bin/python benchmarks/bench_convert.py --size-mb 32    # quick run

The source is a wide MLP (64 square dense layers, kernel + bias), `--source`:
  tensorflow  saved by TensorFlow itself with tf.train.Checkpoint(model=...).write(): a TF2 tensor
              bundle whose kernels are (in, out); the table sends every kernel through `tf_dense`
              (a transpose to PyTorch's (out, in)): the worst case, every byte is rearranged.
  mxnet       saved by mxnet itself (mx.nd.save, as Module.save_checkpoint writes): FullyConnected
              weights are (out, in) like nn.Linear's, so every tensor is copied unchanged (file to
              file): the common case for Caffe, MXNet, ONNX and PyTorch sources.
into an nn.Sequential of nn.Linear. Each run is a fresh process:

  copy            shutil.copyfile of the checkpoint's data shard (the same bytes), the yardstick
  copy_fsync      the same followed by fsync (convert fsyncs its output before renaming it)
  to_pth          converters.convert(src, table, out=model.pth)           (streamed, fsynced, source hashed)
  to_safetensors  converters.convert(src, table, out=model.safetensors)   (streamed, fsynced, source hashed)
  *_nofsync       the same with fsync=False (compare with copy: neither flushes to disk)
  *_nohash        fsync=False and hash_source=False: the conversion's own work, no provenance sha256
  state_dict      converters.convert(src, table_without_target)  -> dict of tensors in memory
  module          converters.convert(src, table)                 -> the filled nn.Module
  sha256, transpose   diagnostics: the provenance hash of the source, and the transposes alone

Every output is checked against the source (kernels transposed) after its run. The source stays
in the page cache (read again before every run); dirty pages are flushed (os.sync) before every run.
Results go to stdout and benchmarks/results_convert.json (or --out).
"""
from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _bench as B  # noqa: E402

try:
    import torch  # named by wide_mlp's return annotation, which the target policy resolves
except ImportError:  # the mxnet environment, which only builds the mxnet source
    torch = None

HERE = Path(__file__).resolve().parent
N_LAYERS = 64
WARM_MB = 4  # the model each child converts first, untimed: the process's one-time costs (see child_main)


def width_for(size_mb: int) -> int:
    """Width of the square layers so that N_LAYERS kernels hold about size_mb."""
    return max(4, int(math.isqrt(size_mb * B.MB // N_LAYERS // 4)))


def wide_mlp(layers: int, width: int) -> torch.nn.Sequential:
    """The target model: `layers` nn.Linear(width, width) in an nn.Sequential ('0.weight', ...).
    Declared to return a Module: converters.target_policy refuses undeclared factories."""
    return torch.nn.Sequential(*[torch.nn.Linear(width, width) for _ in range(layers)])


SOURCES = ("tensorflow", "mxnet")
# source: (rule pattern of a weight, of a bias, the weight's transforms, a weight's key, a bias's key)
NAMES = {
    "tensorflow": ("model/layers/(?P<n>\\d+)/kernel/\\.ATTRIBUTES/VARIABLE_VALUE",
                   "model/layers/(?P<n>\\d+)/bias/\\.ATTRIBUTES/VARIABLE_VALUE", "[tf_dense]",
                   "model/layers/{i}/kernel/.ATTRIBUTES/VARIABLE_VALUE",
                   "model/layers/{i}/bias/.ATTRIBUTES/VARIABLE_VALUE"),
    # the reader drops mxnet's arg: prefix
    "mxnet": ("fc(?P<n>\\d+)_weight", "fc(?P<n>\\d+)_bias", "[]", "fc{i}_weight", "fc{i}_bias"),
}


def paths(workdir: Path, size_mb: int, source: str = "tensorflow") -> dict[str, Path]:
    d = workdir / (f"convert_{size_mb}mb" if source == "tensorflow" else f"convert_{size_mb}mb_{source}")
    src = d / "tf" / "mlp" if source == "tensorflow" else d / "mlp-0000.params"
    return {"dir": d, "ckpt": src, "table": d / "mlp.yaml", "table_sd": d / "mlp_state_dict.yaml",
            "out": d / "out", "source": source}


def table_text(size_mb: int, with_target: bool, source: str = "tensorflow") -> str:
    kwargs = f"{{layers: {N_LAYERS}, width: {width_for(size_mb)}}}"
    target = (f"target: {{model: 'bench_convert:wide_mlp', kwargs: {kwargs}}}\n"
              if with_target else "")
    weight, bias, transforms, *_ = NAMES[source]
    why = ("TF dense kernels are (in, out); nn.Linear weights are (out, in), hence tf_dense on every kernel"
           if source == "tensorflow" else "MXNet FullyConnected weights are (out, in) like nn.Linear's: no transform")
    return f"""\
description: benchmark - wide MLP from {source} ({N_LAYERS} dense layers) -> nn.Sequential of nn.Linear
notes: >
  Written by benchmarks/bench_convert.py. {why}. Biases need no change.
source: {source}
{target}rules:
  - from: '{weight}'
    to: '{{n}}.weight'
    transforms: {transforms}
  - from: '{bias}'
    to: '{{n}}.bias'
"""


# ----------------------------------------------------------------------------------- building

def build_source(prefix: Path, size_mb: int) -> None:
    """The wide MLP as tf.Modules holding tf.Variables, written by tf.train.Checkpoint."""
    import numpy as np
    import tensorflow as tf

    width = width_for(size_mb)

    class Dense(tf.Module):
        def __init__(self, kernel, bias):
            super().__init__()
            self.kernel = tf.Variable(kernel, name="kernel")
            self.bias = tf.Variable(bias, name="bias")

    class MLP(tf.Module):
        def __init__(self):
            super().__init__()
            self.layers = []
            for i in range(N_LAYERS):
                rng = np.random.default_rng(i)
                self.layers.append(Dense(rng.standard_normal((width, width), dtype=np.float32),
                                         rng.standard_normal((width,), dtype=np.float32)))

    prefix.parent.mkdir(parents=True, exist_ok=True)
    tf.train.Checkpoint(model=MLP()).write(str(prefix))


def build_mxnet_source(path: Path, size_mb: int) -> None:
    """The same MLP's arrays as mxnet saves them: (out, in) weights, `arg:` names (same seeds)."""
    import mxnet as mx
    import numpy as np

    width = width_for(size_mb)
    arrays = {}
    for i in range(N_LAYERS):
        rng = np.random.default_rng(i)
        arrays[f"arg:fc{i}_weight"] = mx.nd.array(rng.standard_normal((width, width), dtype=np.float32))
        arrays[f"arg:fc{i}_bias"] = mx.nd.array(rng.standard_normal((width,), dtype=np.float32))
    path.parent.mkdir(parents=True, exist_ok=True)
    mx.nd.save(str(path), arrays)


def ensure_built(p: dict, size_mb: int, rebuild: bool) -> None:
    p["dir"].mkdir(parents=True, exist_ok=True)
    p["out"].mkdir(exist_ok=True)
    p["table"].write_text(table_text(size_mb, True, p["source"]))
    p["table_sd"].write_text(table_text(size_mb, False, p["source"]))
    stamp = p["dir"] / "source.built"
    stamp_text = json.dumps({"layers": N_LAYERS, "width": width_for(size_mb)})
    if not rebuild and stamp.exists() and stamp.read_text() == stamp_text:
        return
    for old in source_files(p):
        old.unlink()
    t0 = time.perf_counter()
    python = B.MXNET_PY if p["source"] == "mxnet" else sys.executable
    out = B.run_child(python, __file__, "build", {"prefix": str(p["ckpt"]), "size_mb": size_mb, "source": p["source"]})
    if "error" in out:
        raise SystemExit(f"building the {p['source']} source failed: {out['error']}")
    stamp.write_text(stamp_text)
    print(f"built the source: {sum(f.stat().st_size for f in source_files(p)) / B.MB:,.0f} MB "
          f"in {time.perf_counter() - t0:.1f} s", flush=True)


def source_files(p: dict) -> list[Path]:
    if p["source"] == "mxnet":
        return [p["ckpt"]] if p["ckpt"].exists() else []
    return sorted(p["ckpt"].parent.glob(p["ckpt"].name + ".*"))


def data_shard(p: dict) -> Path:
    """The file holding the arrays' bytes: what the page-cache copy copies."""
    return next(f for f in source_files(p) if p["source"] == "mxnet" or ".data-" in f.name)


# ------------------------------------------------------------------------------ child: measuring

def verify(result, src_path: str, layers: int, source: str = "tensorflow") -> dict:
    """Compare the first and last layer of a conversion result with the source (TF kernels transposed)."""
    import numpy as np
    import torch

    import converters

    src = converters.read(src_path)
    *_, weight_key, bias_key = NAMES[source]
    checked = 0
    for i in sorted({0, layers - 1}):
        kernel = src[weight_key.format(i=i)].numpy()
        bias = src[bias_key.format(i=i)].numpy()
        expected = kernel.T if source == "tensorflow" else kernel
        w, b = result(f"{i}.weight"), result(f"{i}.bias")
        if not (np.array_equal(np.asarray(w), expected) and np.array_equal(np.asarray(b), bias)):
            return {"verified": False, "verify_error": f"layer {i} differs from the source"}
        checked += 1
    del torch
    return {"verified": True, "verified_layers": checked}


def conversion(mode: str, spec: dict):
    """(kind, table, output path or None, convert options) of a conversion mode."""
    table = spec["table_sd"] if mode == "state_dict" else spec["table"]
    kind = mode.removesuffix("_nofsync").removesuffix("_nohash")
    out = {"to_pth": "model.pth", "to_safetensors": "model.safetensors"}.get(kind)
    options = {}
    if mode.endswith(("_nofsync", "_nohash")):
        options["fsync"] = False
    if mode.endswith("_nohash"):
        options["hash_source"] = False
    return kind, table, os.path.join(spec["outdir"], out) if out else None, options


def child_main(mode: str, spec: dict) -> None:
    if mode == "build":
        build = build_mxnet_source if spec.get("source") == "mxnet" else build_source
        build(Path(spec["prefix"]), spec["size_mb"])
        B.emit({"built": spec["prefix"]})
        return
    if mode in ("copy", "copy_fsync"):
        meter = B.Meter()
        with meter:
            shutil.copyfile(spec["shard"], spec["out"])
            if mode == "copy_fsync":
                with open(spec["out"], "rb+") as fh:
                    os.fsync(fh.fileno())
        res = meter.result(bytes=os.path.getsize(spec["out"]))
        os.unlink(spec["out"])
        B.emit(res)
        return
    if mode == "sha256":
        from converters.provenance import sha256_files

        meter = B.Meter()
        with meter:
            sha256_files([spec["shard"]])
        B.emit(meter.result())
        return

    import numpy as np
    import torch  # noqa: F401

    import converters
    from converters.convert import convert  # a lazy attribute of the package: imported here, not timed
    from converters.mapping import materialise
    from converters.mapping import spec as mapping_spec

    B.import_converters_readers()  # imports are not the file's cost (nor are the framework's)
    materialise.opencv()  # nor the library the writer's transposes load on first use
    import bench_convert  # noqa: F401  the table's target module, imported before the baseline

    wide_mlp(1, 4)
    if mode == "transpose":
        meter = B.Meter()
        with meter:
            src = converters.read(spec["src"])
            for h in src.values():
                v = h.numpy(copy=False)
                np.ascontiguousarray(v.T if v.ndim == 2 else v)
        B.emit(meter.result())
        return
    kind, table, out_path, options = conversion(mode, spec)
    mapping_spec.load(table)  # the YAML machinery imported before the baseline, the table itself read again
    # One conversion of a 4 MB model of the same kind first: what a process pays once (code paged
    # in on first use, the writer's threads, OpenCV's first call) is not the file's cost, as
    # imports are not; the measured conversion is the process's second.
    _, warm_table, warm_out, _ = conversion(mode, spec["warm"])
    convert(spec["warm"]["src"], warm_table, out=warm_out, force=True, **options)
    if warm_out:
        os.unlink(warm_out)
    meter = B.Meter()
    with meter:
        result, report = convert(spec["src"], table, out=out_path, force=True, **options)
    src = converters.read(spec["src"])
    res = meter.result(model_bytes=src.nbytes, largest_tensor=max(h.nbytes for h in src.values()))
    if kind == "to_pth":
        res["output_bytes"] = os.path.getsize(out_path)
        sd = torch.load(out_path, mmap=True, weights_only=True)
        res.update(verify(lambda k: sd[k].numpy(), spec["src"], spec["layers"], spec["source"]))
        del sd
        os.unlink(out_path)
    elif kind == "to_safetensors":
        from safetensors import safe_open

        res["output_bytes"] = os.path.getsize(out_path)
        with safe_open(out_path, "np") as fh:
            res.update(verify(fh.get_tensor, spec["src"], spec["layers"], spec["source"]))
        os.unlink(out_path)
    elif mode == "state_dict":
        res.update(verify(lambda k: result[k].numpy(), spec["src"], spec["layers"], spec["source"]))
    else:
        params = result.state_dict()
        res.update(verify(lambda k: params[k].numpy(), spec["src"], spec["layers"], spec["source"]))
    B.emit(res)


# ----------------------------------------------------------------------------- parent: running

WRITES = ("to_pth", "to_safetensors", "to_pth_nofsync", "to_safetensors_nofsync", "to_pth_nohash",
          "to_safetensors_nohash")
MODES = ("copy", "copy_fsync", *WRITES, "state_dict", "module", "sha256", "transpose")
TIME_TARGET = 1.5  # x the page-cache copy (issue #12)
MEMORY_TARGET = 1.1  # x the largest tensor, over the interpreter's baseline
SLOW_RUN_S = 60.0


def run_all(p: dict, size_mb: int, repeat: int, modes=MODES) -> dict:
    shard = data_shard(p)
    warm = p["warm"]
    spec = {"src": str(p["ckpt"]), "table": str(p["table"]), "table_sd": str(p["table_sd"]),
            "outdir": str(p["out"]), "shard": str(shard), "out": str(p["out"] / "copy.bin"), "layers": N_LAYERS,
            "source": p["source"], "warm": {"src": str(warm["ckpt"]), "table": str(warm["table"]),
                                            "table_sd": str(warm["table_sd"]), "outdir": str(warm["out"])}}
    B.warm_page_cache(source_files(p))
    shutil.copyfile(shard, p["out"] / "copy.bin")  # once, untimed: warm the cache for both sides
    os.unlink(p["out"] / "copy.bin")
    runs: dict[str, list] = {m: [] for m in MODES}
    for r in range(repeat):
        for mode in modes:
            done = runs[mode]
            if r >= 2 and done and min(x.get("time_s", 1e9) for x in done) > SLOW_RUN_S:
                continue
            B.warm_page_cache(source_files(p))  # the machine may evict page cache between runs
            os.sync()  # nobody's dirty pages are flushed inside a timed run
            res = B.run_child(sys.executable, __file__, mode, spec)
            done.append(res)
            status = res.get("error") or f"{res['time_s']:.3f} s, peak +{B.fmt_mb(res['delta_rss'])} MB"
            if res.get("verified") is False:
                status += f"  WRONG OUTPUT: {res.get('verify_error')}"
            print(f"  {mode:15s} run {r + 1}: {status}", flush=True)
    return {m: B.best_of(v) for m, v in runs.items()}


def _median(r):
    return r.get("median_s", r.get("time_s"))


def evaluate(m: dict) -> dict:
    """Times are medians; a write that fsyncs is compared with copy + fsync, one that does not with
    the page-cache copy. Memory: peak ΔRSS (all resident pages) and the anonymous peak against the
    largest tensor + 10%."""
    out = {}
    copy, copy_fsync = m["copy"], m["copy_fsync"]
    any_conv = next((m[k] for k in (*WRITES, "state_dict", "module") if "error" not in m[k]), None)
    if any_conv is None or "error" in copy:
        return out
    largest = any_conv["largest_tensor"]
    for mode in WRITES:
        r = m[mode]
        if "error" in r:
            continue
        fsyncs = mode in ("to_pth", "to_safetensors")
        base = copy_fsync if fsyncs and "error" not in copy_fsync else copy
        ratio = _median(r) / _median(base)
        out[f"{mode}_time"] = {"ratio": ratio, "baseline": "copy_fsync" if base is copy_fsync else "copy",
                               "ratio_over_copy": _median(r) / _median(copy),
                               "required_at_most": TIME_TARGET, "met": ratio <= TIME_TARGET}
        limit = MEMORY_TARGET * largest
        out[f"{mode}_memory"] = {"delta_rss": r["delta_rss"], "limit": int(limit), "met": r["delta_rss"] <= limit,
                                 "ratio_over_largest": r["delta_rss"] / largest,
                                 "ratio_over_model": r["delta_rss"] / r["model_bytes"],
                                 "anon_peak_delta": r["anon_peak_delta"], "anon_met": r["anon_peak_delta"] <= limit}
    for mode in (*WRITES, "state_dict", "module"):
        if m[mode].get("verified") is False:
            out[f"{mode}_correct"] = {"met": False, "error": m[mode].get("verify_error")}
        elif "verified" in m[mode]:
            out[f"{mode}_correct"] = {"met": True}
    return out


def table(results: dict) -> str:
    m = results["measurements"]
    copy_t, sync_t = _median(m["copy"]), _median(m["copy_fsync"])
    head = ("step", "median s", "x copy", "x copy+fsync", "peak ΔRSS MB", "x largest", "anon peak MB", "target", "met")
    rows = [head]
    targets = results["targets"]
    largest = next((r["largest_tensor"] for r in m.values() if "largest_tensor" in r), None)
    for mode in MODES:
        r = m[mode]
        if "error" in r:
            rows.append((mode, "not run" if r["error"] == "not run" else "error", "", "", "", "", "", "", ""))
            continue
        t = _median(r)
        goal, met = "", ""
        if f"{mode}_time" in targets:
            tt, mt = targets[f"{mode}_time"], targets[f"{mode}_memory"]
            goal = f"≤{TIME_TARGET:g}x {tt['baseline'].replace('_', '+')}, ≤{MEMORY_TARGET:g}x largest"
            met = f"time {'yes' if tt['met'] else 'NO'}, RSS {'yes' if mt['met'] else 'NO'} " \
                  f"(anon {'yes' if mt['anon_met'] else 'NO'})"
        rows.append((mode, B.fmt_s(t), f"{t / copy_t:.1f}" if copy_t else "-", f"{t / sync_t:.1f}" if sync_t else "-",
                     B.fmt_mb(r["delta_rss"]), f"{r['delta_rss'] / largest:.2f}" if largest else "-",
                     B.fmt_mb(r.get("anon_peak_delta")), goal, met))
    return B.text_table(rows)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--size-mb", type=int, default=1024, help="model size in MB (default 1024)")
    p.add_argument("--source", choices=SOURCES, default="tensorflow",
                   help="tensorflow: every kernel transposed (default); mxnet: every tensor copied unchanged")
    p.add_argument("--workdir", type=Path, default=HERE / "work")
    p.add_argument("--out", type=Path, default=HERE / "results_convert.json")
    p.add_argument("--repeat", type=int, default=3, help="runs per measurement; the best time is kept")
    p.add_argument("--modes", default=",".join(MODES), help="comma-separated subset of " + ",".join(MODES))
    p.add_argument("--rebuild", action="store_true")
    p.add_argument("--clean", action="store_true", help="delete the built files afterwards")
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--spec", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        child_main(args.child, json.loads(args.spec))
        return 0
    files = paths(args.workdir.resolve(), args.size_mb, args.source)
    ensure_built(files, args.size_mb, args.rebuild)
    files["warm"] = paths(args.workdir.resolve(), WARM_MB, args.source)
    ensure_built(files["warm"], WARM_MB, args.rebuild)
    modes = [x for x in args.modes.split(",") if x]
    if set(modes) - set(MODES) or "copy" not in modes:
        p.error(f"--modes: a subset of {','.join(MODES)} that includes copy")
    m = run_all(files, args.size_mb, args.repeat, modes)
    model = next((r["model_bytes"] for r in m.values() if "model_bytes" in r), None)
    results = {"benchmark": "convert", "size_mb": args.size_mb, "repeat": args.repeat,
               "model": {"layers": N_LAYERS, "width": width_for(args.size_mb), "dtype": "float32",
                         "source": "TF2 checkpoint (tf.train.Checkpoint.write)" if args.source == "tensorflow"
                         else "mxnet .params (mx.nd.save)",
                         "transform": "tf_dense on kernels" if args.source == "tensorflow" else "none"},
               "model_bytes": model, "source_shard_bytes": data_shard(files).stat().st_size,
               "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
               "page_cache": "source warm (read just before every run); os.sync() before every run",
               "warm_up": f"each child first converts a {WARM_MB} MB model of the same kind, untimed",
               "measurements": m}
    results["targets"] = evaluate(m)
    if model:
        text = table(results)
        results["table"] = text
        print()
        print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1) + "\n")
    print(f"\nwrote {args.out}")
    if args.clean:
        shutil.rmtree(files["dir"], ignore_errors=True)
    failed = [k for k, v in m.items() if "error" in v and k in modes]
    wrong = [k for k, v in results["targets"].items() if k.endswith("_correct") and not v["met"]]
    for k in failed:
        print(f"ERROR {k}: {m[k]['error']}", file=sys.stderr)
    for k in wrong:
        print(f"WRONG OUTPUT {k}: {results['targets'][k]['error']}", file=sys.stderr)
    return 1 if failed or wrong else 0


if __name__ == "__main__":
    sys.exit(main())
