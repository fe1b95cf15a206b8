"""Lay out generated statements as `ruff format` (black style, 88 columns) would, by construction.

Generated code is simple: assignments and calls whose arguments are names, literals and calls.
A statement that fits stays on one line; otherwise its outermost call's arguments go on one
indented line, or one per line with a trailing comma when that does not fit either (recursively).
When `target = f(` alone is too long (long tensor names), the value is wrapped in parentheses or
a tuple target goes one name per line, as ruff's right-hand-side rules do.
tests/test_port_core.py checks the result with `ruff format --check`.
"""
from __future__ import annotations

import ast

WIDTH = 88
STEP = "    "


def py(value) -> str:
    """A Python literal in the formatter's spelling (double quotes, tuples, -inf as float())."""
    if isinstance(value, bool) or value is None:
        return repr(value)
    if isinstance(value, float):
        if value != value:
            return 'float("nan")'
        if value in (float("inf"), float("-inf")):
            return 'float("inf")' if value > 0 else '-float("inf")'
        return repr(value)
    if isinstance(value, int):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, tuple):
        return "(" + ", ".join(py(v) for v in value) + ("," if len(value) == 1 else "") + ")"
    if isinstance(value, list):
        return "[" + ", ".join(py(v) for v in value) + "]"
    raise TypeError(f"no literal for {type(value).__name__}")


def statement(stmt: str, indent: str) -> list[str]:
    """One statement -> its formatted lines (each with `indent`)."""
    if len(indent) + len(stmt) <= WIDTH:
        return [indent + stmt]
    tree = ast.parse(stmt).body[0]
    value = getattr(tree, "value", None)
    if not isinstance(value, (ast.Call, ast.BinOp, ast.Tuple)):
        return [indent + stmt]  # nothing to split; generated code does not produce this
    head = stmt[:_offset(stmt, value)]
    lines = _split(head, value, stmt, indent, "")
    if not isinstance(tree, ast.Assign) or len(lines[0]) <= WIDTH:
        return lines
    return _long_head(tree, head, value, stmt, indent, lines)


def _long_head(tree, head: str, value, text: str, indent: str, lines: list[str]) -> list[str]:
    """`target = f(` itself too long (long tensor / layer names), as ruff (black) lays it out:
    a plain name target wraps the value in parentheses when every line then fits; a tuple target
    that is short itself always does, and one that is long goes one name per line instead."""
    inner = indent + STEP
    wrapped = [indent + head + "(", *_expression(value, text, inner), indent + ")"]
    target = tree.targets[0]
    if not isinstance(target, ast.Tuple) or text.startswith("("):
        return wrapped if all(len(line) <= WIDTH for line in wrapped) else lines
    if len(indent + head + "(") <= WIDTH - 1:
        return wrapped
    names = []
    for e in target.elts:
        item = _segment(text, e)
        fits = len(inner) + len(item) + 1 <= WIDTH or not isinstance(e, ast.Tuple)
        names += [inner + item + ","] if fits else _split("", e, text, inner, ",")
    rest = ")" + head[len(_segment(text, target)):]  # ") = ", then the value laid out afresh
    one = indent + rest + _segment(text, value)
    return [indent + "(", *names, *([one] if len(one) <= WIDTH else _split(rest, value, text, indent, ""))]


def _expression(node, text: str, indent: str) -> list[str]:
    """An expression on its own lines (inside wrapping parentheses)."""
    one = indent + _segment(text, node)
    if len(one) <= WIDTH or not isinstance(node, (ast.Call, ast.BinOp, ast.Tuple)):
        return [one]
    return _split("", node, text, indent, "")


def _offset(text: str, node) -> int:
    lines = text.split("\n")
    return sum(len(line) + 1 for line in lines[: node.lineno - 1]) + node.col_offset


def _segment(text: str, node) -> str:
    return ast.get_source_segment(text, node)


def _split(head: str, node, text: str, indent: str, tail: str) -> list[str]:
    """`head` + the expression `node` (+ `tail`), broken at the expression's own brackets."""
    inner = indent + STEP
    if isinstance(node, ast.Call):
        opener = head + _segment(text, node.func) + "("
        items = [_segment(text, a) for a in node.args]
        items += [f"{k.arg}={_segment(text, k.value)}" if k.arg else f"**{_segment(text, k.value)}"
                  for k in node.keywords]
        nodes = list(node.args) + [k.value for k in node.keywords]
        prefixes = [""] * len(node.args) + [f"{k.arg}=" if k.arg else "**" for k in node.keywords]
        closer = ")"
    elif isinstance(node, (ast.Tuple, ast.List)):
        tup = isinstance(node, ast.Tuple)
        opener, closer = head + ("(" if tup else "["), ")" if tup else "]"
        items = [_segment(text, e) for e in node.elts]
        nodes, prefixes = list(node.elts), [""] * len(node.elts)
    elif isinstance(node, ast.Subscript):  # x.shape[0] with a long x: the index on its own line
        return [indent + head + _segment(text, node.value) + "[", inner + _segment(text, node.slice),
                indent + "]" + tail]
    else:  # a binary expression: parenthesised, on one line, else one operand per line
        one = inner + _segment(text, node)
        if len(one) <= WIDTH:
            return [indent + head + "(", one, indent + ")" + tail]
        operands, ops = _chain(node, type(node.op))
        lines = [indent + head + "(", inner + _segment(text, operands[0])]
        lines += [f"{inner}{_OPS[type(op)]} {_segment(text, x)}" for op, x in zip(ops, operands[1:])]
        return lines + [indent + ")" + tail]
    joined = ", ".join(items)
    if len(inner) + len(joined) <= WIDTH and not (isinstance(node, ast.Tuple) and len(items) == 1):
        return [indent + opener, inner + joined, indent + closer + tail]
    lines = [indent + opener]
    for item, sub, prefix in zip(items, nodes, prefixes):
        if len(inner) + len(item) + 1 <= WIDTH or not isinstance(sub, (ast.Call, ast.Tuple, ast.List, ast.Subscript)):
            lines.append(inner + item + ",")
        else:
            lines += _split(prefix, sub, text, inner, ",")
    lines.append(indent + closer + tail)
    return lines


_OPS = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/"}


def _chain(node, kind):
    """a + b - c -> ([a, b, c], [+, -]) for a left-nested chain of one precedence level."""
    same = (ast.Add, ast.Sub) if kind in (ast.Add, ast.Sub) else (ast.Mult, ast.Div)
    if isinstance(node, ast.BinOp) and isinstance(node.op, same):
        operands, ops = _chain(node.left, kind)
        return operands + [node.right], ops + [node.op]
    return [node], []
