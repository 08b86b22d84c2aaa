"""An extxyz file used as an append-only, crash-safe log of labelled structures.

Each frame is written with one ``write`` call followed by fsync, so a killed job leaves at most one
partial frame at the end; ``read_complete`` drops such a tail (truncating the file) before resuming.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import ase.io


def _complete_length(text: str) -> int:
    """Byte-free character length of the prefix of ``text`` made of complete extxyz frames."""
    lines = text.splitlines(keepends=True)
    pos = i = 0
    while i < len(lines):
        try:
            n = int(lines[i].strip())
        except ValueError:
            break
        frame = lines[i : i + n + 2]
        if len(frame) < n + 2 or not frame[-1].endswith("\n"):
            break
        pos += sum(len(line) for line in frame)
        i += n + 2
    return pos


def read_complete(path: str | Path) -> list:
    """All complete frames in ``path`` (ASE Atoms); a partial trailing frame is removed from the file."""
    path = Path(path)
    if not path.exists():
        return []
    text = path.read_text()
    keep = _complete_length(text)
    if keep < len(text):
        path.write_text(text[:keep])
    if keep == 0:
        return []
    return ase.io.read(path, index=":", format="extxyz")


def append_frame(path: str | Path, atoms) -> None:
    """Append one frame (with its calculator's energy/forces and ``atoms.info``) atomically enough to resume."""
    buffer = io.StringIO()
    ase.io.write(buffer, atoms, format="extxyz")
    with open(path, "a") as handle:
        handle.write(buffer.getvalue())
        handle.flush()
        os.fsync(handle.fileno())
