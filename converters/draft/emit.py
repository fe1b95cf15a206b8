"""Write a matching as a mapping table people can read: one regex rule per family of layers
(`block{b}_conv{c}` -> `features.{...}`), explicit rules elsewhere, a comment with the evidence and
confidence above each rule, and what is unmatched or ambiguous at the end.

Families: array names that differ only in their numbers, with the same target-name shape and the
same transforms, become one rule when every target number is a simple function of one source
number (constant, n+b, a*n+b, (n+b)//d+c, (n+b)%d+c). A family no function covers is split at a
number threshold until each part is covered, down to single explicit rules. Every rule's regex
is checked to match exactly its own arrays among all of the file's names.
"""
from __future__ import annotations

import json
import re
import textwrap
from dataclasses import dataclass, field

import yaml

# ---- families -----------------------------------------------------------------------------------


@dataclass
class Item:
    source: str
    outputs: list  # targets then `with` names
    n_targets: int
    transforms: list
    proposal: object

    def key(self):
        return (_skeleton(self.source), tuple(_skeleton(o) for o in self.outputs), self.n_targets,
                json.dumps(self.transforms, sort_keys=True))


@dataclass
class Rule:
    from_: str
    to: list
    with_: list
    transforms: list
    items: list
    line: int = 0
    comments: list = field(default_factory=list)


_META = set(".^$*+?{}[]|()\\")


def rx(text: str) -> str:
    """re.escape for readers: only the characters that mean something in a regex get a backslash."""
    return "".join("\\" + c if c in _META else c for c in text)


def _split(name):
    parts = re.split(r"(\d+)", name)
    return parts[0::2], parts[1::2]


def _skeleton(name):
    return tuple(_split(name)[0])


def _forms(var, xs, ys):
    """Expression text for y = f(x) over all members, simplest first, or None."""
    x0, y0 = xs[0], ys[0]

    def ok(fn):
        try:
            return all(str(fn(x)) == y for x, y in zip(xs, ys))
        except ZeroDivisionError:
            return False

    def plus(v):
        return "" if v == 0 else (f"+{v}" if v > 0 else f"-{-v}")

    if ok(lambda x: x):
        return var
    if y0.isdigit():
        y0 = int(y0)
        b = y0 - x0
        if ok(lambda x: x + b):
            return f"{var}{plus(b)}"
        for a in (2, 3, 4):
            b = y0 - a * x0
            if ok(lambda x, a=a, b=b: a * x + b):  # bound now: ok() calls fn(x) only
                return f"{a}*{var}{plus(b)}"
        for d in (2, 3, 4):
            for b in range(-(d - 1), d):
                inner = f"({var}{plus(b)})" if b else var
                c = y0 - (x0 + b) // d
                if ok(lambda x, b=b, c=c, d=d: (x + b) // d + c):
                    return f"{inner}//{d}{plus(c)}"
                c = y0 - (x0 + b) % d
                if ok(lambda x, b=b, c=c, d=d: (x + b) % d + c):
                    return f"{inner}%{d}{plus(c)}"
    return None


def _slot_names(literals, varying):
    names, used = {}, set()
    for k in varying:
        word = re.findall(r"[A-Za-z]+", literals[k])
        base = word[-1][0].lower() if word else "n"
        name = base
        for alt in (base, "n", "k", "m", "i", "j", "p", "q"):
            if alt not in used:
                name = alt
                break
        else:
            name = f"{base}{k}"
        used.add(name)
        names[k] = name
    return names


def _int_range_regex(lo: int, hi: int) -> str:
    """A regex for the decimal integers lo..hi (no leading zeros)."""
    def same_len(a: str, b: str) -> str:
        if not a:
            return ""
        if a == b:
            return a
        if a[0] == b[0]:
            return a[0] + same_len(a[1:], b[1:])
        n = len(a) - 1
        if a[1:] == "0" * n and b[1:] == "9" * n:
            return f"[{a[0]}-{b[0]}]" + (r"\d" * n if n <= 1 else rf"\d{{{n}}}")
        parts = [a[0] + same_len(a[1:], "9" * n)]
        if int(b[0]) - int(a[0]) > 1:
            mid = f"{int(a[0]) + 1}" if int(b[0]) - int(a[0]) == 2 else f"[{int(a[0]) + 1}-{int(b[0]) - 1}]"
            parts.append(mid + (r"\d" * n if n <= 1 else rf"\d{{{n}}}"))
        parts.append(b[0] + same_len("0" * n, b[1:]))
        return "(?:" + "|".join(parts) + ")"

    parts = []
    for length in range(len(str(lo)), len(str(hi)) + 1):
        a = max(lo, 10 ** (length - 1) if length > 1 else 0)
        b = min(hi, 10 ** length - 1)
        if a <= b:
            parts.append(same_len(str(a), str(b)))
    return parts[0] if len(parts) == 1 else "|".join(parts)


def _values_regex(values) -> str:
    vals = sorted(set(values), key=lambda v: (len(v), v))
    if all(v == str(int(v)) for v in vals):
        ints = sorted(int(v) for v in vals)
        if ints == list(range(ints[0], ints[-1] + 1)) and len(ints) > 2:
            return _int_range_regex(ints[0], ints[-1])
        if len(ints) == 2 and all(i < 10 for i in ints) and ints[1] == ints[0] + 1:
            return f"[{ints[0]}{ints[1]}]"
    return "|".join(rx(v) for v in vals)


def fit(items: list) -> Rule | None:
    """One rule for all items, or None when no simple function covers a target number."""
    parsed = [_split(i.source) for i in items]
    literals = parsed[0][0]
    digits = [p[1] for p in parsed]
    n_slots = len(digits[0])
    varying = [k for k in range(n_slots) if len({d[k] for d in digits}) > 1]
    names = _slot_names(literals, varying)
    templates, used = [], set()
    for o in range(len(items[0].outputs)):
        out_parsed = [_split(i.outputs[o]) for i in items]
        out_lits, out_digits = out_parsed[0][0], [p[1] for p in out_parsed]
        text = []
        for k in range(len(out_digits[0])):
            text.append(_brace_free(out_lits[k]))
            ys = [d[k] for d in out_digits]
            if len(set(ys)) == 1:
                text.append(ys[0])
                continue
            prefer = sorted(varying, key=lambda v: (v != k, v))
            expr = None
            for v in prefer:
                xs = [int(d[v]) for d in digits]
                expr = _forms(names[v], xs, ys)
                if expr is not None:
                    used.add(v)
                    break
            if expr is None:
                return None
            text.append("{" + expr + "}")
        text.append(_brace_free(out_lits[-1]))
        templates.append("".join(text))
    pattern = []
    for k in range(n_slots):
        pattern.append(rx(literals[k]))
        values = [d[k] for d in digits]
        if k not in varying:
            pattern.append(values[0])
        elif k in used:
            pattern.append(f"(?P<{names[k]}>{_values_regex(values)})")
        else:
            pattern.append(f"(?:{_values_regex(values)})")
    pattern.append(rx(literals[-1]))
    n = items[0].n_targets
    return Rule("".join(pattern), templates[:n], templates[n:], items[0].transforms, list(items))


def _brace_free(s):
    if "{" in s or "}" in s:
        raise ValueError("brace in a name")
    return s


def _checked(rule: Rule | None, items, universe) -> Rule | None:
    if rule is None:
        return None
    rx = re.compile(rule.from_)
    hits = {n for n in universe if rx.fullmatch(n)}
    return rule if hits == {i.source for i in items} else None


def compress(items: list, universe) -> list:
    """Rules covering `items` (one family key), as few as threshold splits allow."""
    try:
        whole = _checked(fit(items), items, universe)
    except ValueError:
        whole = None
    if whole is not None:
        return [whole]
    if len(items) == 1:
        return [_explicit(items[0])]
    digits = [_split(i.source)[1] for i in items]
    best, best_score = None, -1
    for k in range(len(digits[0])):
        vals = sorted({int(d[k]) for d in digits})
        for thr in vals[1:]:
            lo = [i for i, d in zip(items, digits) if int(d[k]) < thr]
            hi = [i for i, d in zip(items, digits) if int(d[k]) >= thr]
            rl, rh = (_safe_fit(lo, universe), _safe_fit(hi, universe))
            score = (len(lo) if rl else 0) + (len(hi) if rh else 0)
            if score > best_score:
                best, best_score = (lo, rl, hi, rh), score
    if best is None or best_score == 0:
        return [_explicit(i) for i in items]
    lo, rl, hi, rh = best
    return ([rl] if rl else compress(lo, universe)) + ([rh] if rh else compress(hi, universe))


def _safe_fit(items, universe):
    try:
        return _checked(fit(items), items, universe)
    except ValueError:
        return None


def _explicit(item: Item) -> Rule:
    n = item.n_targets
    return Rule(rx(item.source), item.outputs[:n], item.outputs[n:], item.transforms, [item])


def build_rules(matching, universe, order) -> list:
    items = []
    for pair in matching.pairs:
        for p in pair.proposals:
            items.append(Item(p.source, [*p.targets, *p.with_], len(p.targets), p.transforms, p))
    families: dict = {}
    for it in items:
        families.setdefault(it.key(), []).append(it)
    rules = []
    for members in families.values():
        rules += compress(members, universe)
    rules.sort(key=lambda r: min(order[i.source] for i in r.items))
    return rules


# ---- YAML ---------------------------------------------------------------------------------------

def q(s: str) -> str:
    return "'" + str(s).replace("'", "''") + "'"


def flow(x) -> str:
    return yaml.safe_dump(x, default_flow_style=True, width=10_000, sort_keys=False).strip().removesuffix("...").strip()


def label(conf: float) -> str:
    return "high" if conf >= 0.9 else "medium" if conf >= 0.7 else "low"


def _shape(s) -> str:
    return "x".join(map(str, s)) or "scalar"


def rule_comments(rule: Rule) -> list:
    pairs = []
    for it in rule.items:
        if it.proposal.pair not in pairs:
            pairs.append(it.proposal.pair)
    first = rule.items[0].proposal
    pair = first.pair
    handle = next(h for h in pair.source.arrays if h.name == first.source)
    lines = []
    if len(rule.items) == 1:
        lines.append(f"{pair.source.name} ({pair.source.type or pair.source.kind}) {_shape(handle.shape)} -> "
                     f"{pair.target.name} ({pair.target.module_type}) "
                     f"{_shape(pair.target.shapes[first.targets[0]])}")
        lines.append(f"decided by {pair.decided_by}; confidence {pair.confidence:.2f} ({label(pair.confidence)}); "
                     + "; ".join(pair.evidence))
    else:
        signals: dict = {}
        for p in pairs:
            signals[p.decided_by] = signals.get(p.decided_by, 0) + 1
        confs = [p.confidence for p in pairs]
        lines.append(f"{len(rule.items)} arrays of {len(pairs)} layers, e.g. {first.source} "
                     f"{_shape(handle.shape)} -> {first.targets[0]}")
        lines.append("decided by " + ", ".join(f"{k} ({v})" for k, v in signals.items())
                     + f"; confidence {min(confs):.2f}" + (f"-{max(confs):.2f}" if max(confs) != min(confs) else "")
                     + f" ({label(min(confs))}); kinds " + ", ".join(sorted({p.evidence[0].removeprefix('kind ')
                                                                              for p in pairs})))
    whys = []
    for it in rule.items:
        for w in it.proposal.why:
            if w not in whys:
                whys.append(w)
    lines += [f"why: {w}" for w in whys]
    lines = [w for line in lines for w in _wrap(line, 96)]
    many = len(rule.items) > 1
    for it in rule.items:
        for n in it.proposal.notes:
            text = f"CHECK ({it.source}): {n}" if many else f"CHECK: {n}"
            if text not in lines:
                lines += _wrap(text, 96)
    return lines


def _base_entries(base, key) -> list:
    return list((base or {}).get(key) or [])


def write(matching, *, source_path, framework, target_spec, input_section, rules, stats, extra_notes,
          outputs=None, outputs_why="", base=None) -> str:
    out = []
    add = out.append
    add(f"# Drafted by `convert draft` from {source_path} ({framework}) for {target_spec['model']}.")
    add("# Read the comments: each rule says which signal decided it (name, order, shape) and how sure")
    add("# the draft is. Lines marked CHECK and the UNMATCHED / AMBIGUOUS lists at the end need you.")
    add(f"description: {q('Draft: ' + source_path.rsplit('/', 1)[-1] + f' ({framework}) -> ' + target_spec['model'])}")
    add("notes: >")
    note = (f"Proposed by convert draft from the source's {stats['order_source']} and the target's "
            f"{stats['order_target']}. {stats['matched_sources']} of {stats['total_sources']} source arrays "
            f"matched ({stats['ignored']} ignored as training state), {stats['filled']} target tensors filled, "
            f"{stats['unmatched_sources']} source arrays and {stats['unmatched_targets']} target tensors "
            f"unmatched, {stats['ambiguous']} layers ambiguous.")
    for n in extra_notes:
        note += " " + n
    for line in _wrap(note, 96):
        add("  " + line)
    add(f"source: {framework}")
    add("target:")
    add(f"  model: {target_spec['model']}")
    if target_spec.get("kwargs"):
        add(f"  kwargs: {flow(target_spec['kwargs'])}")
    if input_section:
        add("input:")
        for k, v in input_section.items():
            if k.startswith("_"):
                add(f"  # {v}")
                continue
            add(f"  {k}: {flow(v) if isinstance(v, (list, dict)) else v}")
        add("  # channels (RGB/BGR), range, mean and std are not recorded in weights: add them if you know them")
    add("rules:")
    if not rules and not _base_entries(base, "rules"):
        add("  []")
    if _base_entries(base, "rules"):
        add(f"  # kept as they are from the base table {base['_path']}:")
        for entry in _base_entries(base, "rules"):
            add("  - " + flow(entry))
    for rule in rules:
        add("")
        for c in rule_comments(rule):
            add(f"  # {c}")
        rule.line = len(out) + 1
        add(f"  - from: {q(rule.from_)}")
        add(f"    to: {q(rule.to[0]) if len(rule.to) == 1 else flow(rule.to)}")
        if rule.with_:
            add(f"    with: {flow(rule.with_)}")
        if rule.transforms:
            add(f"    transforms: {flow(rule.transforms)}")
    _write_sets(add, matching, base, outputs, outputs_why)
    return "\n".join(out) + "\n"


def _write_sets(add, matching, base, outputs, outputs_why=""):
    """ignore / fill / init / parity sections, then the AMBIGUOUS and UNMATCHED comment lists."""
    if matching.ignored or _base_entries(base, "ignore"):
        add("ignore:")
        for entry in _base_entries(base, "ignore"):
            add("  - " + flow(entry))
    if matching.ignored:
        if all(n.startswith("optimizer/") for n, _, _ in matching.ignored):
            add(f"  - pattern: {q('optimizer/.*')}")
            add(f"    reason: {matching.ignored[0][2]}")
        else:
            for role in sorted({r for _, r, _ in matching.ignored}):
                reason = q(next(x for _, r, x in matching.ignored if r == role))
                names = [n for n, r, _ in matching.ignored if r == role]
                if role in ("optimizer", "counter"):
                    add(f"  - role: {role}")
                else:  # set aside by the draft, not a reader role: by name, so nothing else is caught
                    add(f"  - pattern: {q('|'.join(rx(n) for n in names))}")
                add(f"    reason: {reason}")
    fills = _fills(matching.fills)
    if fills or _base_entries(base, "fill"):
        add("fill:")
        for entry in _base_entries(base, "fill"):
            add("  - " + flow(entry))
    for pattern, value, why in fills:
        add(f"  - to: {q(pattern)}")
        add(f"    value: {value}   # {why}")
    if _base_entries(base, "init"):
        add("init:")
        for entry in _base_entries(base, "init"):
            add("  - " + flow(entry))
    if (base or {}).get("parity") and not outputs:
        add("parity: " + flow(base["parity"]))
    elif outputs:
        add("parity:")
        for line in textwrap.wrap(f"the source outputs in the order the target returns them, {outputs_why}", 96):
            add(f"  # {line}")
        add(f"  outputs: {flow(outputs)}")
    if matching.ambiguous:
        add("")
        add("# AMBIGUOUS: these source layers fit several target modules and neither the layer order nor")
        add("# the names single one out. Pick one and write the rules (candidates in order of execution):")
        for s, cands, _why in matching.ambiguous:
            add(f"#   {s.name} ({s.type or s.kind}; {', '.join(h.name for h in s.arrays)}) -> one of: "
                f"{', '.join(cands)}")
    if matching.unmatched_sources:
        add("")
        add("# UNMATCHED source arrays (no rule: the conversion stops until each gets a rule or an ignore entry):")
        for name, why, unit in matching.unmatched_sources:
            h = next(h for h in unit.arrays if h.name == name)
            add(f"#   {name}  {_shape(h.shape)}  {unit.type or unit.kind}: {why}")
    if matching.unmatched_targets:
        add("")
        add("# UNMATCHED target tensors (nothing writes them: map, fill or init them):")
        for name, why, _ in matching.unmatched_targets:
            add(f"#   {name}  {why}")


def _fills(fills) -> list:
    """num_batches_tracked counters as one pattern; other fills one by one."""
    out, counters = [], [n for n, _, _ in fills if n.endswith("num_batches_tracked")]
    if counters:
        out.append((r".*\.num_batches_tracked" if any("." in n for n in counters) else "num_batches_tracked", 0,
                    "a PyTorch-only training counter; 0 as for a fresh model"))
    for n, v, why in fills:
        if not n.endswith("num_batches_tracked"):
            out.append((rx(n), v, why))
    return out


def _wrap(text, width):
    import textwrap

    return textwrap.wrap(text, width) or [""]
