#!/usr/bin/env python
"""Every benchmark in one run, and the ratios the issue's targets are stated in.

    .venv/bin/python benchmarks/run_all.py --size-mb 256            # readers, conversion, small tensors
    .venv/bin/python benchmarks/run_all.py --size-mb 256 --scaling 256,1024,4096
    .venv/bin/python benchmarks/run_all.py --size-mb 1024 --memlimit

Runs bench_readers.py, bench_formats.py, bench_convert.py, bench_small_tensors.py and bench_cli.py (and, when asked,
bench_convert.py at each --scaling size and bench_memlimit.py) one after the other with the same
--repeat (default 5), then summarises their JSON files with **medians**:

  readers        ours / framework (median read + materialise time), per format; < 1.0 is faster
  formats        ours / the format's own loader for Keras .h5, torch, safetensors, .npz (large
                 and 5,000-tensor files) and for Caffe / TF / MXNet with 5,000 tensors
  small tensors  ours / onnx, per many-small-tensor ONNX file
  conversion     ours / page-cache copy (shutil.copyfile of the same bytes), .safetensors and .pth,
                 for a TF checkpoint whose every kernel is transposed (`convert`) and an mxnet file
                 whose every tensor is copied unchanged (`convert_unchanged`); the target is judged
                 on the conversion's own work (no fsync, no source sha256: the copy does neither);
                 the defaults (fsync, sha256) are listed beside it, fsync against copy + fsync
  cli            `weightport --help` / `inspect` on small files, seconds beyond Python's start-up
  scaling        time and peak RSS of copy / .safetensors / .pth per model size
  memlimit       a conversion run inside a memory cgroup smaller than the checkpoint

The summary goes to stdout (markdown tables) and to results_all.json (or --out).
"""
from __future__ import annotations

import argparse
import datetime
import json
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _bench as B  # noqa: E402

HERE = Path(__file__).resolve().parent
BENCHMARKS = ("readers", "formats", "convert", "convert_unchanged", "small_tensors", "cli")


def run(script: str, args: list[str]) -> int:
    cmd = [sys.executable, str(HERE / script), *args]
    print(f"\n$ {' '.join(cmd[1:])}", flush=True)
    return subprocess.run(cmd, cwd=B.ROOT).returncode


def ratio(a, b):
    return a / b if a is not None and b else None


def readers_rows(data: dict) -> list[tuple]:
    rows = []
    for fmt, r in data["formats"].items():
        m = r["measurements"]
        ours, fw = m["reader_load"].get("median_s"), m["framework_load"].get("median_s")
        need = 0.2 if fmt == "caffe" else 1.0  # Caffe: at least 5x faster than protobuf parsing
        x = ratio(ours, fw)
        rows.append((f"read {fmt}", f"{r['file_bytes'] / B.MB:,.0f} MB", ours, fw, x, need,
                     m["reader_load"].get("runs"), r["targets"].get("same_data", {}).get("met")))
        views = m.get("reader_view", {})
        if "error" not in views and views.get("median_s"):
            rows.append((f"read {fmt}, zero-copy views (`numpy(copy=False)`, pages touched)",
                         f"{r['file_bytes'] / B.MB:,.0f} MB", views["median_s"], fw, ratio(views["median_s"], fw),
                         need, views.get("runs"), r["targets"].get("same_data_views", {}).get("met")))
    return rows


def formats_rows(data: dict) -> list[tuple]:
    rows = []
    for case, r in data["cases"].items():
        m = r["measurements"]
        ours, fw = m["reader_load"].get("median_s"), m["framework_load"].get("median_s")
        rows.append((f"read {case} ({m['reader_load'].get('count', '?')} tensors)", f"{r['file_bytes'] / B.MB:,.1f} MB",
                     ours, fw, ratio(ours, fw), 1.0, m["reader_load"].get("runs"),
                     (r["targets"] or {}).get("same_data", {}).get("met")))
    return rows


def small_rows(data: dict) -> list[tuple]:
    rows = []
    for case, r in data["cases"].items():
        m = r["measurements"]
        ours, fw = m["reader_load"].get("median_s"), m["framework_load"].get("median_s")
        rows.append((f"read onnx {case} ({m['reader_load'].get('count', '?')} tensors)",
                     f"{r['file_bytes'] / B.MB:,.1f} MB", ours, fw, ratio(ours, fw), 1.0,
                     m["reader_load"].get("runs"), r["targets"].get("same_data", {}).get("met")))
    return rows


CONVERT_ROWS = (  # (mode, what it adds to the conversion's own work, baseline, target)
    ("to_safetensors_nohash", "", "copy", 1.5),
    ("to_pth_nohash", "", "copy", None),
    ("to_safetensors_nofsync", " + source sha256", "copy", None),
    ("to_safetensors", " + sha256 + fsync (default)", "copy_fsync", None),
    ("to_pth", " + sha256 + fsync (default)", "copy_fsync", None),
)


def convert_rows(data: dict) -> list[tuple]:
    m = data["measurements"]
    what = "unchanged" if data.get("model", {}).get("transform") == "none" else "transposed"
    rows = []
    for mode, extra, base, need in CONVERT_ROWS:
        if "error" in m.get(mode, {"error": "not run"}) or "error" in m[base]:
            continue
        ours, copy = m[mode].get("median_s"), m[base].get("median_s")
        size = f"{data['model_bytes'] / B.MB:,.0f} MB"
        name = f"convert {mode[3:].split('_')[0]} ({what}){extra}"
        name += " vs copy + fsync" if base == "copy_fsync" else ""
        rows.append((name, size, ours, copy, ratio(ours, copy), need, m[mode].get("runs"), m[mode].get("verified")))
    return rows


def ratio_table(rows: list[tuple]) -> str:
    head = "| step | size | ours median s | baseline median s | ours / baseline | target | runs | same data |"
    lines = [head, "|" + "---|" * 8]
    for name, size, ours, base, x, need, runs, same in rows:
        goal = "-" if need is None else f"≤ {need:g}"
        met = "" if need is None or x is None else (" (met)" if x <= need else " (**missed**)")
        lines.append(f"| {name} | {size} | {B.fmt_s(ours)} | {B.fmt_s(base)} | "
                     f"{'-' if x is None else f'{x:.2f}'}{met} | {goal} | {runs} | {'yes' if same else 'NO'} |")
    return "\n".join(lines)


def scaling_table(points: list[dict]) -> str:
    lines = ["| model MB | copy s | .safetensors s | x copy | peak ΔRSS MB | .pth s | x copy | peak ΔRSS MB "
             "| largest tensor MB |",
             "|" + "---|" * 9]
    for d in points:
        if not d.get("model_bytes"):
            continue
        m = d["measurements"]
        c, s, p = m["copy"], m["to_safetensors"], m["to_pth"]
        largest = next((r.get("largest_tensor") for r in (s, p) if "largest_tensor" in r), None)
        lines.append(f"| {d['model_bytes'] / B.MB:,.0f} | {B.fmt_s(c.get('median_s'))} | "
                     f"{B.fmt_s(s.get('median_s'))} | "
                     f"{_x(s, c)} | {B.fmt_mb(s.get('delta_rss'))} | {B.fmt_s(p.get('median_s'))} | {_x(p, c)} | "
                     f"{B.fmt_mb(p.get('delta_rss'))} | {B.fmt_mb(largest)} |")
    return "\n".join(lines)


def _x(r, copy):
    x = ratio(r.get("median_s"), copy.get("median_s"))
    return "-" if x is None else f"{x:.1f}"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--benchmarks", default=",".join(BENCHMARKS), help="comma-separated subset of "
                   + ",".join(BENCHMARKS))
    p.add_argument("--size-mb", type=int, default=256, help="file size for the reader and conversion runs")
    p.add_argument("--repeat", type=int, default=5, help="runs per measurement (ratios use the median)")
    p.add_argument("--tensors", type=int, default=5000, help="tensors per many-small-tensor ONNX file")
    p.add_argument("--scaling", default="", help="comma-separated model sizes in MB for the scaling table")
    p.add_argument("--scaling-repeat", type=int, default=3)
    p.add_argument("--memlimit", action="store_true",
                   help="also run bench_memlimit.py (needs a writable memory cgroup)")
    p.add_argument("--workdir", type=Path, default=HERE / "work")
    p.add_argument("--outdir", type=Path, default=HERE, help="where the per-script JSON files go")
    p.add_argument("--out", type=Path, default=HERE / "results_all.json")
    args = p.parse_args(argv)
    common = ["--repeat", str(args.repeat), "--workdir", str(args.workdir)]
    outs = {k: args.outdir / f"results_{k}.json"
            for k in ("readers", "formats", "convert", "convert_unchanged", "small_tensors", "cli", "memlimit")}
    wanted = [b for b in args.benchmarks.split(",") if b]
    if set(wanted) - set(BENCHMARKS):
        p.error(f"--benchmarks: a subset of {','.join(BENCHMARKS)}")
    script_args = {
        "readers": ("bench_readers.py", ["--size-mb", str(args.size_mb), "--out", str(outs["readers"]), *common]),
        "formats": ("bench_formats.py", ["--size-mb", str(args.size_mb), "--tensors", str(args.tensors),
                                         "--out", str(outs["formats"]), *common]),
        "convert": ("bench_convert.py", ["--size-mb", str(args.size_mb), "--out", str(outs["convert"]), *common]),
        "convert_unchanged": ("bench_convert.py", ["--size-mb", str(args.size_mb), "--source", "mxnet", "--out",
                                                   str(outs["convert_unchanged"]), *common]),
        "small_tensors": ("bench_small_tensors.py", ["--tensors", str(args.tensors), "--out",
                                                     str(outs["small_tensors"]), *common]),
        "cli": ("bench_cli.py", ["--repeat", str(max(args.repeat, 7)), "--out", str(outs["cli"])]),
    }
    codes = {}
    for name in wanted:
        outs[name].unlink(missing_ok=True)  # a summary never mixes in an older run's file
        codes[name] = run(*script_args[name])
    scaling = []
    for size in [int(s) for s in args.scaling.split(",") if s]:
        out = args.outdir / f"results_convert_{size}mb.json"
        codes[f"scaling_{size}"] = run("bench_convert.py", [
            "--size-mb", str(size), "--out", str(out), "--modes", "copy,to_safetensors,to_pth",
            "--repeat", str(args.scaling_repeat), "--workdir", str(args.workdir)])
        if out.exists():
            scaling.append(json.loads(out.read_text()))
    if args.memlimit:
        outs["memlimit"].unlink(missing_ok=True)
        codes["memlimit"] = run("bench_memlimit.py", ["--out", str(outs["memlimit"]), "--workdir", str(args.workdir)])
    rows = []
    loaded = {k: json.loads(v.read_text()) for k, v in outs.items() if k in codes and v.exists()}
    if "readers" in loaded:
        rows += readers_rows(loaded["readers"])
    if "formats" in loaded:
        rows += formats_rows(loaded["formats"])
    if "small_tensors" in loaded:
        rows += small_rows(loaded["small_tensors"])
    for name in ("convert", "convert_unchanged"):
        if name in loaded:
            rows += convert_rows(loaded[name])
    text = ratio_table(rows)
    if scaling:
        text += "\n\nScaling (medians of " + str(args.scaling_repeat) + " runs):\n\n" + scaling_table(scaling)
    if "cli" in loaded:
        text += "\n\nCLI start-up (medians):\n\n" + loaded["cli"].get("table", "")
    if "memlimit" in loaded:
        text += "\n\nMemory limit:\n\n" + loaded["memlimit"].get("table", "")
    print("\n" + text)
    row_keys = ("step", "size", "ours_median_s", "baseline_median_s", "ours_over_baseline", "target_at_most", "runs",
                "same_data")
    scaling_points = [{"model_bytes": d["model_bytes"],
                       **{k: {"median_s": v.get("median_s"), "delta_rss": v.get("delta_rss")}
                          for k, v in d["measurements"].items() if "error" not in v}} for d in scaling]
    summary = {"benchmark": "all", "size_mb": args.size_mb, "repeat": args.repeat, "tensors": args.tensors,
               "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
               "exit_codes": codes, "rows": [dict(zip(row_keys, r)) for r in rows], "scaling": scaling_points,
               "table": text}
    args.out.write_text(json.dumps(summary, indent=1) + "\n")
    print(f"\nwrote {args.out}")
    return 1 if any(codes.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
