"""Initialise on purpose what a partial load did not fill.

Why: after load_partial, a new head or an extra layer holds whatever its constructor drew. Here the
scheme is chosen, recorded and reproducible (seed=), and only= keeps every loaded tensor untouched.

Per-tensor rules (per module, by the tensor's own name in it):
    weight of Conv/Linear/Embedding (2+ dims)   the scheme
    bias                                        0 (the "pytorch" scheme: PyTorch's own default)
    weight / bias of a normalisation layer      1 / 0
    running_mean / running_var / num_batches    0 / 1 / 0
    zeros / constant                            every selected parameter, whatever its kind
    anything else (PReLU slopes, ...)           the module's own default (reset_parameters)
"""
from __future__ import annotations

import math
import re

import torch
from torch import nn

from ..errors import ConvertersError
from ..reporting import Report
from .checkpoints import unwrap

SCHEMES = ("kaiming", "kaiming_uniform", "xavier", "xavier_normal", "normal", "zeros", "constant",
           "classic", "pytorch")
NORM_TYPES = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm, nn.LocalResponseNorm)
_CONV = (nn.modules.conv._ConvNd,)


class InitReport(Report):
    """Which tensors were initialised, and how."""

    def __init__(self, scheme: str, rows: list[tuple[str, str]], seed):
        self.scheme, self.rows, self.seed = scheme, rows, seed

    @property
    def names(self) -> list[str]:
        return [n for n, _ in self.rows]

    def headline(self) -> str:
        seed = f", seed {self.seed}" if self.seed is not None else ""
        return f"initialised {len(self.rows)} tensors with {self.scheme}{seed}"

    def sections(self):
        return [("initialised", ("name", "rule"), self.rows)]

    def to_dict(self) -> dict:
        return {"scheme": self.scheme, "seed": self.seed, "initialised": [{"name": n, "rule": r} for n, r in self.rows]}


def init_params(model: nn.Module, scheme: str = "kaiming", only=None, *, seed: int | None = None,
                mode: str = "fan_in", nonlinearity: str = "relu", std: float = 0.01, value: float = 0.0,
                gain: float = 1.0) -> InitReport:
    """Initialise the parameters and statistics buffers of `model` (all, or those named in only=).

    only: names (state_dict names), regexes prefixed with 're:', or a LoadReport (its not_loaded).
    seed: draw from a private generator seeded with it (the global RNG is untouched); without it,
        the global torch RNG is used (deterministic under torch.manual_seed).
    mode, nonlinearity: for kaiming; std: for normal; value: for constant; gain: for xavier.
    """
    if scheme not in SCHEMES:
        raise ConvertersError(f"unknown init scheme {scheme!r}", hint=f"choose one of {', '.join(SCHEMES)}")
    if mode not in ("fan_in", "fan_out"):
        raise ConvertersError(f"mode must be fan_in or fan_out, not {mode!r}")
    model = unwrap(model)
    select = _selector(only, model)
    gen = torch.Generator().manual_seed(seed) if seed is not None else None
    opts = dict(mode=mode, nonlinearity=nonlinearity, std=std, value=value, gain=gain)
    rows = []
    with torch.no_grad():
        for prefix, module in model.named_modules():
            chosen = [(local, t) for local, t in _own_tensors(module) if select(_join(prefix, local))]
            for local, tensor in chosen:
                rule = _init_one(module, local, tensor, scheme, gen, opts, [n for n, _ in chosen])
                rows.append((_join(prefix, local), rule))
    return InitReport(scheme, rows, seed)


def _own_tensors(module):
    for name, p in module.named_parameters(recurse=False):
        yield name, p
    for name, b in module.named_buffers(recurse=False):
        if b is not None and name in module._buffers and name not in module._non_persistent_buffers_set:
            yield name, b


def _selector(only, model):
    if only is None:
        return lambda name: True
    names = getattr(only, "not_loaded", only)
    if isinstance(names, str):
        names = [names]
    exact = {n for n in names if not n.startswith("re:")}
    patterns = [re.compile(n[3:]) for n in names if n.startswith("re:")]
    known = set(unwrap(model).state_dict())
    unknown = sorted(n for n in exact if n not in known)
    if unknown:
        raise ConvertersError(f"only= names tensors the model does not have: {', '.join(unknown[:5])}",
                              hint="use state_dict names, or 're:<regex>'")
    return lambda name: name in exact or any(p.search(name) for p in patterns)


def _init_one(module, local, t, scheme, gen, o, chosen) -> str:
    """Initialise one tensor `t` (module attribute `local`); return the rule applied."""
    if local in ("running_mean",):
        return _fill(t, 0.0)
    if local in ("running_var",):
        return _fill(t, 1.0)
    if local == "num_batches_tracked":
        return _fill(t, 0)
    if not t.is_floating_point():
        return _fill(t, 0)
    if scheme == "zeros":
        return _fill(t, 0.0)
    if scheme == "constant":
        return _fill(t, o["value"])
    if isinstance(module, NORM_TYPES):
        return _fill(t, 1.0 if local == "weight" else 0.0)
    if scheme == "pytorch" or local != "weight" and local != "bias" or t.dim() < 2 and local == "weight":
        return _module_default(module, local, t, chosen, gen)
    if local == "bias":
        if scheme == "classic" and isinstance(module, nn.Linear):  # Linear as PyTorch does, bias too
            return _module_default(module, local, t, chosen, gen)
        return _fill(t, 0.0)
    return _weight(module, t, scheme, gen, o)


def _fill(t, v) -> str:
    t.fill_(v)
    return f"constant {v}"


def _weight(module, w, scheme, gen, o) -> str:
    if scheme == "kaiming":
        nn.init.kaiming_normal_(w, mode=o["mode"], nonlinearity=o["nonlinearity"], generator=gen)
        return f"kaiming normal {o['mode']} {o['nonlinearity']}"
    if scheme == "kaiming_uniform":
        nn.init.kaiming_uniform_(w, mode=o["mode"], nonlinearity=o["nonlinearity"], generator=gen)
        return f"kaiming uniform {o['mode']} {o['nonlinearity']}"
    if scheme == "xavier":
        nn.init.xavier_uniform_(w, gain=o["gain"], generator=gen)
        return f"xavier uniform gain {o['gain']}"
    if scheme == "xavier_normal":
        nn.init.xavier_normal_(w, gain=o["gain"], generator=gen)
        return f"xavier normal gain {o['gain']}"
    if scheme == "normal":
        nn.init.normal_(w, 0.0, o["std"], generator=gen)
        return f"normal(0, {o['std']})"
    # classic
    if isinstance(module, _CONV):
        n = math.prod(module.kernel_size) * module.out_channels
        nn.init.normal_(w, 0.0, math.sqrt(2.0 / n), generator=gen)
        return f"normal(0, sqrt(2/{n}))"
    return _pytorch_linear_weight(w, gen)


def _pytorch_linear_weight(w, gen) -> str:
    nn.init.kaiming_uniform_(w, a=math.sqrt(5), generator=gen)
    return "pytorch default (kaiming uniform a=sqrt(5))"


def _module_default(module, local, t, chosen, gen) -> str:
    """PyTorch's own initialisation for `local` only: Linear/Conv by its formula, else reset_parameters."""
    if isinstance(module, (nn.Linear, *_CONV)) and local in ("weight", "bias"):
        if local == "weight":
            return _pytorch_linear_weight(t, gen)
        fan_in, _ = nn.init._calculate_fan_in_and_fan_out(module.weight)
        bound = 1 / math.sqrt(fan_in) if fan_in > 0 else 0.0
        nn.init.uniform_(t, -bound, bound, generator=gen)
        return f"pytorch default uniform(+-1/sqrt({fan_in}))"
    if not hasattr(module, "reset_parameters"):
        return "left as is (module has no default)"
    keep = {n: p.detach().clone() for n, p in module.named_parameters(recurse=False) if n not in chosen}
    if gen is not None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(torch.randint(0, 2**62, (1,), generator=gen)))
            module.reset_parameters()
    else:
        module.reset_parameters()
    for n, v in keep.items():
        getattr(module, n).copy_(v)
    return f"{type(module).__name__}.reset_parameters"


def _join(prefix: str, local: str) -> str:
    return f"{prefix}.{local}" if prefix else local
