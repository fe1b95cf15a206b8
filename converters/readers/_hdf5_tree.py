"""An h5py file's groups and plain datasets from one pass over its links, without h5py per object.

h5py's `name in group` costs ~50 us, `group[name]` 20-50 us, opening a dataset ~50 us more; a
Keras file of 5,000 small arrays spends seconds there. `Tree` lists every link once (H5Lvisit,
~5 us a link) and decodes object headers itself (_hdf5_headers); `in`, `[]`, `keys()` of the nodes
it returns are dictionary lookups. Whatever it does not fully understand (soft links, objects
linked twice, version-2 headers, datasets that are not plain) is handed out as the h5py object,
so callers get the same answers either way, only slower.
"""
from __future__ import annotations

from collections import Counter

from . import _hdf5_headers as H


class Tree:
    """Links of an open h5py.File; `root()` is the node to start from (the File itself when the
    file's superblock is not the plain kind). `external` lists (path, target) of external links."""

    def __init__(self, h5py, h5, buf, base: int, stop_at_external: bool, before_h5py=lambda: None):
        self.h5, self.buf, self.base = h5, buf, base
        self._before_h5py = before_h5py  # runs once before any h5py object is handed out
        self.links: dict[str, int | None] = {}  # path -> object address (hard links), None otherwise
        self.children: dict[str, list[str]] = {"": []}
        self.external: list[tuple[str, str]] = []
        self._described: dict[int, object] = {}
        self._attrs: dict[str, object] = {}
        self._heaps: dict[int, dict] = {}
        hard, ext = h5py.h5l.TYPE_HARD, h5py.h5l.TYPE_EXTERNAL
        links, children = self.links, self.children

        def visit(raw: bytes, info):
            path = raw.decode("utf-8", "surrogateescape")
            if info.type == ext:
                filename, target = h5.id.links.get_val(raw)
                self.external.append((path, f"{filename.decode(errors='replace')}:{target.decode(errors='replace')}"))
                if stop_at_external:
                    return True
            links[path] = info.u if info.type == hard else None
            parent, _, leaf = path.rpartition("/")
            if parent in children:
                children[parent].append(leaf)
            else:
                children[parent] = [leaf]
            return None

        h5.id.links.visit(visit, info=True)
        # an object reached by two hard links: H5Lvisit lists its children under one path only
        self._shared = {a for a, n in Counter(a for a in links.values() if a is not None).items() if n > 1}
        self.fast = H.plain_superblock(buf, base)
        self._root_addr = h5py.h5o.get_info(h5.id).addr

    def attrs(self, path: str, messages: list | None):
        """The attributes of the group at `path`: decoded from its header, else h5py's."""
        found = self._attrs.get(path)
        if found is None:
            found = H.attributes(self.buf, self.base, messages, self._heaps) if messages is not None else None
            if found is None:
                found = self.h5py_object(path).attrs
            self._attrs[path] = found
        return found

    def h5py_object(self, path: str):
        """What h5py has at `path` (raises KeyError if nothing)."""
        if self._before_h5py is not None:
            self._before_h5py()
            self._before_h5py = None
        return self.h5["/" + path] if path else self.h5

    def root(self):
        root = H.describe(self.buf, self.base, self._root_addr) if self.fast else None
        return GroupNode(self, "", root.attributes) if isinstance(root, H.Group) else self.h5py_object("")

    def has(self, parent: str, key: str) -> bool:
        full = _join(parent, key)
        addr = self.links.get(full)
        if addr is not None:
            return True
        if full in self.links or "/" in key or key in ("", ".", ".."):  # soft/external, or a path
            if self._before_h5py is not None:
                self._before_h5py()
                self._before_h5py = None
            return ("/" + full if full else "/") in self.h5
        return False

    def node(self, parent: str, key: str):
        full = _join(parent, key)
        addr = self.links.get(full)
        if addr is None or addr in self._shared:
            return self.h5py_object(full)  # soft / external / absent: h5py resolves (or raises KeyError)
        kind = self._described.get(addr, False)
        if kind is False:
            kind = self._described[addr] = H.describe(self.buf, self.base, addr)
        if isinstance(kind, H.Plain):
            return DatasetNode(full, kind)
        if isinstance(kind, H.Group):
            return GroupNode(self, full, kind.attributes)
        return self.h5py_object(full)


def _join(parent: str, key: str) -> str:
    return f"{parent}/{key}" if parent else key


class GroupNode:
    """A group reached by hard links only; its attributes decoded from its header when they are
    the kinds Keras writes (strings, numbers), else h5py's."""

    __slots__ = ("_tree", "path", "_attributes")

    def __init__(self, tree: Tree, path: str, attributes: list | None):
        self._tree, self.path, self._attributes = tree, path, attributes

    @property
    def name(self) -> str:
        return "/" + self.path

    def keys(self) -> list[str]:
        return list(self._tree.children.get(self.path, ()))

    def __contains__(self, key: str) -> bool:
        return self._tree.has(self.path, key)

    def __getitem__(self, key: str):
        return self._tree.node(self.path, key)

    @property
    def attrs(self):
        return self._tree.attrs(self.path, self._attributes) if self._attributes != [] else {}

    def visititems(self, fn):
        return self._tree.h5py_object(self.path).visititems(fn)


class DatasetNode:
    """A plain dataset: contiguous, unfiltered, numeric, no attributes; its bytes at `offset`."""

    __slots__ = ("path", "shape", "dtype", "offset")
    attrs: dict = {}

    def __init__(self, path: str, plain: H.Plain):
        self.path, self.shape, self.dtype, self.offset = path, plain.shape, plain.dtype, plain.offset

    @property
    def name(self) -> str:
        return "/" + self.path
