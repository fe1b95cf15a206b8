"""`convert draft SOURCE --like port.pth`: match an existing port bit for bit.

An independent port may keep conventions no weight shows: kernels with height and width swapped
(images fed transposed), the first conv's input channels reversed (BGR), another flatten order, a
gate order. Every drafted rule is applied to the source array and compared with the port's tensor
of the same name; when they differ, layout steps are searched (axis permutations, flips, flatten
orders) for the chain that reproduces the port exactly. What no step reproduces is said, never
guessed. The search itself (`equal_after`) is shared with `convert diff`.
"""
from __future__ import annotations

import itertools

import numpy as np

from ..mapping import transforms as T


def equal_after(x: np.ndarray, y: np.ndarray) -> list | None:
    """The shortest chain of layout steps (YAML transform specs: a permute, flips of one axis or
    of two trailing (spatial) axes) that turns `x` into `y` bit for bit: [] when equal, None when
    none does. Arrays with different value multisets are refused before any search."""
    x, y = np.asarray(x), np.asarray(y)
    if x.size != y.size or x.ndim != y.ndim or x.ndim > 5:
        return None
    if x.shape == y.shape and np.array_equal(x, y):
        return []
    if not np.array_equal(np.sort(x, axis=None), np.sort(y, axis=None)):
        return None
    flips = [()] + [(a,) for a in range(x.ndim)] + ([(x.ndim - 2, x.ndim - 1)] if x.ndim >= 3 else [])
    perms = sorted(itertools.permutations(range(x.ndim)), key=lambda p: (p != tuple(range(x.ndim)), p))
    for n_steps in (1, 2, 3):
        for perm in perms:
            moved = x if list(perm) == list(range(x.ndim)) else np.transpose(x, perm)
            if moved.shape != y.shape:
                continue
            for fl in flips:
                steps = (list(perm) != list(range(x.ndim))) + len(fl)
                if steps != n_steps:
                    continue
                z = moved
                for a in fl:
                    z = np.flip(z, a)
                if np.array_equal(z, y):
                    chain = [] if list(perm) == list(range(x.ndim)) else [{"permute": list(perm)}]
                    return chain + [{"flip": {"axis": a}} for a in fl]
    return None


def describe(chain: list) -> str:
    """'permute [0, 1, 3, 2] + flip axis 1' for a chain from equal_after."""
    parts = []
    for step in chain:
        (name, arg), = step.items()
        parts.append(f"permute {arg}" if name == "permute" else f"flip axis {arg['axis']}")
    return " + ".join(parts) or "as is"


def _apply(chain, value):
    return T.chain_apply([T.build(t) for t in chain], value)


def _flatten_variants(chain):
    """The chain with each other flatten order in place of (or added after tf_dense as) its
    flatten_order step; only when the chain has a flatten step or a dense transpose."""
    idx = next((i for i, t in enumerate(chain) if isinstance(t, dict) and "flatten_order" in t), None)
    if idx is None:
        return []
    spec = dict(chain[idx]["flatten_order"])
    src = str(spec.get("order", "hwc_to_chw")).split("_to_")[0]
    out = []
    for dst in ("chw", "cwh", "hcw", "hwc", "wch", "whc"):
        new = [t for i, t in enumerate(chain) if i != idx]
        if dst != src:
            new.insert(idx, {"flatten_order": {**{k: v for k, v in spec.items() if k != "order"},
                                               "order": f"{src}_to_{dst}"}})
        out.append(new)
    return out


def reproduce(chain: list, source_value, port: np.ndarray) -> tuple[list | None, str]:
    """(a chain that turns the source value into the port's tensor, how) or (None, why not)."""
    for candidate in [chain] + _flatten_variants(chain):
        try:
            got = np.asarray(_apply(candidate, source_value))
        except Exception:  # a variant that does not apply is simply not it
            continue
        extra = equal_after(got, port)
        if extra is not None:
            changed = "" if candidate == chain else "another flatten order; "
            how = "bit-equal to the port" + (f" after {changed}{describe(extra)}" if extra or changed else "")
            return candidate + extra, how
    return None, "no layout step tried (axis permutations, flips, flatten orders) reproduces the port's tensor"


def apply_like(matching, arrays, port_path) -> dict:
    """Check and correct every proposal against the port (module docstring). Returns counts."""
    from ..diff import _numpy
    from ..finetune.sources import open_weights

    port = open_weights(port_path)
    counts = {"equal": 0, "corrected": 0, "differ": 0, "absent": 0, "fills_differ": 0}
    try:
        for pair in matching.pairs:
            ok = True
            for p in pair.proposals:
                ok &= _check_proposal(p, arrays, port, port_path, counts, _numpy)
            for name, value, _why in pair.fills:
                if name in port and not np.all(_numpy(port[name], port_path, name) == value):
                    counts["fills_differ"] += 1
                    ok = False
                    pair.evidence.append(f"--like: the port's {name} is not {value}")
            if ok and pair.proposals:
                pair.decided_by, pair.confidence = "like (bit-equal to the port)", 1.0
            elif not ok:
                pair.confidence = min(pair.confidence, 0.4)
        _resolve_ambiguous(matching, arrays, port, port_path, _numpy)
    finally:
        getattr(port, "close", lambda: None)()
    _frame_notes(matching)
    matching.notes.append(f"Checked against the port {port_path} (--like): {counts['equal']} rules bit-equal as "
                          f"drafted, {counts['corrected']} corrected to match it, {counts['differ']} differ under "
                          f"every layout step tried, {counts['absent']} target names not in the port.")
    return counts


def _check_proposal(p, arrays, port, port_path, counts, to_numpy) -> bool:
    if len(p.targets) != 1 or p.with_:
        value = [arrays[p.source].numpy(), *(arrays[w].numpy() for w in p.with_)] if p.with_ else \
            arrays[p.source].numpy()
        got = _apply(p.transforms, value)
        got = got if isinstance(got, list) else [got]
        if all(t in port and np.array_equal(np.asarray(g), to_numpy(port[t], port_path, t))
               for g, t in zip(got, p.targets)):
            counts["equal"] += 1
            p.notes = [n for n in p.notes if "input channel order" not in n]
            return True
        counts["differ"] += 1
        p.notes.append("--like: differs from the port (multi-tensor rule: not searched)")
        return False
    target = p.targets[0]
    if target not in port:
        counts["absent"] += 1
        p.notes.append(f"--like: the port has no {target}")
        return False
    chain, how = reproduce(p.transforms, arrays[p.source].numpy(), to_numpy(port[target], port_path, target))
    if chain is None:
        counts["differ"] += 1
        p.notes.append(f"--like: {how}")
        return False
    counts["equal" if chain == p.transforms else "corrected"] += 1
    if chain != p.transforms:
        p.why.append(f"--like: {how}")
        p.transforms = chain
    p.notes = [n for n in p.notes if "input channel order" not in n and "inferred from shapes" not in n]
    return True


def _frame_notes(matching):
    """Say what the corrections mean for the port's input: every conv kernel transposed means the
    port is fed images with H and W swapped; the first conv's input channels reversed, BGR/RGB
    swapped. A verify against the source then needs `parity.source_input` for that frame."""
    convs = [p for pair in matching.pairs if pair.source.kind == "conv" for p in pair.proposals
             if p.targets[0].endswith("weight") and len(pair.target.shapes[p.targets[0]]) == 4
             and pair.target.shapes[p.targets[0]][2] * pair.target.shapes[p.targets[0]][3] > 1]  # 1x1: no frame
    if convs and all({"permute": [0, 1, 3, 2]} in p.transforms for p in convs):
        matching.notes.append("Every conv kernel of the port is the source's with H and W swapped: the port is fed "
                              "images transposed relative to the source (verify against the source needs "
                              "parity.source_input with a permute).")
    if convs and {"flip": {"axis": 1}} in convs[0].transforms:
        matching.notes.append("The port's first conv has the source's input channels reversed: it is fed the other "
                              "channel order (RGB vs BGR) than the source.")


def _resolve_ambiguous(matching, arrays, port, port_path, to_numpy):
    """An ambiguous layer whose arrays reproduce the port's tensors for exactly one candidate is
    that candidate's: the port settles what neither order nor names could."""
    from .match import Pair

    taken = {t for p in matching.pairs for pr in p.proposals for t in pr.targets}
    for entry in list(matching.ambiguous):
        s = entry[0]
        hits = []
        for t, (props, fills, _remarks) in matching.candidates.get(s.name, []):
            if any(n in taken for p in props for n in p.targets):
                continue
            if all(_check_proposal(p, arrays, port, port_path, {"equal": 0, "corrected": 0, "differ": 0, "absent": 0},
                                   to_numpy) for p in props):
                hits.append((t, props, fills))
        if len(hits) != 1:
            continue
        t, props, fills = hits[0]
        pair = Pair(s, t, "like (bit-equal to the port)", 1.0,
                    [f"kind {s.type or s.kind} -> {t.module_type}",
                     f"ambiguous among {', '.join(entry[1])}; only {t.name} reproduces the port"], props, fills)
        for p in props:
            p.pair = pair
        matching.pairs.append(pair)
        matching.pairs.sort(key=lambda p: p.source.position)
        matching.fills += fills
        matching.ambiguous.remove(entry)
        names = {h.name for h in s.arrays}
        matching.unmatched_sources = [u for u in matching.unmatched_sources if u[0] not in names]
        done = set(t.tensors.values())
        matching.unmatched_targets = [u for u in matching.unmatched_targets if u[0] not in done]
        taken |= {n for p in props for n in p.targets}
