"""What the source framework does at run time that a table can silently miss, checked on a
conversion plan: each finding is a warning in the conversion report, never a stop.

MXNet BatchNorm with fix_gamma=True (the symbol API's default) runs with gamma = 1 whatever the
file stores; a table that copies a stored gamma that is not all ones into PyTorch's weight gives
another network. The `constant` transform (value 1) is the fix.
"""
from __future__ import annotations

import numpy as np

from .transforms import Constant


def source_warnings(plan, arrays) -> list[str]:
    """Every check below, in order."""
    return fix_gamma_warnings(plan, arrays)


def fix_gamma_warnings(plan, arrays) -> list[str]:
    if getattr(arrays, "framework", None) != "mxnet":
        return []
    layers = getattr(arrays, "layers", None) or {}
    found = []
    for a in plan.assignments:
        if any(isinstance(t, Constant) for t in a.rule.transforms):
            continue
        for name in a.sources:
            layer = layers.get(arrays[name].meta.get("layer"))
            if layer is None or "BatchNorm" not in str(layer.type) or not _fixes_gamma(layer.params):
                continue
            if name != _gamma_of(layer):
                continue
            values = arrays[name].numpy()
            if values.size and not np.all(values == 1):
                found.append((layer.name, float(values.min()), float(values.max()), a.targets[0]))
    if not found:
        return []
    named = ", ".join(f"{layer} -> {target}" for layer, _, _, target in found[:3])
    more = f" and {len(found) - 3} more" if len(found) > 3 else ""
    lo, hi = min(f[1] for f in found), max(f[2] for f in found)
    return [f"MXNet BatchNorm with fix_gamma=True on {len(found)} layer(s) ({named}{more}): mxnet runs them with "
            f"gamma = 1, but the file stores gamma in [{lo:.3g}, {hi:.3g}] and the table copies it (add "
            "transforms: [{constant: {value: 1}}] to the gamma rule)"]


def _fixes_gamma(params: dict) -> bool:
    """fix_gamma as the symbol records it: absent means the symbol API's default, True."""
    value = str((params or {}).get("fix_gamma", "True")).strip().lower()
    return value in ("true", "1")


def _gamma_of(layer) -> str | None:
    """The layer's gamma array: named so, else the first of its arrays (data, gamma, beta, ...)."""
    for name in layer.arrays:
        if name.endswith("gamma"):
            return name
    return layer.arrays[0] if layer.arrays else None
