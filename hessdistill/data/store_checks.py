"""A store's structure checked before anything is read through it: a hostile or damaged file gives one StoreError
naming the object, never a read outside the file, a huge allocation or a read past a dataset's end.

``check_self_contained`` runs on every open of a store file, before anything else is read: it walks the file's links
(a few dozen: stores have a small fixed set of groups) and the creation properties of its datasets, and reads no
data. ``check_structures`` runs when a store is opened, ``check_teacher`` when a teacher group is first used; both
read only dataset shapes and the index arrays ((M+1,) offsets, (M, k) row indices), whose shapes are checked first.
"""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np

from hessdistill.data.store_files import StoreError

LAYOUTS = ("full", "upper", "rows")
STRUCTURES = ("z", "positions", "offsets", "cell", "pbc", "energy", "forces", "info")
TEACHER = ("energy", "forces", "hessian", "hessian_offsets", "asymmetry", "done")
DAMAGED = "the file is damaged or was not written by hessdistill; rebuild it with hessdistill-precompute"
MAX_VALUES = 2**62  # Hessian values a store may index (int64 offsets, with room to sum them)
OUTSIDE = "a store holds all its data itself and never reads outside its file"
# HDF5 filters stores are written with (compression: gzip or lzf after shuffle); any other needs a plugin, which is
# native code found on the machine: a store never makes HDF5 look for one
FILTERS = {h5py.h5z.FILTER_DEFLATE: "deflate", h5py.h5z.FILTER_SHUFFLE: "shuffle",
           h5py.h5z.FILTER_FLETCHER32: "fletcher32", 32000: "lzf"}


def check_self_contained(path: Path, f: h5py.File) -> None:
    """StoreError naming the object unless every object of ``f`` lives in it: no external or soft links (stores
    write neither; external links are never followed by the walk), no virtual datasets (whose data come from other
    files, or a fill value where those are missing), no external raw storage (a dataset whose bytes are another
    file, e.g. /etc/passwd) and no filters but ``FILTERS``. Reads link and dataset headers only."""
    problems = []

    def visit(name: str, link) -> bool | None:  # raising inside h5py's walk crashes it: a true value stops it
        try:
            problem = _outside(path, f, name, link)
        except Exception as exc:  # noqa: BLE001 (any failure to inspect an object is the store's problem)
            problem = f"{path}: /{name} cannot be inspected ({' '.join(str(exc).split())}); {DAMAGED}"
        if problem is not None:
            problems.append(problem)
            return True
        return None

    f.visititems_links(visit)
    if problems:
        raise StoreError(problems[0])


def _outside(path: Path, f: h5py.File, name: str, link) -> str | None:
    """What makes the object ``name`` (reached by ``link``) read outside the store, as a message; None if nothing."""
    where = f"{path}: /{name}"
    if isinstance(link, h5py.ExternalLink):
        return f"{where} is an external link to {link.filename}:{link.path}; {OUTSIDE}"
    if isinstance(link, h5py.SoftLink):
        return f"{where} is a soft link to {link.path}; stores have no links; {DAMAGED}"
    if not isinstance(link, h5py.HardLink):
        return f"{where} is a link of type {type(link).__name__}; {OUTSIDE}"
    data = f[name]
    if not isinstance(data, h5py.Dataset):
        return None
    if data.is_virtual:
        sources = sorted({source.file_name for source in data.virtual_sources()})
        return f"{where} is a virtual dataset (its data would come from {', '.join(sources)}); {OUTSIDE}"
    if data.external:
        return f"{where} keeps its data in {data.external[0][0]!r} (external raw storage); {OUTSIDE}"
    plist = data.id.get_create_plist()
    for k in range(plist.get_nfilters()):
        code, *_, filter_name = plist.get_filter(k)
        if code not in FILTERS:
            return (f"{where} uses the HDF5 filter {code} ({filter_name.decode(errors='replace')}), which would load "
                    f"a plugin; stores are written with {sorted(FILTERS.values())} only; {DAMAGED}")
    return None


def hessian_sizes(n_atoms: np.ndarray, layout: str, rows_per_structure: int | None = None) -> np.ndarray:
    """Stored Hessian values per structure (M,) int64 for ``layout``: full (3N)², upper 3N(3N+1)/2, rows k·3N."""
    n = 3 * np.asarray(n_atoms, dtype=np.int64)
    if layout == "full":
        return n * n
    return n * (n + 1) // 2 if layout == "upper" else (rows_per_structure or 0) * n


def _require_shape(path: Path, data: h5py.Dataset, shape: tuple, meaning: str) -> None:
    if data.shape != shape:
        raise StoreError(f"{path}: {data.name} has shape {data.shape}, expected {shape} ({meaning}); {DAMAGED}")


def _require_index(path: Path, data: h5py.Dataset) -> np.ndarray:
    if data.dtype.kind not in "iu":
        raise StoreError(f"{path}: {data.name} holds {data.dtype}, not integers; {DAMAGED}")
    return data[:].astype(np.int64)


def _require_datasets(path: Path, group: h5py.Group, names: tuple[str, ...]) -> None:
    missing = [name for name in names if not isinstance(group.get(name), h5py.Dataset)]
    if missing:
        raise StoreError(f"{path}: {group.name} lacks {missing}; {DAMAGED}")


def check_structures(path: Path, f: h5py.File) -> np.ndarray:
    """The store's structure offsets (M+1,) int64, after checking them and the /structures datasets' shapes:
    offsets start at 0, every structure has at least one atom, they end at A, the per-atom datasets' length, and
    the structures' full Hessians hold fewer than ``MAX_VALUES`` values (so no Hessian offset overflows)."""
    if not isinstance(f.get("structures"), h5py.Group):
        raise StoreError(f"{path} has no /structures group; {DAMAGED}")
    g = f["structures"]
    _require_datasets(path, g, STRUCTURES)
    if g["energy"].ndim != 1:
        raise StoreError(f"{path}: {g['energy'].name} has shape {g['energy'].shape}, expected (M,); {DAMAGED}")
    m = g["energy"].shape[0]
    _require_shape(path, g["offsets"], (m + 1,), f"M + 1 for M = {m} structures in /structures/energy")
    offsets = _require_index(path, g["offsets"])
    counts = np.diff(offsets)
    if offsets[0] != 0 or (counts < 1).any():
        bad = 0 if offsets[0] != 0 else int(np.flatnonzero(counts < 1)[0]) + 1
        raise StoreError(f"{path}: /structures/offsets[{bad}] = {offsets[bad]} breaks the rule offsets[0] = 0 and "
                         f"at least one atom per structure; {DAMAGED}")
    values = float(np.square(3.0 * counts).sum())
    if values >= MAX_VALUES:
        raise StoreError(f"{path}: /structures/offsets claim structures of up to {counts.max()} atoms, whose Hessians "
                         f"would hold {values:.3g} values (more than 2^62); {DAMAGED}")
    a = int(offsets[-1])
    for name, shape in (("z", (a,)), ("positions", (a, 3)), ("forces", (a, 3)), ("cell", (m, 3, 3)),
                        ("pbc", (m, 3)), ("info", (m,))):
        _require_shape(path, g[name], shape, f"/structures/offsets claim {m} structures of {a} atoms in all")
    return offsets


def check_teacher(path: Path, g: h5py.Group, offsets: np.ndarray) -> None:
    """Check a teacher group against the store's structure ``offsets`` (M+1,): its layout attributes, the shapes of
    its datasets, its ``hessian_offsets`` against the layout's block sizes and the Hessian's length, and (layout
    "rows") its row indices against each structure's 3N."""
    layout, k = g.attrs.get("hessian_layout"), g.attrs.get("rows_per_structure")
    if layout not in LAYOUTS or (layout == "rows" and not (isinstance(k, (int, np.integer)) and k >= 1)):
        raise StoreError(f"{path}: {g.name} has Hessian layout {layout!r} with rows_per_structure {k!r}; "
                         f"expected one of {LAYOUTS} (rows: k >= 1); {DAMAGED}")
    _require_datasets(path, g, TEACHER + (("hessian_row_index",) if layout == "rows" else ()))
    m, a = len(offsets) - 1, int(offsets[-1])
    claim = f"the store holds {m} structures of {a} atoms in all"
    for name, shape in (("energy", (m,)), ("forces", (a, 3)), ("asymmetry", (m,)), ("done", (m,)),
                        ("hessian_offsets", (m + 1,))):
        _require_shape(path, g[name], shape, claim)
    if "node_features" in g and (g["node_features"].ndim != 2 or g["node_features"].shape[0] != a):
        raise StoreError(f"{path}: {g['node_features'].name} has shape {g['node_features'].shape}, expected "
                         f"({a}, F) ({claim}); {DAMAGED}")
    counts = np.diff(offsets)
    hoff = _require_index(path, g["hessian_offsets"])
    expected = np.concatenate([[0], np.cumsum(hessian_sizes(counts, layout, k))])
    if not np.array_equal(hoff, expected):
        i = int(np.flatnonzero(hoff != expected)[0])
        raise StoreError(f"{path}: {g.name}/hessian_offsets[{i}] = {hoff[i]}, expected {expected[i]} for layout "
                         f"{layout!r} and the structures' atom counts; {DAMAGED}")
    if g["hessian"].shape != (int(hoff[-1]),):
        raise StoreError(f"{path}: {g.name}/hessian has shape {g['hessian'].shape}, expected ({int(hoff[-1])},) "
                         f"(the end of its hessian_offsets); {DAMAGED}")
    if layout == "rows":
        _require_shape(path, g["hessian_row_index"], (m, int(k)), f"{claim}, {k} rows each")
        rows = _require_index(path, g["hessian_row_index"])
        bad = (rows < 0) | (rows >= 3 * counts[:, None])
        if bad.any():
            i = int(np.flatnonzero(bad.any(axis=1))[0])
            raise StoreError(f"{path}: {g.name}/hessian_row_index[{i}] = {rows[i].tolist()} names rows outside "
                             f"0..{3 * counts[i] - 1} of structure {i}; {DAMAGED}")
