"""One exception family for everything the toolkit refuses.

Every error names where the problem is (file, array, byte offset, mapping rule) and, where we can
tell, what was expected and a hint, so the CLI can print it as one line and exit 2.
"""
from __future__ import annotations

import os


class ConvertersError(Exception):
    """Base of every error the toolkit raises on purpose."""

    exit_code = 2

    def __init__(self, message: str, *, file=None, array=None, offset=None, rule=None, hint=None):
        super().__init__(message)
        self.message = message
        self.file = os.fspath(file) if file is not None else None
        self.array = array
        self.offset = offset
        self.rule = rule
        self.hint = hint

    def where(self) -> str:
        parts = []
        if self.file:
            parts.append(self.file)
        if self.rule:
            parts.append(f"rule {self.rule}")
        if self.array is not None:
            parts.append(f"array {self.array!r}")
        if self.offset is not None:
            parts.append(f"byte {self.offset}")
        return ", ".join(parts)

    def __str__(self) -> str:
        where = self.where()
        text = f"{where}: {self.message}" if where else self.message
        if self.hint:
            text += f" (hint: {self.hint})"
        return text


class FormatError(ConvertersError):
    """The file is not what its reader expects: wrong magic, corrupt or truncated structure."""


class TruncatedError(FormatError):
    """A length, offset or dimension points past the end of the file."""


class UnsupportedError(FormatError):
    """A valid file using a feature we do not read (compression, a dtype, a storage type)."""


class DetectionError(ConvertersError):
    """The format could not be told from the file's bytes, layout or name."""


class MissingDependencyError(ConvertersError):
    """An optional package is needed for this format or operation."""


class ArrayNotFoundError(ConvertersError, KeyError):
    """A name asked of an opened file is not in it."""

    def __str__(self) -> str:  # KeyError would repr() the message otherwise
        return ConvertersError.__str__(self)


class MappingError(ConvertersError):
    """A mapping table is malformed or does not fit the arrays it is applied to."""


class CoverageError(ConvertersError):
    """A conversion would drop a source array or leave a target tensor unfilled; `.report` says what."""

    def __init__(self, message, *, report=None, **kw):
        super().__init__(message, **kw)
        self.report = report


class OutputExistsError(ConvertersError):
    """The output file exists and overwriting was not asked for."""
