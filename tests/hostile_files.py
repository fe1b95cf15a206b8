"""Hostile files shared by the reader and security tests (not a test module)."""
from __future__ import annotations

import os

import torch


class RunsCommand:
    """Unpickling it would run `touch <marker>`: the marker's existence shows code ran."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def pth_that_runs_command(tmp_path, zip_format: bool, marker_name: str = "pwned"):
    """(evil.pth, marker): a torch.save'd dict whose pickle calls os.system, in either container."""
    marker = tmp_path / marker_name
    path = tmp_path / "evil.pth"
    torch.save({"w": torch.ones(2), "payload": RunsCommand(marker)}, path, _use_new_zipfile_serialization=zip_format)
    return path, marker


# ------------------------------------------------------------------- torch zip archives, re-zipped / patched

def rezip(src, dst, compression, compresslevel=None):
    """Copy a torch.save archive member by member with another writer (zipfile), e.g. deflated:
    what re-zipping with a generic tool produces (records no longer 64-byte aligned or stored)."""
    import zipfile

    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", compression, compresslevel=compresslevel) as zout:
        for info in zin.infolist():
            zout.writestr(info.filename, zin.read(info))
    return dst


def patch_zip_sizes(path, member_suffix: str, file_size=None, compress_size=None):
    """Rewrite a member's size fields, in its local header and the central directory, to lie."""
    import struct
    import zipfile

    data = bytearray(open(path, "rb").read())
    with zipfile.ZipFile(path) as zf:
        info = next(i for i in zf.infolist() if i.filename.endswith(member_suffix))
    name, central = info.filename.encode(), -1
    while True:  # the central directory entry naming exactly this member
        central = data.index(b"PK\x01\x02", central + 1)
        n = struct.unpack_from("<H", data, central + 28)[0]
        if data[central + 46:central + 46 + n] == name:
            break
    for fields in (info.header_offset + 18, central + 20):
        old_c, old_u = struct.unpack_from("<II", data, fields)
        struct.pack_into("<II", data, fields, old_c if compress_size is None else compress_size,
                         old_u if file_size is None else file_size)
    open(path, "wb").write(bytes(data))
    return path
