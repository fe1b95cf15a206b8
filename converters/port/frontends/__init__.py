"""Frontends: one module per source format, each `build_graph(...) -> port.graph.Graph`."""
