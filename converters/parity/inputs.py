"""Inputs for a parity check, in each side's own convention.

The mapping's `input:` says how the model is fed (shape in its `layout`, channel order, value range,
mean/std). The converted PyTorch model takes the same input with layout NCHW (NCL for NLC) unless
`parity.target_input` says otherwise. Inputs are made in the PyTorch convention and carried to
the source's by a transform chain (the registry of converters/mapping/transforms.py): the table's
`parity.source_input`, or one derived here (channel flip RGB<->BGR, then a layout permute).
Source activations and outputs come back through `parity.activations` (derived: NHWC -> NCHW
for 4-d arrays); a chain is applied only to arrays whose shape it fits.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np

from ..errors import ConvertersError, MappingError
from ..mapping import transforms as T

TORCH_LAYOUT = {"NHWC": "NCHW", "NLC": "NCL"}  # every other layout is taken as it is


@dataclass
class Conventions:
    """How each side is fed and read, resolved from a mapping (see module docstring)."""

    source: dict = field(default_factory=dict)      # the mapping's `input:`
    target: dict = field(default_factory=dict)      # PyTorch side: input + layout change + parity.target_input
    source_input: list = field(default_factory=list)  # chain: target-convention input -> source convention
    activations: list = field(default_factory=list)   # chain: source activation -> target convention
    explicit: dict = field(default_factory=dict)    # which chains came from the table, for the report

    @classmethod
    def from_mapping(cls, m) -> Conventions:
        source = dict(getattr(m, "input", None) or {})
        parity = getattr(m, "parity", None) or {}
        target = dict(source)
        if source.get("layout"):
            target["layout"] = TORCH_LAYOUT.get(source["layout"], source["layout"])
        if "shape" in source and source.get("layout") and target["layout"] != source["layout"]:
            target["shape"] = permute_list(source["shape"], source["layout"], target["layout"])
        target.update(parity.get("target_input") or {})
        c = cls(source=source, target=target)
        explicit_in = getattr(m, "parity_source_input", None)
        explicit_act = getattr(m, "parity_activations", None)
        c.source_input = explicit_in if explicit_in is not None else derive_source_input(target, source)
        c.activations = explicit_act if explicit_act is not None else derive_activations(source)
        c.explicit = {"source_input": explicit_in is not None, "activations": explicit_act is not None}
        return c

    def describe(self) -> dict:
        return {"source": self.source, "target": self.target,
                "source_input": [repr(t) for t in self.source_input],
                "activations": [repr(t) for t in self.activations]}


def permute_list(values, from_layout: str, to_layout: str) -> list:
    return [values[from_layout.index(axis)] for axis in to_layout]


def layout_permutation(from_layout: str, to_layout: str) -> list[int] | None:
    """Axes that turn an array in `from_layout` into `to_layout` (numpy.transpose order)."""
    if sorted(from_layout) != sorted(to_layout) or len(set(from_layout)) != len(from_layout):
        return None
    return [from_layout.index(axis) for axis in to_layout]


def derive_source_input(target: dict, source: dict) -> list:
    """Channel flip when one side is RGB and the other BGR, then the layout permute."""
    chain = []
    t_layout, s_layout = target.get("layout"), source.get("layout")
    flip = {target.get("channels"), source.get("channels")} == {"RGB", "BGR"}
    if flip:
        if not t_layout or "C" not in t_layout:
            raise MappingError("the input's channel order differs between the sides but no layout says where the "
                               "channel axis is", hint="give `input.layout` (e.g. NCHW)")
        chain.append(T.build({"flip": {"axis": t_layout.index("C")}}))
    if t_layout and s_layout and t_layout != s_layout:
        perm = layout_permutation(t_layout, s_layout)
        if perm is None:
            raise MappingError(f"cannot derive the input permutation from {t_layout} to {s_layout}",
                               hint="write parity.source_input explicitly")
        chain.append(T.build({"permute": perm}))
    return chain


def derive_activations(source: dict) -> list:
    """NHWC sources: 4-d activations to NCHW; NLC: 3-d to NCL. Others pass unchanged."""
    layout = source.get("layout")
    if layout in TORCH_LAYOUT:
        return [T.build({"permute": layout_permutation(layout, TORCH_LAYOUT[layout])})]
    return []


def chain_fits(chain, shape) -> bool:
    try:
        T.chain_shape(chain, tuple(shape), np.dtype(np.float32))
    except MappingError:
        return False
    return True


def to_target(chain, array):
    """A source activation in the target convention: the chain when it fits the array, else as is."""
    if not chain or not chain_fits(chain, np.shape(array)):
        return array
    return np.ascontiguousarray(T.chain_apply(chain, np.asarray(array)))


def to_source(chain, array):
    """A target-convention input in the source convention (the chain must fit: it was written for it)."""
    if not chain:
        return array
    if not chain_fits(chain, np.shape(array)):
        raise MappingError(f"parity.source_input {chain} does not fit an input of shape {list(np.shape(array))}")
    return np.ascontiguousarray(T.chain_apply(chain, np.asarray(array)))


def inverse_chain(chain, target_shape) -> list:
    """The chain that undoes `chain` (which maps target -> source) for an input of `target_shape`."""
    shapes, s = [], tuple(target_shape)
    for t in chain:
        shapes.append(s)
        s = t.shape(s)
    try:
        return [t.inverse(shape) for t, shape in zip(reversed(chain), reversed(shapes))]
    except MappingError as e:
        raise MappingError(f"inputs given in the source convention need the inverse of parity.source_input: {e}",
                           hint="give the inputs in the PyTorch convention instead") from None


def from_source(chain, array, target_shape=None):
    """A source-convention input carried back to the target convention."""
    if not chain:
        return array
    a = np.asarray(array)
    # the chain's input shape: find it by trying the inverse of each permute on the source shape
    shape = tuple(target_shape) if target_shape is not None else _guess_target_shape(chain, a.shape)
    return np.ascontiguousarray(T.chain_apply(inverse_chain(chain, shape), a))


def _guess_target_shape(chain, source_shape):
    """Run the chain backwards on shapes: every shape-changing step in an input chain is invertible."""
    s = tuple(source_shape)
    for t in reversed(chain):
        probe = t.inverse(s)  # inverse(in_shape) ignores the shape for permute/flip/transpose
        s = probe.shape(s)
    return s


# ---- generation ---------------------------------------------------------------------------------

def input_shape(spec: dict, n: int | None, override=None) -> tuple:
    shape = list(override if override is not None else spec.get("shape") or [])
    if not shape:
        raise ConvertersError("the mapping's `input:` gives no shape to make test inputs from",
                              hint="add input.shape to the table, pass input_shape=... (--input-shape), "
                                   "or give the inputs (--inputs file.npz)")
    layout = spec.get("layout") or ""
    if n is not None and shape:
        shape[layout.index("N") if "N" in layout else 0] = int(n)
    return tuple(int(d) for d in shape)


def make_target_input(c: Conventions, n: int | None = 2, seed: int = 0, dtype="float32", shape=None):
    """A random input in the PyTorch convention: uniform in input.range (else standard normal),
    then (x - mean) / std per channel (mean/std listed in the channel order of `input`)."""
    spec = c.target
    if shape is not None and c.source.get("layout") and spec.get("layout") and \
            spec["layout"] != c.source["layout"] and len(shape) == len(spec["layout"]):
        shape = permute_list(list(shape), c.source["layout"], spec["layout"])  # given in `input`'s layout
    shape = input_shape(spec, n, shape)
    rng = np.random.default_rng(seed)
    lo_hi = spec.get("range")
    x = rng.uniform(lo_hi[0], lo_hi[1], shape) if lo_hi else rng.standard_normal(shape)
    mean, std = spec.get("mean"), spec.get("std")
    if mean is not None or std is not None:
        flip = {spec.get("channels"), c.source.get("channels")} == {"RGB", "BGR"}
        x = _normalise(x, spec.get("layout") or "", mean, std, flip)
    return x.astype(dtype)


def _normalise(x, layout, mean, std, flip):
    def per_channel(v):
        v = np.asarray(v, np.float64)
        if v.size == 1:
            return v.reshape(())
        if "C" not in layout or x.shape[layout.index("C")] != v.size:
            raise ConvertersError(f"input mean/std has {v.size} values but the input {list(x.shape)} ({layout or '?'}) "
                                  "has no channel axis of that size")
        v = v[::-1] if flip else v
        bshape = [1] * x.ndim
        bshape[layout.index("C")] = v.size
        return v.reshape(bshape)
    if mean is not None:
        x = x - per_channel(mean)
    if std is not None:
        x = x / per_channel(std)
    return x


# ---- user-given inputs --------------------------------------------------------------------------

def load_inputs(inputs, names: list[str]) -> dict[str, np.ndarray]:
    """Inputs given by the user: an .npz path or a dict/list of arrays, matched to `names` by name,
    else by order."""
    if isinstance(inputs, (str, os.PathLike)):
        with np.load(inputs, allow_pickle=False) as data:
            given = {k: data[k] for k in data.files}
    elif isinstance(inputs, dict):
        given = {str(k): np.asarray(v) for k, v in inputs.items()}
    elif isinstance(inputs, (list, tuple)):
        given = {f"arr_{i}": np.asarray(v) for i, v in enumerate(inputs)}
    else:
        given = {"arr_0": np.asarray(inputs)}
    if all(n in given for n in names):
        return {n: given[n] for n in names}
    if len(given) == len(names):  # np.savez(path, x) names it arr_0: match by order
        return dict(zip(names, given.values()))
    raise ConvertersError(f"the inputs hold {sorted(given)} but the model takes {names}",
                          hint="name the arrays after the model's inputs, or give exactly one per input in order")


# ---- extra source inputs (initial states and the like) --------------------------------------------

EXTRA_FILLS = ("zeros", "ones", "random")
EXTRA_KEYS = {"shape", "fill", "target_arg"}


def check_extra_inputs(spec, where=None) -> dict:
    """`parity.extra_inputs` (or verify's `extra_inputs=`), checked: {source input name: {shape,
    fill, target_arg}}. A shape entry is an integer or an expression (`num_layers * (1 +
    bidirectional)`, `N`) over the converted model's integer attributes and the main input's
    dimensions (`d0`, `d1`, ... and by the letters of `input.layout`); compiled here so a typo
    stops early."""
    from ..mapping.templates import compile_template

    if not isinstance(spec, dict):
        raise MappingError("parity.extra_inputs maps source input names to {shape, fill, target_arg}", rule=where)
    out = {}
    for name, item in spec.items():
        if not isinstance(item, dict) or not isinstance(item.get("shape"), list) or set(item) - EXTRA_KEYS:
            raise MappingError(f"parity.extra_inputs.{name} is {{shape: [...], fill: zeros|ones|random|<number>, "
                               f"target_arg: <position>}} (shape required)", rule=where)
        fill = item.get("fill", "zeros")
        if not (fill in EXTRA_FILLS or (isinstance(fill, (int, float)) and not isinstance(fill, bool))):
            raise MappingError(f"parity.extra_inputs.{name}.fill is zeros, ones, random or a number, not {fill!r}",
                               rule=where)
        arg = item.get("target_arg")
        if arg is not None and (not isinstance(arg, int) or isinstance(arg, bool) or arg < 1):
            raise MappingError(f"parity.extra_inputs.{name}.target_arg is a positional index >= 1, not {arg!r}",
                               rule=where)
        shape = []
        for d in item["shape"]:
            if isinstance(d, int) and not isinstance(d, bool):
                shape.append(d)
            elif isinstance(d, str):
                shape.append(compile_template(d if "{" in d else "{" + d + "}", rule=where))
            else:
                raise MappingError(f"parity.extra_inputs.{name}.shape entries are integers or expressions, not {d!r}",
                                   rule=where)
        out[str(name)] = {"shape": shape, "shape_text": list(item["shape"]), "fill": fill, "target_arg": arg}
    return out


def merged_extra_inputs(table: dict | None, override: dict | None) -> dict:
    """The table's `parity.extra_inputs` with verify's `extra_inputs=` winning input by input."""
    merged = dict(table or {})
    merged.update(override or {})
    return check_extra_inputs(merged) if merged else {}


def shape_names(model, source_shape, layout: str | None) -> dict:
    """Names a shape expression may use: the model's own integer/bool attributes (nn.LSTM's
    num_layers, hidden_size, bidirectional, batch_first) and the main input's dimensions, `d0`,
    `d1`, ... and by layout letter (`N`, `T`, `C` for NTC)."""
    names = {k: v for k, v in vars(model).items() if isinstance(v, (int, bool)) and not k.startswith("_")} \
        if model is not None else {}
    if source_shape is not None:
        names.update({f"d{i}": int(d) for i, d in enumerate(source_shape)})
        if layout and len(layout) == len(source_shape):
            names.update({letter: int(d) for letter, d in zip(layout, source_shape)})
    return names


def make_extra_inputs(extra: dict, names: dict, seed: int) -> dict[str, np.ndarray]:
    """The declared extra inputs as arrays: shapes rendered from `names`, filled as declared
    (random: standard normal from `seed` and the input's position)."""
    from ..mapping.templates import render

    arrays = {}
    for i, (name, item) in enumerate(extra.items()):
        shape = []
        for d, text in zip(item["shape"], item["shape_text"]):
            if isinstance(d, int):
                shape.append(d)
                continue
            try:
                shape.append(int(render(d, names, rule=f"parity.extra_inputs.{name}", template=str(text))))
            except (MappingError, ValueError) as e:
                raise MappingError(f"parity.extra_inputs.{name}: shape entry {text!r} cannot be computed "
                                   f"({getattr(e, 'message', e)}); known names: {', '.join(sorted(names)) or 'none'}",
                                   hint="give integers (verify's extra_inputs= overrides the table)") from None
        fill = item["fill"]
        if fill == "random":
            a = np.random.default_rng([seed, 1000 + i]).standard_normal(shape)
        else:
            a = np.full(shape, {"zeros": 0.0, "ones": 1.0}.get(fill, fill))
        arrays[name] = a.astype(np.float32)
    return arrays


def target_args(main: list, extra: dict, arrays: dict) -> list:
    """Positional arguments for the PyTorch model: the main inputs, then each extra input with a
    `target_arg` at that position; several at one position go in as a tuple (nn.LSTM's (h0, c0))."""
    args = [arrays[n] for n in main]
    groups: dict[int, list] = {}
    for name, item in extra.items():
        if item["target_arg"] is not None:
            groups.setdefault(item["target_arg"], []).append(arrays[name])
    expected = list(range(len(main), len(main) + len(groups)))
    if sorted(groups) != expected:
        raise MappingError(f"parity.extra_inputs target_arg positions {sorted(groups)} must follow the "
                           f"{len(main)} main input(s) without gaps: {expected}")
    for pos in expected:
        args.append(groups[pos][0] if len(groups[pos]) == 1 else tuple(groups[pos]))
    return args
