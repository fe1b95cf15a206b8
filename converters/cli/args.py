"""Arguments every subcommand spells the same way, and how their values are parsed.

`--option KEY=VALUE` values are typed (`true`/`false`, integers, floats, else the text), so
`allow_pickle=false` is False and not the truthy string "false"; the reader then checks the key
and the type against its OPTIONS (converters/readers/__init__.py).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import re
import sys
import threading

from ..errors import ConvertersError

_INT = re.compile(r"[+-]?\d+")
_FLOAT = re.compile(r"[+-]?(\d+\.\d*|\.\d+|\d+)([eE][+-]?\d+)?")


def parse_value(text: str):
    """'true'/'false' (any case) -> bool, '12' -> int, '1e-3' -> float, anything else -> the text."""
    low = text.strip().lower()
    if low in ("true", "false"):
        return low == "true"
    if _INT.fullmatch(text.strip()):
        return int(text)
    if _FLOAT.fullmatch(text.strip()):
        return float(text)
    return text


def parse_options(pairs) -> dict:
    """['prototxt=deploy.prototxt', 'allow_pickle=false'] -> {'prototxt': 'deploy.prototxt', 'allow_pickle': False}."""
    options = {}
    for pair in pairs or ():
        key, sep, value = pair.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConvertersError(f"--option takes KEY=VALUE, not {pair!r}", hint="e.g. --option prototxt=deploy.prototxt")
        if key in options:
            raise ConvertersError(f"--option {key} is given twice")
        options[key] = parse_value(value)
    return options


def shape(text: str) -> list[int]:
    """An argparse type: '1,3,224,224', '1x3x224x224' or '[1, 3, 224, 224]' -> [1, 3, 224, 224]."""
    parts = [p for p in re.split(r"[,x\s]+", text.strip().strip("[]()")) if p]
    try:
        dims = [int(p) for p in parts]
    except ValueError:
        dims = []
    if not dims or any(d < 0 for d in dims):
        raise argparse.ArgumentTypeError(f"{text!r}: comma-separated non-negative integers, e.g. 1,3,224,224")
    return dims


def json_object(text: str) -> dict:
    """An argparse type: a JSON object (keyword arguments)."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise argparse.ArgumentTypeError(f"not valid JSON: {e}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError('a JSON object, e.g. \'{"num_classes": 10}\'')
    return value


def add_from(p, dest="framework", flag="--from", extra=(), help=None) -> None:
    from ..readers import FRAMEWORKS

    p.add_argument(flag, dest=dest, choices=sorted(set(FRAMEWORKS) | set(extra)), metavar="FRAMEWORK",
                   help=help or f"source format (detected when omitted): {', '.join(sorted(set(FRAMEWORKS) | set(extra)))}")


def add_map(p, required=True) -> None:
    p.add_argument("--map", required=required, metavar="TABLE",
                   help="mapping table: a path or a shipped name (see `convert maps`)")


def add_option(p) -> None:
    p.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                   help="reader option, typed (true/false, numbers, else text), e.g. prototxt=deploy.prototxt; "
                        "repeatable; unknown keys are rejected")


def add_target(p, help="package.module:callable or file.py:callable (overrides the table's target)") -> None:
    p.add_argument("--target", metavar="MODULE:CALLABLE", help=help)
    p.add_argument("--target-kwargs", type=json_object, default=None, metavar="JSON",
                   help="keyword arguments for the target, a JSON object")


def add_input_shape(p, help="input shape, e.g. 1,3,224,224 (or 1x3x224x224)") -> None:
    p.add_argument("--input-shape", type=shape, metavar="SHAPE", help=help)


def add_json(p, help="print the result as JSON (or write it to PATH; '-' is stdout)") -> None:
    p.add_argument("--json", nargs="?", const="-", default=None, metavar="PATH", help=help)


def add_quiet(p, help="print only errors and the verdict") -> None:
    p.add_argument("-q", "--quiet", action="store_true", help=help)


def progress_enabled(args) -> bool:
    """Progress bars only for a person watching: stderr is a terminal and -q is not given."""
    return not getattr(args, "quiet", False) and sys.stderr.isatty()


@contextlib.contextmanager
def activity(args, desc: str):
    """A live `desc 0:12` line on a terminal while a step without countable parts runs (a verify,
    a diff, a draft); nothing when output is not a terminal or -q is given."""
    if not progress_enabled(args):
        yield
        return
    from tqdm import tqdm

    bar = tqdm(total=None, desc=desc, bar_format="{desc} {elapsed}", leave=False, file=sys.stderr)
    stop = threading.Event()

    def tick():
        while not stop.wait(0.5):
            bar.refresh()
    thread = threading.Thread(target=tick, daemon=True, name="converters-activity")
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
        bar.close()


def write_output(path, text: str) -> None:
    """Text to a file, or to stdout when path is '-'."""
    if path == "-":
        sys.stdout.write(text if text.endswith("\n") else text + "\n")
        return
    with open(path, "w") as fh:
        fh.write(text if text.endswith("\n") else text + "\n")
