"""`convert inspect PATH`: the arrays of a weight file (names, shapes, dtypes, sizes, roles), and
the provenance an output of ours records (tool, source file and sha256, mapping)."""
from __future__ import annotations

import json
import re

from ..errors import ConvertersError
from . import args as A

HELP = "list the arrays of a weight file (and the provenance of one we wrote)"


def add_arguments(p) -> None:
    p.add_argument("path")
    A.add_from(p)
    p.add_argument("--filter", metavar="REGEX", help="only arrays whose name matches (re.search)")
    A.add_option(p)
    A.add_json(p, help="print a JSON list of the arrays instead of a table")
    A.add_quiet(p, help="print only the totals line")


def run(args) -> int:
    from .. import read

    try:
        pattern = re.compile(args.filter) if args.filter else None
    except re.error as e:
        raise ConvertersError(f"--filter is not a valid regular expression: {e}") from None
    with read(args.path, args.framework, **A.parse_options(args.option)) as f:
        rows = [a for a in f.values() if pattern is None or pattern.search(a.name)]
        if args.json:
            A.write_output(args.json, json.dumps([_row(a) for a in rows], indent=1))
            return 0
        if not args.quiet:
            print_header(f)
            print_table(rows)
        print(totals_line(f, rows))
    return 0


def _row(a) -> dict:
    return {"name": a.name, "shape": list(a.shape), "dtype": str(a.dtype), "nbytes": a.nbytes,
            **{k: v for k, v in a.meta.items() if _jsonable(v)}}


def _jsonable(v) -> bool:
    return isinstance(v, (str, int, float, bool, type(None), list))


def human_bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def provenance(f) -> dict:
    """What converters recorded in an output it wrote (safetensors __metadata__, .pth _metadata), or {}."""
    for recorded in (f.meta.get("metadata"), f.meta.get("provenance")):
        if isinstance(recorded, dict) and str(recorded.get("tool", "")).startswith("converters"):
            return recorded
    return {}


def print_header(f) -> None:
    meta = f.meta
    extra = ", ".join(f"{k} {meta[k]}" for k in ("format", "version") if meta.get(k))
    print(f"{f.path}: {f.framework}" + (f" ({extra})" if extra else ""))
    recorded = provenance(f)
    if recorded:
        print("written by " + recorded.get("tool", "converters") + ": "
              + ", ".join(f"{k} {recorded[k]}" for k in ("source_file", "source_framework", "source_sha256",
                                                        "mapping", "mapping_sha256", "created") if recorded.get(k)))


def print_table(rows) -> None:
    headers = ("name", "shape", "dtype", "size", "role")
    table = [(a.name, "x".join(map(str, a.shape)) or "scalar", str(a.dtype), human_bytes(a.nbytes), a.role or "")
             for a in rows]
    width = [max([len(h)] + [len(r[i]) for r in table]) for i, h in enumerate(headers)]
    width[0] = min(width[0], 80)
    fmt = "  ".join(f"{{:{'<' if i != 3 else '>'}{w}}}" for i, w in enumerate(width))
    print(fmt.format(*headers).rstrip())
    print(fmt.format(*("-" * w for w in width)).rstrip())
    for r in table:
        name = r[0] if len(r[0]) <= 80 else "..." + r[0][-77:]
        print(fmt.format(name, *r[1:]).rstrip())


def totals_line(f, rows) -> str:
    by_role = {}
    for a in rows:
        by_role[a.role or "unknown"] = by_role.get(a.role or "unknown", 0) + 1
    return (f"{len(rows)} arrays, {sum(a.size for a in rows):,} values, {human_bytes(sum(a.nbytes for a in rows))}"
            + (f" (of {len(f)} arrays)" if len(rows) != len(f) else "")
            + ("; " + ", ".join(f"{n} {r}" for r, n in by_role.items()) if by_role else ""))
