"""Initialisation schemes for single tensors, seedable and independent of visiting order.

Used by mapping `init:` entries (tensors no source provides) and by `finetune.init_params`.
"""
from __future__ import annotations

import hashlib
import math

import torch

# The same names as finetune.init_params (which applies them module by module).
SCHEMES = ("kaiming", "kaiming_uniform", "xavier", "xavier_normal", "normal", "zeros", "ones", "constant",
           "classic", "pytorch")


def generator_for(name: str, seed: int = 0) -> torch.Generator:
    """A generator seeded by (seed, tensor name): the same tensor gets the same values whatever
    else is initialised and in whatever order."""
    digest = hashlib.sha256(f"{seed}:{name}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & (2**63 - 1))


@torch.no_grad()
def init_tensor(t: torch.Tensor, scheme: str, *, name: str = "", seed: int = 0, mode: str = "fan_in",
                std: float = 0.01, mean: float = 0.0, value: float = 0.0, nonlinearity: str = "relu") -> torch.Tensor:
    """Fill `t` in place by `scheme`; 1-d tensors (biases, norms) under a weight scheme get zeros,
    except BatchNorm-like weights named `...weight` which get ones."""
    g = generator_for(name, seed)
    init = torch.nn.init
    if scheme == "zeros":
        return t.zero_()
    if scheme == "ones":
        return t.fill_(1.0)
    if scheme == "constant":
        return t.fill_(value)
    if scheme == "normal":
        return init.normal_(t, mean, std, generator=g)
    if t.dim() < 2:  # fans are undefined: the conventional choice for biases and norm layers
        return t.fill_(1.0) if name.endswith("weight") else t.zero_()
    if scheme == "kaiming":
        return init.kaiming_normal_(t, mode=mode, nonlinearity=nonlinearity, generator=g)
    if scheme == "kaiming_uniform":
        return init.kaiming_uniform_(t, mode=mode, nonlinearity=nonlinearity, generator=g)
    if scheme == "xavier_normal":
        return init.xavier_normal_(t, generator=g)
    if scheme == "xavier":
        return init.xavier_uniform_(t, generator=g)
    if scheme == "classic":  # He et al. / the original ResNet code: normal(0, sqrt(2/n)), n = k*k*out
        n = t.shape[0] * math.prod(t.shape[2:])
        return init.normal_(t, 0.0, math.sqrt(2.0 / n), generator=g)
    raise ValueError(f"unknown init scheme {scheme!r}; one of {', '.join(SCHEMES)}")
