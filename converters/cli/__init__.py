"""The command line: `convert` and `weightport` (the same program), and `python -m converters`.

    convert [convert] --from F --map TABLE IN OUT   convert (the default subcommand)
    convert inspect PATH                            what is in a weight file
    convert verify IN --map TABLE                   parity: exit 0 pass, 1 differ, 2 error
    convert --help | --version | SUBCOMMAND --help

Adding a subcommand (the one mechanism): write a module with

    HELP = "one line, shown by `convert --help`"
    def add_arguments(parser): ...     # argparse; shared flags in converters.cli.args (--option,
                                       # --target, --input-shape, --json, -q, --from, --map)
    def run(args) -> int: ...          # exit code: 0 ok, 1 a negative verdict (parity failed,
                                       # files differ), 2 usage or input error

and add one line `name: "module.path"` to COMMANDS below. Keep the module's top-level imports
light (import the library inside run()): the chosen module is imported for every call and all
of them for `--help`. Raise ConvertersError for bad input: main() prints one line and exits
with its exit_code (2); argparse rejects unknown options with exit 2. SIGTERM / SIGHUP raise
Terminated inside run() (exit 128 + signal, cleanups run) unless the module sets
RAISE_ON_TERM = False. Library modules never import this package.
"""
from __future__ import annotations

import argparse
import contextlib
import difflib
import importlib
import importlib.util
import os
import re
import signal
import sys
import threading

from ..errors import ConvertersError

COMMANDS = {
    "convert": "converters.cli.convert",
    "inspect": "converters.cli.inspect",
    "maps": "converters.cli.maps",
    "verify": "converters.cli.verify",
    "reference": "converters.cli.reference",
    "diff": "converters.cli.diff",
    "draft": "converters.cli.draft",
    "port": "converters.port.cli",
    "batch": "converters.cli.batch",
}
DEFAULT = "convert"  # `convert --from F --map T IN OUT` is `convert convert ...`


def available() -> dict:
    """COMMANDS whose module exists in this installation (a subcommand still being written is left out)."""
    out = {}
    for name, module in COMMANDS.items():
        try:
            found = importlib.util.find_spec(module) is not None
        except ModuleNotFoundError:
            found = False
        if found:
            out[name] = module
    return out


def prog_name() -> str:
    base = os.path.basename(sys.argv[0] or "")
    if base in ("convert", "weightport"):
        return base
    return "python -m converters" if base == "__main__.py" else "convert"


def build_parser(prog: str, only: str | None = None) -> argparse.ArgumentParser:
    """The root parser with one subparser per command; `only` fills in that command's arguments
    (the others are listed with their one-line help)."""
    from .. import __version__

    root = argparse.ArgumentParser(
        prog=prog, formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Bring trained weights from Caffe, TensorFlow/Keras, MXNet/Gluon and ONNX into PyTorch.",
        epilog=f"Without a subcommand, `{prog} --from F --map TABLE IN OUT` converts (see the options below).\n"
               "Exit codes: 0 ok, 1 parity failed / files differ, 2 usage or input error, 130 interrupted,"
               "\n143 / 129 terminated (SIGTERM / SIGHUP).")
    root.add_argument("-v", "--version", action="version", version=f"{prog} (converters) {__version__}")
    sub = root.add_subparsers(dest="command", metavar="SUBCOMMAND")
    root.commands = {}
    for name, module_name in available().items():
        module = importlib.import_module(module_name) if only in (None, name) else None
        help_text = getattr(module, "HELP", None) if module else None
        shown = f"{prog} [{name}]" if name == DEFAULT else f"{prog} {name}"
        p = root.commands[name] = sub.add_parser(name, help=help_text, description=help_text, prog=shown)
        if module is not None:
            module.add_arguments(p)
            p.set_defaults(_run=module.run, _raise_on_term=getattr(module, "RAISE_ON_TERM", True))
    return root


def _unknown_subcommand(word: str, names) -> str | None:
    """The error for a first word that looks like a mistyped subcommand rather than an input file."""
    if word.startswith("-") or word in names or os.path.exists(word) or not re.fullmatch(r"[a-z][a-z0-9_-]*", word):
        return None
    close = difflib.get_close_matches(word, names, n=1)
    return (f"unknown subcommand {word!r}" + (f" (did you mean {close[0]!r}?)" if close else "")
            + f"; subcommands: {', '.join(names)}")


class Terminated(BaseException):
    """SIGTERM / SIGHUP, raised where the main thread is, so `finally` blocks and the writer's
    cleanup (no `.partial` left beside the output) run as for Ctrl-C. A BaseException: library
    code that catches Exception does not swallow it."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


@contextlib.contextmanager
def _terminate_by_raising():
    """While the command runs, SIGTERM and SIGHUP raise Terminated in this process. Signals
    already ignored (nohup) stay ignored; a forked process that inherits the handler dies of the
    signal as before; the first signal restores the previous handlers, so a second one kills at
    once (as a second Ctrl-C would), leaving a partial the next write of that output removes."""
    names = [n for n in ("SIGTERM", "SIGHUP") if hasattr(signal, n)]
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pid = os.getpid()

    def handler(signum, frame):
        if os.getpid() != pid:
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        for sig, old in previous.items():
            signal.signal(sig, old)
        raise Terminated(signum)
    previous = {}
    for name in names:
        sig = getattr(signal, name)
        if signal.getsignal(sig) is not signal.SIG_IGN:
            previous[sig] = signal.signal(sig, handler)
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def _help(prog: str) -> str:
    root = build_parser(prog)
    conversion = build_parser(prog, only=DEFAULT).commands[DEFAULT]
    return root.format_help() + "\nThe default subcommand, convert:\n\n" + conversion.format_help()


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    prog = prog_name()
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # `--target mymod:Net` finds ./mymod.py, as under `python -m`
    try:
        if not argv or argv[0] in ("-h", "--help"):
            print(_help(prog))
            return 0 if argv else 2
        if argv[0] in ("-v", "--version"):
            from .. import __version__

            print(f"{prog} (converters) {__version__}")
            return 0
        names = list(available())
        error = _unknown_subcommand(argv[0], names)
        if error:
            print(f"{prog}: error: {error}", file=sys.stderr)
            return 2
        if argv[0] not in names:
            argv = [DEFAULT, *argv]
        from . import args as A

        # positionals may come between options (`IN --map T OUT`), as people type them
        args = build_parser(prog, only=argv[0]).commands[argv[0]].parse_intermixed_args(A.json_argv(argv[1:]))
        A.check_json_path(args)
        with _terminate_by_raising() if args._raise_on_term else contextlib.nullcontext():
            return args._run(args)
    except ConvertersError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except Terminated as e:
        print(f"{prog}: terminated by {signal.Signals(e.signum).name}", file=sys.stderr)
        return 128 + e.signum
    except BrokenPipeError:
        return 0
    except OSError as e:  # unreadable paths, permissions, disk full
        print(f"{prog}: error: {e.filename or ''}: {e.strerror or e}", file=sys.stderr)
        return 2
    except Exception as e:  # a bug of ours: one line (no traceback) unless asked for it
        if os.environ.get("CONVERTERS_TRACEBACK"):
            raise
        where = _innermost_frame(e)
        print(f"{prog}: internal error: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
              f"{f' (at {where})' if where else ''}; this is a bug in converters: please report it, "
              "CONVERTERS_TRACEBACK=1 prints the traceback", file=sys.stderr)
        return 3


def _innermost_frame(e: BaseException) -> str:
    """`converters/module.py:line` of the deepest frame inside the package (where the bug is), or ''."""
    import traceback

    package = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    frames = [f for f in traceback.extract_tb(e.__traceback__)
              if os.path.abspath(f.filename).startswith(package + os.sep)]
    if not frames:
        return ""
    return f"converters/{os.path.relpath(frames[-1].filename, package)}:{frames[-1].lineno}"
