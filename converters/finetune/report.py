"""Shared shape of every report the workflow returns: text table, JSON-able dict, notebook HTML.

A report answers "what happened?" without anyone printing dictionaries by hand: `print(report)`
in a terminal, `report.to_dict()` for logs and CI, and the table renders itself in Jupyter.
"""
from __future__ import annotations

import html
import json


class Report:
    """Base class: subclasses define `headline()`, `sections()` and `to_dict()`."""

    def headline(self) -> str:  # one line: the verdict
        raise NotImplementedError

    def sections(self) -> list[tuple[str, tuple[str, ...], list[tuple]]]:
        """(caption, column headers, rows) for each table worth showing; empty tables are left out."""
        raise NotImplementedError

    def to_dict(self) -> dict:
        raise NotImplementedError

    def to_json(self, **kwargs) -> str:
        return json.dumps(self.to_dict(), **kwargs)

    def __str__(self) -> str:
        lines = [self.headline()]
        for caption, headers, rows in self.sections():
            if rows:
                lines += ["", f"{caption} ({len(rows)}):", *text_table(headers, rows)]
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        parts = [f"<p><b>{html.escape(self.headline())}</b></p>"]
        for caption, headers, rows in self.sections():
            if rows:
                parts.append(html_table(f"{caption} ({len(rows)})", headers, rows))
        return "\n".join(parts)

    def __repr__(self) -> str:
        return f"<{type(self).__name__}: {self.headline()}>"


def fmt(value) -> str:
    """Cell text: shapes as 3x3x64, floats short, None blank."""
    if value is None:
        return ""
    if isinstance(value, tuple) and all(isinstance(d, int) for d in value):
        return "x".join(map(str, value)) or "scalar"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        return ", ".join(map(fmt, value))
    return str(value)


def text_table(headers, rows, max_width: int = 70) -> list[str]:
    cells = [[fmt(v) for v in row] for row in rows]
    cells = [[c if len(c) <= max_width else "..." + c[-(max_width - 3):] for c in row] for row in cells]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    line = "  ".join("{:<%d}" % w for w in widths)
    out = ["  " + line.format(*headers).rstrip(), "  " + line.format(*("-" * w for w in widths))]
    out += ["  " + line.format(*r).rstrip() for r in cells]
    return out


def html_table(caption, headers, rows) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(fmt(v))}</td>" for v in row) + "</tr>" for row in rows)
    return (f"<table><caption style='text-align:left'>{html.escape(caption)}</caption>"
            f"<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
