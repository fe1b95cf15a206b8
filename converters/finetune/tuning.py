"""Fine-tuning helpers: freeze/unfreeze, replace a classifier head, optimizer groups, a summary.

Why: the usual snippets fail quietly. A frozen parameter left in the optimizer still decays; a
frozen BatchNorm keeps updating its running statistics in train mode; a pattern typo freezes
nothing. Here patterns are regular expressions searched in the parameter's full name (anchor
them, e.g. r"^fc\\.", to be exact), and param_groups() puts every trainable parameter in exactly
one group and frozen ones in none.
"""
from __future__ import annotations

import re
from collections.abc import Mapping

from torch import nn

from ..errors import ConvertersError
from ..reporting import Report
from .checkpoints import unwrap
from .init import NORM_TYPES

_BN_LOCK = "_converters_bn_lock"
HEAD_ATTRS = ("fc", "classifier", "head", "heads", "last_linear")


def _compile(patterns, what: str) -> list[re.Pattern]:
    if isinstance(patterns, str):
        patterns = [patterns]
    out = []
    for p in patterns or ():
        try:
            out.append(re.compile(p))
        except re.error as e:
            raise ConvertersError(f"{what} pattern {p!r} is not a valid regular expression: {e}") from None
    return out


def _hits(name: str, patterns) -> bool:
    return any(p.search(name) for p in patterns)


# ------------------------------------------------------------------------------- freeze/unfreeze

def freeze(model: nn.Module, exclude=(), *, bn_stats: bool = False) -> list[str]:
    """Stop gradients for every parameter whose name matches no `exclude` pattern; return their names.

    bn_stats=True also freezes the running statistics of BatchNorm layers whose parameters are all
    frozen: they stay in eval mode even after model.train() (until unfreeze()).
    """
    model = unwrap(model)
    keep = _compile(exclude, "exclude")
    frozen = []
    for name, p in model.named_parameters():
        if not _hits(name, keep):
            p.requires_grad_(False)
            frozen.append(name)
    if bn_stats:
        for name, m in model.named_modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and _all_frozen(m, name, keep):
                _lock_bn(m)
    return frozen


def _all_frozen(module, name, keep) -> bool:
    params = list(module.parameters(recurse=False))
    if params:
        return not any(p.requires_grad for p in params)
    return not _hits(name + ".", keep)  # affine=False: frozen unless its name is excluded


def _lock_bn(m) -> None:
    if getattr(m, _BN_LOCK, None) is None:
        setattr(m, _BN_LOCK, m.register_forward_pre_hook(_stay_in_eval))
    m.eval()


def _stay_in_eval(module, args):
    module.training = False


def unfreeze(model: nn.Module, include=None) -> list[str]:
    """Let gradients flow again for parameters matching `include` (all when None); return their names.

    BatchNorm layers locked by freeze(bn_stats=True) are released when their parameters are
    trainable again (they follow model.train()/eval() from then on).
    """
    model = unwrap(model)
    pats = _compile(include, "include") if include is not None else None
    names = []
    for name, p in model.named_parameters():
        if pats is None or _hits(name, pats):
            p.requires_grad_(True)
            names.append(name)
    for _name, m in model.named_modules():
        handle = getattr(m, _BN_LOCK, None)
        if handle is not None and (pats is None or any(p.requires_grad for p in m.parameters(recurse=False))):
            handle.remove()
            setattr(m, _BN_LOCK, None)
            m.train(model.training)
    return names


def is_bn_locked(module: nn.Module) -> bool:
    return getattr(module, _BN_LOCK, None) is not None


# ---------------------------------------------------------------------------------- replace_head

def replace_head(model: nn.Module, num_classes: int, *, attr: str | None = None) -> str:
    """Swap the final classifier for a fresh one with num_classes outputs; return its name.

    Knows torchvision classifiers (fc, classifier, heads.head, classifier[-1], SqueezeNet's 1x1 conv)
    and timm models (reset_classifier). The new layer has PyTorch's default initialisation, the
    old one's dtype and device; init_params(model, ..., only=f"re:^{name}\\.") re-initialises it.
    """
    if num_classes < 1:
        raise ConvertersError(f"num_classes must be positive, got {num_classes}")
    model = unwrap(model)
    if attr is None and hasattr(model, "reset_classifier") and hasattr(model, "get_classifier"):
        model.reset_classifier(num_classes)  # timm: also fixes num_classes and pooled heads
        return _name_of(model, model.get_classifier())
    attrs = [attr] if attr else [a for a in HEAD_ATTRS if isinstance(getattr(model, a, None), nn.Module)]
    for a in attrs:
        found = _last_classifier(getattr(model, a, None), a)
        if found is not None:
            qualname, old = found
            _set_module(model, qualname, _fresh_like(old, num_classes))
            if isinstance(getattr(model, "num_classes", None), int):
                model.num_classes = num_classes
            return qualname
    raise ConvertersError(f"cannot find a classifier head on {type(model).__name__}",
                          hint=f"looked for {', '.join(HEAD_ATTRS)}; pass attr='name.of.head'")


def _last_classifier(module, qualname):
    """(name, module) of the last Linear or 1x1 Conv2d in `module` (itself included)."""
    if module is None:
        return None
    if isinstance(module, nn.Linear) or _is_1x1_conv(module):
        return qualname, module
    for name, sub in reversed(list(module.named_modules())[1:]):
        if isinstance(sub, nn.Linear) or _is_1x1_conv(sub):
            return f"{qualname}.{name}", sub
    return None


def _is_1x1_conv(m) -> bool:
    return isinstance(m, nn.Conv2d) and tuple(m.kernel_size) == (1, 1)


def _fresh_like(old, num_classes):
    w = old.weight
    if isinstance(old, nn.Linear):
        new = nn.Linear(old.in_features, num_classes, bias=old.bias is not None)
    else:
        new = nn.Conv2d(old.in_channels, num_classes, 1, bias=old.bias is not None)
    return new.to(device=w.device, dtype=w.dtype)


def _set_module(model, qualname, new) -> None:
    parent_name, _, leaf = qualname.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, leaf, new)


def _name_of(model, module) -> str:
    for name, m in model.named_modules():
        if m is module:
            return name
    return ""


# ---------------------------------------------------------------------------------- param_groups

def param_groups(model: nn.Module, rules: Mapping | None = None, base_lr: float = 1e-3, *,
                 weight_decay: float = 0.0, no_decay=("bias", "norm")) -> list[dict]:
    """Optimizer parameter groups: every trainable parameter exactly once, frozen ones not at all.

    rules: {pattern: lr} with lr a number (absolute), a string "x0.1" (multiplier of base_lr), or a
        dict {"lr" | "lr_mult", "weight_decay"}. The first matching pattern (in order) wins;
        unmatched parameters get base_lr.
    no_decay: "bias" (names ending in bias), "norm" (parameters of normalisation layers) or
        regexes; matching parameters get weight_decay 0.
    Groups carry "name" and "param_names" keys for logs; torch optimizers accept them.
    """
    model = unwrap(model)
    parsed = [(pattern, re.compile(pattern), _rule(pattern, v, base_lr, weight_decay))
              for pattern, v in (rules or {}).items()]
    norm_params = {id(p) for m in model.modules() if isinstance(m, NORM_TYPES) for p in m.parameters(recurse=False)}
    nd_patterns = _compile([p for p in no_decay if p not in ("bias", "norm")], "no_decay")
    groups: dict[tuple, dict] = {}
    seen = set()
    for name, p in model.named_parameters():  # named_parameters already yields a shared tensor once
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        label, lr, wd = next(((pat, lr, wd) for pat, rx, (lr, wd) in parsed if rx.search(name)),
                             ("default", base_lr, weight_decay))
        decays = not (("bias" in no_decay and name.rsplit(".", 1)[-1] == "bias")
                      or ("norm" in no_decay and id(p) in norm_params) or _hits(name, nd_patterns))
        key = (label, decays)
        if key not in groups:
            groups[key] = {"name": label + ("" if decays else "/no_decay"), "lr": lr,
                           "weight_decay": wd if decays else 0.0, "params": [], "param_names": []}
        groups[key]["params"].append(p)
        groups[key]["param_names"].append(name)
    return list(groups.values())


def _rule(pattern, value, base_lr, weight_decay) -> tuple[float, float]:
    if isinstance(value, Mapping):
        if "lr" in value and "lr_mult" in value:
            raise ConvertersError(f"rule {pattern!r}: give lr or lr_mult, not both")
        lr = value.get("lr", base_lr * value.get("lr_mult", 1.0))
        return float(lr), float(value.get("weight_decay", weight_decay))
    if isinstance(value, str):
        m = re.fullmatch(r"\s*[x*×]\s*([0-9.eE+-]+)\s*", value)
        if not m:
            raise ConvertersError(f"rule {pattern!r}: {value!r} is neither a learning rate "
                                  f"nor a multiplier like 'x0.1'")
        return base_lr * float(m.group(1)), weight_decay
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value), weight_decay
    raise ConvertersError(f"rule {pattern!r}: cannot use {value!r} as a learning rate")


# --------------------------------------------------------------------------------------- summary

class ModelSummary(Report):
    """Trainable and frozen parameter counts per top-level module."""

    def __init__(self, rows):
        self.rows = rows  # (module, type, trainable, frozen, bn_locked)

    @property
    def trainable(self) -> int:
        return sum(r[2] for r in self.rows)

    @property
    def frozen(self) -> int:
        return sum(r[3] for r in self.rows)

    def headline(self) -> str:
        return f"{self.trainable + self.frozen:,} parameters: {self.trainable:,} trainable, {self.frozen:,} frozen"

    def sections(self):
        rows = [(m, t, f"{a:,}", f"{b:,}", str(n) if n else "") for m, t, a, b, n in self.rows]
        return [("per top-level module", ("module", "type", "trainable", "frozen", "BN in eval"), rows)]

    def to_dict(self) -> dict:
        return {"trainable": self.trainable, "frozen": self.frozen,
                "modules": [{"module": m, "type": t, "trainable": a, "frozen": b, "bn_locked": n}
                            for m, t, a, b, n in self.rows]}


def summary(model: nn.Module) -> ModelSummary:
    """Counts of trainable and frozen parameter values per top-level child (shared tensors once)."""
    model = unwrap(model)
    seen = set()
    rows = []
    own = ("(self)", type(model).__name__, model.named_parameters(recurse=False), [])
    parts = [own] + [(n, type(c).__name__, c.named_parameters(), list(c.modules()))
                     for n, c in model.named_children()]
    for name, typ, params, modules in parts:
        trainable = frozen = 0
        for _, p in params:
            if id(p) in seen:
                continue
            seen.add(id(p))
            if p.requires_grad:
                trainable += p.numel()
            else:
                frozen += p.numel()
        locked = sum(is_bn_locked(m) for m in modules)
        if trainable or frozen or locked or name != "(self)":
            rows.append((name, typ, trainable, frozen, locked))
    return ModelSummary(rows)
