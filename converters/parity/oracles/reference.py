"""Reference oracle: replays a reference file instead of running the source framework.

A reference file (`convert reference`, converters.parity.reference.write_reference) is an .npz
written where the source framework runs. It holds, without any pickled object:

    __meta__              JSON text: format, version, framework, source file + sha256, mapping,
                          input_names, output_names, layer_order (the tapped layers), created,
                          activation_layouts, fused_activations and tap_for (what the oracle knew,
                          optional)
    input/<name>          the inputs, in the source model's convention
    target_input/<name>   the same inputs in the PyTorch model's convention (when a mapping was given)
    output/<name>         the source model's outputs for them
    tap/<layer>           activations of source layers, for localisation

`run` answers only for the stored inputs (anything else raises), and taps only the stored layers.
"""
from __future__ import annotations

import json
import os
import zipfile

import numpy as np

from ...errors import ConvertersError, FormatError
from .base import Oracle, SourceModel, require_source

FORMAT = "converters-parity-reference"
VERSION = 1


class ReferenceOracle(Oracle):
    framework = "reference"

    def __init__(self, model: SourceModel):
        super().__init__(model)
        self.path = require_source(os.fspath(model.weights), "reference file")
        try:
            with np.load(self.path, allow_pickle=False) as data:
                arrays = {k: data[k] for k in data.files}
        except (ValueError, OSError, EOFError, zipfile.BadZipFile) as e:
            raise FormatError(f"not a reference .npz: {e}", file=self.path) from None
        if "__meta__" not in arrays:
            raise FormatError("not a reference file: no __meta__ entry", file=self.path,
                              hint="write one with `convert reference`")
        try:
            self.meta = json.loads(str(arrays.pop("__meta__")))
        except json.JSONDecodeError as e:
            raise FormatError(f"__meta__ is not JSON: {e}", file=self.path, array="__meta__") from None
        if self.meta.get("format") != FORMAT:
            raise FormatError(f"__meta__ says format {self.meta.get('format')!r}, not {FORMAT!r}", file=self.path)
        if int(self.meta.get("version", 0)) > VERSION:
            raise FormatError(f"reference format version {self.meta.get('version')} is newer than this reader "
                              f"({VERSION})", file=self.path, hint="upgrade converters")
        self.framework = self.meta.get("framework", "reference")
        self.arrays = arrays

    def _group(self, prefix) -> dict:
        return {k[len(prefix):]: v for k, v in self.arrays.items() if k.startswith(prefix)}

    def stored_inputs(self) -> dict:
        return {n: self.arrays[f"input/{n}"] for n in self.input_names()}

    def target_inputs(self) -> dict | None:
        t = self._group("target_input/")
        return t if t and set(t) == set(self.input_names()) else None

    def input_names(self) -> list[str]:
        return list(self.meta.get("input_names") or self._group("input/"))

    def output_names(self) -> list[str]:
        return list(self.meta.get("output_names") or self._group("output/"))

    def layer_order(self) -> list[str]:
        taps = self._group("tap/")
        return [n for n in self.meta.get("layer_order") or taps if n in taps]

    def tap_for(self, layer):
        return (self.meta.get("tap_for") or {}).get(layer, layer)

    def activation_layouts(self, names, input_layouts):
        known = self.meta.get("activation_layouts") or {}
        return {n: known[n] for n in names if n in known}

    def fused_activations(self, taps):
        known = self.meta.get("fused_activations") or {}
        return {t: known[t] for t in taps if t in known}

    def run(self, inputs, taps=()):
        for name in self.input_names():
            stored = self.arrays[f"input/{name}"]
            given = np.asarray(inputs.get(name)) if name in inputs else None
            if given is None or given.shape != stored.shape or not np.array_equal(given.astype(stored.dtype), stored):
                raise ConvertersError(f"the reference holds outputs for other inputs than those given for {name!r}",
                                      file=self.path, array=f"input/{name}",
                                      hint="verify with the reference's own inputs (omit --inputs)")
        out = {n: self.arrays[f"output/{n}"] for n in self.output_names()}
        missing = [t for t in taps if f"tap/{t}" not in self.arrays]
        if missing:
            raise ConvertersError(f"the reference holds no activation for layer(s) {missing[:5]}", file=self.path,
                                  hint="write it with `convert reference --taps all`")
        out.update({t: self.arrays[f"tap/{t}"] for t in taps})
        return out


ORACLE = ReferenceOracle


def create(model: SourceModel) -> ReferenceOracle:
    return ReferenceOracle(model)
