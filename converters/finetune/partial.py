"""Partial loading: put whatever fits from a weight source into a model, and say exactly what did not.

Why: a fine-tuning model differs from its source (a new head, an extra layer). The usual snippet,
load_state_dict(strict=False) after filtering by shape, skips mismatches without a word. Here every
source array and every model tensor ends up in exactly one column of a LoadReport.

Name pipeline for each source array:
    source name -> wrapper prefixes removed (`module.`, a nested checkpoint's `state_dict.` ...)
                -> mapping (dict old->new or callable; None ignores the array on purpose)
                -> rename rules [(regex, replacement)], applied in order with re.sub
                -> matched against the model's state_dict names (match="name" | "name+shape" | "suffix")
"""
from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..errors import ConvertersError, CoverageError, FormatError
from ..reporting import Report
from .checkpoints import strip_prefixes, unwrap

MATCH_MODES = ("name", "name+shape", "suffix")


@dataclass
class LoadReport(Report):
    """Where every model tensor and every source array went.

    loaded          (model name, source name) pairs copied into the model
    reshaped        (model name, source shape, model shape): loaded, only singleton axes differed
    skipped_shape   (model name, source name, source shape, model shape): same tensor, wrong shape
    ambiguous       (model name, [source names]): suffix matching found no single best source
    missing         model names no source array was found for
    unexpected      source names (after renaming) no model tensor was found for
    ignored         source names dropped on purpose (mapping -> None, other checkpoint sections)
    prefix          wrapper prefix removed from the source names ('' when none)
    """

    loaded: list = field(default_factory=list)
    reshaped: list = field(default_factory=list)
    skipped_shape: list = field(default_factory=list)
    ambiguous: list = field(default_factory=list)
    missing: list = field(default_factory=list)
    unexpected: list = field(default_factory=list)
    ignored: list = field(default_factory=list)
    prefix: str = ""
    source: str = ""

    @property
    def not_loaded(self) -> list[str]:
        """Model names that kept their previous values: pass to init_params(only=...)."""
        names = set(self.missing) | {r[0] for r in self.skipped_shape} | {r[0] for r in self.ambiguous}
        return sorted(names)

    @property
    def ok(self) -> bool:
        return not (self.skipped_shape or self.ambiguous or self.missing or self.unexpected)

    def headline(self) -> str:
        src = f" from {self.source}" if self.source else ""
        pre = f" (prefix {self.prefix!r} removed)" if self.prefix else ""
        counts = {"skipped for shape": self.skipped_shape, "ambiguous": self.ambiguous,
                  "missing in source": self.missing, "unexpected in source": self.unexpected,
                  "ignored": self.ignored}
        return f"loaded {len(self.loaded)} tensors{src}{pre}; " + ", ".join(f"{len(v)} {k}" for k, v in counts.items())

    def sections(self):
        return [
            ("skipped: shape mismatch", ("model name", "source name", "source shape", "model shape"),
             self.skipped_shape),
            ("ambiguous suffix match", ("model name", "candidates"), self.ambiguous),
            ("missing in source", ("model name",), [(n,) for n in self.missing]),
            ("unexpected in source", ("source name",), [(n,) for n in self.unexpected]),
            ("loaded after reshape", ("model name", "source shape", "model shape"), self.reshaped),
            ("ignored on purpose", ("source name",), [(n,) for n in self.ignored]),
        ]

    def to_dict(self) -> dict:
        return {
            "source": self.source, "prefix": self.prefix, "ok": self.ok,
            "loaded": [{"model": m, "source": s} for m, s in self.loaded],
            "reshaped": [{"model": m, "source_shape": list(a), "model_shape": list(b)} for m, a, b in self.reshaped],
            "skipped_shape": [{"model": m, "source": s, "source_shape": list(a), "model_shape": list(b)}
                              for m, s, a, b in self.skipped_shape],
            "ambiguous": [{"model": m, "candidates": list(c)} for m, c in self.ambiguous],
            "missing": list(self.missing), "unexpected": list(self.unexpected), "ignored": list(self.ignored),
        }


# ---------------------------------------------------------------------------------- the function

def load_partial(model: torch.nn.Module, source, *, mapping=None, match: str = "name", rename=(),
                 strict: bool = False, framework: str | None = None) -> LoadReport:
    """Copy the source arrays that fit into `model`; return a LoadReport of everything else.

    source: a path any converters reader opens (or a torch checkpoint), an ArrayFile, a state
        dict (nested checkpoint dictionaries are unwrapped), or an nn.Module.
    mapping: dict old name -> new name, or callable old name -> new name; None drops the array
        (listed as ignored). A callable may also return (new name, fn) where fn transforms the
        array (numpy or tensor in, tensor-like out), e.g. a transpose.
    match: "name" (exact names; shapes that differ only by singleton axes are reshaped),
        "name+shape" (exact names and exact shapes), "suffix" (longest unambiguous dotted suffix,
        exact shapes; ambiguity is reported, never guessed).
    rename: [(regex, replacement)] applied in order after the mapping.
    strict: raise CoverageError (with .report) and load nothing unless the report is ok.
    """
    if match not in MATCH_MODES:
        raise ConvertersError(f"unknown match mode {match!r}", hint=f"choose one of {', '.join(MATCH_MODES)}")
    rules = _compile_rules(rename)
    model = unwrap(model)
    targets = strip_prefixes(model.state_dict(keep_vars=True))
    arrays, label, close = _open_source(source, framework)
    try:
        report = LoadReport(source=label)
        arrays = strip_prefixes(arrays)
        report.ignored = [n for n, a in arrays.items() if _outside_weights(a)]
        arrays = {n: a for n, a in arrays.items() if n not in report.ignored}
        if match != "suffix":  # suffix matching sees through prefixes by itself
            arrays, report.prefix, outside = _unwrap_prefix(arrays, targets)
            report.ignored += outside
        renamed = _rename_all(arrays, mapping, rules, report)
        pairs = _match(renamed, targets, match, report)
        plan = _plan(pairs, renamed, targets, match, report)
        if strict and not report.ok:
            raise CoverageError(f"partial load is not complete: {report.headline()}",
                                file=label or None, hint="print the report (err.report) for the table")
        _copy(plan, targets)
    except CoverageError as e:
        e.report = report
        raise
    finally:
        close()
    return report


# -------------------------------------------------------------------------------------- sources

def _open_source(source, framework):
    """(dict name -> array-like, label, close) for every kind of source load_partial accepts."""
    if isinstance(source, torch.nn.Module):
        return dict(unwrap(source).state_dict()), type(source).__name__, _noop
    if isinstance(source, (str, Path)):
        from .sources import open_weights

        f = open_weights(source, framework)  # a checkpoint's state dict is found by the torch reader
        return dict(f), str(source), getattr(f, "close", _noop)
    if isinstance(source, Mapping):
        label = getattr(source, "path", "") or ""
        return _flatten(_state_dict_of(source)), str(label), _noop
    raise ConvertersError(f"cannot load weights from a {type(source).__name__}",
                          hint="pass a path, a state dict, an ArrayFile or an nn.Module")


def _noop():
    pass


def _is_array(v) -> bool:
    return isinstance(v, (torch.Tensor, np.ndarray)) or (hasattr(v, "numpy") and hasattr(v, "shape"))


def _state_dict_of(state: Mapping) -> Mapping:
    """The weights inside a nested checkpoint dictionary ({'state_dict': {...}, 'epoch': 3, ...}), by
    the rule the torch reader applies to files (readers/torch_files.py), so a dict and the file it
    was saved to load the same way. Whatever nesting is left is flattened, and a prefix no target
    name has is removed later (`_unwrap_prefix`)."""
    from ..readers.torch_files import state_dict_location

    for key in state_dict_location(state):
        state = state[key]
    return state


def _flatten(state: Mapping, prefix: str = "") -> dict:
    out = {}
    for k, v in state.items():
        if _is_array(v):
            out[prefix + str(k)] = v
        elif isinstance(v, Mapping):
            out.update(_flatten(v, f"{prefix}{k}."))
    return out  # non-array leaves (epoch numbers, config strings) are not weights


def _outside_weights(array) -> bool:
    """Readers tag optimizer slots and other checkpoint sections (`rng`, `optimizer`) in meta."""
    meta = getattr(array, "meta", None) or {}
    return meta.get("role") == "optimizer" or bool(meta.get("section"))


def _unwrap_prefix(arrays: dict, targets: dict):
    """Remove a nested-checkpoint prefix (`state_dict.`, `model/`) when no name matches as it is.

    The prefix (up to three components) that makes the most names match is chosen, and only when
    no other prefix does as well. Returns (arrays under the prefix with it removed, the prefix,
    names outside it = ignored).
    """
    if any(n in targets for n in arrays):
        return arrays, "", []
    candidates = set()
    for n in arrays:
        candidates.update(n[:m.end()] for m in list(re.finditer(r"[./]", n))[:3])
    scores, results = {}, {}
    for prefix in candidates:
        stripped = strip_prefixes({n[len(prefix):]: n for n in arrays if n.startswith(prefix)})
        scores[prefix] = sum(n in targets for n in stripped)
        results[prefix] = tuple(sorted(stripped.items()))
    best_hits = max(scores.values(), default=0)
    winners = sorted((p for p, h in scores.items() if h == best_hits), key=len)
    # `a.model.` and `a.model.module.` are one answer when `module.` is stripped anyway
    if best_hits == 0 or len({results[p] for p in winners}) != 1:
        return arrays, "", []
    best = winners[0]
    inside = strip_prefixes({n[len(best):]: a for n, a in arrays.items() if n.startswith(best)})
    return inside, best, [n for n in arrays if not n.startswith(best)]


# ------------------------------------------------------------------------------------- renaming

def _compile_rules(rename):
    rules = []
    for rule in rename or ():
        try:
            pattern, replacement = rule
            rules.append((re.compile(pattern), replacement))
        except (TypeError, ValueError):
            raise ConvertersError(f"rename rule {rule!r} is not a (regex, replacement) pair") from None
        except re.error as e:
            raise ConvertersError(f"rename rule {rule!r}: bad regular expression: {e}") from None
    return rules


def _rename_all(arrays: dict, mapping, rules, report: LoadReport) -> dict:
    """new name -> (source name, array, transform or None)."""
    out = {}
    for name, array in arrays.items():
        new, fn = _apply_mapping(name, mapping)
        if new is None:
            report.ignored.append(name)
            continue
        for pattern, replacement in rules:
            new = pattern.sub(replacement, new)
        if new in out:
            raise ConvertersError(f"two source arrays map to the same name {new!r}: {out[new][0]!r} and {name!r}",
                                  array=name, hint="check the mapping and rename rules")
        out[new] = (name, array, fn)
    return out


def _apply_mapping(name, mapping):
    if mapping is None:
        return name, None
    if isinstance(mapping, Mapping):
        result = mapping.get(name, name)
    elif callable(mapping):
        result = mapping(name)
    else:
        raise ConvertersError(f"mapping must be a dict or a callable, not {type(mapping).__name__}")
    if isinstance(result, tuple):
        return result[0], result[1]
    return result, None


# ------------------------------------------------------------------------------------- matching

def _match(renamed: dict, targets: dict, match: str, report: LoadReport) -> list[tuple[str, str]]:
    """(model name, renamed source name) pairs; fills missing/unexpected/ambiguous."""
    if match == "suffix":
        pairs = _match_suffix(renamed, targets, report)
    else:
        pairs = [(n, n) for n in targets if n in renamed]
    used_targets = {t for t, _ in pairs} | {t for t, _ in report.ambiguous}
    used_sources = {s for _, s in pairs} | {s for _, c in report.ambiguous for s in c}
    report.missing = [n for n in targets if n not in used_targets]
    report.unexpected = [renamed[n][0] if renamed[n][0] == n else f"{renamed[n][0]} -> {n}"
                         for n in renamed if n not in used_sources]
    return pairs


def _parts(name: str) -> list[str]:
    return re.split(r"[./]", name)


def _match_suffix(renamed: dict, targets: dict, report: LoadReport) -> list[tuple[str, str]]:
    """Pair each model name with the source sharing its longest dotted suffix, when that source is unique.

    A suffix must keep at least two components (never just `weight`), unless the name has one.
    Two model names claiming the same source are both ambiguous.
    """
    index: dict[tuple, list[str]] = {}
    for s in renamed:
        parts = tuple(_parts(s))
        for k in range(1, len(parts) + 1):
            index.setdefault(parts[-k:], []).append(s)
    choice = {}
    for t in targets:
        parts = tuple(_parts(t))
        shortest = min(2, len(parts))
        for k in range(len(parts), shortest - 1, -1):
            found = index.get(parts[-k:])
            if found:
                choice[t] = found
                break
    claims: dict[str, list[str]] = {}
    for t, found in choice.items():
        if len(found) == 1:
            claims.setdefault(found[0], []).append(t)
    pairs = []
    for t, found in choice.items():
        if len(found) > 1:
            report.ambiguous.append((t, sorted(found)))
        elif len(claims[found[0]]) > 1:
            report.ambiguous.append((t, [found[0]]))
        else:
            pairs.append((t, found[0]))
    return pairs


def _plan(pairs, renamed, targets, match, report: LoadReport):
    """(target tensor, source array, transform, reshape-to) for each pair whose shapes fit."""
    plan = []
    for t, s in pairs:
        source_name, array, fn = renamed[s]
        target = targets[t]
        if fn is not None:
            array = fn(_as_tensor(array, source_name))
        shape = tuple(array.shape)
        want = tuple(target.shape)
        reshape = None
        if shape != want:
            if match == "name" and _squeezed(shape) == _squeezed(want):
                reshape = want
                report.reshaped.append((t, shape, want))
            else:
                report.skipped_shape.append((t, source_name, shape, want))
                continue
        plan.append((t, array, source_name, reshape))
        report.loaded.append((t, source_name))
    return plan


def _squeezed(shape):
    return tuple(d for d in shape if d != 1)


def _as_tensor(array, name) -> torch.Tensor:
    if isinstance(array, torch.Tensor):
        return array.detach()
    try:
        data = array.numpy() if not isinstance(array, np.ndarray) else array
        if data.dtype.kind == "V" or str(data.dtype) == "bfloat16":
            data = data.astype(np.float32)
        return torch.from_numpy(data if data.flags.c_contiguous else np.array(data, order="C"))
    except ConvertersError:
        raise
    except Exception as e:
        raise FormatError(f"cannot read array: {e}", array=name) from None


def _copy(plan, targets) -> None:
    with torch.no_grad():
        for t, array, source_name, reshape in plan:
            value = _as_tensor(array, source_name)
            if reshape is not None:
                value = value.reshape(reshape)
            targets[t].copy_(value)
