"""`convert [convert] --from F --map TABLE IN OUT`: convert a weight file with a mapping table
(converters.convert.convert), optionally verify the written file against the source framework."""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys

from . import args as A

HELP = "convert a weight file with a mapping table (the default subcommand)"


def add_arguments(p) -> None:
    p.add_argument("input", help="the source weight file")
    p.add_argument("output", nargs="?", help=".pth/.pt or .safetensors (omit with --dry-run)")
    A.add_from(p)
    A.add_map(p)
    A.add_target(p)
    p.add_argument("--dry-run", action="store_true", help="print the plan, check shapes, read no data")
    p.add_argument("--force", action="store_true", help="overwrite an existing output")
    p.add_argument("--allow-unused", action="store_true", help="accept source arrays no rule uses")
    p.add_argument("--allow-missing", action="store_true", help="accept target tensors nothing fills")
    p.add_argument("--no-fsync", dest="fsync", action="store_false",
                   help="do not flush the output to disk before renaming it into place (faster; a crash "
                        "right after may leave an empty or partial file where the output was)")
    p.add_argument("--no-source-hash", dest="hash_source", action="store_false",
                   help="do not record the source's sha256 in the output's provenance (saves reading the source "
                        "twice); its size and mtime are recorded instead, and `convert batch` resumes on those")
    p.add_argument("--report", metavar="PATH", dest="json",
                   help="write the coverage report as JSON to PATH ('-': stdout); same as --json-out")
    A.add_json(p, help="print the coverage report as JSON")
    A.add_option(p)
    p.add_argument("--verify", action="store_true",
                   help="after writing, run the source framework and the written model on the same inputs "
                        "(convert verify); exit 1 when they differ")
    p.add_argument("--source-python", metavar="PATH", help="with --verify: interpreter with the source framework")
    p.add_argument("--architecture", help="with --verify: the file the source framework needs (prototxt, symbol)")
    A.add_quiet(p)


def run(args) -> int:
    from ..convert import convert
    from ..errors import ConvertersError, CoverageError

    if args.verify and args.dry_run:
        raise ConvertersError("--verify needs a written output, not --dry-run")
    if not args.dry_run and not args.output:
        raise ConvertersError("give an output path (or --dry-run)", hint="convert --from F --map TABLE IN OUT")
    options = A.parse_options(args.option)
    rep = None
    text = sys.stderr if args.json == "-" else sys.stdout  # stdout carries the JSON alone
    made = None if args.dry_run else _make_parent(args.output)
    try:
        _, rep = convert(args.input, args.map, args.target, None if args.dry_run else args.output,
                         framework=args.framework, target_kwargs=args.target_kwargs,
                         allow_unused=args.allow_unused, allow_missing=args.allow_missing, dry_run=args.dry_run,
                         force=args.force, progress=A.progress_enabled(args),
                         reader_options=A.reader_options_of(options, args.framework, args.input),
                         fsync=args.fsync, hash_source=args.hash_source)
    except CoverageError as e:
        rep = e.report
        print(rep.problem_table(), file=sys.stderr)
        _remove_made(made)
        raise
    except BaseException:
        _remove_made(made)
        raise
    finally:
        if args.json and rep is not None:
            A.write_output(args.json, json.dumps(rep.to_dict(), indent=1))
    if args.dry_run and not args.quiet:
        print(rep.plan_table(), file=text)
    if not args.quiet:
        print(str(rep) if not args.dry_run else f"dry run: {rep.summary()}", file=text)
        if rep.output:
            print(f"wrote {rep.output}", file=text)
    if args.verify:
        return _verify_written(args, options)
    return 0


def _make_parent(output):
    """Create the output's missing folders (`convert ... out/net.pth`); returns the ones made, deepest first."""
    made, parent = [], os.path.dirname(os.path.abspath(output))
    while not os.path.isdir(parent):
        made.append(parent)
        parent = os.path.dirname(parent)
    if made:
        os.makedirs(made[0])
    return made


def _remove_made(made) -> None:
    """A failed conversion leaves none of the folders it made behind (only while they are empty)."""
    for folder in made or ():
        try:
            os.rmdir(folder)
        except OSError:
            return


def _verify_written(args, options) -> int:
    """`--verify`: the written file, loaded into the target, against the source framework."""
    from ..parity.verify import verify
    from ..target import load_converted
    from .verify import emit

    model = load_converted(args.output, args.map, args.target, args.target_kwargs)
    with A.activity(args, "verifying"):
        rep = verify(args.input, args.map, args.target, framework=args.framework, model=model,
                     reader_options=options, source_python=args.source_python, architecture=args.architecture)
    # the coverage report keeps --json; verify prints its text (to stderr when stdout carries the JSON)
    with contextlib.redirect_stdout(sys.stderr) if args.json == "-" else contextlib.nullcontext():
        emit(rep, argparse.Namespace(quiet=args.quiet))
    return rep.exit_code
