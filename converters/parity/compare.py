"""Comparing a reference array (the source framework's) with the converted model's.

Arrays are compared as they are: same shape, element by element, never sorted or reduced to an
order-blind summary first. Every metric is computed in float64.

Default tolerances (docs/parity.md), all relative to the reference's scale max(1, max|ref|):
    atol    1e-4   max |got - ref| <= atol * scale
    rtol    None   max |got - ref| / max(|ref|, 1e-3 * max|ref|) is reported; enforced only if set
    cosine  0.9999 cosine similarity of the flattened arrays
    topk    1      for class-score outputs (2-d, >= 2 columns): each row's reference top-1 must be
                   among the converted model's top-k, unless the two classes are tied within atol
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from ..errors import ConvertersError

REL_FLOOR = 1e-3  # relative errors are taken against max(|ref|, REL_FLOOR * max|ref|)


@dataclass
class Tolerance:
    atol: float = 1e-4
    rtol: float | None = None
    cosine: float = 0.9999
    topk: int = 1  # 0 turns the class-score check off

    @classmethod
    def from_any(cls, value) -> Tolerance:
        """A Tolerance from None, a Tolerance, a dict ({atol, rtol, cosine, topk}) or a number (atol)."""
        if value is None:
            return cls()
        if isinstance(value, cls):
            return value
        if isinstance(value, (int, float)):
            return cls(atol=float(value))
        if isinstance(value, dict):
            unknown = set(value) - {"atol", "rtol", "cosine", "topk"}
            if unknown:
                raise ConvertersError(f"unknown tolerance key(s) {sorted(unknown)}",
                                      hint="known: atol, rtol, cosine, topk")
            return cls(**value)
        raise ConvertersError(f"a tolerance is a number (atol) or a mapping, not {value!r}")

    def merged(self, overrides: dict | None) -> Tolerance:
        """This tolerance with the keys of `overrides` that are not None replaced."""
        values = asdict(self)
        values.update({k: v for k, v in (overrides or {}).items() if v is not None})
        return Tolerance.from_any(values)

    def to_dict(self) -> dict:
        return asdict(self)


def looks_like_class_scores(shape) -> bool:
    return len(shape) == 2 and shape[1] >= 2


def compare(ref, got, tol: Tolerance, name: str = "") -> dict:
    """Metrics of `got` against `ref`, with `passed` and the reasons it failed."""
    ref = np.asarray(ref)
    got = np.asarray(got)
    m = {"name": name, "shape": list(ref.shape), "got_shape": list(got.shape), "max_abs": None, "max_rel": None,
         "mean_abs": None, "cosine": None, "scale": None, "atol": None, "topk_agree": None, "passed": False,
         "reasons": []}
    if ref.shape != got.shape:
        m["reasons"].append(f"shape {list(got.shape)} != reference {list(ref.shape)}")
        return m
    r = ref.astype(np.float64).ravel()
    g = got.astype(np.float64).ravel()
    if r.size == 0:
        m.update(max_abs=0.0, max_rel=0.0, mean_abs=0.0, cosine=1.0, scale=1.0, atol=tol.atol, passed=True)
        return m
    finite = np.isfinite(r) & np.isfinite(g)
    if not finite.all():
        same = (np.isnan(r) & np.isnan(g)) | (r == g)
        if not same[~finite].all():
            m["reasons"].append(f"{int((~finite & ~same).sum())} non-finite values differ")
        r, g = r[finite], g[finite]
    peak = float(np.abs(r).max()) if r.size else 0.0
    scale = max(1.0, peak)
    diff = np.abs(g - r)
    max_abs = float(diff.max()) if diff.size else 0.0
    floor = max(REL_FLOOR * peak, np.finfo(np.float64).tiny)
    max_rel = float((diff / np.maximum(np.abs(r), floor)).max()) if diff.size else 0.0
    m.update(max_abs=max_abs, max_rel=max_rel, mean_abs=float(diff.mean()) if diff.size else 0.0,
             cosine=cosine(r, g), scale=scale, atol=tol.atol * scale)
    if max_abs > tol.atol * scale:
        m["reasons"].append(f"max |diff| {max_abs:.3g} > atol {tol.atol * scale:.3g}")
    if tol.rtol is not None and max_rel > tol.rtol:
        m["reasons"].append(f"max relative error {max_rel:.3g} > rtol {tol.rtol:.3g}")
    if m["cosine"] < tol.cosine:
        m["reasons"].append(f"cosine {m['cosine']:.6f} < {tol.cosine}")
    if tol.topk and looks_like_class_scores(ref.shape):
        agree = topk_agreement(ref, got, tol.topk, tol.atol * scale)
        m["topk_agree"] = agree
        if agree < 1.0:
            m["reasons"].append(f"top-{tol.topk} class agrees on {agree:.0%} of rows")
    m["passed"] = not m["reasons"]
    return m


def cosine(a, b) -> float:
    """Cosine similarity of two flat float64 arrays; two all-zero arrays are identical (1.0)."""
    na, nb = float(np.linalg.norm(a)), float(np.linalg.norm(b))
    if na == 0.0 and nb == 0.0:
        return 1.0
    if na == 0.0 or nb == 0.0:
        return 0.0
    return float(np.dot(a, b) / (na * nb))


def topk_agreement(ref, got, k: int, tie: float) -> float:
    """Fraction of rows whose reference top-1 class is among `got`'s top-k classes. A row whose
    reference scores the converted model's pick within `tie` of its own best counts as agreeing:
    near-ties are decided by rounding, not by the conversion."""
    ref = np.asarray(ref, np.float64)
    got = np.asarray(got, np.float64)
    best = ref.argmax(axis=1)
    top = np.argsort(-got, axis=1, kind="stable")[:, :k]
    ok = (top == best[:, None]).any(axis=1)
    pick = got.argmax(axis=1)
    rows = np.arange(ref.shape[0])
    tied = ref[rows, best] - ref[rows, pick] <= tie
    return float((ok | tied).mean()) if ref.shape[0] else 1.0
