"""Open any weight file as a name -> array mapping: the readers first, torch.load as a fallback.

Why a fallback: PyTorch checkpoints (.pt/.pth/.ckpt) are the most common source of partial loads,
and the registry may be asked before a torch reader is available. The fallback reads with
torch.load(weights_only=True) only, and flattens nested dictionaries with `.`.
"""
from __future__ import annotations

from pathlib import Path

from ..errors import ConvertersError, FormatError

_TORCH_MAGIC = (b"PK\x03\x04", b"\x80\x02", b"\x80\x03", b"\x80\x04", b"\x80\x05")


class TensorDict(dict):
    """A plain dict of tensors that remembers the file it came from (like ArrayFile.path)."""

    def __init__(self, path, items):
        super().__init__(items)
        self.path = str(path)

    def close(self):
        pass


def open_weights(path, framework: str | None = None):
    """A Mapping name -> array-like (ArrayHandle or tensor) for `path`."""
    from .. import read

    path = Path(path)
    if not path.exists():
        raise FormatError("no such file or directory", file=path)
    try:
        return read(path, framework)
    except ModuleNotFoundError as e:  # a reader module of the registry is not installed/written yet
        if framework not in (None, "torch") or not _looks_like_torch(path):
            raise ConvertersError(f"no reader available for this file ({e.name})", file=path) from None
    return _torch_fallback(path)


def _looks_like_torch(path: Path) -> bool:
    if not path.is_file():
        return False
    with open(path, "rb") as fh:
        head = fh.read(4)
    return any(head.startswith(m) for m in _TORCH_MAGIC)


def _torch_fallback(path: Path) -> TensorDict:
    from .checkpoints import load_checkpoint
    from .partial import _descend, _flatten

    state = load_checkpoint(path)  # weights_only=True; clear FormatError naming the file
    return TensorDict(path, _flatten(_descend(state)))
