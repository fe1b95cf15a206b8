"""Shared plumbing for the benchmarks: child processes, peak RSS, checksums, wire encoding.

Imports only the standard library at module level: the MXNet side runs this module under
.venv-mxnet (numpy<1.24, no converters), and every measurement runs in a fresh child process so
that its peak RSS (`ru_maxrss`, the kernel's high-water mark) belongs to that measurement alone.
"""
from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MAIN_PY = ROOT / ".venv" / "bin" / "python"
MXNET_PY = ROOT / ".venv-mxnet" / "bin" / "python"
MB = 1 << 20
RESULT_TAG = "BENCH-RESULT "


# ------------------------------------------------------------------------------- process memory

def peak_rss() -> int:
    """High-water resident set size of this process so far, in bytes (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def rss_breakdown() -> dict:
    """Current RSS split into anonymous memory (heap, arrays) and file-backed pages (mmap'd files,
    shared libraries), from /proc/self/status; empty where /proc is unavailable."""
    out = {}
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                if key in ("VmRSS", "RssAnon", "RssFile", "VmHWM"):
                    out[key] = int(value.split()[0]) * 1024
    except OSError:
        pass
    return out


class Meter:
    """Time and peak RSS of one measured step. The baseline is taken after every import, so the
    delta is what the step itself cost (the raw peak is reported too).

    `ru_maxrss` counts every resident page, including clean file pages a process has memory-mapped
    (page cache it shares with the system). To tell those from memory the step really allocated,
    a sampling thread also records the peak of RssAnon (heap, arrays) every few milliseconds.
    """

    def __init__(self, sample_every: float = 0.002):
        self.baseline = peak_rss()
        self.baseline_now = rss_breakdown()
        self.t0 = self.t1 = None
        self.every = sample_every
        self.anon_peak = self.baseline_now.get("RssAnon", 0)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self):
        while not self._stop.is_set():
            self.anon_peak = max(self.anon_peak, rss_breakdown().get("RssAnon", 0))
            self._stop.wait(self.every)

    def __enter__(self):
        if self.baseline_now:
            self._thread.start()
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.t1 = time.perf_counter()
        if self._thread.is_alive():
            self._stop.set()
            self._thread.join()
        self.anon_peak = max(self.anon_peak, rss_breakdown().get("RssAnon", 0))

    def result(self, **extra) -> dict:
        peak = peak_rss()
        end = rss_breakdown()
        base = self.baseline_now
        out = {"time_s": self.t1 - self.t0, "peak_rss": peak, "baseline_rss": self.baseline,
               "delta_rss": peak - self.baseline,
               "anon_peak_delta": self.anon_peak - base.get("RssAnon", 0),
               "rss_anon_end": end.get("RssAnon", 0) - base.get("RssAnon", 0),
               "rss_file_end": end.get("RssFile", 0) - base.get("RssFile", 0)}
        out.update(extra)
        return out


def emit(result: dict) -> None:
    """The child's answer: one tagged JSON line on stdout (other output is ignored)."""
    sys.stdout.write(RESULT_TAG + json.dumps(result) + "\n")
    sys.stdout.flush()


def run_child(python, script, mode: str, spec: dict, timeout: float = 3600) -> dict:
    """Run `script --child mode --spec JSON` under `python`; its tagged result, or {'error': ...}."""
    cmd = [str(python), str(script), "--child", mode, "--spec", json.dumps(spec)]
    env = dict(os.environ, PYTHONPATH=str(ROOT), TF_CPP_MIN_LOG_LEVEL="3", PYTHONHASHSEED="0")
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT, env=env)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    wall = time.perf_counter() - t0
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(RESULT_TAG):
            out = json.loads(line[len(RESULT_TAG):])
            out["child_wall_s"] = wall
            return out
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-12:]
    return {"error": f"exit {proc.returncode}: " + " | ".join(tail)}


def best_of(results: list[dict]) -> dict:
    """Keep the fastest run's time (and the median, `median_s`) and the largest peak RSS seen
    (times are noisy on a shared machine, memory is not; reporting the worst memory is the
    conservative choice)."""
    ok = [r for r in results if "error" not in r]
    if not ok:
        return results[-1] if results else {"error": "not run"}
    best = dict(min(ok, key=lambda r: r["time_s"]))
    for key in ("peak_rss", "delta_rss", "anon_peak_delta", "rss_anon_end", "rss_file_end"):
        if key in best:
            best[key] = max(r.get(key, 0) for r in ok)
    best["times_s"] = [round(r["time_s"], 4) for r in ok]
    best["median_s"] = median([r["time_s"] for r in ok])
    best["runs"] = len(ok)
    return best


def median(values) -> float | None:
    """Median of run times (what run_all.py's ratios use: steadier than the best on a busy machine)."""
    values = sorted(values)
    if not values:
        return None
    mid = len(values) // 2
    return values[mid] if len(values) % 2 else (values[mid - 1] + values[mid]) / 2


def warm_page_cache(paths) -> None:
    """Read files once so every timed run starts from the same state: data in the page cache."""
    for p in paths:
        with open(p, "rb") as fh:
            while fh.read(1 << 24):
                pass


def import_converters_readers() -> None:
    """Import every module of converters.readers before a timed step: module imports are a
    one-time cost of the process, excluded for our side as they are for the framework's (whose
    `import onnx` / `import tensorflow` take 0.7-3 s here). Readers import some helpers where
    they are first used (to break an import cycle, or to keep `import converters` light)."""
    import importlib
    import pkgutil

    import converters.readers as readers

    for info in pkgutil.iter_modules(readers.__path__):
        importlib.import_module(f"converters.readers.{info.name}")


# --------------------------------------------------------------------------------- array checks

def checksum(arrays) -> tuple[int, int, int]:
    """(count, bytes, sum of 32-bit words mod 2**64) over numeric arrays, independent of order and
    names, so the reader's and the framework's results can be compared without holding both."""
    import numpy as np

    count = nbytes = total = 0
    for a in arrays:
        a = np.asarray(a)
        if a.dtype.kind not in "fiucb":
            continue
        count += 1
        nbytes += a.nbytes
        flat = np.ascontiguousarray(a).reshape(-1).view(np.uint8)
        head = flat[: flat.size - flat.size % 4]
        total += int(head.view(np.uint32).sum(dtype=np.uint64)) + int(flat[head.size:].sum(dtype=np.uint64))
    return count, nbytes, total % (1 << 64)


def same_data(ours: dict, theirs: dict) -> dict:
    """Whether both sides produced the same arrays: their (count, bytes, checksum) agree."""
    a = [ours["count"], ours["bytes"], ours["checksum"]]
    b = [theirs["count"], theirs["bytes"], theirs["checksum"]]
    return {"met": a == b, "reader": a, "framework": b}


def reader_targets(m: dict) -> dict:
    """Speed (median ours / median framework, at most 1.0) and same data, from the `reader_load`
    and `framework_load` measurements; {} when either side failed."""
    rl, fl = m["reader_load"], m["framework_load"]
    if "error" in rl or "error" in fl:
        return {}
    x = rl["median_s"] / fl["median_s"]
    return {"speed": {"ours_over_framework_median": x, "required_at_most": 1.0, "met": x <= 1.0},
            "same_data": same_data(rl, fl)}


def publish(results: dict, text: str, out) -> None:
    """Print a benchmark's table, keep it in its results and write them to `out` as JSON."""
    results["table"] = text
    print("\n" + text)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1) + "\n")
    print(f"\nwrote {out}")


def text_table(rows) -> str:
    """Rows (the first is the header) as an aligned `a | b` table with a dashed rule under the header."""
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(rows[0]))]
    lines = [" | ".join(str(c).ljust(w) for c, w in zip(row, widths)) for row in rows]
    lines.insert(1, "-|-".join("-" * w for w in widths))
    return "\n".join(lines)


def fmt_mb(n) -> str:
    return "-" if n is None else f"{n / MB:,.0f}"


def fmt_s(t) -> str:
    if t is None:
        return "-"
    return f"{t:.3f}" if t < 10 else f"{t:.1f}"
