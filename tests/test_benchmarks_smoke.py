"""The benchmark scripts run end to end at a tiny size, write their JSON, and what they compared
was the same data (reader and framework checksums agree; converted outputs match the source)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"
SIZE_MB = 2  # what is checked is that every step runs and compares the same data, not speed
MXNET = (ROOT / ".venv-mxnet/bin/python").exists()


def run_script(name: str, tmp_path: Path, *extra: str) -> dict:
    out = tmp_path / f"{name}.json"
    cmd = [sys.executable, str(BENCH / name), "--size-mb", str(SIZE_MB), "--repeat", "1",
           "--workdir", str(tmp_path / "work"), "--out", str(out), *extra]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=ROOT)
    assert proc.returncode == 0, f"{name} exited {proc.returncode}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    assert out.is_file(), f"{name} did not write {out}"
    return json.loads(out.read_text())


@pytest.mark.heavy
def test_bench_readers_small(tmp_path):
    pytest.importorskip("tensorflow")
    pytest.importorskip("onnx")
    pytest.importorskip("grpc_tools")
    # framework_open (the framework's parse step alone, a diagnostic no target is judged on) is
    # left out: a framework child imports TensorFlow or mxnet, seconds for a 2 MB file
    modes = ("reader_open", "reader_load", "reader_view", "framework_load")
    data = run_script("bench_readers.py", tmp_path, "--modes", ",".join(modes))
    expected = {"caffe", "tensorflow", "onnx"} | ({"mxnet"} if MXNET else set())
    assert set(data["formats"]) == expected and set(data["modes"]) == set(modes)
    for fmt, r in data["formats"].items():
        m = r["measurements"]
        assert all("error" not in m[k] for k in modes), (fmt, m)
        assert m["framework_open"] == {"error": "not run"}, (fmt, m["framework_open"])
        assert r["targets"]["same_data"]["met"], (fmt, r["targets"]["same_data"])
        assert r["targets"]["same_data_views"]["met"], (fmt, r["targets"]["same_data_views"])
        assert m["reader_load"]["count"] == 72  # 64 matrices + 8 vectors
        assert m["reader_load"]["bytes"] >= SIZE_MB * 2**20
        assert m["reader_load"]["delta_rss"] > 0 and m["reader_open"]["time_s"] > 0
    assert "fw/reader" in data["table"]


@pytest.mark.heavy
@pytest.mark.parametrize("source", ["tensorflow", "mxnet"])
def test_bench_convert_small(tmp_path, source):
    """One conversion of each kind. copy_fsync and *_nohash do the same whatever the source (a
    child each, importing torch): the tensorflow run has them, the mxnet one the kinds it verifies."""
    pytest.importorskip("tensorflow")
    pytest.importorskip("safetensors")
    if source == "mxnet" and not MXNET:
        pytest.skip("mxnet builds its source in .venv-mxnet")
    modes = "copy,to_pth,to_safetensors,state_dict,module"
    if source == "tensorflow":
        modes += ",copy_fsync,to_safetensors_nohash"
    data = run_script("bench_convert.py", tmp_path, "--source", source, "--modes", modes)
    assert data["model"]["transform"] == ("none" if source == "mxnet" else "tf_dense on kernels")
    m = {k: v for k, v in data["measurements"].items() if k in modes.split(",")}
    assert all("error" not in v for v in m.values()), m
    for mode in [k for k in m if k not in ("copy", "copy_fsync")]:  # every conversion run
        assert m[mode]["verified"] is True, (mode, m[mode])
        assert data["targets"][f"{mode}_correct"]["met"]
    assert m["to_safetensors"]["output_bytes"] >= data["model_bytes"]
    assert data["model_bytes"] >= 0.9 * SIZE_MB * 2**20
    assert {"to_pth_time", "to_pth_memory", "to_safetensors_time", "to_safetensors_memory"} <= set(data["targets"])


@pytest.mark.heavy
def test_bench_small_tensors_through_run_all(tmp_path):
    """run_all.py runs the many-small-tensor ONNX benchmark and reports median ratios that agree
    with the per-script JSON (both sides read the same tensors)."""
    pytest.importorskip("onnx")
    out = tmp_path / "all.json"
    cmd = [sys.executable, str(BENCH / "run_all.py"), "--benchmarks", "small_tensors", "--tensors", "60",
           "--repeat", "1", "--workdir", str(tmp_path / "work"), "--outdir", str(tmp_path), "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, f"run_all exited {proc.returncode}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    summary = json.loads(out.read_text())
    per_script = json.loads((tmp_path / "results_small_tensors.json").read_text())
    rows = {r["step"]: r for r in summary["rows"]}
    assert set(rows) == {"read onnx initializers (60 tensors)", "read onnx constants (60 tensors)",
                         "read onnx ppocr_cls (308 tensors)"}
    for case, r in per_script["cases"].items():
        m = r["measurements"]
        assert r["targets"]["same_data"]["met"], (case, r["targets"])
        row = next(v for k, v in rows.items() if f" {case} " in k)
        assert row["same_data"] is True and row["runs"] == 1
        ratio = m["reader_load"]["median_s"] / m["framework_load"]["median_s"]
        assert row["ours_over_baseline"] == pytest.approx(ratio)
    assert "ours / baseline" in summary["table"]


@pytest.mark.heavy
def test_bench_cli_measures_every_command(tmp_path):
    """bench_cli.py times every command against `python -c pass` and probes its imports (its exit
    code says whether the 0.3 s target was met: timing is reported, not asserted, here)."""
    out = tmp_path / "cli.json"
    proc = subprocess.run([sys.executable, str(BENCH / "bench_cli.py"), "--repeat", "1", "--out", str(out)],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode in (0, 1), proc.stderr[-3000:]
    data = json.loads(out.read_text())
    assert data["python_startup_median_s"] > 0
    assert len(data["commands"]) >= 6
    for label, c in data["commands"].items():
        assert c["median_s"] > 0 and len(c["times_s"]) == 1, label
        assert "torch" not in c["heavy_imports"] and "tensorflow" not in c["heavy_imports"], label


@pytest.mark.heavy
def test_bench_formats_through_run_all(tmp_path):
    """run_all.py runs bench_formats.py: every format's reader against its own loader, both layouts,
    on the same data (checksums agree), and its rows carry the per-script medians."""
    for module in ("tensorflow", "keras", "h5py", "safetensors", "grpc_tools"):
        pytest.importorskip(module)
    out = tmp_path / "all.json"
    cmd = [sys.executable, str(BENCH / "run_all.py"), "--benchmarks", "formats", "--tensors", "60",
           "--size-mb", str(SIZE_MB), "--repeat", "1", "--workdir", str(tmp_path / "work"), "--outdir", str(tmp_path),
           "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=ROOT)
    assert proc.returncode == 0, f"run_all exited {proc.returncode}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    per_script = json.loads((tmp_path / "results_formats.json").read_text())
    expected = {f"{f} {lay}" for f in ("keras_h5", "torch", "safetensors", "npz") for lay in ("large", "many")}
    expected |= {"caffe many", "tensorflow many"} | ({"mxnet many"} if MXNET else set())
    assert set(per_script["cases"]) == expected
    for case, r in per_script["cases"].items():
        assert r["targets"]["same_data"]["met"], (case, r["targets"])
        large = 128 if case.startswith("keras_h5") else 72  # Keras: 64 Dense kernels + biases; else R.layout
        assert r["measurements"]["reader_load"]["count"] == (60 if case.endswith("many") else large), case
    rows = {r["step"]: r for r in json.loads(out.read_text())["rows"]}
    assert len(rows) == len(expected) and all(r["same_data"] is True for r in rows.values())
