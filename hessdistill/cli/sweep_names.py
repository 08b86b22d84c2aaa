"""A Hydra callback that names a sweep's run folders by what the sweep varies: ``multirun/<time>/painn_small-hessian-
seed=1,weights.hessian=3``, not by every override of the command line (train.yaml's ``hydra.sweep.subdir``)."""

from __future__ import annotations

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, open_dict, read_write


class NameSweptValues(Callback):
    """Before a multirun starts, adds the keys the command line sets to one value (``experiment=demo``,
    ``subset.store=…``) to ``hydra.job.config.override_dirname.exclude_keys``, so each job's ``override_dirname``
    holds only the swept keys and their values; the jobs' own ``.hydra/overrides.yaml`` keep everything."""

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        overrides = OverridesParser.create().parse_overrides(list(config.hydra.overrides.task))
        fixed = [o.key_or_group for o in overrides if not o.is_sweep_override()]
        excluded = list(dict.fromkeys([*config.hydra.job.config.override_dirname.exclude_keys, *fixed]))
        # every job's config is composed again from these hydra overrides and its own (load_sweep_config)
        with read_write(config.hydra), open_dict(config.hydra):
            config.hydra.overrides.hydra.append("hydra.job.config.override_dirname.exclude_keys=["
                                                + ",".join(f"'{key}'" for key in excluded) + "]")
