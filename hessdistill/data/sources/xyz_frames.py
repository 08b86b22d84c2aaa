"""xyz/extxyz files cut into frames before ASE parses them, so that a header's atom count is bounded by the file.

ASE reads a frame's atom count from its first line and then calls ``readline`` that many times, even past the end of
the file: a header claiming 10⁹ atoms keeps it busy for hours. Here a count is checked against the bytes left in the
file (every atom line takes at least ``MIN_ATOM_LINE_BYTES``) before a line of the frame is read, the frame's lines
are read (never past the end), and only a complete frame goes to ASE. Binary content, a missing or non-numeric count
and a frame cut short are reported with the file, the frame and the line.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO, NamedTuple

import ase.io

from hessdistill.data.structures import InvalidStructureError

MIN_ATOM_LINE_BYTES = 8  # "H 0 0 0\n": a symbol and three coordinates, separated, and the line's end
MAX_VEC_LINES = 3  # extxyz may follow a frame's atoms with up to three "VEC<i>" lattice-vector lines


class XYZFrame(NamedTuple):
    """One frame's text (count line, comment line, atom lines and any VEC lines), its index and first line (1-based)."""

    index: int
    line: int
    text: str


def _text(path: Path, raw: bytes, line: int) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidStructureError(f"{path}: line {line} holds byte {raw[exc.start]:#04x}, which is not text: a "
                                    f"binary file, not xyz") from exc


def xyz_frames(path: str | Path) -> Iterator[XYZFrame]:
    """Every frame of an xyz/extxyz file, read one at a time; InvalidStructureError naming the file, frame and line
    for a file with no frame, binary content, a count line that is not a count, or a count the file cannot hold."""
    path = Path(path)
    size = path.stat().st_size
    with path.open("rb") as f:
        yield from _frames(path, f, size)


def _frames(path: Path, f: BinaryIO, size: int) -> Iterator[XYZFrame]:
    index, line = 0, 1
    while True:
        header = f.readline()
        if not header.strip():  # end of the frames, as for ASE; anything after a blank line would be lost
            rest = f.read(4096)
            if rest.strip():
                raise InvalidStructureError(f"{path}: line {line} is blank, but frames follow it: remove the blank "
                                            f"line (readers stop at it)")
            if index == 0:
                raise InvalidStructureError(f"{path}: holds no structures (the file is {size} bytes of "
                                            f"{'nothing' if size == 0 else 'blank lines'})")
            return
        count = _text(path, header, line).strip()
        if not count.isdigit():
            if index == 0:
                raise InvalidStructureError(f"{path}: cannot be read by ASE as xyz/extxyz: line 1 should give a "
                                            f"number of atoms, but reads {count[:40]!r}")
            raise InvalidStructureError(f"{path}[frame {index}]: line {line} should give the frame's number of atoms, "
                                        f"but reads {count[:40]!r} (has frame {index - 1} more atom lines than its "
                                        f"count?)")
        n = int(count)
        left = size - f.tell()
        if n * MIN_ATOM_LINE_BYTES > left:
            raise InvalidStructureError(f"{path}[frame {index}]: line {line} gives {n} atoms, more than the "
                                        f"{left} bytes left in the file can hold: a damaged or truncated file")
        lines = [header]
        for _ in range(n + 1):
            lines.append(f.readline())
            if not lines[-1]:
                raise InvalidStructureError(f"{path}[frame {index}]: line {line} gives {n} atoms, but the file ends "
                                            f"after {max(len(lines) - 3, 0)} of them: a truncated file")
        for _ in range(MAX_VEC_LINES):
            start = f.tell()
            extra = f.readline()
            if not extra.lstrip().startswith(b"VEC"):
                f.seek(start)
                break
            lines.append(extra)
        yield XYZFrame(index, line, _text(path, b"".join(lines), line))
        index, line = index + 1, line + len(lines)


def parse_frame(path: Path, frame: XYZFrame, format: str):
    """ASE Atoms of one frame's text; InvalidStructureError naming the file, frame and line for what ASE refuses
    (an unknown element, a non-numeric coordinate, a malformed comment line)."""
    try:
        return ase.io.read(io.StringIO(frame.text), format=format)
    except KeyError as exc:  # the element symbol's lookup in ase.data
        raise InvalidStructureError(f"{path}[frame {frame.index}] (from line {frame.line}): unknown element symbol "
                                    f"{exc.args[0]!r}") from exc
    except Exception as exc:  # ASE and numpy raise many types for malformed frames
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InvalidStructureError(f"{path}[frame {frame.index}] (from line {frame.line}): not a valid {format} "
                                    f"frame ({reason})") from exc
