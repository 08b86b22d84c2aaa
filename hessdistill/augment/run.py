"""``augment=``: teacher-labelled configurations made from every structure of the run's training split (never
from validation or test), built or resumed before training and joined to the training split (``data.added``).

The store sits beside the subset's (``augment_store_path``) unless ``augment.store`` names one; it records the
generator config, seed, teacher, subset store and parents, and a store made otherwise is refused.
"""

from __future__ import annotations

from pathlib import Path

import hydra
import numpy as np
from omegaconf import DictConfig, OmegaConf

from hessdistill.augment.builder import Candidates, build_added_store, labels_at, parent_hessian
from hessdistill.data.added import added_attrs
from hessdistill.devices import resolve_device
from hessdistill.hessian.rows import mixed_seed
from hessdistill.integrations.ase_calculator import TorchCalculator
from hessdistill.teachers.base import Teacher


def augment_store_path(subset_store: str | Path, name: str, teacher: str) -> Path:
    """``stores/demo_hcno.h5`` → ``stores/demo_hcno.augment-<name>.<teacher>.h5``."""
    store = Path(subset_store)
    return store.with_name(f"{store.stem}.augment-{name}.{teacher}.h5")


class LazyTeacher:
    """The run's teacher, instantiated from its config on ``device`` at the first call (not at all when every store
    it would label is complete)."""

    def __init__(self, config: DictConfig, device: str) -> None:
        self.config, self.device, self._teacher = config, device, None

    def __call__(self) -> Teacher:
        if self._teacher is None:
            self._teacher = hydra.utils.instantiate(self.config).to(resolve_device(self.device)).freeze()
        return self._teacher


def augmented(cfg: DictConfig, dm) -> list[Path]:
    """The augmentation store of ``cfg.augment`` for the datamodule ``dm``'s training split, built or resumed
    (``augment.builder``); [] for ``augment=none``."""
    augment = cfg.augment
    if augment.generator is None:
        return []
    generator = hydra.utils.instantiate(augment.generator)
    path = Path(augment.store) if augment.store else augment_store_path(cfg.subset.store, augment.name,
                                                                       cfg.teacher.name)
    main, parents = dm.store, dm.splits["train"]
    teacher = LazyTeacher(cfg.teacher, augment.device)

    def generate(p: int) -> Candidates:
        parent, model = main.structure(p), teacher()
        rng = np.random.default_rng(mixed_seed(augment.seed, p))
        positions = generator.configurations(parent, lambda: parent_hessian(main, model, p), TorchCalculator(model),
                                             rng)
        energy, forces = labels_at(model, parent, positions)
        count = len(positions)
        return Candidates(positions, energy, forces, np.full(count, np.nan), np.full(count, generator.origin),
                          generator.teacher_steps + count)

    attrs = added_attrs(dm.fingerprint, cfg.teacher.name, parents, origin=generator.origin, seed=augment.seed,
                        generator=OmegaConf.to_container(augment.generator, resolve=True))
    return [build_added_store(path, main, parents, generate, teacher, attrs, batch_size=augment.batch_size,
                              progress=augment.progress)]
