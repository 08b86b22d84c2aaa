"""The elements a student was trained on, and the one check every path that evaluates a student runs.

A student's energy of an element it never saw is a silent guess: its reference energy is 0 and its embedding was never
trained. So a student records its training elements (``ForceField.trained_elements``, (119,) bool, set with its
energy statistics from the training split) and the calculator, ``predict``, ``evaluate``, the torch-sim adapter and
the deployed file refuse a structure holding any other element — unless the user opts in (``allow_unseen_elements``).
Checkpoints written before the buffer existed derive it from their non-zero reference energies: the elements the
training split's energy fit saw (``add_legacy_elements``).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from ase.data import chemical_symbols
from torch import Tensor

from hessdistill.errors import HessdistillError

N_ELEMENTS = 119  # atomic numbers 0..118
OPT_IN = "allow_unseen_elements"


class UnseenElementError(HessdistillError, ValueError):
    """A structure with an element the student was not trained on; the message names the element(s), the structure
    and the student's file, in one line."""


def every_element() -> Tensor:
    """(119,) bool: atomic numbers 1–118 (what a student that records no training elements is assumed to know)."""
    known = torch.ones(N_ELEMENTS, dtype=torch.bool)
    known[0] = False
    return known


def elements_of(atom_refs: Tensor) -> Tensor:
    """(119,) bool: the elements with a non-zero reference energy (atom_refs (119,) eV): those of the training split,
    whose least-squares fit gives every present element a coefficient and every absent one 0; every element when
    none is non-zero (a student whose statistics were never set)."""
    known = atom_refs.detach().cpu() != 0
    known[0] = False
    return known if bool(known.any()) else every_element()


def symbols(known: Tensor | list[int]) -> str:
    """``H, C, N, O`` of a (119,) bool mask or a list of atomic numbers."""
    numbers = torch.nonzero(known).flatten().tolist() if torch.is_tensor(known) else list(known)
    return ", ".join(chemical_symbols[z] for z in numbers)


def add_legacy_elements(weights: dict[str, Tensor], prefix: str = "") -> Tensor | None:
    """Give ``weights`` (name → tensor: a student's, its names after ``prefix``) the ``trained_elements`` a checkpoint
    written before the buffer existed lacks, from its reference energies (``elements_of``); returns the mask it added,
    or None when the weights already have one (or have no reference energies to derive it from)."""
    key, refs = f"{prefix}trained_elements", weights.get(f"{prefix}atom_refs")
    if key in weights or refs is None or refs.shape != (N_ELEMENTS,):
        return None
    weights[key] = elements_of(refs)
    return weights[key]


def unseen_elements(model, z: Tensor) -> Tensor:
    """(N,) bool: the atoms of atomic numbers z (N,) that ``model`` was not trained on (all False for a model that
    records no ``trained_elements``: a teacher checks its own elements)."""
    known = getattr(model, "trained_elements", None)
    z = torch.as_tensor(z)
    if known is None:
        return torch.zeros(z.shape, dtype=torch.bool, device=z.device)
    return ~known.to(z.device)[z.long().clamp(0, N_ELEMENTS - 1)] | (z < 0) | (z >= N_ELEMENTS)


def check_elements(model, z: Tensor, where: str | Callable[[Tensor], str], allow: bool = False) -> None:
    """Raise UnseenElementError unless every atomic number of z (N,) is one ``model`` was trained on, or the user opted
    in (``allow``, or ``model.allow_unseen_elements``). where: the structure(s), as text or as a function of the
    (N,) bool mask of the unseen atoms (to name only the structures holding them). The model's ``source`` (its file)
    is named when it has one."""
    if allow or getattr(model, OPT_IN, False):
        return
    unseen = unseen_elements(model, z)
    if not bool(unseen.any()):
        return
    found = sorted(set(torch.as_tensor(z)[unseen].tolist()))
    names = ", ".join(f"{chemical_symbols[n] if 0 < n < N_ELEMENTS else '?'} (Z={n})" for n in found)
    source = getattr(model, "source", None)
    student = f"the student of {source}" if source else "the student"
    place = where(unseen) if callable(where) else where
    raise UnseenElementError(
        f"{place}: element{'s' if len(found) > 1 else ''} {names} not among those {student} was trained on "
        f"({symbols(model.trained_elements)}): its energy and forces there would be guesses; pass "
        f"{OPT_IN}=True (on the command line {OPT_IN}=true) to compute them anyway")
