"""The one shape of every report the toolkit returns: text table, JSON-able dict, notebook HTML.

A report answers "what happened?" without anyone printing dictionaries by hand: `print(report)`
in a terminal, `report.to_dict()` for logs and CI, and the tables render themselves in Jupyter.
A subclass says what it knows (`headline`, `sections`, `to_dict`, optionally `notes` and
`details`); the renderings live here once, so the conversion, partial-load, init, summary and
diff reports look and serialise alike.
"""
from __future__ import annotations

import html
import json


class Report:
    """Base class: subclasses define `headline()`, `sections()` and `to_dict()`."""

    text_rows: int | None = None
    """At most this many rows of a section in the text view (the rest are counted); None: all."""

    def headline(self) -> str:  # one line: the verdict
        raise NotImplementedError

    def sections(self) -> list[tuple[str, tuple[str, ...], list[tuple]]]:
        """(caption, column headers, rows) for each table worth showing; empty tables are left out."""
        raise NotImplementedError

    def details(self) -> list[tuple[str, tuple[str, ...], list[tuple]]]:
        """Tables too long for the terminal: shown collapsed in the HTML view only."""
        return []

    def notes(self) -> list[str]:
        """Lines after the tables (warnings, hints)."""
        return []

    def to_dict(self) -> dict:
        raise NotImplementedError

    def to_json(self, **kwargs) -> str:
        return json.dumps(self.to_dict(), **kwargs)

    def section_text(self) -> list[str]:
        lines = []
        for caption, headers, rows in self.sections():
            if rows:
                shown = rows if self.text_rows is None else rows[:self.text_rows]
                lines += ["", f"{caption} ({len(rows)}):", *text_table(headers, shown)]
                if len(shown) < len(rows):
                    lines.append(f"  ... and {len(rows) - len(shown)} more (see the JSON report)")
        return lines

    def __str__(self) -> str:
        return "\n".join([self.headline(), *self.section_text(), *self.notes()])

    def _repr_html_(self) -> str:
        parts = [f"<p><b>{html.escape(self.headline())}</b></p>"]
        for caption, headers, rows in self.sections():
            if rows:
                parts.append(html_table(f"{caption} ({len(rows)})", headers, rows))
        if self.notes():
            parts.append("<ul>" + "".join(f"<li>{html.escape(n)}</li>" for n in self.notes()) + "</ul>")
        for caption, headers, rows in self.details():
            if rows:
                parts.append(f"<details><summary>{html.escape(caption)} ({len(rows)})</summary>"
                             f"{html_table('', headers, rows)}</details>")
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
    line = "  ".join(f"{{:<{w}}}" for w in widths)
    out = ["  " + line.format(*headers).rstrip(), "  " + line.format(*("-" * w for w in widths))]
    out += ["  " + line.format(*r).rstrip() for r in cells]
    return out


def html_table(caption, headers, rows) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(fmt(v))}</td>" for v in row) + "</tr>" for row in rows)
    cap = f"<caption style='text-align:left'>{html.escape(caption)}</caption>" if caption else ""
    return f"<table>{cap}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
