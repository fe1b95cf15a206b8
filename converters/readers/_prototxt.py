"""A protobuf *text format* parser, enough for Caffe `.prototxt` network definitions.

Text format carries field names but no types, so the parser returns an untyped tree and the
caller (which knows the schema) converts values. The tree keeps the order of fields and every
repetition of a field: `Message.fields` is a list of (name, value) pairs where a value is a
nested Message, a quoted string (`str`), an unquoted identifier (`Ident`, used for enums and
booleans), an `int` or a `float`.

Grammar covered: `name: value`, `name { ... }`, `name: { ... }`, `name < ... >`, list values
`name: [1, 2]`, adjacent quoted strings concatenated, C-style escapes, `#` comments, optional
`;` / `,` separators, numbers with an `f` suffix, hex integers, `inf` / `nan`.
"""
from __future__ import annotations

import re

from ..errors import FormatError

_TOKEN = re.compile(r"""
    (?P<space>\s+|\#[^\n]*)
  | (?P<string>"(?:[^"\\\n]|\\.)*"|'(?:[^'\\\n]|\\.)*')
  | (?P<number>-?(?:0[xX][0-9a-fA-F]+|(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)[fF]?(?![\w.]))
  | (?P<ident>-?[A-Za-z_][\w.]*)
  | (?P<punct>[{}<>:\[\],;])
""", re.VERBOSE)

_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "a": "\a", "b": "\b", "f": "\f", "v": "\v",
            "\\": "\\", "'": "'", '"': '"', "?": "?"}


class Ident(str):
    """An unquoted identifier value: an enum name (`MAX`) or a boolean (`true`)."""


class Message:
    """One text-format message: ordered (name, value) pairs, repeated names kept."""

    __slots__ = ("fields", "offset")

    def __init__(self, offset: int = 0):
        self.fields: list[tuple[str, object]] = []
        self.offset = offset

    def get(self, name: str, default=None):
        """The last value of `name` (protobuf's rule for a repeated optional field)."""
        for key, value in reversed(self.fields):
            if key == name:
                return value
        return default

    def all(self, name: str) -> list:
        return [v for k, v in self.fields if k == name]

    def names(self) -> list[str]:
        seen: dict[str, None] = {}
        for key, _ in self.fields:
            seen.setdefault(key)
        return list(seen)

    def __contains__(self, name: str) -> bool:
        return any(k == name for k, _ in self.fields)

    def to_dict(self) -> dict:
        """Plain dict for fields without a schema: a name seen once maps to its value, a
        repeated name to the list of its values."""
        out: dict = {}
        for key in self.names():
            values = [v.to_dict() if isinstance(v, Message) else _plain(v) for v in self.all(key)]
            out[key] = values[0] if len(values) == 1 else values
        return out

    def __repr__(self) -> str:
        return f"Message({self.fields!r})"


def _plain(value):
    if isinstance(value, Ident):
        if value in ("true", "True"):
            return True
        if value in ("false", "False"):
            return False
        return str(value)
    return value


def parse(text: str, file=None) -> Message:
    """Parse a whole text-format document into a Message."""
    return _Parser(text, file).document()


def parse_file(path) -> Message:
    with open(path, "rb") as fh:
        raw = fh.read()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise FormatError(f"not UTF-8 text ({e.reason})", file=path, offset=e.start,
                          hint="a .prototxt is a text file; is this a binary .caffemodel?") from None
    return parse(text, file=path)


class _Parser:
    def __init__(self, text: str, file):
        self.text = text
        self.file = file
        self.tokens = list(self._tokenize())
        self.i = 0

    def _tokenize(self):
        pos, n = 0, len(self.text)
        while pos < n:
            m = _TOKEN.match(self.text, pos)
            if m is None:
                self._fail(f"unexpected character {self.text[pos]!r}", pos)
            kind = m.lastgroup
            if kind != "space":
                yield kind, m.group(), pos
            pos = m.end()

    def _fail(self, message: str, pos: int):
        line = self.text.count("\n", 0, pos) + 1
        col = pos - (self.text.rfind("\n", 0, pos) + 1) + 1
        raise FormatError(f"prototxt line {line} column {col}: {message}", file=self.file, offset=pos)

    def _peek(self):
        return self.tokens[self.i] if self.i < len(self.tokens) else (None, None, len(self.text))

    def _next(self):
        tok = self._peek()
        if tok[0] is None:
            self._fail("unexpected end of text", len(self.text))
        self.i += 1
        return tok

    def _accept(self, text: str) -> bool:
        kind, value, _ = self._peek()
        if kind == "punct" and value == text:
            self.i += 1
            return True
        return False

    def document(self) -> Message:
        msg = self._fields(closing=None, offset=0)
        kind, value, pos = self._peek()
        if kind is not None:
            self._fail(f"unexpected {value!r}", pos)
        return msg

    def _fields(self, closing, offset) -> Message:
        msg = Message(offset)
        while True:
            kind, value, pos = self._peek()
            if kind is None:
                if closing is not None:
                    self._fail(f"missing {closing!r} for the message opened at offset {offset}", pos)
                return msg
            if kind == "punct" and value == closing:
                self.i += 1
                return msg
            if kind != "ident" or value.startswith("-"):
                self._fail(f"expected a field name, found {value!r}", pos)
            self.i += 1
            for item in self._field_values(value, pos):
                msg.fields.append((value, item))
            self._accept(";") or self._accept(",")

    def _field_values(self, name, pos) -> list:
        had_colon = self._accept(":")
        kind, value, vpos = self._peek()
        if kind == "punct" and value in "{<":
            self.i += 1
            return [self._fields("}" if value == "{" else ">", vpos)]
        if not had_colon:
            self._fail(f"expected ':' or '{{' after field {name!r}", vpos)
        if kind == "punct" and value == "[":
            self.i += 1
            items = []
            if self._accept("]"):
                return items
            while True:
                k, v, p = self._peek()
                if k == "punct" and v in "{<":
                    self.i += 1
                    items.append(self._fields("}" if v == "{" else ">", p))
                else:
                    items.append(self._scalar())
                if self._accept("]"):
                    return items
                if not self._accept(","):
                    self._fail("expected ',' or ']' in a list value", self._peek()[2])
        return [self._scalar()]

    def _scalar(self):
        kind, value, pos = self._next()
        if kind == "string":
            parts = [self._unquote(value, pos)]
            while self._peek()[0] == "string":  # "abc" "def" is one string
                _, more, mpos = self._next()
                parts.append(self._unquote(more, mpos))
            return "".join(parts)
        if kind == "number":
            return _number(value)
        if kind == "ident":
            low = value.lower()
            if low in ("inf", "infinity", "-inf", "-infinity", "nan", "-nan"):
                return float(low.replace("infinity", "inf"))
            return Ident(value)
        self._fail(f"expected a value, found {value!r}", pos)

    def _unquote(self, token: str, pos: int) -> str:
        body = token[1:-1]
        if "\\" not in body:
            return body
        out = bytearray()
        i = 0
        while i < len(body):
            c = body[i]
            if c != "\\":
                out += c.encode("utf-8")
                i += 1
                continue
            e = body[i + 1]
            if e in _ESCAPES:
                out += _ESCAPES[e].encode()
                i += 2
            elif e in "01234567":
                m = re.match(r"[0-7]{1,3}", body[i + 1:])
                out.append(int(m.group(), 8) & 0xFF)
                i += 1 + len(m.group())
            elif e in "xX":
                m = re.match(r"[0-9a-fA-F]{1,2}", body[i + 2:])
                if not m:
                    self._fail("\\x escape without hex digits", pos + i)
                out.append(int(m.group(), 16))
                i += 2 + len(m.group())
            else:
                self._fail(f"unknown escape \\{e}", pos + i)
        return out.decode("utf-8", errors="replace")


def _number(token: str):
    t = token[:-1] if token[-1] in "fF" and not token.lower().startswith(("0x", "-0x")) else token
    if t.lower().lstrip("-").startswith("0x"):
        return int(t, 16)
    if any(c in t for c in ".eE") or token[-1] in "fF":
        return float(t)
    return int(t)
