"""Loading a deployed model file (metatomic ``.pt``) handed to us by someone else, as data.

A metatomic file is a zip archive: TorchScript code (torch operators only), the weights, and JSON metadata whose
``extra/extensions`` and ``extra/extensions-deps`` entries list shared libraries that ``metatomic``'s own loader
opens — native code that runs the moment it is loaded (a library constructor needs no call). The sha256 listed with
each library protects nothing: whoever edits the file can compute it. So before anything is loaded, the archive is
read here with ``zipfile``:

- every entry's CRC-32 (written by torch for every file of the archive) is checked: a truncated, damaged or
  bit-flipped file is refused with the entry named. This catches accidents, not attackers, who can recompute the
  CRCs as easily as the sha256;
- every listed library must be either already loaded in this process (this package's own imports load the ones
  its students use, e.g. ``vesin_torch``; nothing is loaded again) or allowed by the user by name or path
  (``allow_extensions``); only then, and only those, are loaded — by this module, never from a path the user did
  not vouch for by allowing the name or giving the path.

metatomic's ``load_model_extensions`` is not called at all; the file is then checked by ``check_atomistic_model``
and loaded with ``torch.jit.load``, and every floating-point weight must be finite.
"""

from __future__ import annotations

import ctypes
import json
import os
import site
import sys
import zipfile
from collections.abc import Iterable
from pathlib import Path

import torch

from hessdistill.errors import HessdistillError

LIBRARY_SUFFIXES = (".so", ".dylib", ".dll")
LIBRARY_LISTS = ("extensions-deps", "extensions")  # metatomic's metadata entries naming shared libraries, load order


def import_metatomic():
    """Import ``metatomic.torch`` (and ``metatensor.torch``). metatensor's operations compile TorchScript at import,
    which fails once torch_geometric has replaced ``torch.index_select`` by a Python wrapper (its HashTensor
    support), so they are imported with the original in place."""
    patched = torch.index_select
    torch.index_select = getattr(sys.modules.get("torch_geometric.hash_tensor"), "_old_index_select", patched)
    try:
        import metatensor.torch  # noqa: F401
        import metatomic.torch
    finally:
        torch.index_select = patched
    return metatomic.torch


class DeployedFileError(HessdistillError, ValueError):
    """A deployed model file that is refused; the message names the file and what is wrong."""


def library_name(path: str | Path) -> str:
    """A shared library's name as metatomic records it: the file name without ``lib`` and ``.so``/``.dylib``/``.dll``
    (``…/libvesin_torch.so`` → ``vesin_torch``)."""
    name = Path(path).name
    name = name[3:] if name.startswith("lib") else name
    for suffix in LIBRARY_SUFFIXES:
        name = name.removesuffix(suffix)
    return name


def _metadata_entries(path: Path) -> dict[str, bytes]:
    """The archive's ``<root>/extra/*`` metadata entries by name, after every entry has been read through and checked
    against its CRC-32 (``zipfile`` raises on a mismatch)."""
    metadata = {}
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
            if len(set(names)) != len(names) or len({name.split("/")[0] for name in names}) != 1:
                raise DeployedFileError(f"{path}: an archive with duplicate entries or several roots, which readers "
                                        f"may take differently: not a file torch wrote")
            for info in archive.infolist():
                chunks = []
                try:
                    with archive.open(info) as entry:
                        while chunk := entry.read(1 << 24):
                            if info.filename.count("/") == 2 and "/extra/" in info.filename:
                                chunks.append(chunk)
                except (zipfile.BadZipFile, OSError, EOFError, ValueError) as exc:
                    raise DeployedFileError(f"{path}: entry {info.filename} is damaged ({exc}); the file changed "
                                            f"after it was written: copy or deploy it again") from exc
                if chunks:
                    metadata[info.filename] = b"".join(chunks)
    except (zipfile.BadZipFile, EOFError) as exc:
        raise DeployedFileError(f"{path}: not a complete deployed model file, i.e. a zip archive ({exc}); it is "
                                f"truncated or damaged: copy or deploy it again") from exc
    return metadata


def listed_libraries(path: Path, entries: dict[str, bytes]) -> list[tuple[str, str, str]]:
    """(list, name, path) of every shared library the file's metadata lists, in metatomic's load order."""
    found = []
    for kind in LIBRARY_LISTS:
        raw = next((data for name, data in entries.items() if name.endswith(f"/extra/{kind}")), None)
        if raw is None:
            raise DeployedFileError(f"{path}: no extra/{kind} entry: not a metatomic model file")
        try:
            items = json.loads(raw)
        except ValueError as exc:
            raise DeployedFileError(f"{path}: extra/{kind} is not JSON ({exc})") from exc
        if not isinstance(items, list) or not all(isinstance(item, dict) and isinstance(item.get("name"), str)
                                                  and isinstance(item.get("path"), str) for item in items):
            raise DeployedFileError(f"{path}: extra/{kind} is not a list of {{name, path}} records")
        found += [(kind, item["name"], item["path"]) for item in items]
    return found


def _installed(relative: str) -> Path | None:
    """A library path as metatomic records it (relative to the Python prefix it was installed in), found here."""
    if os.path.isabs(relative):
        return Path(relative) if Path(relative).is_file() else None
    prefixes = [*site.getsitepackages(), *([site.getusersitepackages()] if site.ENABLE_USER_SITE else []), sys.prefix]
    return next((Path(p, relative) for p in prefixes if Path(p, relative).is_file()), None)


def _is_path(allowed: str) -> bool:
    """An ``allow_extensions`` entry that is a library file (a path or a file name), not a bare library name."""
    return os.sep in allowed or allowed.endswith(LIBRARY_SUFFIXES)


def libraries_to_load(path: Path, listed: list[tuple[str, str, str]],
                      allow_extensions: Iterable[str | Path] = ()) -> list[tuple[str, Path]]:
    """(list, file) of the listed libraries to load, in order; DeployedFileError naming the first library that is
    neither loaded in this process already nor allowed. An allowed name loads the file's path for it; an allowed
    path (a file) loads that file in place of any listed library of the same name."""
    loaded = {library_name(p) for p in torch.ops.loaded_libraries}
    allowed = [str(a) for a in allow_extensions]
    files = {library_name(a): Path(a) for a in allowed if _is_path(a)}
    missing = [str(f) for f in files.values() if not f.is_file()]
    if missing:
        raise FileNotFoundError(f"allow_extensions: no library file at {', '.join(missing)}")
    names = {a for a in allowed if not _is_path(a)}
    out = []
    for kind, name, recorded in listed:
        if name in loaded:
            continue
        if name not in names and name not in files:
            raise DeployedFileError(
                f"{path}: lists the shared library {name!r} ({recorded}) in extra/{kind}, native code that would run "
                f"on loading; refused. Load it only if you trust it: allow_extensions=[{name!r}] (or the path of "
                f"your own copy of the library)")
        where = files.get(name) or _installed(recorded)
        if where is None:
            raise DeployedFileError(f"{path}: the allowed library {name!r} is not found at {recorded}; pass the path "
                                    f"of the library in allow_extensions")
        out.append((kind, where))
    return out


def check_finite_weights(path: Path, module) -> None:
    """DeployedFileError naming the first parameter or buffer of ``module`` with a NaN or inf."""
    for name, tensor in [*module.named_parameters(), *module.named_buffers()]:
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            bad = int((~torch.isfinite(tensor)).sum())
            raise DeployedFileError(f"{path}: weight {name} has {bad} non-finite value(s) (NaN or inf) of "
                                    f"{tensor.numel()}; the file is damaged or its model diverged")


def load_deployed(path: str | Path, allow_extensions: Iterable[str | Path] = ()):
    """The ``metatomic.torch.AtomisticModel`` in the file at ``path``, on CPU, after the checks above.

    allow_extensions: names (``vesin_torch``) or paths of shared libraries the file lists that you trust to run in
    this process; any other listed library not already loaded refuses the file (DeployedFileError)."""
    import vesin_torch  # noqa: F401  (loads libvesin_torch, which files deployed by this package list)

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"deployed model not found: {path}")
    entries = _metadata_entries(path)
    mta = import_metatomic()  # metatensor's and metatomic's own libraries, from the installed packages
    for kind, library in libraries_to_load(path, listed_libraries(path, entries), allow_extensions):
        if kind == "extensions":
            torch.ops.load_library(str(library))
        else:  # a plain dependency of an extension, loaded first
            ctypes.CDLL(str(library), mode=ctypes.RTLD_GLOBAL)
    try:
        mta.check_atomistic_model(str(path))
        scripted = torch.jit.load(str(path), map_location="cpu")
    except RuntimeError as exc:
        reason = next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
        raise DeployedFileError(f"{path}: not a loadable metatomic model ({reason})") from exc
    check_finite_weights(path, scripted)
    return mta.AtomisticModel(scripted, scripted.metadata(), scripted.capabilities())
