"""Target-name templates: `layer{block+1}.{unit//3}` with integer arithmetic on regex captures.

Expressions are parsed with `ast` and evaluated by walking a whitelist of node types (names,
integer literals, + - * // %, unary minus, parentheses); nothing is ever passed to eval().
Numbers stay small (MAX_INT): a capture of thousands of digits from a hostile array name, or a
template multiplying huge literals, is an error naming the rule, not a hang or a ValueError.
"""
from __future__ import annotations

import ast
import operator
import re

from ..errors import MappingError

_FIELD = re.compile(r"\{([^{}]*)\}")
MAX_INT = 10 ** 18
MAX_EXPR = 200  # characters in one {field}
_BINOPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul,
           ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod}


def compile_template(template: str, *, rule=None) -> list:
    """Split a template into literal strings and parsed expressions; errors name the rule."""
    parts: list = []
    pos = 0
    for m in _FIELD.finditer(template):
        parts.append(template[pos:m.start()])
        expr = m.group(1).strip()
        if len(expr) > MAX_EXPR:
            raise MappingError(f"template field {{{expr[:40]}...}} is longer than {MAX_EXPR} characters", rule=rule)
        try:
            tree = ast.parse(expr, mode="eval").body
        except (SyntaxError, ValueError, RecursionError, MemoryError):
            raise MappingError(f"template {template!r}: {{{expr}}} is not an expression", rule=rule) from None
        _check(tree, template, rule)
        parts.append(tree)
        pos = m.end()
    parts.append(template[pos:])
    if any(c in "{}" for p in parts if isinstance(p, str) for c in p):
        raise MappingError(f"template {template!r} has an unbalanced brace", rule=rule)
    return parts


def names_used(parts) -> set[str]:
    return {n.id for p in parts if not isinstance(p, str) for n in ast.walk(p) if isinstance(n, ast.Name)}


def _check(node, template, rule):
    for n in ast.walk(node):
        if isinstance(n, (ast.Name, ast.BinOp, ast.UnaryOp, ast.Load)) or type(n) in _BINOPS or isinstance(n, ast.USub):
            continue
        if isinstance(n, ast.Constant) and isinstance(n.value, int) and not isinstance(n.value, bool):
            if abs(n.value) > MAX_INT:
                raise MappingError(f"template {template!r}: integer literals are at most {MAX_INT:.0e}", rule=rule)
            continue
        raise MappingError(f"template {template!r}: only capture names, integers and + - * // % are allowed, "
                           f"found {type(n).__name__}", rule=rule)


def render(parts, captures: dict, *, rule=None, template="") -> str:
    out = []
    for p in parts:
        if isinstance(p, str):
            out.append(p)
        else:
            out.append(str(_eval(p, captures, rule, template)))
    return "".join(out)


def _eval(node, captures, rule, template):
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.Name):
        if node.id not in captures or captures[node.id] is None:
            raise MappingError(f"template {template!r} uses {{{node.id}}} but the pattern captured "
                               f"{sorted(k for k, v in captures.items() if v is not None) or 'nothing'}", rule=rule)
        value = captures[node.id]
        if isinstance(value, str) and value.lstrip("-").isdigit() and value.isascii():
            return int(value) if len(value) <= 18 else value  # a longer digit run stays text
        return value
    if isinstance(node, ast.UnaryOp):
        return -_int(_eval(node.operand, captures, rule, template), template, rule)
    left = _int(_eval(node.left, captures, rule, template), template, rule)
    right = _int(_eval(node.right, captures, rule, template), template, rule)
    if isinstance(node.op, (ast.FloorDiv, ast.Mod)) and right == 0:
        raise MappingError(f"template {template!r} divides by zero", rule=rule)
    out = _BINOPS[type(node.op)](left, right)
    if abs(out) > MAX_INT:
        raise MappingError(f"template {template!r} computes a number beyond {MAX_INT:.0e}", rule=rule)
    return out


def _int(v, template, rule):
    if not isinstance(v, int):
        raise MappingError(f"template {template!r} does arithmetic on the non-integer capture {_short(v)}", rule=rule)
    return v


def _short(v) -> str:
    text = repr(v)
    return text if len(text) <= 60 else f"{text[:40]}...' ({len(str(v))} characters)"
