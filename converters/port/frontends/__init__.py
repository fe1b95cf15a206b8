"""Frontends: one module per source format, each turning a source model into a `port.graph.Graph`.

A frontend module `frontends/<framework>.py` defines

    def build_graph(sources: list[str], *, reader_options: dict, outputs: list | None,
                    input_shapes: dict | None) -> Graph

* `sources`: the paths the user gave (`convert port SOURCE [SOURCE...]`), in that order;
* `reader_options`: `converters.read` options the user passed (`prototxt=...`); `--architecture`
  arrives as the option named in ARCHITECTURE_OPTIONS;
* `outputs`: tensor / layer names to return instead of the source's own outputs (`--outputs`),
  or None; a frontend that can honour it cuts the graph after those tensors (dead branches go
  to `unused_arrays`), otherwise refuses with a PortError;
* `input_shapes`: `{input name: shape in the source's layout}` from `--input-shape`, or None.

It returns a checked Graph (`graph.check()`) whose `source_files[0]` is the weight file the
normal conversion reads and `reader_options` the options that make `converters.read` list the
same array names the Params use. Framework names are the readers' (`converters.readers.FRAMEWORKS`);
`gluon` shares the mxnet frontend.
"""
from __future__ import annotations

import importlib
import os

from ..graph import Graph, PortError


def registry(table: dict):
    """A decorator factory filling `table` with one translation function per source op or layer
    type (`@handles("Conv")`), so a frontend's dispatch is a dict lookup and a missing key is an
    unsupported op."""
    def names(*keys):
        def register(fn):
            for key in keys:
                table[key] = fn
            return fn
        return register
    return names


_MODULES = {"caffe": "caffe", "onnx": "onnx", "keras": "keras", "mxnet": "mxnet", "gluon": "mxnet",
            "tensorflow": "tensorflow"}


def frontend_for(framework: str, file=None):
    """The frontend module of a framework, or a PortError naming the ones there are."""
    name = _MODULES.get(framework)
    if name is None:
        raise PortError(f"`convert port` has no frontend for {framework!r} sources", file=file,
                        hint=f"ported formats: {', '.join(sorted(set(_MODULES)))}")
    try:
        return importlib.import_module(f"{__name__}.{name}")
    except ModuleNotFoundError as e:
        if e.name != f"{__name__}.{name}":
            raise
        raise PortError(f"the {framework} frontend of `convert port` is not available in this build",
                        file=file) from None


# `--architecture PATH`: the reader option each frontend takes the network's description as
ARCHITECTURE_OPTIONS = {"keras": "architecture", "caffe": "prototxt", "mxnet": "symbol", "gluon": "symbol"}


def architecture_options(framework: str, architecture, reader_options=None, file=None) -> dict:
    """reader_options with `--architecture` spelled as the frontend's option (the Keras config,
    the Caffe prototxt, the MXNet -symbol.json); a PortError for formats that carry their graph."""
    options = dict(reader_options or {})
    if architecture is None:
        return options
    key = ARCHITECTURE_OPTIONS.get(framework)
    if key is None:
        raise PortError(f"--architecture is not used by {framework} sources: the file holds its graph", file=file)
    if options.get(key) not in (None, os.fspath(architecture)):
        raise PortError(f"--architecture and --option {key}= name different files", file=file)
    options[key] = os.fspath(architecture)
    return options


def build_graph(framework: str, sources: list, *, reader_options=None, outputs=None, input_shapes=None,
                architecture=None) -> Graph:
    module = frontend_for(framework, sources[0] if sources else None)
    options = architecture_options(framework, architecture, reader_options, sources[0] if sources else None)
    graph = module.build_graph(list(sources), reader_options=options, outputs=outputs, input_shapes=input_shapes)
    graph.check()
    return graph
