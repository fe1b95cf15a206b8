"""One parity set-up: what a check compares (source, table, target), how it feeds both sides
(inputs, conventions) and how close they must be (tolerances), resolved once from the keywords of
`verify` / `write_reference` and shared by them and by the oracle they build.

    setup = ParitySetup.create("net.onnx", "table.yaml", TargetNet(), n=3, tolerance=1e-5)
    report = verify_setup(setup)                    # converters.parity.verify
    write_reference_setup(setup, "ref.npz")         # converters.parity.reference
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np

from ..errors import ConvertersError, MappingError
from ..mapping import spec as mapping_spec
from . import inputs as I
from .compare import Tolerance
from .oracles.base import SourceModel

ARCHITECTURE_OPTIONS = ("prototxt", "symbol", "architecture")
# `--option KEY=VALUE` keys that choose which function of the source the framework runs, not how
# its arrays are read: taken out of the reader's options and given to the oracle, so verify runs
# the function the conversion (convert port) read. A SavedModel's signature is the one today.
ORACLE_ONLY_OPTIONS = {"tensorflow": ("signature",)}


@dataclass
class InputRequest:
    """Where the inputs come from: `given` (an .npz path, a dict or list of arrays, laid out in
    `convention`: "source" or "target") or, when None, `n` random samples from `seed` in `shape`
    (the table's input layout; default the table's input.shape). `extra` is the checked
    parity.extra_inputs; `dtype` the PyTorch side's float type."""

    given: object = None
    n: int = 2
    seed: int = 0
    shape: list | None = None
    convention: str = "source"
    dtype: str = "float32"
    extra: dict = field(default_factory=dict)


@dataclass
class ParitySetup:
    source: object                      # the weight file the conversion reads, or an opened ArrayFile
    mapping: mapping_spec.Mapping
    framework: str = ""
    target: object = None               # an nn.Module, 'package.module:callable', or None: the table's
    target_kwargs: dict | None = None
    architecture: str | None = None     # the file the framework needs beside the weights
    reader_options: dict = field(default_factory=dict)
    oracle_options: dict = field(default_factory=dict)  # source_python, timeout, keras, ...
    inputs: InputRequest = field(default_factory=InputRequest)
    conventions: I.Conventions = field(default_factory=I.Conventions)
    tolerance: Tolerance = field(default_factory=Tolerance)

    @classmethod
    def create(cls, source, mapping, target=None, *, framework=None, architecture=None, inputs=None, n=None,
               seed=0, tolerance=None, source_python=None, dtype="float32", target_kwargs=None,
               reader_options=None, input_shape=None, inputs_convention="source", oracle_options=None,
               extra_inputs=None) -> ParitySetup:
        """The set-up from verify's keywords (see converters.parity.verify.verify)."""
        m = mapping if isinstance(mapping, mapping_spec.Mapping) else mapping_spec.load(mapping)
        if dtype not in ("float32", "float64"):
            raise ConvertersError(f"dtype is float32 or float64, not {dtype!r}")
        if inputs_convention not in ("source", "target"):
            raise ConvertersError(f"inputs_convention is 'source' or 'target', not {inputs_convention!r}")
        parity = m.parity or {}
        tol = Tolerance.from_any(parity.get("tolerance")).merged(
            Tolerance.from_any(tolerance).to_dict() if tolerance is not None else None)
        framework = framework or m.source or ""
        reader_options, chosen = split_oracle_options(framework, reader_options)
        oracle_options = {k: v for k, v in {"source_python": source_python, **chosen, **(oracle_options or {})}.items()
                          if v is not None}
        n = n if n is not None else int(parity.get("batch", 2))  # a fixed-batch model says so in its table
        request = InputRequest(given=inputs, n=n, seed=seed, shape=input_shape, convention=inputs_convention,
                               dtype=dtype, extra=I.merged_extra_inputs(parity.get("extra_inputs"), extra_inputs))
        return cls(source=source, mapping=m, framework=framework, target=target,
                   target_kwargs=target_kwargs,
                   architecture=architecture or _architecture_from(reader_options),
                   reader_options=reader_options, oracle_options=oracle_options, inputs=request,
                   conventions=I.Conventions.from_mapping(m), tolerance=tol)

    # ---- what the table says --------------------------------------------------------------------

    def parity(self, key, default=None):
        """A key of the table's `parity:` section."""
        return (self.mapping.parity or {}).get(key, default)

    def input_layouts(self, names) -> dict:
        """{main input name: the table's input layout}, for the oracle to follow through its graph
        (extra inputs such as RNN states have their own shapes: left out)."""
        layout = self.conventions.source.get("layout")
        return {k: layout for k in names if k not in self.inputs.extra} if layout else {}

    @property
    def source_path(self) -> str:
        return self.source.path if hasattr(self.source, "path") else os.fspath(self.source)

    # ---- the source side --------------------------------------------------------------------------

    def source_model(self) -> SourceModel:
        """What the oracle runs (the oracles' own description of the source)."""
        if not self.framework:
            raise ConvertersError("the source framework is not known", hint="give --from (framework=...)")
        return SourceModel(self.framework, weights=os.fspath(self.source_path),
                           architecture=os.fspath(self.architecture) if self.architecture else None,
                           options=dict(self.oracle_options))

    def open_arrays(self):
        """The source file opened by its reader (an ArrayFile given as the source is used as is)."""
        if hasattr(self.source, "values") and hasattr(self.source, "path"):
            return self.source
        from .. import read

        return read(self.source, self.framework or None, **self.reader_options)

    # ---- inputs -----------------------------------------------------------------------------------

    def make_inputs(self, names: list, model=None, inputs=None, convention=None):
        """(source-convention inputs, target-convention inputs), both {input name: array}, for every
        input in `names`: the main ones made or taken from the request (or `inputs` in `convention`,
        which override it), the declared extra inputs taken from the given inputs when they hold
        every input, else made from their fill (their shapes may read `model`'s attributes)."""
        request = self.inputs
        given = request.given if inputs is None else inputs
        convention = convention or request.convention
        extra = request.extra
        unknown = [k for k in extra if k not in names]
        if unknown:
            raise MappingError(f"parity.extra_inputs names {unknown}, which the source model does not take; "
                               f"its inputs are {names}")
        main = [k for k in names if k not in extra]
        given_extra = None
        if given is not None and extra:
            try:
                every = I.load_inputs(given, names)
            except ConvertersError:
                every = None
            if every is not None:
                given_extra = {k: every[k] for k in extra}
                given = {k: every[k] for k in main}
        src, tgt = self._main_inputs(main, given, convention)
        if extra:
            if given_extra is None:
                first = src[main[0]].shape if main else None
                given_extra = I.make_extra_inputs(
                    extra, I.shape_names(model, first, self.conventions.source.get("layout")), request.seed)
            for k, v in given_extra.items():
                src[k] = np.ascontiguousarray(v, np.float32)
                tgt[k] = np.ascontiguousarray(v, self._target_float)
        return src, tgt

    @property
    def _target_float(self):
        return np.float64 if self.inputs.dtype == "float64" else np.float32

    def _main_inputs(self, names, given, convention):
        conv, request = self.conventions, self.inputs
        if given is None:
            if len(names) != 1:
                raise ConvertersError(f"the model takes {len(names)} inputs {names}; random inputs are made for one",
                                      hint="give the inputs (--inputs file.npz), or declare the source-only ones "
                                           "(initial states) in the table's parity.extra_inputs")
            x = I.make_target_input(conv, request.n, request.seed, "float32", request.shape)
            tgt = {names[0]: x}
            src = {names[0]: I.to_source(conv.source_input, x)}
        else:
            loaded = I.load_inputs(given, names)
            if convention == "target":
                tgt = {k: np.asarray(v, np.float32) for k, v in loaded.items()}
                src = {k: I.to_source(conv.source_input, v) for k, v in tgt.items()}
            elif convention == "source":
                src = {k: np.asarray(v, np.float32) for k, v in loaded.items()}
                tgt = {k: I.from_source(conv.source_input, v) for k, v in src.items()}
            else:
                raise ConvertersError(f"inputs_convention is 'source' or 'target', not {convention!r}")
        src = {k: np.ascontiguousarray(v, np.float32) for k, v in src.items()}
        tgt = {k: np.ascontiguousarray(v, self._target_float) for k, v in tgt.items()}
        return src, tgt


def split_oracle_options(framework: str, reader_options) -> tuple[dict, dict]:
    """(the options the reader takes, the ORACLE_ONLY_OPTIONS among them, for the oracle)."""
    options = dict(reader_options or {})
    chosen = {k: options.pop(k) for k in ORACLE_ONLY_OPTIONS.get(framework, ()) if k in options}
    return options, chosen


def _architecture_from(options: dict):
    for key in ARCHITECTURE_OPTIONS:
        if options.get(key):
            return options[key]
    return None
