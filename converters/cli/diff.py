"""`convert diff A B`: compare two weight files of any readable formats, tensor by tensor
(converters.diff). Exit 0 same, 1 different, 2 usage or format error."""
from __future__ import annotations

from ..errors import ConvertersError
from . import args as A

HELP = "compare two weight files of any formats, tensor by tensor (exit 1 when they differ)"


def add_arguments(p) -> None:
    p.add_argument("a", help="first weight file")
    p.add_argument("b", help="second weight file")
    A.add_from(p, dest="from_a", flag="--from-a", help="format of A (detected when omitted)")
    A.add_from(p, dest="from_b", flag="--from-b", help="format of B (detected when omitted)")
    p.add_argument("--atol", type=float, default=0.0, help="absolute tolerance (default 0: bit-exact)")
    p.add_argument("--rtol", type=float, default=0.0, help="relative tolerance (default 0)")
    p.add_argument("--rename", action="append", default=[], metavar="REGEX=REPL",
                   help="rewrite B's names with re.sub before matching (repeatable, applied in order)")
    p.add_argument("--ignore-dtype", action="store_true", help="equal values in different dtypes count as same")
    A.add_json(p, help="print the report as JSON")
    A.add_quiet(p, help="print only the verdict line")
    p.set_defaults(_parser=p)


def run(args) -> int:
    from ..diff import diff_files

    for rule in args.rename:
        if "=" not in rule:
            args._parser.error(f"--rename {rule!r}: expected REGEX=REPL")
    if args.atol < 0 or args.rtol < 0:
        raise ConvertersError("--atol and --rtol must not be negative")
    with A.activity(args, "comparing"):
        report = diff_files(args.a, args.b, from_a=args.from_a, from_b=args.from_b, atol=args.atol, rtol=args.rtol,
                            rename=args.rename, check_dtype=not args.ignore_dtype)
    if args.json:
        A.write_output(args.json, report.to_json(indent=1))
    else:
        print(str(report).splitlines()[0] if args.quiet else report)
    return 0 if report.same else 1
