"""Subset selection: composable predicates on Structure records, applied between a reader and the store.

A subset config lists selectors under ``select`` (each a Hydra ``_target_`` with arguments); a structure is kept
when every selector accepts it. ``AnyOf`` and ``Not`` compose them further, e.g. "contains I or Br, but not
charged". Selectors that read metadata (``InfoMatches``, ``InfoRange``) reject structures lacking the key.
``Selection`` applies them to a stream, as a reader yields structures, so a subset of a file larger than memory is
cut without holding the file.
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence

import numpy as np
from ase.data import atomic_numbers, chemical_symbols
from ase.formula import Formula as AseFormula

from hessdistill.data.structures import Structure

log = logging.getLogger(__name__)

Selector = Callable[[Structure], bool]


def _atomic_numbers(elements: Iterable[str | int]) -> frozenset[int]:
    out = set()
    for e in elements:
        if isinstance(e, (int, np.integer)):
            out.add(int(e))
        elif e in atomic_numbers and e != "X":
            out.add(atomic_numbers[e])
        else:
            raise ValueError(f"unknown element {e!r}")
    return frozenset(out)


class ContainsElements:
    """Structures containing any (``mode="any"``) or all (``"all"``) of ``elements`` (symbols or numbers)."""

    def __init__(self, elements: Sequence[str | int], mode: str = "any") -> None:
        if mode not in ("any", "all"):
            raise ValueError(f"mode must be 'any' or 'all', got {mode!r}")
        self.z, self.mode = _atomic_numbers(elements), mode

    def __call__(self, s: Structure) -> bool:
        present = set(s.z.tolist())
        return bool(self.z & present) if self.mode == "any" else self.z <= present

    def __repr__(self) -> str:
        return f"ContainsElements({sorted(chemical_symbols[z] for z in self.z)}, {self.mode})"


class WithinElements:
    """Structures made only of ``elements`` (composition within an element set, e.g. H C N O S Cl)."""

    def __init__(self, elements: Sequence[str | int]) -> None:
        self.z = _atomic_numbers(elements)

    def __call__(self, s: Structure) -> bool:
        return set(s.z.tolist()) <= self.z

    def __repr__(self) -> str:
        return f"WithinElements({sorted(chemical_symbols[z] for z in self.z)})"


class AtomCount:
    """Structures with min_atoms ≤ N ≤ max_atoms (either bound may be None)."""

    def __init__(self, min_atoms: int | None = None, max_atoms: int | None = None) -> None:
        self.min_atoms, self.max_atoms = min_atoms, max_atoms

    def __call__(self, s: Structure) -> bool:
        n = s.n_atoms
        return (self.min_atoms is None or n >= self.min_atoms) and (self.max_atoms is None or n <= self.max_atoms)

    def __repr__(self) -> str:
        return f"AtomCount({self.min_atoms}..{self.max_atoms})"


class Formula:
    """Structures whose composition equals one of ``formulas`` (any ASE-readable formula: "C2H6OS", "CH3SOCH3").

    reduced: compare empirical formulas (per formula unit), so a periodic cell of 2 × SrTiO3 matches "SrTiO3".
    """

    def __init__(self, formulas: Sequence[str], reduced: bool = False) -> None:
        self.reduced = reduced
        self.keys = {self._key(AseFormula(f).count()) for f in formulas}
        self.formulas = list(formulas)

    def _key(self, count: dict[str, int]) -> tuple:
        count = {k: v for k, v in count.items() if v}
        if self.reduced and count:
            g = np.gcd.reduce(list(count.values()))
            count = {k: v // g for k, v in count.items()}
        return tuple(sorted(count.items()))

    def __call__(self, s: Structure) -> bool:
        return self._key(Counter(chemical_symbols[z] for z in s.z.tolist())) in self.keys

    def __repr__(self) -> str:
        return f"Formula({self.formulas}, reduced={self.reduced})"


class InfoMatches:
    """Structures whose metadata ``info[key]`` matches one of the regular expressions ``patterns`` (``re.search``),
    e.g. key "subset", patterns ["DES Monomers"] for SPICE's monomer subset whatever its version suffix."""

    def __init__(self, key: str, patterns: Sequence[str]) -> None:
        self.key, self.patterns = key, [re.compile(p) for p in patterns]

    def __call__(self, s: Structure) -> bool:
        value = s.info.get(self.key)
        return value is not None and any(p.search(str(value)) for p in self.patterns)

    def __repr__(self) -> str:
        return f"InfoMatches({self.key}, {[p.pattern for p in self.patterns]})"


class InfoRange:
    """Structures with a numeric ``info[key]`` in [min_value, max_value] (either bound may be None),
    e.g. MPtrj's ``bandgap`` (eV) ≥ 0.005 for the paper's "band gap ≥ 5 meV" subset."""

    def __init__(self, key: str, min_value: float | None = None, max_value: float | None = None) -> None:
        self.key, self.min_value, self.max_value = key, min_value, max_value

    def __call__(self, s: Structure) -> bool:
        value = s.info.get(self.key)
        if value is None:
            return False
        value = float(value)
        return ((self.min_value is None or value >= self.min_value)
                and (self.max_value is None or value <= self.max_value))

    def __repr__(self) -> str:
        return f"InfoRange({self.key}, {self.min_value}..{self.max_value})"


class SpaceGroup:
    """Periodic structures whose space group (spglib, tolerance ``symprec`` Å) is one of ``groups``, given as
    international symbols ("Pm-3m") or numbers (221). Non-periodic structures are rejected."""

    def __init__(self, groups: Sequence[str | int], symprec: float = 0.1) -> None:
        self.numbers = {int(g) for g in groups if isinstance(g, (int, np.integer))}
        self.symbols = {str(g).replace(" ", "") for g in groups if not isinstance(g, (int, np.integer))}
        self.symprec = symprec

    def space_group(self, s: Structure) -> tuple[str, int] | None:
        """(international symbol, number) of ``s``, or None when spglib finds none."""
        try:
            import spglib
        except ImportError as exc:
            raise ImportError("the SpaceGroup selector needs spglib: pip install 'hessdistill[materials]'") from exc
        data = spglib.get_symmetry_dataset((s.cell, s.positions @ np.linalg.inv(s.cell), s.z), symprec=self.symprec)
        return None if data is None else (data.international.replace(" ", ""), int(data.number))

    def __call__(self, s: Structure) -> bool:
        if not s.pbc.all() or abs(np.linalg.det(s.cell)) < 1e-9:
            return False
        found = self.space_group(s)
        return found is not None and (found[0] in self.symbols or found[1] in self.numbers)

    def __repr__(self) -> str:
        return f"SpaceGroup({sorted(self.symbols) + sorted(self.numbers)}, symprec={self.symprec})"


class AnyOf:
    """Structures accepted by at least one of ``selectors``."""

    def __init__(self, selectors: Sequence[Selector]) -> None:
        self.selectors = list(selectors)

    def __call__(self, s: Structure) -> bool:
        return any(sel(s) for sel in self.selectors)

    def __repr__(self) -> str:
        return f"AnyOf({self.selectors})"


class Not:
    """Structures rejected by ``selector``."""

    def __init__(self, selector: Selector) -> None:
        self.selector = selector

    def __call__(self, s: Structure) -> bool:
        return not self.selector(s)

    def __repr__(self) -> str:
        return f"Not({self.selector})"


class Selection:
    """The structures every selector accepts, streamed in their original order; counts what each selector saw and
    kept (a structure meets the selectors in order and stops at the first that rejects it)."""

    def __init__(self, selectors: Sequence[Selector]) -> None:
        self.selectors = list(selectors)
        self.seen = 0
        self.kept = [0] * len(self.selectors)

    def __call__(self, structures: Iterable[Structure]) -> Iterator[Structure]:
        for s in structures:
            self.seen += 1
            for k, sel in enumerate(self.selectors):
                if not sel(s):
                    break
                self.kept[k] += 1
            else:
                yield s

    def log_counts(self) -> None:
        """Log, per selector, how many structures it kept of those it saw."""
        before = self.seen
        for sel, kept in zip(self.selectors, self.kept):
            log.info("%r kept %d of %d structures", sel, kept, before)
            before = kept


def select(structures: Iterable[Structure], selectors: Sequence[Selector]) -> list[Structure]:
    """The structures every selector accepts, in their original order, as a list; logs how many each selector kept."""
    selection = Selection(selectors)
    kept = list(selection(structures))
    selection.log_counts()
    return kept
