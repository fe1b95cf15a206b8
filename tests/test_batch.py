"""`convert batch`: a zoo of 20 ONNX files written by torch.onnx.export, one table made by
`convert port` from the first, converted by a process pool and by Ray; every output checked
against onnxruntime; a broken file fails alone; a rerun skips what is up to date (on the sha256,
or on the size+mtime fingerprint of outputs written without the hash); a batch stopped by SIGTERM
or Ctrl-C (also while ray.init runs, or just as an output completes) leaves no partial file,
reports what was converted as such and the rest cancelled, and a rerun finishes it."""
from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

from converters import port, provenance, read
from converters.batch import load_jobs, run_batch, summary
from converters.cli import main
from converters.errors import ConvertersError

N_FILES = 20


class TinyNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)
        self.bn = torch.nn.BatchNorm2d(4)
        self.fc = torch.nn.Linear(4 * 4 * 4, 5)

    def forward(self, x):
        x = torch.nn.functional.max_pool2d(torch.relu(self.bn(self.conv(x))), 2)
        return self.fc(torch.flatten(x, 1))


def export(path, seed):
    torch.manual_seed(seed)
    net = TinyNet().eval()
    with torch.no_grad():
        net.bn.running_mean.uniform_(-1, 1)
        net.bn.running_var.uniform_(0.5, 2)
    torch.onnx.export(net, (torch.randn(1, 3, 8, 8),), str(path), dynamo=False, input_names=["x"], opset_version=13)


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    root = tmp_path_factory.mktemp("zoo")
    (root / "models").mkdir()
    for i in range(N_FILES):
        export(root / "models" / f"net{i:02d}.onnx", seed=i)
    port(str(root / "models" / "net00.onnx"), str(root / "port"), name="TinyNet")
    return root


def write_jobs(root, jobs, name="jobs.yaml"):
    path = root / name
    path.write_text(yaml.safe_dump(jobs))
    return path


def load_ported(root, weights):
    spec = importlib.util.spec_from_file_location("tiny_port", root / "port" / "model.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    model = mod.TinyNet().eval()
    model.load_state_dict(load_file(weights))
    return model


def assert_matches_onnxruntime(root, onnx_path, weights):
    x = np.random.default_rng(0).standard_normal((1, 3, 8, 8)).astype(np.float32)
    want = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    with torch.no_grad():
        got = load_ported(root, weights)(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)


def zoo_jobs(root, out_dir):
    return {"defaults": {"from": "onnx", "map": "port/tiny_net.yaml"},
            "jobs": [{"glob": "models/*.onnx", "out": f"{out_dir}/{{stem}}.safetensors"}]}


def test_pool_converts_the_zoo_and_a_rerun_skips_it(zoo):
    jobs = load_jobs(write_jobs(zoo, zoo_jobs(zoo, "out_pool")))
    assert len(jobs) == N_FILES
    results = run_batch(jobs, workers=2)
    assert [r.status for r in results] == ["ok"] * N_FILES, [r.message for r in results]
    for i in (0, 7, 19):
        assert_matches_onnxruntime(zoo, zoo / "models" / f"net{i:02d}.onnx",
                                   zoo / "out_pool" / f"net{i:02d}.safetensors")
    again = run_batch(jobs, workers=0)
    assert [r.status for r in again] == ["skipped"] * N_FILES


def test_a_changed_source_is_reconverted_alone(zoo, tmp_path):
    models = tmp_path / "models"
    models.mkdir()
    for i in range(3):
        os.link(zoo / "models" / f"net{i:02d}.onnx", models / f"net{i:02d}.onnx")
    (tmp_path / "port").symlink_to(zoo / "port")
    jobs = load_jobs(write_jobs(tmp_path, zoo_jobs(tmp_path, "out")))
    assert [r.status for r in run_batch(jobs, workers=0)] == ["ok"] * 3
    (models / "net01.onnx").unlink()
    export(models / "net01.onnx", seed=99)
    assert [r.status for r in run_batch(jobs, workers=0)] == ["skipped", "ok", "skipped"]
    assert_matches_onnxruntime(zoo, models / "net01.onnx", tmp_path / "out" / "net01.safetensors")


def test_a_broken_file_fails_alone_with_its_error(zoo, tmp_path, capsys):
    good = zoo / "models" / "net03.onnx"
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(good.read_bytes()[:300])
    jobs_file = write_jobs(tmp_path, {"defaults": {"from": "onnx", "map": str(zoo / "port" / "tiny_net.yaml")},
                                      "jobs": [{"source": str(good), "out": "out/good.pth"},
                                               {"source": "broken.onnx", "out": "out/broken.pth"}]})
    code = main(["batch", str(jobs_file), "--workers", "0", "--report", str(tmp_path / "report.json")])
    out = capsys.readouterr().out
    assert code == 2
    assert "1 converted, 0 up to date, 1 failed" in out
    assert "broken.onnx" in out
    rows = yaml.safe_load((tmp_path / "report.json").read_text())["results"]
    assert [r["status"] for r in rows] == ["ok", "failed"]
    assert "broken.onnx" in rows[1]["message"]
    assert (tmp_path / "out" / "good.pth").exists() and not (tmp_path / "out" / "broken.pth").exists()


@pytest.mark.parametrize("jobs, message", [
    ([{"glob": "nothing/*.onnx", "map": "t.yaml", "out": "o.pth"}], "matches no file"),
    ([{"source": "a", "glob": "b", "map": "t.yaml", "out": "o.pth"}], "exactly one of"),
    ([{"source": "a", "map": "t.yaml", "out": "o.pth", "form": "onnx"}], "unknown key"),
    ([{"source": "a", "map": "t.yaml", "out": "o.pth"}, {"source": "b", "map": "t.yaml", "out": "o.pth"}],
     "both write"),
    ({"jobs": "a.onnx"}, "a list of jobs"),
    ([{"source": "a", "map": "t.yaml", "out": "{size}.pth"}], "template"),
])
def test_bad_jobs_files_name_the_entry(tmp_path, jobs, message):
    path = write_jobs(tmp_path, jobs)
    with pytest.raises(ConvertersError, match=message) as e:
        load_jobs(path)
    assert str(path) in str(e.value)


@pytest.mark.heavy
def test_ray_engine_converts_the_zoo(zoo):
    jobs = load_jobs(write_jobs(zoo, zoo_jobs(zoo, "out_ray"), name="jobs_ray.yaml"))
    results = run_batch(jobs, workers=2, engine="ray")
    s = summary(results)
    assert (s["ok"], s["failed"]) == (N_FILES, 0), [r.message for r in results]
    for i in (0, 11, 19):
        assert_matches_onnxruntime(zoo, zoo / "models" / f"net{i:02d}.onnx",
                                   zoo / "out_ray" / f"net{i:02d}.safetensors")


def recorded(out):
    with read(out) as f:
        return f.meta.get("provenance") or f.meta.get("metadata")


def copy_zoo(zoo, root, n):
    """The first n zoo files copied into root/models (their own mtimes, to touch), the table shared."""
    (root / "models").mkdir()
    for i in range(n):
        shutil.copy(zoo / "models" / f"net{i:02d}.onnx", root / "models" / f"net{i:02d}.onnx")
    (root / "port").symlink_to(zoo / "port")


def test_outputs_without_the_source_hash_resume_on_their_fingerprint(zoo, tmp_path, capsys):
    """The defect this fixes: `--no-source-hash` outputs were always reconverted. Now they record
    the source's size+mtime, a rerun skips them on it and says the check was the weaker one; a
    touched source, or an output recording neither hash nor fingerprint, is reconverted, saying why."""
    copy_zoo(zoo, tmp_path, 3)
    jobs_file = write_jobs(tmp_path, {"defaults": {"from": "onnx", "map": "port/tiny_net.yaml"}, "jobs": [
        {"source": "models/net00.onnx", "out": "out/net00.pth"},
        {"source": "models/net01.onnx", "out": "out/net01.safetensors"},
        {"source": "models/net02.onnx", "out": "out/net02.safetensors"}]})
    jobs = load_jobs(jobs_file)
    # .pth and .safetensors from the batch, net02 from the single-file CLI
    assert [r.status for r in run_batch(jobs[:2], workers=0, hash_source=False)] == ["ok", "ok"]
    assert main([str(jobs[2].source), "--from", "onnx", "--map", jobs[2].map, jobs[2].out,
                 "--no-source-hash", "-q"]) == 0
    for job in jobs:
        meta = recorded(job.out)
        assert meta["source_sha256"] == ""
        assert json.loads(meta["source_fingerprint"]) == [
            [Path(job.source).name, os.path.getsize(job.source), os.stat(job.source).st_mtime_ns]]

    capsys.readouterr()
    assert main(["batch", str(jobs_file), "--workers", "0", "--report", str(tmp_path / "r.json")]) == 0
    out = capsys.readouterr().out
    assert "3 up to date (3 by size+mtime only)" in out and out.count("(by size+mtime only: no sha256 recorded)") == 3
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["skipped_on_fingerprint"] == 3
    assert [(r["status"], r["checked_by"]) for r in report["results"]] == [("skipped", "fingerprint")] * 3
    assert "--no-source-hash" in report["results"][0]["message"]

    st = os.stat(jobs[1].source)
    os.utime(jobs[1].source, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))  # same bytes, touched
    tensors = load_file(jobs[2].out)  # as an older converters wrote it: no hash, no fingerprint
    save_file(tensors, jobs[2].out, metadata={k: v for k, v in recorded(jobs[2].out).items()
                                              if k != "source_fingerprint"})
    results = run_batch(jobs, workers=0)
    assert [(r.status, r.checked_by) for r in results] == [("skipped", "fingerprint"), ("ok", ""), ("ok", "")]
    assert results[1].message.startswith("reconverted: the source changed (size or mtime")
    assert results[2].message == "reconverted: the output records neither a source sha256 nor a source fingerprint"
    assert_matches_onnxruntime(zoo, jobs[1].source, jobs[1].out)
    # reconverted with the hash: the sha256 path, as before
    assert [(r.status, r.checked_by) for r in run_batch(jobs, workers=0)] == [
        ("skipped", "fingerprint"), ("skipped", "sha256"), ("skipped", "sha256")]


def test_fingerprint_covers_every_file_of_a_sharded_checkpoint(tmp_path):
    """A TF checkpoint is an index and shards: a touched or resized shard changes the fingerprint."""
    ckpt = tmp_path / "sharded"
    shutil.copytree(Path(__file__).parent.parent / "fixtures" / "tensorflow" / "sharded", ckpt)
    before = provenance.fingerprint(ckpt / "ckpt-1")
    assert [row[0] for row in json.loads(before)] == ["ckpt-1.index", *(f"ckpt-1.data-0000{i}-of-00003"
                                                                        for i in range(3))]
    assert provenance.fingerprint(ckpt / "ckpt-1.index") == before
    shard = ckpt / "ckpt-1.data-00002-of-00003"
    st = os.stat(shard)
    os.utime(shard, ns=(st.st_atime_ns, st.st_mtime_ns + 1))
    touched = provenance.fingerprint(ckpt / "ckpt-1")
    assert touched != before
    with open(shard, "ab") as fh:
        fh.write(b"\0")
    assert provenance.fingerprint(ckpt / "ckpt-1") not in (before, touched)
    assert provenance.fingerprint(tmp_path / "missing") == ""


@pytest.mark.parametrize("sig, workers, code", [(signal.SIGTERM, 1, 143), (signal.SIGINT, 0, 130)],
                         ids=["SIGTERM-pool", "SIGINT-in-process"])
def test_a_stopped_batch_leaves_no_partial_and_a_rerun_finishes_it(zoo, tmp_path, sig, workers, code):
    """A real `convert batch` process stopped once its first output is written: exit 128 + signal,
    the summary and report of what finished, the rest `cancelled`, no temporary file left, every
    output that exists complete; the same command again skips those and converts the rest."""
    copy_zoo(zoo, tmp_path, N_FILES)
    jobs_file = write_jobs(tmp_path, {"defaults": {"from": "onnx", "map": "port/tiny_net.yaml"}, "jobs": [
        {"glob": "models/*.onnx", "out": f"out{k}/{{stem}}.safetensors"} for k in range(2)]})
    report = tmp_path / "report.json"
    cmd = [sys.executable, "-m", "converters", "batch", str(jobs_file), "--workers", str(workers),
           "--report", str(report)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    first = proc.stdout.readline()
    assert first.startswith("ok "), first + proc.stderr.read()
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == code, err
    assert err.strip().splitlines()[-1].endswith("terminated by SIGTERM" if sig == signal.SIGTERM else "interrupted")
    assert f"batch stopped by {sig.name}: 40 jobs:" in out

    s = json.loads(report.read_text())
    rows = s["results"]
    done = {r["out"] for r in rows if r["status"] == "ok"}
    assert s["stopped_by"] == sig.name and s["failed"] == 0 and s["ok"] >= 1 and s["cancelled"] >= 1
    assert s["ok"] + s["cancelled"] == 40
    assert all(r["message"] == f"cancelled: the batch was stopped by {sig.name}"
               for r in rows if r["status"] == "cancelled")
    assert not [p.name for p in tmp_path.glob("out*/.*")], "a temporary file was left"
    written = {str(p) for p in tmp_path.glob("out*/*")}
    assert done == written  # an output completed while stopping is reported converted, not cancelled
    names = set(load_file(next(iter(done))))
    for path in written:  # complete files only
        assert set(load_file(path)) == names, path

    assert main(["batch", str(jobs_file), "--workers", "0", "-q", "--report", str(report)]) == 0
    again = {r["out"]: r["status"] for r in json.loads(report.read_text())["results"]}
    assert {o for o, st in again.items() if st == "skipped"} == written
    assert {o for o, st in again.items() if st == "ok"} == set(again) - written
    assert_matches_onnxruntime(zoo, tmp_path / "models" / "net19.onnx", tmp_path / "out1" / "net19.safetensors")


# Runs `convert batch` with converters.convert.convert wrapped: once the output of the job writing
# STOP_AT is in place, SIGTERM reaches the batch (from a pool worker, which then waits to be
# stopped; or in this process). Module level, so spawned pool workers (which import the main script
# as __mp_main__) wrap it too.
STOP_AFTER_OUTPUT = """\
import multiprocessing, os, signal, sys, time
import converters.convert
from converters.cli import main

real = converters.convert.convert

def convert(source, mapping, target=None, out=None, **kw):
    result = real(source, mapping, target, out, **kw)
    if os.path.basename(out) == os.environ["STOP_AT"]:
        in_worker = multiprocessing.parent_process() is not None
        os.kill(os.getppid() if in_worker else os.getpid(), signal.SIGTERM)
        time.sleep(60)  # the stop arrives here: the output is complete, the job has not returned
    return result

converters.convert.convert = convert
if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.parametrize("workers", [0, 1], ids=["in-process", "pool"])
def test_an_output_completed_as_the_batch_stops_is_reported_converted(zoo, tmp_path, workers):
    """The defect this fixes: a job whose output was moved into place just as the batch was
    stopped was reported `cancelled`, although its file was complete (and a rerun skipped it)."""
    copy_zoo(zoo, tmp_path, 3)
    jobs_file = write_jobs(tmp_path, {"defaults": {"from": "onnx", "map": "port/tiny_net.yaml"}, "jobs": [
        {"source": f"models/net{i:02d}.onnx", "out": f"out/net{i:02d}.safetensors"} for i in range(3)]})
    (tmp_path / "driver.py").write_text(STOP_AFTER_OUTPUT)
    report = tmp_path / "report.json"
    proc = subprocess.run([sys.executable, str(tmp_path / "driver.py"), "batch", str(jobs_file), "--workers",
                           str(workers), "--report", str(report)], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "STOP_AT": "net01.safetensors"})
    assert proc.returncode == 143, proc.stderr
    assert "batch stopped by SIGTERM: 3 jobs: 2 converted, 0 up to date, 0 failed, 1 cancelled" in proc.stdout
    s = json.loads(report.read_text())
    assert (s["ok"], s["cancelled"], s["stopped_by"]) == (2, 1, "SIGTERM")
    rows = s["results"]
    assert [r["status"] for r in rows] == ["ok", "ok", "cancelled"]
    assert rows[1]["message"] == "completed as the batch was stopped by SIGTERM"
    assert rows[1]["bytes_written"] == os.path.getsize(rows[1]["out"])
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["net00.safetensors", "net01.safetensors"]
    assert_matches_onnxruntime(zoo, tmp_path / "models" / "net01.onnx", tmp_path / "out" / "net01.safetensors")
    assert [r.status for r in run_batch(load_jobs(jobs_file), workers=0)] == ["skipped", "skipped", "ok"]


# Runs `convert batch` with SIGTERM sent to itself in the middle of ray.init: the local Ray's GCS
# and raylet are up and Ray's own SIGTERM handlers (sys.exit) were installed, the driver not yet
# connected.
SIGTERM_IN_RAY_INIT = """\
import os, signal, sys
import ray._private.node
from converters.cli import main

real = ray._private.node.Node.start_ray_processes

def start_ray_processes(self):
    real(self)
    print("test hook: SIGTERM inside ray.init", file=sys.stderr, flush=True)
    os.kill(os.getpid(), signal.SIGTERM)

ray._private.node.Node.start_ray_processes = start_ray_processes
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.heavy
def test_sigterm_during_ray_init_stops_the_batch_cleanly(zoo, tmp_path):
    """The defect this fixes: a SIGTERM while ray.init ran went to Ray's handler (exit 15, the
    report saying `stopped by SystemExit`). Now it is held until ray.init returns, then stops the
    batch as anywhere else: exit 143, summary and report written, nothing converted or half-written."""
    copy_zoo(zoo, tmp_path, 3)
    jobs_file = write_jobs(tmp_path, zoo_jobs(tmp_path, "out"))
    (tmp_path / "driver.py").write_text(SIGTERM_IN_RAY_INIT)
    report = tmp_path / "report.json"
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # a local Ray, started by the batch
    proc = subprocess.run([sys.executable, str(tmp_path / "driver.py"), "batch", str(jobs_file), "--engine", "ray",
                           "--workers", "1", "--report", str(report)], capture_output=True, text=True,
                          timeout=180, env=env)
    assert "test hook: SIGTERM inside ray.init" in proc.stderr
    assert proc.returncode == 143, proc.stderr
    assert proc.stderr.strip().splitlines()[-1].endswith("terminated by SIGTERM")
    assert "batch stopped by SIGTERM: 3 jobs: 0 converted, 0 up to date, 0 failed, 3 cancelled" in proc.stdout
    s = json.loads(report.read_text())
    assert (s["stopped_by"], s["cancelled"]) == ("SIGTERM", 3)
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())


DEFERRED_SIGNALS = """\
import os, signal, time
from converters.batch import _DeferredSignals

got = []
signal.signal(signal.SIGTERM, lambda signum, frame: got.append(signum))
real_signal = signal.signal
with _DeferredSignals(hold_handlers=True):
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(0.1)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # as ray.init installs its own: held, not installed
    assert got == [], got
assert got == [signal.SIGTERM] and signal.signal is real_signal, got
assert signal.getsignal(signal.SIGTERM) not in (signal.SIG_IGN, signal.SIG_DFL)
print("delivered after the block", flush=True)
with _DeferredSignals():
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(0.1)
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(10)
print("not reached")
"""


def test_signals_held_across_ray_calls_come_after_them_and_a_second_one_ends_the_process():
    """What the Ray engine relies on, without Ray: a signal is handed to the caller's handler when
    the block ends, a handler set meanwhile (ray.init's) is not installed, a second signal kills."""
    proc = subprocess.run([sys.executable, "-c", DEFERRED_SIGNALS], capture_output=True, text=True, timeout=60)
    assert proc.stdout == "delivered after the block\n", proc.stderr
    assert proc.returncode == -signal.SIGTERM, proc.stderr
