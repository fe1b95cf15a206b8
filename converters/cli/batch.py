"""`convert batch JOBS.yaml`: convert a model zoo (converters.batch), locally or on Ray."""
from __future__ import annotations

import json
import sys

from . import args as A

HELP = "convert many files from a jobs file (process pool or Ray); resumable, one summary"
# SIGTERM keeps its default (the process ends at once): raised here, it would leave the process
# pool's shutdown waiting for every queued job (converters/batch.py does not cancel them).
RAISE_ON_TERM = False


def add_arguments(p) -> None:
    p.add_argument("jobs", help="jobs file (YAML): a list of {source|glob, map, out, from, option}, docs/batch.md")
    p.add_argument("--workers", type=int, default=None, metavar="N",
                   help="parallel conversions (default: one per core; 0: in this process)")
    p.add_argument("--engine", choices=("local", "ray"), default="local",
                   help="local process pool (default) or Ray tasks (RAY_ADDRESS picks a cluster)")
    p.add_argument("--force", action="store_true", help="reconvert outputs that are up to date")
    p.add_argument("--report", metavar="PATH", dest="json",
                   help="write the JSON report to PATH ('-': stdout); same as --json-out")
    A.add_json(p, help="print the JSON report")
    A.add_quiet(p)


def run(args) -> int:
    from ..batch import load_jobs, run_batch, summary

    jobs = load_jobs(args.jobs)
    text = sys.stderr if args.json == "-" else sys.stdout

    def show(r):
        if not args.quiet or r.status == "failed":
            why = f"\n         {r.message}" if r.status == "failed" else ""
            print(f"{r.status:8s} {r.seconds:7.2f}s  {r.source} -> {r.out}{why}", file=text, flush=True)
    results = run_batch(jobs, workers=args.workers, engine=args.engine, force=args.force, on_result=show)
    s = summary(results)
    if args.json:
        A.write_output(args.json, json.dumps(s, indent=1))
    print(f"batch: {s['jobs']} jobs: {s['ok']} converted, {s['skipped']} up to date, {s['failed']} failed "
          f"({s['seconds']:.1f} s of work)", file=text)
    return 2 if s["failed"] else 0
