"""The target's execution order: run the module once on a dummy input and record, with forward
hooks, the order in which modules holding tensors are called and the shapes they see.

Registration order (the order of `named_modules()`) is what `__init__` happened to write, not what
`forward` does; a ResNet's shortcut or a two-headed net is registered in one order and run in
another. The trace is what the source's graph order is compared with. When no dummy input runs,
registration order is used and the draft says so.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

_SIZES = (224, 96, 64, 32, 16, 12)
_FROM = "_draft_call"  # attribute the trace's hooks put on each module output (its call index)


@dataclass
class Call:
    """One leaf module call: name, type and the first input/output tensor shapes."""

    name: str
    type: str
    in_shape: tuple | None
    out_shape: tuple | None
    owns_tensors: bool
    input_from: int | None = None  # index of the call whose output tensor this call's first input is


@dataclass
class Trace:
    order: list  # names of tensor-owning modules, first call order, then never-called ones
    calls: list = field(default_factory=list)  # every leaf call, in order
    input_shape: tuple | None = None
    how: str = "trace"  # 'trace' or 'registration'
    why: str = ""
    not_called: list = field(default_factory=list)
    outputs: list = field(default_factory=list)  # shapes of the model's outputs, flattened

    model: object = None  # the traced module (for probes)

    def feeder(self, module_name: str) -> str | None:
        """The tensor-owning module whose output the module's first call reads, through modules
        that hold no tensors (nn.ReLU, pooling), or None when a functional op came between (its
        output is a new tensor the hooks did not see) or the module was not called."""
        k = next((i for i, c in enumerate(self.calls) if c.name == module_name), None)
        k = self.calls[k].input_from if k is not None else None
        while k is not None and not self.calls[k].owns_tensors:
            k = self.calls[k].input_from
        return self.calls[k].name if k is not None else None

    def flatten_source(self, module_name: str) -> tuple | None:
        """(C, H, W) when the module's first call got a flattened NCHW map with H*W > 1 (what a
        Flatten right before a dense layer does), else None."""
        found = self._flatten_call(module_name)
        return found[1] if found else None

    def _flatten_call(self, module_name):
        idx = next((i for i, c in enumerate(self.calls) if c.name == module_name), None)
        if idx is None or not self.calls[idx].in_shape or len(self.calls[idx].in_shape) != 2:
            return None
        features = self.calls[idx].in_shape[1]
        for k in range(idx - 1, -1, -1):
            shape = self.calls[k].out_shape
            if not shape:
                continue
            if len(shape) == 4:
                _, ch, h, w = shape
                return (k, (ch, h, w)) if ch * h * w == features and h * w > 1 else None
            if self.calls[k].owns_tensors or _per_sample(shape) != features:
                return None  # another weighted layer, or a reshape to another size, came between
        return None

    def feature_order(self, module_name: str) -> list | None:
        """Which element of the flattened NCHW map (c*H*W + h*W + w) each input feature of the dense
        module carries, found by running the model again with that map replaced by 1..n: it sees
        every permute/view/reshape of the forward, functional ones included. None when the values
        do not arrive as a permutation (an op in between changed them) or nothing runs."""
        found = self._flatten_call(module_name)
        if found is None or self.model is None or self.input_shape is None:
            return None
        k, (ch, h, w) = found
        producer = self.calls[k].name
        nth = sum(1 for c in self.calls[:k] if c.name == producer)
        modules = dict(self.model.named_modules())
        seen, got = {"n": 0}, {}

        def replace(module, args, out):
            seen["n"] += 1
            if seen["n"] - 1 == nth and isinstance(out, torch.Tensor) and out.dim() == 4:
                codes = torch.arange(1, ch * h * w + 1, dtype=out.dtype).reshape(1, ch, h, w)
                return codes.expand_as(out).clone()
            return out

        def capture(module, args):
            got.setdefault("x", args[0].detach().clone() if args and isinstance(args[0], torch.Tensor) else None)

        hooks = [modules[producer].register_forward_hook(replace),
                 modules[module_name].register_forward_pre_hook(capture)]
        try:
            with torch.no_grad():
                was = self.model.training
                self.model.eval()
                self.model(torch.zeros(self.input_shape))
                self.model.train(was)
        except Exception:  # the probe is evidence only: no answer is "cannot tell"
            return None
        finally:
            for hk in hooks:
                hk.remove()
        x = got.get("x")
        if x is None or x.dim() != 2 or x.shape[1] != ch * h * w:
            return None
        vals = x[0].double()
        idx = vals.round().long() - 1
        if not torch.equal(vals, (idx + 1).double()) or sorted(idx.tolist()) != list(range(ch * h * w)):
            return None
        return idx.tolist()


def _shapes(out) -> list:
    if isinstance(out, torch.Tensor):
        return [tuple(out.shape)]
    if isinstance(out, (tuple, list)):
        return [s for o in out for s in _shapes(o)]
    return []


def _per_sample(shape) -> int:
    n = 1
    for d in shape[1:]:
        n *= d
    return n


def _owns(module) -> bool:
    return any(True for _ in module.parameters(recurse=False)) or any(
        b is not None for b in module._buffers.values())


def _first_shape(x):
    if isinstance(x, torch.Tensor):
        return tuple(x.shape)
    if isinstance(x, (tuple, list)) and x:
        return _first_shape(x[0])
    return None


def candidate_inputs(model: nn.Module, hint: tuple | None = None):
    """Dummy inputs to try, the most plausible first: the hint (NCHW/NTC from the source), then
    sizes that fit the first tensor-owning module."""
    if hint:
        yield torch.zeros(hint)
    first = next((m for m in model.modules() if _owns(m) and not list(m.children())), None)
    if isinstance(first, nn.modules.conv._ConvNd):
        nd = len(first.kernel_size)
        for s in _SIZES:
            yield torch.zeros((1, first.in_channels, *([s] * nd)))
    elif isinstance(first, nn.Linear):
        yield torch.zeros((1, first.in_features))
    elif isinstance(first, nn.RNNBase):
        yield torch.zeros((2, 3, first.input_size))
    elif isinstance(first, nn.RNNCellBase):  # a cell looped over time by the forward, or one step
        yield torch.zeros((2, 3, first.input_size))
        yield torch.zeros((2, first.input_size))
    elif isinstance(first, nn.Embedding):
        yield torch.zeros((1, 8), dtype=torch.long)
    elif isinstance(first, nn.modules.batchnorm._NormBase):
        for s in _SIZES:
            yield torch.zeros((1, first.num_features, s, s))


def trace(model: nn.Module, hint: tuple | None = None) -> Trace:
    """Execution order of `model`'s tensor-owning modules (see module docstring)."""
    names = {m: n for n, m in model.named_modules()}
    owning = [n for n, m in model.named_modules() if _owns(m)]
    errors = []
    for x in candidate_inputs(model, hint):
        calls: list[Call] = []
        hooks = []

        def hook(module, args, output, calls=calls):  # torch passes 3 args; removed before the next x
            if list(module.children()) and not _owns(module):
                return  # containers: their children are recorded
            first = args[0] if args and isinstance(args[0], torch.Tensor) else None
            calls.append(Call(names[module], type(module).__name__, _first_shape(args), _first_shape(output),
                              _owns(module), getattr(first, _FROM, None)))
            if isinstance(output, torch.Tensor):  # dataflow: who made the tensor the next module reads
                setattr(output, _FROM, len(calls) - 1)
        for m in model.modules():
            hooks.append(m.register_forward_hook(hook))
        try:
            was_training = model.training
            model.eval()
            with torch.no_grad():
                result = model(x)
            model.train(was_training)
        except Exception as e:  # any forward failure means "try another input"
            errors.append(f"{tuple(x.shape)}: {type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else ''}")
            continue
        finally:
            for h in hooks:
                h.remove()
        seen, order = set(), []
        for c in calls:
            if c.owns_tensors and c.name not in seen:
                seen.add(c.name)
                order.append(c.name)
        not_called = [n for n in owning if n not in seen]
        return Trace(order + not_called, calls, tuple(x.shape), "trace",
                     f"traced with a dummy input of shape {list(x.shape)}", not_called, _shapes(result), model)
    why = "no dummy input ran the module (" + "; ".join(errors[-2:]) + ")" if errors else "no input to try"
    return Trace(owning, [], None, "registration", why + "; registration order used instead", [])
