"""Arguments every subcommand spells the same way, and how their values are parsed.

`--option KEY=VALUE` values are typed (`true`/`false`, integers, floats, else the text), so
`allow_pickle=false` is False and not the truthy string "false"; the reader then checks the key
and the type against its OPTIONS (converters/readers/__init__.py).

`--json` takes no value (JSON on stdout); `--json=PATH` and `--json-out PATH` write a file. An
optional value would swallow the word after it: `--json model.h5` read the source as the path.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
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
            raise ConvertersError(f"--option takes KEY=VALUE, not {pair!r}",
                                  hint="e.g. --option prototxt=deploy.prototxt")
        if key in options:
            raise ConvertersError(f"--option {key} is given twice")
        options[key] = parse_value(value)
    return options


def reader_options_of(options: dict, framework, source) -> dict:
    """The --option values the reader takes; oracle-only ones (a SavedModel's `signature`, which
    picks the function verify runs) are left for verify, which is given all of them."""
    from ..parity.setup import split_oracle_options

    if framework is None:
        from ..readers import detect

        try:
            framework = detect(source)
        except ConvertersError:  # the conversion itself says what the file is not
            return options
    return split_oracle_options(framework, options)[0]


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

    names = sorted(set(FRAMEWORKS) | set(extra))
    p.add_argument(flag, dest=dest, choices=names, metavar="FRAMEWORK",
                   help=help or f"source format (detected when omitted): {', '.join(names)}")


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


def add_json(p, help="print the result as JSON") -> None:
    p.add_argument("--json", action="store_const", const="-", default=None,
                   help=f"{help}, on stdout alone (--json=PATH or --json-out PATH: to a file)")
    p.add_argument("--json-out", dest="json", metavar="PATH", help="write that JSON to PATH instead ('-': stdout)")


def json_argv(argv: list) -> list:
    """`--json=PATH` -> `--json-out PATH` and `--json -` -> `--json-out -` (argparse refuses a
    value on a flag); `--json X.json` with no such file is refused: meant as a path, not a source."""
    out = []
    for i, word in enumerate(argv):
        if word == "--":
            return out + argv[i:]
        nxt = argv[i + 1] if i + 1 < len(argv) else None
        if word.startswith("--json="):
            out += ["--json-out", word[len("--json="):]]
        elif word == "--json" and nxt == "-":
            out.append("--json-out")
        elif word == "--json" and nxt and nxt.lower().endswith(".json") and not os.path.exists(nxt):
            raise ConvertersError(f"--json takes no value, and {nxt} is not an existing input",
                                  hint=f"write --json={nxt} (or --json-out {nxt}) to save the JSON there")
        else:
            out.append(word)
    return out


def check_json_path(args) -> None:
    """The JSON output must not overwrite an input: refused when it is one of the command's
    paths, or an existing file that is not JSON text (a weight file given by mistake)."""
    path = getattr(args, "json", None)
    if path in (None, "-"):
        return
    if not path:
        raise ConvertersError("--json= needs a PATH", hint="--json alone prints the JSON on stdout")
    if not os.path.isfile(path):
        return
    inputs = [v for k, v in vars(args).items() if k != "json" for v in (v if isinstance(v, list) else [v])
              if isinstance(v, str)]
    inputs += [v.partition("=")[2] for v in inputs if "=" in v]  # --option symbol=net-symbol.json
    if any(os.path.isfile(v) and os.path.samefile(v, path) for v in inputs):
        raise ConvertersError(f"the JSON output {path} is also an input of this command; refusing to overwrite it",
                              hint="give --json=PATH a new file, or --json alone for stdout")
    with open(path, "rb") as fh:
        head = fh.read(256).lstrip()
    if head and head[:1] not in (b"{", b"["):
        raise ConvertersError(f"the JSON output {path} exists and is not JSON (an input file?); refusing to "
                              "overwrite it", hint="--json takes no value: --json alone prints to stdout, "
                              "--json=PATH writes a new file")


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
