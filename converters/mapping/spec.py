"""Mapping tables: YAML -> validated `Mapping` objects that remember file and line of every rule.

YAML is read with a safe loader; the only thing a table can make the toolkit execute is the
import of the target model it names (`target.model: package.module:callable`, checked by
target_policy.py). A table may come with downloaded weights, so reading one is bounded: UTF-8 text
only, nesting and alias expansion limited, patterns compiled by RE2 (linear time in the name, no
catastrophic backtracking), template numbers small (templates.py).
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import re2
import yaml

from ..errors import MappingError
from ..initializers import SCHEMES as INIT_SCHEMES
from . import transforms as T
from .templates import compile_template, names_used

TOP_KEYS = {"source", "target", "input", "rules", "ignore", "fill", "init", "include", "description", "notes", "parity"}
PARITY_KEYS = {"target_input", "source_input", "activations", "outputs", "layers", "tolerance",
               "extra_inputs", "batch"}


class _Dict(dict):
    line = None


class _List(list):
    line = None


MAX_DEPTH = 64  # nesting levels; the composer and constructor recurse once per level
MAX_NODES = 250_000  # nodes after alias expansion ("billion laughs" stops here)


class _LineLoader(yaml.SafeLoader):
    """SafeLoader whose mappings and sequences remember their 1-based line, bounded in nesting."""

    _depth = 0

    def compose_node(self, parent, index):
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                line = self.peek_event().start_mark.line + 1
                raise MappingError(f"nested deeper than {MAX_DEPTH} levels", rule=f"{_name(self)}:{line}")
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_object(self, node, deep=False):
        try:
            return super().construct_object(node, deep)
        except (ValueError, OverflowError, TypeError) as e:  # e.g. a 5,000-digit integer
            raise MappingError(f"cannot read the value: {_first_line(e)}",
                               rule=f"{_name(self)}:{node.start_mark.line + 1}") from None


def _construct_mapping(loader, node):
    loader.flatten_mapping(node)
    d = _Dict()
    for key_node, value_node in node.value:
        if not isinstance(key_node, yaml.ScalarNode):
            raise MappingError("a key must be a plain name, not a list or mapping",
                               rule=f"{_name(loader)}:{key_node.start_mark.line + 1}")
        key = loader.construct_object(key_node, deep=True)
        if key in d:
            raise MappingError(f"key {key!r} appears twice", rule=f"{_name(loader)}:{key_node.start_mark.line + 1}")
        d[key] = loader.construct_object(value_node, deep=True)
    d.line = node.start_mark.line + 1
    return d


def _construct_sequence(loader, node):
    lst = _List(loader.construct_object(n, deep=True) for n in node.value)
    lst.line = node.start_mark.line + 1
    return lst


def _name(loader):
    return getattr(loader, "_path", "<mapping>")


_LineLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)
_LineLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_SEQUENCE_TAG, _construct_sequence)


@dataclass
class Rule:
    pattern: re.Pattern
    to: list  # compiled templates, one per target
    to_text: list
    with_: list  # compiled templates for extra sources
    with_text: list
    transforms: list
    where: str  # file:line
    many: bool  # `to` was written as a list

    def __str__(self):
        return self.where


@dataclass
class Ignore:
    pattern: re.Pattern | None
    role: str | None
    layer_type: str | None
    reason: str
    where: str

    def matches(self, handle) -> bool:
        if self.pattern is not None and not self.pattern.fullmatch(handle.name):
            return False
        if self.role is not None and handle.meta.get("role") != self.role:
            return False
        if self.layer_type is not None and handle.meta.get("layer_type") != self.layer_type:
            return False
        return True


@dataclass
class TargetFill:
    pattern: re.Pattern
    value: float | None  # fill
    scheme: str | None  # init
    args: dict
    where: str


@dataclass
class Mapping:
    path: str
    sha256: str
    source: str | None = None
    target: dict | None = None
    input: dict | None = None
    rules: list = field(default_factory=list)
    ignore: list = field(default_factory=list)
    fill: list = field(default_factory=list)
    init: list = field(default_factory=list)
    description: str = ""
    parity: dict = field(default_factory=dict)  # the optional `parity:` section (docs/parity.md)
    parity_source_input: list | None = None  # compiled transform chains of that section
    parity_activations: list | None = None


def shipped_dir() -> Path:
    """The shipped tables: package data (`converters/mappings`, linked as `mappings/` at the top
    of a checkout), so they are there after a plain `pip install .`."""
    return Path(str(resources.files("converters") / "mappings"))


def shipped_tables() -> dict[str, Path]:
    root = shipped_dir()
    out = {}
    for p in sorted(root.rglob("*.yaml")):
        rel = p.relative_to(root).with_suffix("").as_posix()
        out[rel] = p
    return out


def resolve(name_or_path, relative_to: Path | None = None) -> Path:
    """A path to a table: an existing file, or a shipped table's name (`resnet50`, `keras/vgg16`)."""
    p = Path(os.fspath(name_or_path))
    candidates = [p] if p.is_absolute() else ([relative_to / p] if relative_to else []) + [p]
    for c in candidates:
        if c.is_file():
            return c
    tables = shipped_tables()
    key = str(name_or_path).removesuffix(".yaml")
    if key in tables:
        return tables[key]
    by_stem = [v for k, v in tables.items() if k.rsplit("/", 1)[-1] == key]
    if len(by_stem) == 1:
        return by_stem[0]
    if len(by_stem) > 1:  # `lstm` when both keras/lstm and gluon/lstm ship: say so, do not guess
        names = sorted(k for k, v in tables.items() if v in by_stem)
        raise MappingError(f"{str(name_or_path)!r} names several shipped tables: {', '.join(names)}",
                           hint=f"give the family too, e.g. --map {names[0]}")
    import difflib

    close = difflib.get_close_matches(key, list(tables), n=3)
    raise MappingError(f"no mapping file or shipped table {str(name_or_path)!r}",
                       hint=f"did you mean {', '.join(close)}?" if close else "list shipped tables with `convert maps`")


def load(name_or_path, _seen=None) -> Mapping:
    """Read, validate and compile a mapping table (following `include:`)."""
    path = resolve(name_or_path)
    raw_bytes = path.read_bytes()
    data = _parse_yaml(path, raw_bytes)
    m = Mapping(path=str(path), sha256=hashlib.sha256(raw_bytes).hexdigest())
    _compile_into(m, data, path)
    seen = set(_seen or ()) | {path.resolve()}
    for inc in data.get("include") or []:
        inc_path = _include_path(inc, path, data.get("include"))
        if inc_path.resolve() in seen:
            raise MappingError(f"include cycle through {inc_path}", rule=_where(path, data.get("include")))
        sub = load(inc_path, seen)
        m.source = m.source or sub.source
        m.target = m.target or sub.target
        m.input = m.input or sub.input
        if not m.parity and sub.parity:
            m.parity, m.parity_source_input, m.parity_activations = (
                sub.parity, sub.parity_source_input, sub.parity_activations)
        m.rules += sub.rules
        m.ignore += sub.ignore
        m.fill += sub.fill
        m.init += sub.init
        m.sha256 = hashlib.sha256((m.sha256 + sub.sha256).encode()).hexdigest()
    return m


def _include_path(inc, path: Path, node) -> Path:
    """An included table: a file inside the including table's directory, or a shipped table. A
    table may come from anywhere, so it cannot make the toolkit read /etc/... or ../../secrets."""
    base = path.parent.resolve()
    candidate = (base / os.fspath(inc)).resolve()
    if candidate.is_file():
        if not candidate.is_relative_to(base) and not candidate.is_relative_to(shipped_dir().resolve()):
            raise MappingError(f"include {str(inc)!r} is outside the table's directory", rule=_where(path, node),
                               hint="copy the included table beside this one")
        return candidate
    if Path(os.fspath(inc)).is_absolute() or ".." in Path(os.fspath(inc)).parts:
        raise MappingError(f"include {str(inc)!r} is not a file beside the table", rule=_where(path, node))
    return resolve(inc)  # a shipped table's name


def _parse_yaml(path: Path, raw: bytes):
    text = _text(path, raw)
    try:
        loader = _LineLoader(text)  # the reader checks every character here
    except yaml.reader.ReaderError as e:
        raise MappingError(f"not valid YAML: {e.reason}", rule=f"{path}:{text.count(chr(10), 0, e.position) + 1}",
                           hint="a table is plain text; remove the control character") from None
    loader._path = str(path)
    try:
        node = loader.get_single_node()
        if node is not None and _expanded_size(node, {}) > MAX_NODES:
            raise MappingError(f"expands to more than {MAX_NODES:,} YAML nodes (aliases repeating aliases?)",
                               rule=f"{path}:1")
        data = loader.construct_document(node) if node is not None else None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise MappingError(f"not valid YAML: {_first_line(getattr(e, 'problem', None) or getattr(e, 'reason', e))}",
                           rule=where) from None
    finally:
        loader.dispose()
    if not isinstance(data, dict):
        raise MappingError(f"a mapping table is a YAML mapping with `rules:`, not {type(data).__name__}",
                           rule=f"{path}:1")
    _validate_schema(path, data)
    return data


def _text(path: Path, raw: bytes) -> str:
    """The table as text: UTF-8 only (a BOM is allowed), so a binary or UTF-16 file stops here."""
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")) or b"\x00" in raw[:4096]:
        raise MappingError("is not UTF-8 text (UTF-16, or binary)", rule=f"{path}:1",
                           hint="save the table as UTF-8")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        raise MappingError(f"is not UTF-8 text (byte {e.start}: {raw[e.start:e.start + 1]!r})",
                           rule=f"{path}:{line}", hint="save the table as UTF-8") from None


def _expanded_size(node, memo: dict) -> int:
    """Nodes the document holds once every alias is expanded (shared nodes count each time)."""
    key = id(node)
    if key not in memo:
        memo[key] = 0  # a recursive alias counts once (the constructor refuses it anyway)
        if isinstance(node, yaml.MappingNode):
            total = 1 + sum(_expanded_size(k, memo) + _expanded_size(v, memo) for k, v in node.value)
        elif isinstance(node, yaml.SequenceNode):
            total = 1 + sum(_expanded_size(v, memo) for v in node.value)
        else:
            total = 1
        memo[key] = min(total, MAX_NODES + 1)
    return memo[key]


def _first_line(e) -> str:
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__


def _where(path, node, fallback=None) -> str:
    line = getattr(node, "line", None) or getattr(fallback, "line", None)
    return f"{path}:{line}" if line else str(path)


def schema() -> dict:
    return json.loads((Path(__file__).resolve().parents[1] / "schema" / "mapping.schema.json").read_text())


def _validate_schema(path, data):
    unknown = set(data) - TOP_KEYS
    if unknown:
        raise MappingError(f"unknown top-level key(s) {sorted(unknown)}", rule=_where(path, data),
                           hint=f"known keys: {', '.join(sorted(TOP_KEYS))}")
    import jsonschema  # a core dependency: every table is checked the same way

    validator = jsonschema.Draft202012Validator(schema())
    errors = sorted(validator.iter_errors(data), key=lambda e: list(e.absolute_path))
    if errors:
        e = errors[0]
        node, parent = data, data
        for key in e.absolute_path:
            parent, node = node, node[key]
        loc = "/".join(map(str, e.absolute_path)) or "top level"
        raise MappingError(f"{loc}: {e.message}", rule=_where(path, node, parent))


_RE2_OPTIONS = re2.Options()
_RE2_OPTIONS.log_errors = False  # the error is raised as a MappingError, not printed by the library
_RE2_OPTIONS.max_mem = 8 << 20  # a pattern's compiled program; `(a{999}){999}` is refused


def _regex(text, where):
    """A table's pattern, compiled by RE2: matching takes time linear in the name, whatever the
    pattern (Python's `re` backtracks exponentially on `(a+)+b` against a long name)."""
    try:
        return re2.compile(str(text), _RE2_OPTIONS)
    except re2.error as e:
        reason = e.args[0].decode(errors="replace") if e.args and isinstance(e.args[0], bytes) else str(e)
        raise MappingError(f"invalid regular expression {text!r}: {reason}", rule=where,
                           hint="tables use RE2 syntax: Python's, without lookarounds or backreferences") from None


def is_file_target(spec) -> bool:
    """`path/to/model.py:Class` (a generated module, `convert port`) rather than `package.module:callable`."""
    return str(spec).rpartition(":")[0].endswith(".py")


def _compile_into(m: Mapping, data: dict, path: Path):
    m.source = data.get("source")
    m.description = data.get("description", "")
    target = data.get("target")
    if isinstance(target, str):
        target = {"model": target}
    m.target = dict(target) if target else None
    if m.target and is_file_target(m.target.get("model")):  # `model.py:Class`: beside the table
        file, _, attr = m.target["model"].rpartition(":")
        m.target["model"] = f"{(path.parent / file).resolve()}:{attr}"
    m.input = dict(data["input"]) if data.get("input") else None
    for item in data.get("rules") or []:
        m.rules.append(_compile_rule(item, path))
    if data.get("parity"):
        _compile_parity(m, data["parity"], path)
    for item in data.get("ignore") or []:
        where = _where(path, item, data.get("ignore"))
        if isinstance(item, str):
            item = {"pattern": item}
        m.ignore.append(Ignore(_regex(item["pattern"], where) if item.get("pattern") is not None else None,
                               item.get("role"), item.get("layer_type"), item.get("reason", ""), where))
    for item in data.get("fill") or []:
        where = _where(path, item, data.get("fill"))
        m.fill.append(TargetFill(_regex(item["to"], where), _number(item["value"], where), None, {}, where))
    for item in data.get("init") or []:
        where = _where(path, item, data.get("init"))
        scheme = item.get("scheme", "pytorch")
        if scheme not in INIT_SCHEMES:
            raise MappingError(f"unknown init scheme {scheme!r}", rule=where, hint=f"one of {', '.join(INIT_SCHEMES)}")
        args = {k: v for k, v in item.items() if k not in ("to", "scheme")}
        m.init.append(TargetFill(_regex(item["to"], where), None, scheme, args, where))


def _number(value, where) -> float:
    try:
        return float(value)
    except (TypeError, ValueError, OverflowError):
        raise MappingError(f"fill value {str(value)[:40]!r} is not a number a tensor can hold", rule=where) from None


def _compile_rule(item, path) -> Rule:
    where = _where(path, item)
    if not isinstance(item, dict) or "from" not in item or "to" not in item:
        raise MappingError("a rule needs `from:` (regex) and `to:` (template)", rule=where)
    pattern = _regex(item["from"], where)
    many = isinstance(item["to"], list)
    to_text = [str(t) for t in (item["to"] if many else [item["to"]])]
    with_text = [str(t) for t in item.get("with") or []]
    to = [compile_template(t, rule=where) for t in to_text]
    with_ = [compile_template(t, rule=where) for t in with_text]
    groups = set(pattern.groupindex)
    for parts, text in zip(to + with_, to_text + with_text):
        missing = names_used(parts) - groups
        if missing:
            raise MappingError(f"template {text!r} uses {sorted(missing)} but the pattern {pattern.pattern!r} "
                               f"captures {sorted(groups) or 'nothing'}", rule=where)
    chain = [T.build(t, rule=where) for t in item.get("transforms") or []]
    return Rule(pattern, to, to_text, with_, with_text, chain, where, many)


def _compile_parity(m: Mapping, section, path):
    """The `parity:` section: how `convert verify` feeds and reads both sides (docs/parity.md).
    Its transform chains are compiled here so a typo stops at load time with file and line."""
    where = _where(path, section)
    if not isinstance(section, dict):
        raise MappingError("`parity:` is a mapping", rule=where)
    unknown = set(section) - PARITY_KEYS
    if unknown:
        raise MappingError(f"unknown parity key(s) {sorted(unknown)}", rule=where,
                           hint=f"known keys: {', '.join(sorted(PARITY_KEYS))}")
    m.parity = {k: (dict(v) if isinstance(v, dict) else list(v) if isinstance(v, list) else v)
                for k, v in section.items()}
    for key, attr in (("source_input", "parity_source_input"), ("activations", "parity_activations")):
        if key in section:
            chain = section[key]
            if not isinstance(chain, list):
                raise MappingError(f"parity.{key} is a list of transforms", rule=_where(path, chain, section))
            setattr(m, attr, [T.build(t, rule=_where(path, t, chain)) for t in chain])
    if "extra_inputs" in section:  # checked (shape expressions compiled) now, made by verify
        from ..parity.inputs import check_extra_inputs

        check_extra_inputs(section["extra_inputs"], where=_where(path, section["extra_inputs"], section))
