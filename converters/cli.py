"""The `convert` command (also `python -m converters`).

    convert inspect PATH [--from F] [--filter REGEX] [--json]
    convert --from F --map TABLE IN OUT [--verify]   (see `convert --help`)
    convert verify IN --map TABLE             parity: exit 0 pass, 1 differ, 2 error (docs/parity.md)
    convert reference IN --map TABLE REF.npz  record the source framework's answers

User errors print one line and exit 2; nothing here lets a traceback reach the terminal.
"""
from __future__ import annotations

import argparse
import json
import re
import sys

from .errors import ConvertersError

SUBCOMMANDS = {}


def subcommand(name):
    def register(fn):
        SUBCOMMANDS[name] = fn
        return fn
    return register


def _human_bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


@subcommand("inspect")
def cmd_inspect(argv) -> int:
    from . import read
    from .readers import FRAMEWORKS

    p = argparse.ArgumentParser(prog="convert inspect", description="List the arrays of a weight file.")
    p.add_argument("path")
    p.add_argument("--from", dest="framework", choices=FRAMEWORKS)
    p.add_argument("--filter", metavar="REGEX", help="only arrays whose name matches (re.search)")
    p.add_argument("--json", action="store_true", help="print a JSON list instead of a table")
    args = p.parse_args(argv)
    try:
        pattern = re.compile(args.filter) if args.filter else None
    except re.error as e:
        raise ConvertersError(f"--filter is not a valid regular expression: {e}") from None
    with read(args.path, args.framework) as f:
        rows = [a for a in f.values() if pattern is None or pattern.search(a.name)]
        if args.json:
            print(json.dumps([{"name": a.name, "shape": list(a.shape), "dtype": str(a.dtype),
                               "nbytes": a.nbytes, **{k: v for k, v in a.meta.items() if _jsonable(v)}}
                              for a in rows], indent=1))
            return 0
        print_table(f, rows)
    return 0


def _jsonable(v) -> bool:
    return isinstance(v, (str, int, float, bool, type(None), list))


def print_table(f, rows) -> None:
    headers = ("name", "shape", "dtype", "size", "role")
    table = [(a.name, "x".join(map(str, a.shape)) or "scalar", str(a.dtype), _human_bytes(a.nbytes), a.role or "")
             for a in rows]
    width = [max([len(h)] + [len(r[i]) for r in table]) for i, h in enumerate(headers)]
    width[0] = min(width[0], 80)
    fmt = "  ".join(f"{{:{'<' if i != 3 else '>'}{w}}}" for i, w in enumerate(width))
    meta = f.meta
    extra = ", ".join(f"{k} {meta[k]}" for k in ("format", "version") if meta.get(k))
    print(f"{f.path}: {f.framework}" + (f" ({extra})" if extra else ""))
    print(fmt.format(*headers).rstrip())
    print(fmt.format(*("-" * w for w in width)).rstrip())
    for r in table:
        name = r[0] if len(r[0]) <= 80 else "..." + r[0][-77:]
        print(fmt.format(name, *r[1:]).rstrip())
    total = sum(a.nbytes for a in rows)
    params = sum(a.size for a in rows)
    by_role = {}
    for a in rows:
        by_role[a.role or "unknown"] = by_role.get(a.role or "unknown", 0) + 1
    print(f"{len(rows)} arrays, {params:,} values, {_human_bytes(total)}"
          + (f" (of {len(f)} arrays)" if len(rows) != len(f) else "")
          + ("; " + ", ".join(f"{n} {r}" for r, n in by_role.items()) if by_role else ""))


def _register_lazy_subcommands():
    """Subcommands living in other modules, imported only when named."""
    def lazy(module, fn):
        def run(argv):
            import importlib

            return getattr(importlib.import_module(module, __package__), fn)(argv)
        return run
    SUBCOMMANDS.setdefault("convert", lazy(".convert", "cmd_convert"))
    SUBCOMMANDS.setdefault("maps", lazy(".convert", "cmd_maps"))
    SUBCOMMANDS.setdefault("verify", lazy(".parity.verify", "cmd_verify"))
    SUBCOMMANDS.setdefault("reference", lazy(".parity.reference", "cmd_reference"))


_register_lazy_subcommands()


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if argv and argv[0] in SUBCOMMANDS:
            return SUBCOMMANDS[argv[0]](argv[1:])
        if argv and argv[0] in ("-h", "--help") or not argv:
            print(__doc__.strip())
            print("\nsubcommands: " + ", ".join(sorted(SUBCOMMANDS)))
            return 0 if argv else 2
        if "convert" in SUBCOMMANDS:
            return SUBCOMMANDS["convert"](argv)
        print(f"convert: unknown subcommand {argv[0]!r}", file=sys.stderr)
        return 2
    except ConvertersError as e:
        print(f"convert: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("convert: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
    except OSError as e:  # unreadable paths, permissions, disk full
        print(f"convert: error: {e.filename or ''}: {e.strerror or e}", file=sys.stderr)
        return 2


# Modules that register further subcommands with @subcommand when imported (kept at the bottom:
# they import this module). Add a module name here to plug in a subcommand.
_SUBCOMMAND_MODULES = ("diff", "draft")
for _name in _SUBCOMMAND_MODULES:
    __import__(f"{__package__}.{_name}")
