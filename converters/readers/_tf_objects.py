"""TF2 object graphs and per-key metadata (layer, role, layout, readable name) for checkpoint keys.

A TF2 checkpoint's keys are paths through the object graph as the *first* path reached when it
was saved, which can be misleading: Keras 3 saves a conv kernel as
`optimizer/_trainable_variables/0/...` because the optimizer also tracks it. So the readable
name of each variable is the breadth-first path from the root that avoids optimizer objects
where one exists, and the role follows that path, not the key.

TrackableObjectGraph (trackable_object_graph.proto): nodes=1, each with children=1
{node_id=1, local_name=2}, attributes=2 {name=1, full_name=2, checkpoint_key=3},
slot_variables=3 {original_variable_node_id=1, slot_name=2, slot_variable_node_id=3}.
"""
from __future__ import annotations

import re
from collections import deque
from dataclasses import dataclass, field
from functools import lru_cache

from ..arrays import role_from_name, split_role_suffix
from ..errors import FormatError
from ._protowire import LEN, VARINT, iter_fields

OBJECT_GRAPH_KEY = "_CHECKPOINTABLE_OBJECT_GRAPH"
_ATTR_SUFFIX = "/.ATTRIBUTES/VARIABLE_VALUE"
_COUNTERS = {"global_step", "save_counter", "iterations", "iteration", "iter"}
# TF1 optimizer slot variables are `<var>/<Slot>`; accumulators of the power terms stand alone.
_TF1_SLOT = re.compile(r"^(Adam|Adam_1|AdamW|AdamW_1|Momentum|RMSProp|RMSProp_1|Adagrad|AdagradDA|Adadelta|"
                       r"Adadelta_1|Ftrl|Ftrl_1|Nadam|Nadam_1|LAMB|LAMB_1|ProximalAdagrad)$")
_TF1_OPTIMIZER_VARS = {"beta1_power", "beta2_power"}


@dataclass
class Node:
    children: list = field(default_factory=list)      # (node_id, local_name)
    attributes: list = field(default_factory=list)    # (name, full_name, checkpoint_key)
    slots: list = field(default_factory=list)         # (original_node_id, slot_name, slot_node_id)


@dataclass
class ObjectGraph:
    nodes: list


def parse_object_graph(data: bytes, file) -> ObjectGraph:
    nodes = []
    for f, w, v, _off in iter_fields(data, 0, len(data), file):
        if f == 1 and w == LEN:
            nodes.append(_node(data, v, file))
    n = len(nodes)
    for i, node in enumerate(nodes):
        for ref in [c[0] for c in node.children] + [s[0] for s in node.slots] + [s[2] for s in node.slots]:
            if not 0 <= ref < n:
                raise FormatError(f"object graph node {i} refers to node {ref} of {n}", file=file,
                                  array=OBJECT_GRAPH_KEY)
    return ObjectGraph(nodes)


def _node(data, span, file) -> Node:
    node = Node()
    for f, w, v, _off in iter_fields(data, span[0], span[0] + span[1], file):
        if w != LEN:
            continue
        sub = _message(data, v, file)
        if f == 1:
            node.children.append((sub.get(1, 0), sub.get(2, "")))
        elif f == 2:
            node.attributes.append((sub.get(1, ""), sub.get(2, ""), sub.get(3, "")))
        elif f == 3:
            node.slots.append((sub.get(1, 0), sub.get(2, ""), sub.get(3, 0)))
    return node


def _message(data, span, file) -> dict:
    """A flat message of ints and strings: {field: value} (last value wins)."""
    out = {}
    for f, w, v, _off in iter_fields(data, span[0], span[0] + span[1], file):
        if w == VARINT:
            out[f] = v
        elif w == LEN:
            out[f] = bytes(data[v[0]:v[0] + v[1]]).decode("utf-8", errors="replace")
    return out


def _optimizer_nodes(graph: ObjectGraph) -> set[int]:
    """Nodes that are optimizers: they own slot variables or are reached by an edge named *optimizer*."""
    opt = {i for i, n in enumerate(graph.nodes) if n.slots}
    for n in graph.nodes:
        for child, name in n.children:
            if name.lower().lstrip("_").endswith("optimizer"):
                opt.add(child)
    return opt


def _paths(graph: ObjectGraph, blocked: set[int]) -> dict[int, list[str]]:
    """Breadth-first path of local names from the root (node 0) to each node, children in order,
    not walking into `blocked` nodes."""
    paths = {0: []}
    queue = deque([0])
    while queue:
        i = queue.popleft()
        for child, name in graph.nodes[i].children:
            if child not in paths and child not in blocked:
                paths[child] = paths[i] + [name]
                queue.append(child)
    return paths


def describe_keys(keys: list[str], graph: ObjectGraph | None) -> dict[str, dict]:
    """Per-array meta (readable_name, variable_name, layer, role, layout) for each checkpoint key."""
    if graph is None:
        return {k: _describe_by_name(k) for k in keys}
    out = dict.fromkeys(keys)
    optimizers = _optimizer_nodes(graph)
    model_paths = _paths(graph, optimizers)
    all_paths = _paths(graph, set())
    slot_of = {}
    for opt_id, node in enumerate(graph.nodes):
        for original, slot_name, slot in node.slots:
            slot_of[slot] = (original, slot_name, opt_id)
    for i, node in enumerate(graph.nodes):
        for attr_name, full_name, key in node.attributes:
            if key not in out:
                continue
            info = _describe_object(graph, i, attr_name, full_name, model_paths, all_paths, slot_of)
            out[key] = info
    for k, info in out.items():  # keys no object lists: by name (only these: thousands of keys cost ~15 us each)
        if info is None:
            out[k] = _describe_by_name(k)
    return out


def _describe_object(graph, i, attr_name, full_name, model_paths, all_paths, slot_of) -> dict:
    if i in slot_of:
        original, slot_name, opt_id = slot_of[i]
        var_path = model_paths.get(original) or all_paths.get(original) or [f"node-{original}"]
        opt_path = all_paths.get(opt_id) or [f"node-{opt_id}"]
        path = var_path + [".OPTIMIZER_SLOT"] + opt_path + [slot_name]
        info = _by_path(var_path, full_name, graph)
        info.update({"role": "optimizer", "slot_of": "/".join(var_path), "slot_name": slot_name})
    elif i in model_paths:
        path = model_paths[i]
        info = _by_path(path, full_name, graph)
    else:  # only reachable through an optimizer: optimizer state (or its step counter)
        path = all_paths.get(i) or [f"node-{i}"]
        info = _by_path(path, full_name, graph)
        info["role"] = "counter" if _last(path) in _COUNTERS else "optimizer"
    if attr_name != "VARIABLE_VALUE":
        path = path + [attr_name]
    info["readable_name"] = "/".join(path)
    if full_name:
        info["variable_name"] = full_name
    return info


def _last(path: list[str]) -> str:
    return path[-1].lstrip("_").lower() if path else ""


@lru_cache(maxsize=4096)
def _role_of(last: str) -> tuple:
    """(role or None, flat layer or None, variable name) of a path's last name (`last` stripped of `_`)."""
    role = "counter" if last.lower() in _COUNTERS else role_from_name(last)
    split = split_role_suffix(last) if role is None else None
    if split:  # a flat TF1 name: `conv1_weight` is variable `weight` of layer `conv1`
        return split
    return role, None, last


def _by_path(path: list[str], full_name: str, graph) -> dict:
    role, flat_layer, last = _role_of(path[-1].lstrip("_") if path else "")
    layer = path[:-1]
    if flat_layer is not None:
        layer = layer + [flat_layer]
    info = {"layer": "/".join(layer), "role": role or "other"}
    owner = full_name.split("/")[-2] if full_name.count("/") else ""  # the variable's own layer name
    hint = "depthwise" if "depthwise" in last or "depthwise" in owner else last
    info["_layout_name"] = hint
    return info


def _describe_by_name(key: str) -> dict:
    """Meta for a name-based (TF1) key, or a TF2 key with no object graph."""
    parts = key[:-len(_ATTR_SUFFIX)].split("/") if key.endswith(_ATTR_SUFFIX) else key.split("/")
    last = parts[-1]
    if ".OPTIMIZER_SLOT" in parts:
        var = parts[:parts.index(".OPTIMIZER_SLOT")]
        info = _by_path(var, "", None)
        info["role"] = "optimizer"
    elif _TF1_SLOT.match(last) and len(parts) > 1:
        info = _by_path(parts[:-1], "", None)
        info["role"] = "optimizer"
    elif last in _TF1_OPTIMIZER_VARS or "optimizer" in (p.lower() for p in parts[:-1]):
        info = _by_path(parts, "", None)
        info["role"] = "counter" if last.lstrip("_").lower() in _COUNTERS else "optimizer"
    else:
        info = _by_path(parts, "", None)
    info["readable_name"] = "/".join(parts)
    return info


def layout_for(meta: dict, ndim: int) -> str | None:
    """Axis letters of a stored TF weight, from its (original variable's) name and rank."""
    name = meta.pop("_layout_name", "")
    if name == "depthwise" or name == "depthwise_kernel":
        return "HWCM" if ndim == 4 else None
    if name in ("kernel", "weights", "weight", "pointwise_kernel", "w") or name.endswith("kernel"):
        return {2: "IO", 3: "WIO", 4: "HWIO", 5: "DHWIO"}.get(ndim)
    return None
