"""`convert batch JOBS.yaml`: convert a model zoo (converters.batch), locally or on Ray."""
from __future__ import annotations

import json
import sys

from . import args as A

HELP = "convert many files from a jobs file (process pool or Ray); resumable, one summary"


def add_arguments(p) -> None:
    p.add_argument("jobs", help="jobs file (YAML): a list of {source|glob, map, out, from, option}, docs/batch.md")
    p.add_argument("--workers", type=int, default=None, metavar="N",
                   help="parallel conversions (default: one per core; 0: in this process)")
    p.add_argument("--engine", choices=("local", "ray"), default="local",
                   help="local process pool (default) or Ray tasks (RAY_ADDRESS picks a cluster)")
    p.add_argument("--force", action="store_true", help="reconvert outputs that are up to date")
    p.add_argument("--no-source-hash", dest="hash_source", action="store_false",
                   help="record the source files' size and mtime instead of their sha256 (a rerun then "
                        "skips on those, a weaker check the summary names)")
    p.add_argument("--report", metavar="PATH", dest="json",
                   help="write the JSON report to PATH ('-': stdout); same as --json-out")
    A.add_json(p, help="print the JSON report")
    A.add_quiet(p)


def run(args) -> int:
    """SIGTERM / SIGHUP / Ctrl-C: converters.batch stops the workers and cancels the rest; the
    summary and report of what finished are still written, then main() exits 128 + signal."""
    from ..batch import load_jobs, run_batch, stopped_by, summary

    jobs = load_jobs(args.jobs)
    text = sys.stderr if args.json == "-" else sys.stdout

    def show(r):
        if args.quiet and r.status != "failed":
            return
        note = " (by size+mtime only: no sha256 recorded)" if r.checked_by == "fingerprint" else ""
        why = f"\n         {r.message}" if r.status == "failed" or r.message.startswith("reconverted") else ""
        print(f"{r.status:8s} {r.seconds:7.2f}s  {r.source} -> {r.out}{note}{why}", file=text, flush=True)
    try:
        results = run_batch(jobs, workers=args.workers, engine=args.engine, force=args.force,
                            hash_source=args.hash_source, on_result=show)
    except BaseException as e:
        if getattr(e, "batch_results", None) is None:
            raise
        _finish(args, text, summary(e.batch_results, stopped_by(e)))
        raise
    s = _finish(args, text, summary(results))
    return 2 if s["failed"] else 0


def _finish(args, text, s) -> dict:
    """The report, then the one-line summary: after a stop too, for what did finish."""
    if args.json:
        A.write_output(args.json, json.dumps(s, indent=1))
    weak = f" ({s['skipped_on_fingerprint']} by size+mtime only)" if s["skipped_on_fingerprint"] else ""
    head = f"batch stopped by {s['stopped_by']}: " if s["stopped_by"] else "batch: "
    rest = f", {s['cancelled']} cancelled" if s["cancelled"] else ""
    print(f"{head}{s['jobs']} jobs: {s['ok']} converted, {s['skipped']} up to date{weak}, {s['failed']} failed"
          f"{rest} ({s['seconds']:.1f} s of work)", file=text)
    return s
