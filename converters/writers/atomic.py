"""Files appear whole or not at all.

Bytes go to a temporary file beside the output, which is renamed over the output only after it was
completely written and (by default) fsynced. A run killed mid-write (kill -9, SIGTERM) leaves
`.<name>.<pid>.<random>.partial`; the next write of the same output removes partials whose process
is gone. Outputs get 0666 minus the umask, or, with --force, the mode of the file they replace; any
existing path, a dangling symlink included, needs --force.
"""
from __future__ import annotations

import contextlib
import os
import stat
import tempfile

from ..errors import ConvertersError, OutputExistsError


@contextlib.contextmanager
def atomic_output(path, force: bool = False, fsync: bool = True):
    """Yield a temporary path; on success it replaces `path`, on any failure it is removed.

    fsync=False skips the flush to disk before the rename: faster (the data sits in the page
    cache), but a power loss soon after can leave an empty or partial file under the final name.
    """
    path = os.fspath(path)
    if os.path.lexists(path) and not force:  # lexists: a dangling symlink is an existing path too
        raise OutputExistsError("output exists", file=path, hint="pass --force to overwrite it")
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise ConvertersError("output directory does not exist", file=directory)
    remove_stale_partials(path)
    mode = _output_mode(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.{os.getpid()}.", suffix=".partial", dir=directory)
    try:  # from here on the temporary file is removed on any exit but success (a signal included)
        os.close(fd)
        yield tmp
        if fsync:
            with open(tmp, "rb+") as fh:
                os.fsync(fh.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def remove_stale_partials(path) -> list[str]:
    """Delete `.<name>.<pid>.*.partial` files beside `path` whose writing process is gone."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    prefix = f".{os.path.basename(path)}."
    removed = []
    try:
        names = os.listdir(directory)
    except OSError:
        return removed
    for name in names:
        if not (name.startswith(prefix) and name.endswith(".partial")):
            continue
        pid = name[len(prefix):].split(".", 1)[0]
        if not pid.isdigit() or _process_alive(int(pid)):
            continue
        with contextlib.suppress(OSError):
            os.unlink(os.path.join(directory, name))
            removed.append(name)
    return removed


def _process_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True  # alive under another user (or not a pid we can judge): leave it
    return True


def _output_mode(path) -> int:
    try:
        return stat.S_IMODE(os.stat(path).st_mode)  # --force keeps the replaced file's mode
    except OSError:
        umask = os.umask(0o22)
        os.umask(umask)
        return 0o666 & ~umask


def output_kind(path) -> str:
    ext = os.path.splitext(os.fspath(path))[1].lower()
    if ext in (".pth", ".pt", ".bin", ".ckpt"):
        return "pth"
    if ext == ".safetensors":
        return "safetensors"
    raise ConvertersError(f"cannot tell the output format from {ext or 'no extension'!r}", file=path,
                          hint="use .pth/.pt or .safetensors")
