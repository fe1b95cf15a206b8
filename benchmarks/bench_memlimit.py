#!/usr/bin/env python
"""Memory-limit benchmark: `convert` of a checkpoint 3x larger than the memory it is allowed.

    sudo .venv/bin/python benchmarks/bench_memlimit.py                  # 1200 MB checkpoint, 400 MB limit
    .venv/bin/python benchmarks/bench_memlimit.py --size-mb 600 --limit-mb 200

The limit is a memory cgroup (what a container or `systemd-run -p MemoryMax=` imposes; RLIMIT_AS
is not the same thing: it counts mapped address space, not memory): cgroup v2 `memory.max` where
the v2 hierarchy has the memory controller, else cgroup v1 `memory.limit_in_bytes` (+ memsw, so
swap cannot absorb it). The cgroup charges page cache too; the kernel reclaims it under the limit.

The source is bench_convert.py's TF2 checkpoint (64 dense layers, built by TensorFlow); the
command is the real CLI, `convert --from tensorflow --map TABLE SRC OUT`, run once per output
(.safetensors, .pth; both are streamed, one tensor at a time) inside the cgroup. Reported: exit status
(killed by the OOM killer or not),
wall time, the cgroup's peak usage, the process's ru_maxrss, and whether the output's first and
last layers equal the source. Writes results_memlimit.json.
"""
from __future__ import annotations

import argparse
import datetime
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _bench as B  # noqa: E402
import bench_convert as BC  # noqa: E402

HERE = Path(__file__).resolve().parent
CGROOT = Path("/sys/fs/cgroup")


class MemoryCgroup:
    """A fresh memory cgroup with a hard limit; processes join it through `preexec`."""

    def __init__(self, name: str, limit: int):
        v2 = CGROOT / "cgroup.controllers"
        if v2.exists() and "memory" in v2.read_text().split():
            self.dir, self.v2 = CGROOT / name, True
        elif (CGROOT / "memory").is_dir():
            self.dir, self.v2 = CGROOT / "memory" / name, False
        else:
            raise SystemExit("no memory cgroup controller found under /sys/fs/cgroup (blocked)")
        try:
            self.dir.mkdir(exist_ok=True)
            if self.v2:
                self._write("memory.max", limit)
                if (self.dir / "memory.swap.max").exists():
                    self._write("memory.swap.max", 0)
            else:
                self._write("memory.limit_in_bytes", limit)
                if (self.dir / "memory.memsw.limit_in_bytes").exists():
                    self._write("memory.memsw.limit_in_bytes", limit)
        except OSError as e:
            raise SystemExit(f"cannot create a memory cgroup at {self.dir}: {e} (blocked; needs root)") from None
        self.limit = limit

    def _write(self, name: str, value) -> None:
        (self.dir / name).write_text(f"{value}\n")

    def preexec(self) -> None:
        (self.dir / "cgroup.procs").write_text(f"{os.getpid()}\n")

    def reset_peak(self) -> None:
        name = "memory.peak" if self.v2 else "memory.max_usage_in_bytes"
        try:
            self._write(name, 0)
        except OSError:  # memory.peak is resettable only on newer kernels
            pass

    def peak(self) -> int | None:
        name = "memory.peak" if self.v2 else "memory.max_usage_in_bytes"
        try:
            return int((self.dir / name).read_text())
        except (OSError, ValueError):
            return None

    def remove(self) -> None:
        try:
            self.dir.rmdir()
        except OSError:
            pass


def run_limited(cg: MemoryCgroup, cmd: list[str], env: dict) -> dict:
    """Run cmd inside the cgroup; exit status, wall time, ru_maxrss and the cgroup's peak."""
    cg.reset_peak()
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=B.ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            preexec_fn=cg.preexec)
    output = proc.stdout.read().decode(errors="replace")
    _pid, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - t0
    killed = proc.returncode < 0 and -proc.returncode == signal.SIGKILL
    return {"exit": proc.returncode, "killed": killed, "time_s": wall, "ru_maxrss": usage.ru_maxrss * 1024,
            "cgroup_peak": cg.peak(), "output_tail": output.strip().splitlines()[-3:]}


def check_output(kind: str, out: Path, src: str) -> dict:
    if not out.exists():
        return {"verified": False, "verify_error": "no output written"}
    if kind == "safetensors":
        from safetensors import safe_open

        with safe_open(str(out), "np") as fh:
            return BC.verify(fh.get_tensor, src, BC.N_LAYERS)
    import torch

    sd = torch.load(str(out), mmap=True, weights_only=True)
    return BC.verify(lambda k: sd[k].numpy(), src, BC.N_LAYERS)


def table(results: dict) -> str:
    lines = ["| output | checkpoint MB | limit MB | exit | time s | cgroup peak MB | ru_maxrss MB | output correct |",
             "|" + "---|" * 8]
    for kind, r in results["runs"].items():
        exit_text = "killed (OOM)" if r["killed"] else str(r["exit"])
        sizes = f"{results['source_bytes'] / B.MB:,.0f} | {results['limit'] / B.MB:,.0f}"
        lines.append(f"| .{kind} | {sizes} | {exit_text} | "
                     f"{B.fmt_s(r['time_s'])} | {B.fmt_mb(r['cgroup_peak'])} | {B.fmt_mb(r['ru_maxrss'])} | "
                     f"{'yes' if r.get('verified') else 'no'} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--size-mb", type=int, default=1200, help="checkpoint size in MB (default 1200)")
    p.add_argument("--limit-mb", type=int, help="memory limit in MB (default: a third of --size-mb)")
    p.add_argument("--outputs", default="safetensors,pth")
    p.add_argument("--workdir", type=Path, default=HERE / "work")
    p.add_argument("--out", type=Path, default=HERE / "results_memlimit.json")
    p.add_argument("--rebuild", action="store_true")
    args = p.parse_args(argv)
    files = BC.paths(args.workdir.resolve(), args.size_mb)
    BC.ensure_built(files, args.size_mb, args.rebuild)
    limit = (args.limit_mb or args.size_mb // 3) * B.MB
    source_bytes = sum(f.stat().st_size for f in BC.source_files(files))
    cg = MemoryCgroup(f"converters_bench_{os.getpid()}", limit)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(HERE), str(B.ROOT)]), TF_CPP_MIN_LOG_LEVEL="3")
    convert = str(Path(sys.executable).with_name("convert"))
    results = {"benchmark": "memlimit", "size_mb": args.size_mb, "source_bytes": source_bytes, "limit": limit,
               "cgroup": str(cg.dir), "cgroup_version": 2 if cg.v2 else 1,
               "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"), "runs": {}}
    try:
        for kind in [k for k in args.outputs.split(",") if k]:
            out = files["out"] / f"limited.{kind}"
            out.unlink(missing_ok=True)
            os.sync()
            cmd = [convert, "--from", "tensorflow", "--map", str(files["table"]), str(files["ckpt"]), str(out),
                   "--force"]
            r = run_limited(cg, cmd, env)
            r.update(check_output(kind, out, str(files["ckpt"])) if r["exit"] == 0 else {"verified": False})
            out.unlink(missing_ok=True)
            results["runs"][kind] = r
            print(f"  .{kind}: exit {r['exit']}{' (OOM kill)' if r['killed'] else ''}, {r['time_s']:.1f} s, "
                  f"cgroup peak {B.fmt_mb(r['cgroup_peak'])} MB of {B.fmt_mb(limit)} MB", flush=True)
    finally:
        cg.remove()
    B.publish(results, table(results), args.out)
    ok = results["runs"] and all(r.get("verified") for r in results["runs"].values())
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
