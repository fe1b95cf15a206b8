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
