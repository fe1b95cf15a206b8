"""`convert batch`: a model zoo converted from one jobs file, in a process pool or on a Ray cluster.

Each job is one ordinary `converters.convert.convert(...)` call, so coverage, atomic outputs and
provenance are what a single conversion gives. What batching adds is only what a zoo needs: a
failing file never stops the others, every job ends as a row of the summary (ok, skipped or
failed with the one-line error), and a rerun skips outputs whose recorded provenance (source and
table sha256) still matches, so an interrupted batch resumes where it stopped. Scheduling is
left to the standard library's process pool or to Ray; nothing here schedules by hand.

Jobs file (YAML; relative paths are relative to the jobs file):

    defaults: {from: onnx, map: tables/net.yaml, option: {}}   # optional, merged into each job
    jobs:
      - {source: a.onnx, out: out/a.safetensors}
      - {glob: 'zoo/*.onnx', out: 'out/{stem}.pth'}            # one job per match; {stem} {name} {parent}

or just the list of jobs.
"""
from __future__ import annotations

import concurrent.futures
import glob as globlib
import multiprocessing
import os
import time
from dataclasses import asdict, dataclass, field

from .errors import ConvertersError, MappingError

_JOB_KEYS = {"source", "glob", "out", "map", "from", "option", "allow_unused", "allow_missing", "target"}


@dataclass
class Job:
    source: str
    out: str
    map: str
    framework: str | None = None
    options: dict = field(default_factory=dict)
    allow_unused: bool = False
    allow_missing: bool = False
    target: str | None = None
    entry: int = 0                # index of the jobs-file entry it came from, for messages


@dataclass
class JobResult:
    source: str
    out: str
    status: str                   # ok | skipped | failed
    seconds: float = 0.0
    message: str = ""
    assignments: int = 0
    bytes_written: int = 0


def load_jobs(path) -> list[Job]:
    """The jobs a jobs file describes, globs expanded, in file order; errors name file and entry."""
    import yaml

    path = os.fspath(path)
    try:
        with open(path, encoding="utf-8") as fh:
            doc = yaml.safe_load(fh)
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise MappingError(f"cannot read the jobs file: {e}", file=path) from None
    defaults, entries = {}, doc
    if isinstance(doc, dict):
        defaults, entries = doc.get("defaults") or {}, doc.get("jobs")
    if not isinstance(entries, list) or not entries or not isinstance(defaults, dict):
        raise MappingError("a jobs file is a list of jobs, or {defaults: {...}, jobs: [...]}", file=path)
    base = os.path.dirname(os.path.abspath(path))
    jobs = []
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise MappingError(f"job {i + 1} is not a mapping", file=path)
        jobs.extend(_expand(path, base, i, {**defaults, **entry}))
    outs = {}
    for job in jobs:
        if job.out in outs:
            raise MappingError(f"jobs {outs[job.out] + 1} and {job.entry + 1} both write {job.out}", file=path)
        outs[job.out] = job.entry
    return jobs


def _expand(path, base, index, entry) -> list[Job]:
    unknown = set(entry) - _JOB_KEYS
    if unknown:
        raise MappingError(f"job {index + 1}: unknown key(s) {sorted(unknown)}; known: {sorted(_JOB_KEYS)}", file=path)
    if ("source" in entry) == ("glob" in entry):
        raise MappingError(f"job {index + 1}: give exactly one of `source` and `glob`", file=path)
    for key in ("out", "map"):
        if not isinstance(entry.get(key), str):
            raise MappingError(f"job {index + 1}: `{key}` (a path) is missing", file=path)
    options = entry.get("option") or {}
    if not isinstance(options, dict):
        raise MappingError(f"job {index + 1}: `option` must be a mapping of reader options", file=path)
    if "glob" in entry:
        sources = sorted(globlib.glob(os.path.join(base, entry["glob"])))
        if not sources:
            raise MappingError(f"job {index + 1}: glob {entry['glob']!r} matches no file", file=path)
    else:
        sources = [os.path.join(base, entry["source"])]
    table = entry["map"]
    if not os.path.isabs(table) and os.path.exists(os.path.join(base, table)):
        table = os.path.join(base, table)  # else a shipped table name such as caffe/mtcnn_pnet
    jobs = []
    for src in sources:
        stem = os.path.splitext(os.path.basename(os.path.normpath(src)))[0]
        try:
            out = entry["out"].format(stem=stem, name=os.path.basename(src),
                                      parent=os.path.basename(os.path.dirname(src)))
        except (KeyError, IndexError, ValueError) as e:
            raise MappingError(f"job {index + 1}: `out` template {entry['out']!r}: {e}; fields: stem, name, parent",
                               file=path) from None
        jobs.append(Job(source=src, out=os.path.join(base, out), map=table, framework=entry.get("from"),
                        options=dict(options), allow_unused=bool(entry.get("allow_unused")),
                        allow_missing=bool(entry.get("allow_missing")), target=entry.get("target"), entry=index))
    return jobs


def up_to_date(job: Job) -> bool:
    """The output exists and records this very source and table (sha256 of both)."""
    if not os.path.isfile(job.out):
        return False
    from . import provenance, read
    from .mapping import spec as mapping_spec

    try:
        with read(job.out) as f:
            recorded = f.meta.get("provenance") or f.meta.get("metadata") or {}
        table = mapping_spec.load(job.map)
    except ConvertersError:
        return False
    files = provenance.source_files(job.source)
    return (bool(files) and recorded.get("mapping_sha256") == table.sha256
            and recorded.get("source_sha256") == provenance.sha256_files(files))


def run_job(job: Job, force: bool = False) -> JobResult:
    """One conversion; never raises: a failure is a row with the one-line error."""
    start = time.perf_counter()
    result = JobResult(job.source, job.out, "ok")
    try:
        if not force and up_to_date(job):
            result.status, result.message = "skipped", "up to date (provenance matches)"
        else:
            from .convert import convert

            os.makedirs(os.path.dirname(os.path.abspath(job.out)), exist_ok=True)
            _, report = convert(job.source, job.map, job.target, job.out, framework=job.framework,
                                allow_unused=job.allow_unused, allow_missing=job.allow_missing, force=True,
                                progress=False, reader_options=job.options or None)
            result.assignments = len(report.rows)
            result.bytes_written = os.path.getsize(job.out)
    except ConvertersError as e:
        result.status, result.message = "failed", str(e)
    except Exception as e:  # a bug must not take the other jobs down; it is reported as such
        result.status, result.message = "failed", f"internal error {type(e).__name__}: {e}"
    result.seconds = round(time.perf_counter() - start, 3)
    return result


def run_batch(jobs: list[Job], *, workers: int | None = None, engine: str = "local", force: bool = False,
              on_result=None) -> list[JobResult]:
    """Run every job; results in job order. engine: local (process pool; workers=0 runs in this
    process) or ray (one Ray task per file; RAY_ADDRESS picks a cluster, else a local instance)."""
    if engine == "ray":
        return _run_ray(jobs, workers, force, on_result)
    if engine != "local":
        raise ConvertersError(f"unknown engine {engine!r}: local or ray")
    if workers == 0:
        results = []
        for job in jobs:
            results.append(run_job(job, force))
            if on_result:
                on_result(results[-1])
        return results
    workers = workers or min(len(jobs), os.cpu_count() or 1)
    # spawn: workers start clean (no inherited threads or TensorFlow state from the caller)
    ctx = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
        futures = {pool.submit(run_job, job, force): i for i, job in enumerate(jobs)}
        return _gather(jobs, futures, concurrent.futures.as_completed(futures), on_result)


def _gather(jobs, futures, completed, on_result) -> list[JobResult]:
    results = [None] * len(jobs)
    for fut in completed:
        i = futures[fut]
        try:
            results[i] = fut.result()
        except Exception as e:  # the worker process itself died (killed, out of memory)
            results[i] = JobResult(jobs[i].source, jobs[i].out, "failed",
                                   message=f"worker died: {type(e).__name__}: {e}")
        if on_result:
            on_result(results[i])
    return results


def _run_ray(jobs, workers, force, on_result) -> list[JobResult]:
    try:
        import ray
    except ImportError:
        from .errors import MissingDependencyError

        raise MissingDependencyError("--engine ray needs Ray", hint="pip install 'weightport[batch]'") from None
    started = not ray.is_initialized()
    if started:
        ray.init(address=os.environ.get("RAY_ADDRESS"), num_cpus=workers or None, include_dashboard=False,
                 log_to_driver=False, configure_logging=False)
    try:
        task = ray.remote(run_job)
        refs = [task.remote(job, force) for job in jobs]
        index = {ref: i for i, ref in enumerate(refs)}
        results, pending = [None] * len(jobs), list(refs)
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            i = index[done[0]]
            try:
                results[i] = ray.get(done[0])
            except Exception as e:  # a task whose worker died
                results[i] = JobResult(jobs[i].source, jobs[i].out, "failed", message=f"ray task failed: {e}")
            if on_result:
                on_result(results[i])
        return results
    finally:
        if started:
            ray.shutdown()


def summary(results: list[JobResult]) -> dict:
    counts = {s: sum(r.status == s for r in results) for s in ("ok", "skipped", "failed")}
    return {**counts, "jobs": len(results), "seconds": round(sum(r.seconds for r in results), 3),
            "results": [asdict(r) for r in results]}
