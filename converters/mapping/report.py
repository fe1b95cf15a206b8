"""The conversion report: what went where, and everything that did not.

One object, three views (converters/reporting.py renders them): `str()` (a terminal table),
`.to_dict()` (JSON) and `_repr_html_()` (notebooks). `ok` is False while anything would be
dropped, left unfilled or mismatched.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from ..reporting import Report as _Base


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
class Report(_Base):
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

    text_rows = 50

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

    def headline(self) -> str:
        return f"conversion {'OK' if self.ok else 'FAILED'}: {self.summary()}"

    def sections(self):
        """One table per kind of problem, in PROBLEM_TITLES order."""
        out = []
        for kind, title in PROBLEM_TITLES.items():
            rows = [(p.name, p.detail, p.rule, ", ".join(p.suggestions)) for p in self.problems if p.kind == kind]
            out.append((title + (", allowed" if kind in self.allowed else ""),
                        ("name", "detail", "rule", "did you mean"), rows))
        return out

    def details(self):
        return [("assignments", ("source", "transforms", "target", "shape"),
                 [(", ".join(r["sources"]), " -> ".join(r["transforms"]), ", ".join(r["targets"]),
                   str(r["out_shapes"])) for r in self.rows]),
                ("ignored", ("name", "reason", "rule"), self.ignored),
                ("filled", ("target", "value", "rule"), self.filled),
                ("initialised", ("target", "scheme", "rule"), self.initialised)]

    def notes(self) -> list[str]:
        return [f"warning: {w}" for w in self.warnings]

    def problem_table(self) -> str:
        """The problems alone (what the CLI prints when a conversion stops)."""
        return "\n".join(self.section_text()).strip("\n")

    def plan_table(self) -> str:
        """source -> transforms -> target, with shapes (the --dry-run view)."""
        def shape(s):
            if s and isinstance(s[0], (list, tuple)):
                return " + ".join("x".join(map(str, x)) for x in s)
            return "x".join(map(str, s))
        lines = []
        for r in self.rows:
            chain = " -> ".join(r["transforms"]) or "(as is)"
            lines.append(f"{' + '.join(r['sources'])} [{' , '.join(shape(s) for s in r['in_shapes'])}]"
                         f"  --{chain}-->  {', '.join(r['targets'])} [{' , '.join(shape(s) for s in r['out_shapes'])}]")
        for t, v, w in self.filled:
            lines.append(f"fill {v:g} -> {t}  [{w}]")
        for t, s, w in self.initialised:
            lines.append(f"init {s} -> {t}  [{w}]")
        for n, r, _w in self.ignored:
            lines.append(f"ignore {n}" + (f" ({r})" if r else ""))
        return "\n".join(lines)
