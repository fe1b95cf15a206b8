"""The conversion report: what went where, and everything that did not.

One object, three views: `str()` (a terminal table), `.to_dict()` (JSON) and `_repr_html_()`
(notebooks). `ok` is False while anything would be dropped, left unfilled or mismatched.
"""
from __future__ import annotations

import html
from dataclasses import dataclass, field


@dataclass
class Problem:
    kind: str  # unused_source, missing_target, unknown_target, shape_mismatch, dtype_mismatch,
    #            target_twice, source_twice, missing_with
    name: str
    detail: str
    rule: str | None = None
    suggestions: list = field(default_factory=list)


PROBLEM_TITLES = {
    "unused_source": "source arrays no rule uses and no ignore covers",
    "missing_target": "target tensors nothing fills",
    "unknown_target": "rule targets the model does not have",
    "shape_mismatch": "shape mismatches",
    "dtype_mismatch": "dtype mismatches (add a `cast` transform to convert on purpose)",
    "target_twice": "target tensors written by more than one rule",
    "source_twice": "source arrays matched by more than one rule",
    "missing_with": "`with:` sources that do not exist",
}


@dataclass
class Report:
    source: str = ""
    mapping: str = ""
    target: str = ""
    rows: list = field(default_factory=list)  # dicts: sources, targets, transforms, in_shapes, out_shapes, rule
    ignored: list = field(default_factory=list)  # (name, reason, where)
    filled: list = field(default_factory=list)  # (target, value, where)
    initialised: list = field(default_factory=list)  # (target, scheme, where)
    problems: list = field(default_factory=list)
    warnings: list = field(default_factory=list)
    allowed: set = field(default_factory=set)  # problem kinds relaxed on purpose
    bn_eps: dict = field(default_factory=dict)  # source BatchNorm layer -> its eps
    output: str | None = None

    @property
    def blocking(self) -> list:
        return [p for p in self.problems if p.kind not in self.allowed]

    @property
    def ok(self) -> bool:
        return not self.blocking

    def count(self, kind) -> int:
        return sum(p.kind == kind for p in self.problems)

    def summary(self) -> str:
        parts = [f"{len(self.rows)} assignments", f"{len(self.ignored)} ignored", f"{len(self.filled)} filled",
                 f"{len(self.initialised)} initialised"]
        for kind in PROBLEM_TITLES:
            n = self.count(kind)
            if n:
                parts.append(f"{n} {kind.replace('_', ' ')}" + (" (allowed)" if kind in self.allowed else ""))
        return ", ".join(parts)

    def to_dict(self) -> dict:
        return {
            "ok": self.ok, "source": self.source, "mapping": self.mapping, "target": self.target,
            "output": self.output,
            "assignments": self.rows,
            "ignored": [{"name": n, "reason": r, "rule": w} for n, r, w in self.ignored],
            "filled": [{"target": t, "value": v, "rule": w} for t, v, w in self.filled],
            "initialised": [{"target": t, "scheme": s, "rule": w} for t, s, w in self.initialised],
            "problems": [{"kind": p.kind, "name": p.name, "detail": p.detail, "rule": p.rule,
                          "suggestions": p.suggestions, "allowed": p.kind in self.allowed} for p in self.problems],
            "warnings": list(self.warnings),
            "bn_eps": dict(self.bn_eps),
        }

    def problem_table(self) -> str:
        lines = []
        for kind, title in PROBLEM_TITLES.items():
            items = [p for p in self.problems if p.kind == kind]
            if not items:
                continue
            lines.append(f"{title} ({len(items)}{', allowed' if kind in self.allowed else ''}):")
            for p in items[:50]:
                sug = f"  -> did you mean {', '.join(p.suggestions)}?" if p.suggestions else ""
                rule = f"  [{p.rule}]" if p.rule else ""
                lines.append(f"  {p.name}: {p.detail}{rule}{sug}")
            if len(items) > 50:
                lines.append(f"  ... and {len(items) - 50} more (see --report)")
        return "\n".join(lines)

    def plan_table(self) -> str:
        """source -> transforms -> target, with shapes (the --dry-run view)."""
        def shape(s):
            return " + ".join("x".join(map(str, x)) for x in s) if s and isinstance(s[0], (list, tuple)) else "x".join(map(str, s))
        lines = []
        for r in self.rows:
            chain = " -> ".join(r["transforms"]) or "(as is)"
            lines.append(f"{' + '.join(r['sources'])} [{' , '.join(shape(s) for s in r['in_shapes'])}]"
                         f"  --{chain}-->  {', '.join(r['targets'])} [{' , '.join(shape(s) for s in r['out_shapes'])}]")
        for t, v, w in self.filled:
            lines.append(f"fill {v:g} -> {t}  [{w}]")
        for t, s, w in self.initialised:
            lines.append(f"init {s} -> {t}  [{w}]")
        for n, r, w in self.ignored:
            lines.append(f"ignore {n}" + (f" ({r})" if r else ""))
        return "\n".join(lines)

    def __str__(self) -> str:
        out = [f"conversion {'OK' if self.ok else 'FAILED'}: {self.summary()}"]
        table = self.problem_table()
        if table:
            out.append(table)
        out += [f"warning: {w}" for w in self.warnings]
        return "\n".join(out)

    def _repr_html_(self) -> str:
        e = html.escape
        head = f"<p><b>conversion {'OK' if self.ok else 'FAILED'}</b>: {e(self.summary())}</p>"
        rows = "".join(
            f"<tr><td>{e(', '.join(r['sources']))}</td><td>{e(' → '.join(r['transforms']))}</td>"
            f"<td>{e(', '.join(r['targets']))}</td><td>{e(str(r['out_shapes']))}</td></tr>" for r in self.rows)
        probs = "".join(
            f"<tr style='color:#b00'><td>{e(p.kind)}</td><td>{e(p.name)}</td><td>{e(p.detail)}</td>"
            f"<td>{e(', '.join(p.suggestions))}</td></tr>" for p in self.problems)
        warn = "".join(f"<li>{e(w)}</li>" for w in self.warnings)
        return (head + (f"<table><tr><th>problem</th><th>name</th><th>detail</th><th>suggestions</th></tr>{probs}</table>" if probs else "")
                + (f"<ul>{warn}</ul>" if warn else "")
                + f"<details><summary>{len(self.rows)} assignments</summary><table><tr><th>source</th>"
                  f"<th>transforms</th><th>target</th><th>shape</th></tr>{rows}</table></details>")
