"""`convert diff A B` (converters/cli/diff.py): compare two weight files of any readable formats, tensor by tensor.

Why: the quickest check of a conversion is against an independent port of the same model. Names,
shapes, dtypes and values are compared; the exit code says whether anything differs (0 same,
1 different, 2 usage or format error), so it can gate a CI job.

Names of B can be rewritten (--rename REGEX=REPL, in order) to line up with A's.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np

from .errors import ConvertersError
from .finetune.report import Report


@dataclass
class DiffReport(Report):
    """The differences between two weight files; `.same` is the verdict."""

    a: str
    b: str
    atol: float
    rtol: float
    only_a: list = field(default_factory=list)
    only_b: list = field(default_factory=list)
    shape: list = field(default_factory=list)    # (name, shape a, shape b)
    dtype: list = field(default_factory=list)    # (name, dtype a, dtype b)
    values: list = field(default_factory=list)   # (name, max abs diff, max rel diff, count over tolerance)
    compared: int = 0
    max_abs: dict = field(default_factory=dict)  # every compared name -> max abs diff
    check_dtype: bool = True
    explained: dict = field(default_factory=dict)  # differing name -> layout steps making A's bit-equal to B's

    @property
    def same(self) -> bool:
        return not (self.only_a or self.only_b or self.shape or self.values or (self.check_dtype and self.dtype))

    def headline(self) -> str:
        worst = max(self.max_abs.values(), default=0.0)
        verdict = "same" if self.same else "DIFFERENT"
        layout = f" ({len(self.explained)} equal after a layout step)" if self.explained else ""
        return (f"{verdict}: {self.compared} tensors compared (max abs diff {worst:.3g}, atol {self.atol:g}, "
                f"rtol {self.rtol:g}); {len(self.values)} differ in value, {len(self.shape)} in shape{layout}, "
                f"{len(self.dtype)} in dtype, {len(self.only_a)} only in A, {len(self.only_b)} only in B")

    def sections(self):
        return [
            ("values differ", ("name", "max abs diff", "max rel diff", "elements over tolerance"), self.values),
            ("shapes differ", ("name", "shape A", "shape B"), self.shape),
            ("equal after a layout step (A -> B, bit for bit)", ("name", "steps"),
             [(n, f"equal after {d}") for n, d in self.explained.items()]),
            ("dtypes differ", ("name", "dtype A", "dtype B"), self.dtype),
            ("only in A", ("name",), [(n,) for n in self.only_a]),
            ("only in B", ("name",), [(n,) for n in self.only_b]),
        ]

    def to_dict(self) -> dict:
        return {
            "a": self.a, "b": self.b, "same": self.same, "atol": self.atol, "rtol": self.rtol,
            "compared": self.compared, "only_a": self.only_a, "only_b": self.only_b,
            "shape": [{"name": n, "a": list(x), "b": list(y)} for n, x, y in self.shape],
            "dtype": [{"name": n, "a": x, "b": y} for n, x, y in self.dtype],
            "values": [{"name": n, "max_abs": d, "max_rel": r, "over": c} for n, d, r, c in self.values],
            "max_abs": self.max_abs, "explained": self.explained,
        }


def diff_files(a, b, *, from_a=None, from_b=None, atol: float = 0.0, rtol: float = 0.0, rename=(),
               check_dtype: bool = True) -> DiffReport:
    """Compare every tensor of `a` with the same-named one of `b` (after renaming b's names).

    Values agree when |a - b| <= atol + rtol * |b| elementwise (NaNs in the same places agree);
    arrays of different dtypes are compared as float64 and the dtype difference is reported.
    """
    from .finetune.sources import open_weights

    rules = _rules(rename)
    fa = open_weights(a, from_a)
    try:
        fb = open_weights(b, from_b)
        try:
            return _compare(fa, fb, str(a), str(b), rules, atol, rtol, check_dtype)
        finally:
            getattr(fb, "close", lambda: None)()
    finally:
        getattr(fa, "close", lambda: None)()


def _rules(rename):
    out = []
    for rule in rename or ():
        pattern, repl = rule.split("=", 1) if isinstance(rule, str) else rule
        try:
            out.append((re.compile(pattern), repl))
        except re.error as e:
            raise ConvertersError(f"--rename {pattern!r} is not a valid regular expression: {e}") from None
    return out


def _compare(fa, fb, a, b, rules, atol, rtol, check_dtype) -> DiffReport:
    report = DiffReport(a, b, atol, rtol, check_dtype=check_dtype)
    names_b = {}
    for name in fb:
        new = name
        for pattern, repl in rules:
            new = pattern.sub(repl, new)
        if new in names_b:
            raise ConvertersError(f"--rename maps {names_b[new]!r} and {name!r} of B to the same name {new!r}", file=b)
        names_b[new] = name
    report.only_a = [n for n in fa if n not in names_b]
    report.only_b = [names_b[n] for n in names_b if n not in fa]
    for name in fa:
        if name not in names_b:
            continue
        x, y = fa[name], fb[names_b[name]]
        sx, sy = tuple(x.shape), tuple(y.shape)
        dx, dy = _dtype_name(x), _dtype_name(y)
        if dx != dy:
            report.dtype.append((name, dx, dy))
        if sx != sy:
            report.shape.append((name, sx, sy))
            _explain(report, name, x, y, a, b, names_b[name])
            continue
        report.compared += 1
        max_abs, max_rel, over = _value_diff(_numpy(x, a, name), _numpy(y, b, names_b[name]), atol, rtol)
        report.max_abs[name] = max_abs
        if over:
            report.values.append((name, max_abs, max_rel, over))
            _explain(report, name, x, y, a, b, names_b[name])
    return report


def _explain(report, name, x, y, a, b, name_b):
    """Record the layout steps (a permute, flips) that make A's tensor B's bit for bit, if any:
    'equal after permute [0, 1, 3, 2]' says more than '4 differ' (the port transposed its images)."""
    from .draft.like import describe, equal_after

    if int(np.prod(x.shape)) != int(np.prod(y.shape)) or len(x.shape) != len(y.shape):
        return
    chain = equal_after(_numpy(x, a, name), _numpy(y, b, name_b))
    if chain:
        report.explained[name] = describe(chain)


def _dtype_name(x) -> str:
    return str(x.dtype).replace("torch.", "")


def _numpy(x, file, name) -> np.ndarray:
    import torch

    try:
        if isinstance(x, torch.Tensor):
            x = x.detach().cpu()
            return (x.float() if x.dtype == torch.bfloat16 else x).numpy()
        return np.asarray(x.numpy() if hasattr(x, "numpy") else x)
    except ConvertersError:
        raise
    except Exception as e:
        raise ConvertersError(f"cannot read array: {e}", file=file, array=name) from None


def _value_diff(x: np.ndarray, y: np.ndarray, atol, rtol) -> tuple[float, float, int]:
    if x.dtype == y.dtype and x.dtype.kind not in "fc" and x.size:
        over = int(np.count_nonzero(x != y))
        if over == 0:
            return 0.0, 0.0, 0
    x = x.astype(np.complex128 if x.dtype.kind == "c" else np.float64)
    y = y.astype(np.complex128 if y.dtype.kind == "c" else np.float64)
    both_nan = np.isnan(x) & np.isnan(y)
    with np.errstate(invalid="ignore", over="ignore"):
        d = np.where(both_nan, 0.0, np.abs(x - y))
        d = np.where(np.isnan(d) & ~both_nan, np.inf, d)  # NaN on one side only, or inf - inf
        same_inf = np.isinf(x) & (x == y)
        d = np.where(same_inf, 0.0, d)
        over = int(np.count_nonzero(d > atol + rtol * np.abs(y)))
        rel = np.where(d == 0, 0.0, d / np.maximum(np.abs(y), np.finfo(np.float64).tiny))
    if not x.size:
        return 0.0, 0.0, 0
    return float(d.max()), float(rel.max()), over
