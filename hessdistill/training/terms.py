"""Loss terms as declared objects: weight × a loss function of ``hessdistill.losses`` applied to one student
prediction (``PREDICTIONS``) and one batch field (``hessdistill.data.keys``).

The training step sums a run's terms (``Loss``); which teacher labels the run reads follows from the batch fields
its terms declare (``Loss.targets``) and how many Hessian rows and probe vectors they sample (``Loss.rows``,
``Loss.probes``); schedules such as the
λ_KD halving change weights through ``Loss.set_weight``. A distill config (``conf/distill/*.yaml``) is a dict of
terms, e.g.::

    terms:
      force_kd: {_target_: hessdistill.training.terms.LossTerm, loss: force_loss, prediction: forces,
                 target: teacher_forces, weight: ${weights.forces}}

so a new term on labels the store already has is a function in ``losses.py`` and an entry in a YAML.
"""

from __future__ import annotations

import inspect
import logging

from torch import Tensor, nn

from hessdistill import losses
from hessdistill.data.keys import FIELDS, TARGET_WEIGHTS

log = logging.getLogger(__name__)

# what a term can compare: the student's energy (B,) eV, forces (Ntot, 3) eV/Å, final atom scalars (Ntot, F_s),
# −∇Û (Ntot, 3) eV/Å (a direct-force student's energy gradient), force-Jacobian rows ∂F̂_j/∂r (s, Ntot, 3) eV/Å²
# at the batch's sampled rows and force-Jacobian–vector products (∂F̂/∂r) v (k, Ntot, 3) eV/Å² of its probe vectors
# (see ``training.predictions``)
PREDICTIONS = ("energy", "forces", "node_features", "energy_gradient_forces", "force_jacobian_rows",
               "force_jacobian_probes")


class LossTerm(nn.Module):
    """weight · loss(prediction, batch[target]).

    loss: the name of a function in ``hessdistill.losses``: (prediction, target[, batch, num_graphs], **options)
    → scalar; per-atom losses take the batch's structure index (Ntot,) and B. rows: Hessian rows per structure the
    term needs sampled (0: none); probes: random probe vectors per structure it needs (0: none; each costs about
    what a row costs: one Jacobian–vector product). options: further keyword arguments of the loss (e.g. the
    Hessian-KD ``norm``).
    """

    def __init__(self, loss: str, prediction: str, target: str, weight: float = 1.0, rows: int = 0,
                 probes: int = 0, **options) -> None:
        super().__init__()
        if not hasattr(losses, loss):
            raise ValueError(f"unknown loss {loss!r}: not a function of hessdistill.losses")
        if prediction not in PREDICTIONS:
            raise ValueError(f"unknown prediction {prediction!r}; choose one of {PREDICTIONS}")
        if target not in FIELDS:
            raise ValueError(f"unknown target {target!r}: not a batch field of hessdistill.data.keys")
        if not isinstance(weight, (int, float)) or weight < 0:
            raise ValueError(f"loss weight must be a number >= 0, got {weight!r}")
        self.loss_name, self.prediction, self.target = loss, prediction, target
        self.weight, self.rows, self.probes, self.options = float(weight), int(rows), int(probes), dict(options)
        parameters = inspect.signature(getattr(losses, loss)).parameters
        self._per_atom, self._weighted = "batch" in parameters, "weight" in parameters

    def setup(self, student, datamodule) -> None:
        """Build what depends on the student or the data (nothing for a plain term)."""

    def compare(self, prediction: Tensor) -> Tensor:
        """The prediction as the loss sees it (a plain term: unchanged)."""
        return prediction

    def forward(self, predictions: dict[str, Tensor], batch) -> Tensor:
        """The unweighted term on a batch, given the student's ``predictions``; where the batch carries per-structure
        weights of the target (``data.keys.TARGET_WEIGHTS``: energy weights of teacher-labelled structures, importance
        weights of sampled rows), the loss applies them."""
        fn = getattr(losses, self.loss_name)
        args = (self.compare(predictions[self.prediction]), getattr(batch, self.target))
        if self._per_atom:
            args += (batch.batch, batch.num_graphs)
        field = TARGET_WEIGHTS.get(self.target)
        weight = getattr(batch, field, None) if field is not None else None
        if weight is None:
            return fn(*args, **self.options)
        if not self._weighted:
            raise ValueError(f"loss {self.loss_name!r} on {self.target!r} takes no per-structure weights, but the "
                             f"batch carries {field!r}; use a loss of hessdistill.losses with a weight argument")
        return fn(*args, **self.options, weight=weight)


class DirectForceTerm(LossTerm):
    """A term for direct-force students only (the energy-gradient term λ_∇U‖F + ∇Û‖²): switched off, with a warning,
    for a conservative student, whose F = −∇U already holds exactly."""

    def setup(self, student, datamodule) -> None:
        if student.force_mode != "direct" and self.weight > 0:
            log.warning("loss term on %s switched off: it applies to direct-force students only", self.prediction)
            self.weight = 0.0


class ProjectedFeatureTerm(LossTerm):
    """The n2n baseline (paper §A.6): the student's final atom scalars through a learned projection P (F_s → F_t,
    trained with the student, not part of it) against the teacher's node features, whose width F_t is read from the
    run's store when the term is set up."""

    def setup(self, student, datamodule) -> None:
        width = datamodule.store.node_feature_width(datamodule.labels.name)
        self.projection = nn.Linear(student.representation.hidden_channels, width, bias=False)

    def compare(self, prediction: Tensor) -> Tensor:
        return self.projection(prediction)


class Loss(nn.Module):
    """A run's loss: Σ_k weight_k · term_k. ``terms``: name → ``LossTerm`` (the name is what is logged)."""

    def __init__(self, terms: dict[str, LossTerm]) -> None:
        super().__init__()
        if not terms:
            raise ValueError("a loss needs at least one term")
        for name, term in terms.items():
            if term.prediction == "force_jacobian_rows" and term.weight > 0 and term.rows < 1:
                raise ValueError(f"loss term {name!r} compares Hessian rows but samples rows={term.rows} per "
                                 f"structure: set rows to 1 or more (e.g. rows=4), or switch the term off "
                                 f"(weights.{name}=0, or distill=undistilled)")
        self.terms = nn.ModuleDict(terms)
        self.initial_weights = {name: term.weight for name, term in terms.items()}

    @property
    def targets(self) -> frozenset[str]:
        """Batch fields the terms compare against (e.g. teacher_rows): what the label source must provide."""
        return frozenset(t.target for t in self.active())

    @property
    def rows(self) -> int:
        """Hessian rows per structure the terms need sampled."""
        return max((t.rows for t in self.active()), default=0)

    @property
    def probes(self) -> int:
        """Random probe vectors per structure the terms need (Hessian-vector-product KD)."""
        return max((t.probes for t in self.active()), default=0)

    @property
    def predictions(self) -> frozenset[str]:
        return frozenset(t.prediction for t in self.active())

    def active(self) -> list[LossTerm]:
        return [t for t in self.terms.values() if t.weight > 0]

    def weight(self, name: str) -> float:
        return self.terms[name].weight

    def set_weight(self, name: str, value: float) -> None:
        """The one way schedules change a term's weight."""
        self.terms[name].weight = float(value)

    def setup(self, student, datamodule) -> None:
        for term in self.terms.values():
            term.setup(student, datamodule)

    def forward(self, predictions: dict[str, Tensor], batch) -> tuple[Tensor, dict[str, Tensor]]:
        """The weighted sum and each active term's unweighted value."""
        values = {name: term(predictions, batch) for name, term in self.terms.items() if term.weight > 0}
        return sum(self.terms[name].weight * v for name, v in values.items()), values
