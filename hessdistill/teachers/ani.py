"""ANI ensembles (torchani) as teachers, loaded from a NeuroChem ``.info`` file.

ANI-1x and ANI-1ccx ship inside the torchani==2.0 wheel; ANI-2x (H C N O S F Cl) loads from our cache, where its
published resources are downloaded on first use (``teachers.weights.ani_info_file``), or from a local ``.info``
file. Energies are converted from Hartree to eV.
"""

from __future__ import annotations

import warnings

import torch
from ase.units import Hartree
from torch import Tensor

from hessdistill.teachers.base import AutogradTeacher
from hessdistill.teachers.weights import ani_info_file

LEVEL = {"ani1x": "wB97X/6-31G(d)", "ani2x": "wB97X/6-31G(d)", "ani1ccx": "CCSD(T)/CBS (transfer learned)"}


class ANITeacher(AutogradTeacher):
    """An ANI ensemble. model: ani1x, ani1ccx or ani2x; info_file: a NeuroChem .info file (None: ANI-1x/1ccx from
    the torchani wheel, ANI-2x from the cache, downloaded there if missing); name: store label."""

    def __init__(self, model: str = "ani1x", info_file: str | None = None, ensemble_size: int | None = None,
                 dtype: str = "float64", name: str | None = None) -> None:
        super().__init__()
        with warnings.catch_warnings():  # torchani 2.0 imports pkg_resources (needs setuptools<81), which warns
            warnings.filterwarnings("ignore", message="pkg_resources is deprecated")
            import torchani
            from torchani import neurochem

        info = ani_info_file(model, info_file)
        lines = [line.strip() for line in info.read_text().splitlines() if line.strip()][:4]
        const_file, sae_file, prefix, size = lines
        root = info.parent
        consts = neurochem.Constants(str(root / const_file))
        self.name = name or model
        self.level_of_theory = LEVEL.get(model, "unknown")
        self.species = list(consts.species)
        self.converter = torchani.nn.SpeciesConverter(self.species)
        self.aev = torchani.AEVComputer(**consts)
        self.shifter = neurochem.load_sae(str(root / sae_file))
        self.networks = neurochem.load_model_ensemble(self.species, str(root / prefix), ensemble_size or int(size))
        self.to(getattr(torch, dtype))
        self.freeze()

    @property
    def elements(self) -> frozenset[int]:
        from ase.data import atomic_numbers

        return frozenset(atomic_numbers[s] for s in self.species)

    def _aevs(self, batch) -> tuple[Tensor, Tensor, Tensor]:
        """Padded species (B, Nmax) (−1 = padding), AEVs (B, Nmax, D) and each flat atom's local index (Ntot,).

        Pads the flat batch with a differentiable index_put (no in-place op on pos). A batch holding periodic
        structures gets its AEVs one structure at a time (torchani takes one cell per call)."""
        counts = batch.ptr[1:] - batch.ptr[:-1]
        n_max = int(counts.max())
        local = torch.arange(batch.pos.shape[0], device=batch.pos.device) - batch.ptr[batch.batch]
        species = torch.full((batch.num_graphs, n_max), -1, dtype=torch.long, device=batch.pos.device)
        species[batch.batch, local] = batch.z
        coords = batch.pos.new_zeros(batch.num_graphs, n_max, 3).index_put((batch.batch, local), batch.pos)
        species, coords = self.converter((species, coords))
        if not bool(batch.pbc.any()):
            return species, self.aev((species, coords))[1], local
        aevs = []  # torchani takes one cell per call: with periodic structures, one structure at a time
        for g, n in enumerate(counts.tolist()):
            periodic = bool(batch.pbc[g].any())
            _, aev = self.aev((species[g : g + 1, :n], coords[g : g + 1, :n]),
                              cell=batch.cell[g].to(coords.dtype) if periodic else None,
                              pbc=batch.pbc[g] if periodic else None)
            aevs.append(torch.nn.functional.pad(aev, (0, 0, 0, n_max - n)))
        return species, torch.cat(aevs), local

    def energy(self, batch) -> Tensor:
        """(B,) eV."""
        species, aevs, _ = self._aevs(batch)
        _, energies = self.shifter(self.networks((species, aevs)))
        return energies * Hartree

    def node_features(self, batch) -> Tensor:
        """Last hidden layer of each atom's element network, averaged over the ensemble: (Ntot, F) (n2n baseline)."""
        self.check_elements(batch)
        batch = batch.to(self.device)
        batch.pos = batch.pos.to(self.dtype)
        with torch.no_grad():
            species, aevs, local = self._aevs(batch)
            flat_species, flat_aevs = species[batch.batch, local], aevs[batch.batch, local]
            total = None
            for model in self.networks:
                nets = list(model.values())
                width = nets[0][-1].in_features
                hidden = flat_aevs.new_zeros(flat_aevs.shape[0], width)
                for k, net in enumerate(nets):
                    mask = flat_species == k
                    if mask.any():
                        hidden[mask] = net[:-1](flat_aevs[mask])
                total = hidden if total is None else total + hidden
        return total / len(self.networks)
