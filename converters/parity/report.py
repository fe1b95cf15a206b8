"""The parity report: one object, four views.

`str()` is the terminal verdict, `.to_dict()` the JSON form (`convert verify --json`),
`_repr_html_()` the notebook view and `.plot(path)` a per-layer error plot (needs matplotlib).
It is a converters.reporting.Report like the conversion and fine-tuning reports (headline,
sections, HTML tables from there); the terminal view keeps its own layout because a verdict reads
top-down (outputs, first divergent layer, layers, notes), and `notes` is a list of lines here.
"""
from __future__ import annotations

import html
import json
from dataclasses import dataclass, field

from ..reporting import Report, html_table


@dataclass
class ParityReport(Report):
    passed: bool = False
    outputs: list = field(default_factory=list)     # per-output metrics (converters.parity.compare.compare)
    first_divergent: dict | None = None             # {source_layer, module, metrics, likely_causes}
    layers: list = field(default_factory=list)      # per-layer metrics in PyTorch execution order
    source: str = ""
    mapping: str = ""
    framework: str = ""
    tolerance: dict = field(default_factory=dict)
    inputs: dict = field(default_factory=dict)      # name -> {shape, dtype, source_shape}
    conventions: dict = field(default_factory=dict)
    timings: dict = field(default_factory=dict)     # seconds: convert, source, target, localise, total
    notes: list = field(default_factory=list)       # things the reader should know (unmatched taps, extra outputs)
    localised: bool = False                         # activations were compared
    undetermined: bool = False                      # layers differ, but none can be named first (see notes)

    @property
    def exit_code(self) -> int:
        return 0 if self.passed else 1

    def verdict(self) -> str:
        return "PASS" if self.passed else "FAIL"

    def __bool__(self):
        return self.passed

    # ---- text ---------------------------------------------------------------------------------

    def __str__(self) -> str:
        lines = [self.headline()]
        if self.inputs:
            lines.append("inputs: " + ", ".join(f"{n} {v.get('shape')}" for n, v in self.inputs.items()))
        lines.append(_table(self.outputs, "output"))
        if self.first_divergent:
            fd = self.first_divergent
            m = fd["metrics"]
            lines.append(f"first divergent layer: {fd['source_layer']} -> {fd['module']} "
                         f"({m.get('module_type', '')}): " + "; ".join(m.get("reasons") or []))
            lines.append("likely causes to check:")
            lines.extend(f"  - {c}" for c in fd.get("likely_causes") or [])
        elif self.localised and not self.passed and self.undetermined:
            lines.append("first divergent layer: cannot tell (the differing layers are contradicted by later "
                         "ones or laid out differently; see the notes)")
        elif self.localised and not self.passed:
            lines.append("every compared layer agrees; the difference arises after the last paired layer "
                         "(output head, softmax, outputs matched in the wrong order?)")
        if self.layers and (not self.passed or len(self.layers) <= 40):
            lines.append(_table(self.layers, "layer"))
        lines.extend(f"note: {n}" for n in self.notes)
        if self.timings:
            lines.append("time: " + ", ".join(f"{k} {v:.2f}s" for k, v in self.timings.items()))
        return "\n".join(lines)

    # ---- the Report interface ----------------------------------------------------------------

    def headline(self) -> str:
        return (f"parity {self.verdict()}: {self.framework or 'source'} {self.source} vs PyTorch "
                f"(mapping {self.mapping})")

    def sections(self):
        return [(f"{kind}s", tuple(HEADERS), [tuple(_row_cells(r)) for r in rows])
                for kind, rows in (("output", self.outputs), ("layer", self.layers))]

    # ---- JSON / HTML ----------------------------------------------------------------------------

    def to_dict(self) -> dict:
        return {"passed": self.passed, "verdict": self.verdict(), "source": self.source, "mapping": self.mapping,
                "framework": self.framework, "tolerance": self.tolerance, "inputs": self.inputs,
                "outputs": self.outputs, "first_divergent": self.first_divergent, "layers": self.layers,
                "localised": self.localised, "undetermined": self.undetermined, "conventions": self.conventions,
                "timings": self.timings, "notes": self.notes}

    def to_json(self, path=None, indent=1) -> str:
        text = json.dumps(self.to_dict(), indent=indent, default=str)
        if path is not None:
            with open(path, "w") as fh:
                fh.write(text)
        return text

    def _repr_html_(self) -> str:
        colour = "#1a7f37" if self.passed else "#cf222e"
        parts = [f"<div><b style='color:{colour}'>parity {self.verdict()}</b> "
                 f"{html.escape(self.framework)} <code>{html.escape(str(self.source))}</code> vs PyTorch "
                 f"(mapping <code>{html.escape(str(self.mapping))}</code>)</div>",
                 _html_table(self.outputs, "output")]
        if self.first_divergent:
            fd = self.first_divergent
            parts.append(f"<div>first divergent layer: <b>{html.escape(fd['source_layer'])}</b> &rarr; "
                         f"<code>{html.escape(fd['module'])}</code></div><ul>"
                         + "".join(f"<li>{html.escape(c)}</li>" for c in fd.get("likely_causes") or []) + "</ul>")
        if self.layers:
            parts.append(_html_table(self.layers, "layer"))
        parts.extend(f"<div><i>{html.escape(n)}</i></div>" for n in self.notes)
        return "\n".join(parts)

    def plot(self, path=None):
        """Per-layer relative error (max |diff| / scale, log scale) with the tolerance line. Returns
        the matplotlib Figure; writes it to `path` when given."""
        try:
            import matplotlib
            if path is not None:
                matplotlib.use("Agg", force=False)
            import matplotlib.pyplot as plt
        except ImportError:
            from ..errors import MissingDependencyError

            raise MissingDependencyError("the per-layer error plot needs matplotlib",
                                         hint="pip install matplotlib") from None
        rows = [r for r in (self.layers or self.outputs) if r.get("max_abs") is not None]
        fig, ax = plt.subplots(figsize=(max(6, 0.3 * len(rows) + 2), 4))
        values = [max(r["max_abs"] / r["scale"], 1e-12) for r in rows]
        colours = ["#1a7f37" if r["passed"] else "#cf222e" for r in rows]
        ax.bar(range(len(rows)), values, color=colours)
        ax.set_yscale("log")
        ax.axhline(self.tolerance.get("atol", 1e-4), color="k", linestyle="--", linewidth=1, label="atol")
        ax.set_xticks(range(len(rows)))
        ax.set_xticklabels([r.get("name", "") for r in rows], rotation=90, fontsize=7)
        ax.set_ylabel("max |diff| / max(1, max |ref|)")
        ax.set_title(f"parity {self.verdict()}: per-layer error")
        ax.legend()
        fig.tight_layout()
        if path is not None:
            fig.savefig(path)
        return fig


def _fmt(v, digits=3):
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}g}"
    return str(v)


def _row_cells(r):
    verdict = "ok" if r.get("passed") else "DIFF?" if r.get("unsure") else "DIFF"
    return [r.get("name", ""), r.get("module", "") or "", "x".join(map(str, r.get("shape") or [])),
            _fmt(r.get("max_abs")), _fmt(r.get("atol")), _fmt(r.get("max_rel")),
            _fmt(r.get("cosine"), 7), _fmt(r.get("topk_agree")), verdict]


HEADERS = ["name", "module", "shape", "max|diff|", "atol", "max rel", "cosine", "top-k", ""]


def _table(rows, kind) -> str:
    if not rows:
        return f"(no {kind}s compared)"
    cells = [HEADERS] + [_row_cells(r) for r in rows]
    if not any(r.get("module") for r in rows):
        cells = [c[:1] + c[2:] for c in cells]
    width = [min(48, max(len(c[i]) for c in cells)) for i in range(len(cells[0]))]
    out = []
    for c in cells:
        out.append("  ".join(s[:48].ljust(w) for s, w in zip(c, width)).rstrip())
    return "\n".join(out)


def _html_table(rows, kind) -> str:
    if not rows:
        return f"<div>(no {kind}s compared)</div>"
    return html_table("", HEADERS, [_row_cells(r) for r in rows])
