"""`convert batch`: a model zoo converted from one jobs file, in a process pool or on a Ray cluster.

Each job is one ordinary `converters.convert.convert(...)` call, so coverage, atomic outputs and
provenance are what a single conversion gives. What batching adds is only what a zoo needs: a
failing file never stops the others, every job ends as a row of the summary (ok, skipped or
failed with the one-line error), and a rerun skips outputs whose recorded provenance (source and
table sha256, or for outputs written without the source hash the source files' size and mtime)
still matches, so an interrupted batch resumes where it stopped. A stopped batch (SIGTERM,
Ctrl-C) cancels what has not finished and leaves no partial output. Scheduling is left to the
standard library's process pool or to Ray; nothing here schedules by hand.

Jobs file (YAML; relative paths are relative to the jobs file):

    defaults: {from: onnx, map: tables/net.yaml, option: {}}   # optional, merged into each job
    jobs:
      - {source: a.onnx, out: out/a.safetensors}
      - {glob: 'zoo/*.onnx', out: 'out/{stem}.pth'}            # one job per match; {stem} {name} {parent}

or just the list of jobs.
"""
from __future__ import annotations

import concurrent.futures
import glob
import multiprocessing
import os
import signal
import threading
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
    status: str                   # ok | skipped | failed | cancelled (the batch was stopped first)
    seconds: float = 0.0
    message: str = ""             # the error; why an existing output was reconverted; why it was skipped
    assignments: int = 0
    bytes_written: int = 0
    checked_by: str = ""          # skipped: "sha256", or "fingerprint" (size + mtime only: weaker)


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
    """The jobs of one entry (defaults merged in): checked first, so a bad entry fails before anything runs."""
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
        sources = sorted(glob.glob(os.path.join(base, entry["glob"])))
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


def check_output(job: Job) -> tuple[str, str]:
    """Whether job.out is up to date: ("sha256" or "fingerprint", why) when it is, ("", why not)
    when not; why is "" when there is no output yet, or when the conversion itself will report the
    problem (a missing source or table). An output written without the source hash
    (--no-source-hash) records the source files' size and mtime instead: matching on them is
    cheaper and weaker, which the row says."""
    if not os.path.isfile(job.out):
        return "", ""
    from . import provenance, read
    from .mapping import spec as mapping_spec

    try:
        with read(job.out) as f:
            recorded = f.meta.get("provenance") or f.meta.get("metadata") or {}
    except ConvertersError as e:
        return "", f"the output cannot be read ({e})"
    try:
        table = mapping_spec.load(job.map)
    except ConvertersError:
        return "", ""
    files = provenance.source_files(job.source)
    if not files:
        return "", ""
    if not recorded.get("mapping_sha256"):
        return "", "the output records no converters provenance"
    if recorded["mapping_sha256"] != table.sha256:
        return "", "the table changed (its sha256 differs from the one the output records)"
    if recorded.get("source_sha256"):
        if recorded["source_sha256"] == provenance.sha256_files(files):
            return "sha256", "up to date (source and table sha256 match)"
        return "", "the source changed (its sha256 differs from the one the output records)"
    if recorded.get("source_fingerprint"):
        if recorded["source_fingerprint"] == provenance.fingerprint(job.source):
            return "fingerprint", ("up to date by the source files' size and mtime only (the output records no "
                                   "source sha256: written with --no-source-hash); table sha256 matches")
        return "", "the source changed (size or mtime differs from what the output records; no sha256 recorded)"
    return "", "the output records neither a source sha256 nor a source fingerprint"


def run_job(job: Job, force: bool = False, hash_source: bool = True) -> JobResult:
    """One conversion; never raises an Exception: a failure is a row with the one-line error."""
    start = time.perf_counter()
    result = JobResult(job.source, job.out, "ok")
    try:
        checked_by, why = ("", "") if force else check_output(job)
        if checked_by:
            result.status, result.message, result.checked_by = "skipped", why, checked_by
        else:
            from .convert import convert

            os.makedirs(os.path.dirname(os.path.abspath(job.out)), exist_ok=True)
            _, report = convert(job.source, job.map, job.target, job.out, framework=job.framework,
                                allow_unused=job.allow_unused, allow_missing=job.allow_missing, force=True,
                                progress=False, reader_options=job.options or None, hash_source=hash_source)
            result.assignments = len(report.rows)
            result.bytes_written = os.path.getsize(job.out)
            result.message = f"reconverted: {why}" if why else ""
    except ConvertersError as e:
        result.status, result.message = "failed", str(e)
    except Exception as e:  # a bug must not take the other jobs down; it is reported as such
        result.status, result.message = "failed", f"internal error {type(e).__name__}: {e}"
    result.seconds = round(time.perf_counter() - start, 3)
    return result


def run_batch(jobs: list[Job], *, workers: int | None = None, engine: str = "local", force: bool = False,
              hash_source: bool = True, on_result=None) -> list[JobResult]:
    """Run every job; results in job order. engine: local (process pool; workers=0 runs in this
    process) or ray (one Ray task per file; RAY_ADDRESS picks a cluster, else a local instance).

    Interrupted (KeyboardInterrupt, or the CLI's SIGTERM exception, raised in this thread): nothing
    more starts, running conversions are stopped (each writer removes its temporary file; partials
    of workers that had to be killed are removed here), and the exception is re-raised carrying
    `batch_results`: the finished rows (an output completed while stopping included), the others
    `cancelled`. A rerun resumes from there."""
    if engine not in ("local", "ray"):
        raise ConvertersError(f"unknown engine {engine!r}: local or ray")
    results = [None] * len(jobs)
    before = [_identity(job.out) for job in jobs]

    def done(i, result):
        results[i] = result
        if on_result:
            on_result(result)
    try:
        if engine == "ray":
            _run_ray(jobs, workers, (force, hash_source), done)
        elif workers == 0:
            for i, job in enumerate(jobs):
                done(i, run_job(job, force, hash_source))
        else:
            _run_pool(jobs, workers or min(len(jobs), os.cpu_count() or 1), (force, hash_source), done)
    except BaseException as e:
        _settle_stopped(jobs, results, before, stopped_by(e), done)
        e.batch_results = results
        raise
    return results


def _identity(path):
    """What tells an output this batch moved into place from the file that was there before: the
    atomic writer renames a new file (a new inode) over it."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size


def _settle_stopped(jobs, results, before, signame, done) -> None:
    """The rows of jobs with no result when the batch stopped. A job whose output was moved into
    place (its worker stopped before it could return, or the stop came as it returned) is `ok`:
    the file is complete and a rerun skips it, so the report must not call it cancelled. The
    others are `cancelled`, and the partials of their killed workers are removed."""
    for i, job in enumerate(jobs):
        if results[i] is not None:
            continue
        now = _identity(job.out)
        if now is not None and now != before[i]:
            done(i, JobResult(job.source, job.out, "ok", bytes_written=now[3],
                              message=f"completed as the batch was stopped by {signame}"))
        else:
            results[i] = JobResult(job.source, job.out, "cancelled",
                                   message=f"cancelled: the batch was stopped by {signame}")
    _remove_partials([job.out for job, r in zip(jobs, results) if r.status == "cancelled"])


def _remove_partials(outs) -> None:
    """The temporary files of workers killed mid-write (their processes are gone). The writers
    import torch (seconds): only imported when such a file is there."""
    def has_partial(out):
        directory, name = os.path.split(os.path.abspath(out))
        return glob.glob(os.path.join(glob.escape(directory), glob.escape(f".{name}.") + "*.partial"))

    if any(has_partial(out) for out in outs):
        from .writers import remove_stale_partials

        for out in outs:
            remove_stale_partials(out)


def stopped_by(exc: BaseException) -> str:
    """SIGTERM / SIGINT / ... for a signal's exception, else the exception's type."""
    if getattr(exc, "signum", None):
        return signal.Signals(exc.signum).name
    return "SIGINT" if isinstance(exc, KeyboardInterrupt) else type(exc).__name__


def _run_pool(jobs, workers, args, done) -> None:
    # spawn: workers start clean (no inherited threads or TensorFlow state from the caller)
    ctx = multiprocessing.get_context("spawn")
    pool = concurrent.futures.ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_worker_init)
    futures, left = {}, set()
    try:
        futures.update({pool.submit(_worker_job, job, *args): i for i, job in enumerate(jobs)})
        left.update(futures)
        for fut in concurrent.futures.as_completed(futures):
            left.discard(fut)
            done(futures[fut], _pool_result(jobs[futures[fut]], fut))
    except BaseException:
        _stop_pool(pool)
        for fut in left:  # finished while the pool was being stopped
            if fut.done() and not fut.cancelled() and fut.exception() is None:
                done(futures[fut], fut.result())
        raise
    pool.shutdown()


def _pool_result(job, fut) -> JobResult:
    try:
        return fut.result()
    except Exception as e:  # the worker process itself died (killed, out of memory)
        return JobResult(job.source, job.out, "failed", message=f"worker died: {type(e).__name__}: {e}")


def _stop_pool(pool) -> None:
    """Cancel the queued jobs, SIGTERM the workers (a running conversion unwinds, removing its
    temporary file), SIGKILL those still alive after a few seconds."""
    procs = list((pool._processes or {}).values())  # no public handle before Python 3.14's terminate_workers()
    manager = pool._executor_manager_thread
    pool.shutdown(wait=False, cancel_futures=True)
    for p in procs:
        p.terminate()
    deadline = time.monotonic() + 5
    for p in procs:
        p.join(max(0.0, deadline - time.monotonic()))
        if p.is_alive():
            p.kill()
            p.join()
    if manager is not None:
        manager.join(5)


_IN_JOB = False


class _Stop(BaseException):
    """SIGTERM in a pool worker during a job: unwinds it (the writer removes its temporary file)."""


def _worker_init() -> None:
    # Ctrl-C reaches the whole process group: the parent decides, and stops the workers with SIGTERM
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _worker_term)


def _worker_term(signum, frame):
    if not _IN_JOB:
        os._exit(128 + signum)
    raise _Stop(signum)


def _worker_job(job, force, hash_source) -> JobResult:
    """run_job in a pool worker; SIGTERM ends the worker once the job has unwound."""
    global _IN_JOB
    try:
        _IN_JOB = True
        return run_job(job, force, hash_source)
    except _Stop as e:
        os._exit(128 + e.args[0])
    finally:
        _IN_JOB = False


def _run_ray(jobs, workers, args, done) -> None:
    """One task per job on RAY_ADDRESS's cluster, or on a local Ray started (and shut down) here.
    A signal during ray.init is held until it returns: Ray is then shut down as after any stop."""
    try:
        import ray
    except ImportError:
        from .errors import MissingDependencyError

        raise MissingDependencyError("--engine ray needs Ray", hint="pip install 'weightport[batch]'") from None
    started = not ray.is_initialized()
    try:
        if started:
            with _DeferredSignals(hold_handlers=True):
                ray.init(address=os.environ.get("RAY_ADDRESS"), num_cpus=workers or None, include_dashboard=False,
                         log_to_driver=False, configure_logging=False)
        task = ray.remote(run_job)
        refs = [task.remote(job, *args) for job in jobs]
        _gather_ray(ray, jobs, refs, done)
    finally:
        if started:
            ray.shutdown()


def _gather_ray(ray, jobs, refs, done) -> None:
    """Rows as the tasks finish. Stopped: the running tasks are cancelled (they get
    KeyboardInterrupt: the writer removes its temporary file) and what finished meanwhile is kept."""
    index = {ref: i for i, ref in enumerate(refs)}
    pending = list(refs)

    def take(ref):
        i = index[ref]
        try:
            done(i, ray.get(ref))
        except Exception as e:  # a task whose worker died
            done(i, JobResult(jobs[i].source, jobs[i].out, "failed", message=f"ray task failed: {e}"))
    try:
        with _DeferredSignals() as signals:
            while pending:
                ready, pending = ray.wait(pending, num_returns=1, timeout=0.25)
                for ref in ready:
                    take(ref)
                signals.deliver()
    except BaseException:
        for ref in pending:
            ray.cancel(ref)
        ready, _ = ray.wait(pending, num_returns=len(pending), timeout=10) if pending else ([], [])
        for ref in ready:  # finished before the cancel reached it, or cancelled
            try:
                result = ray.get(ref)
            except Exception:  # cancelled: run_batch gives it its row
                continue
            done(index[ref], result)
        raise


class _DeferredSignals:
    """SIGINT / SIGTERM / SIGHUP noted while Ray's calls run, and handed to the handler that was in
    place (the CLI's raises) by deliver() or on leaving the block: an exception raised inside
    Ray's C++ wait comes out as a SystemError, and one raised inside ray.init leaves Ray half
    started. A second signal ends the process at once (as a second Ctrl-C does in the CLI).

    hold_handlers (around ray.init): ray.init installs its own SIGTERM handlers (sys.exit(15), and
    for a local node one that kills it and exits 1), which would end the batch without its summary
    or report. Like Ray's own DeferSigint, signal.signal is patched for the block so that those
    are not installed for the signals deferred here: SIGTERM stays the caller's."""

    _NAMES = ("SIGINT", "SIGTERM", "SIGHUP")

    def __init__(self, hold_handlers: bool = False):
        self.hold_handlers, self.previous, self.signum, self._signal = hold_handlers, {}, None, None

    def __enter__(self):
        if threading.current_thread() is not threading.main_thread():
            return self  # signal handlers belong to the main thread: nothing to defer
        for name in self._NAMES:
            sig = getattr(signal, name, None)
            if sig is not None and signal.getsignal(sig) not in (signal.SIG_IGN, None):
                self.previous[sig] = signal.signal(sig, self._note)
        if self.hold_handlers:
            self._signal, signal.signal = signal.signal, self._held
        return self

    def _held(self, sig, handler):
        if sig in self.previous:
            return self._note
        return self._signal(sig, handler)

    def _note(self, signum, frame):
        if self.signum is None:
            self.signum = signum
            return
        self._restore()  # the second signal: its default action, now
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)

    def deliver(self):
        if self.signum is not None:
            self._restore()
            signal.raise_signal(self.signum)  # the restored handler runs now

    def _restore(self):
        if self._signal is not None:
            signal.signal, self._signal = self._signal, None
        for sig, old in self.previous.items():
            signal.signal(sig, old)
        self.previous = {}

    def __exit__(self, exc_type, *exc):
        if exc_type is None:
            self.deliver()
        self._restore()


def summary(results: list[JobResult], stopped: str = "") -> dict:
    """Counts and rows. skipped_on_fingerprint: skipped rows matched on the source files' size and
    mtime only (no sha256 recorded); stopped: the signal that stopped the batch, if one did."""
    counts = {s: sum(r.status == s for r in results) for s in ("ok", "skipped", "failed", "cancelled")}
    return {**counts, "skipped_on_fingerprint": sum(r.checked_by == "fingerprint" for r in results),
            "jobs": len(results), "stopped_by": stopped or None,
            "seconds": round(sum(r.seconds for r in results), 3), "results": [asdict(r) for r in results]}
