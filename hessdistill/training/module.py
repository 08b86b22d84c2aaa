"""DistillModule: trains any student on the sum of its declared loss terms (``training.terms``).

Undistilled, Hessian-KD, force-KD, energy-gradient and n2n runs are term lists of the same module; the a2a baseline
is a student plugin (``training.plugins``). Labels arrive on the batch from the datamodule's label source (store or
online teacher); the module never computes or reads them itself. Validation and test log the one metric set
(``hessdistill.metrics``) of the student and, where the batch has teacher labels, of the teacher.
"""

from __future__ import annotations

import hydra
import lightning as L
import torch
from omegaconf import DictConfig, OmegaConf

from hessdistill.hessian.student_rows import resolve_student_strategy
from hessdistill.metrics import batch_metrics
from hessdistill.models.elements import add_legacy_elements
from hessdistill.registry import PLUGINS, STUDENTS, Record, check_plain
from hessdistill.training.predictions import predict
from hessdistill.training.terms import Loss

DEFAULT_OPTIMIZER = {"_target_": "torch.optim.AdamW", "_partial_": True, "lr": 1e-3}
DEFAULT_SCHEDULER = {"_target_": "torch.optim.lr_scheduler.ReduceLROnPlateau", "_partial_": True}


def compile_student(student, row_strategy: str, energy_gradient: bool = False) -> str:
    """``torch.compile`` the student's representation (dynamic shapes: batches differ in atoms and edges) and return
    the row strategy to train with (``auto`` → ``fd``).

    Compiled autograd graphs cannot be differentiated twice (torch 2.13), so only training with one backward can be
    compiled: a direct-force student, undistilled or with finite-difference rows, and no term on its energy gradient
    (``energy_gradient``: the run has one). Validation's exact VJP rows
    back-propagate through the compiled graph several times, hence ``donated_buffer`` off (process-wide).
    """
    if student.force_mode != "direct":
        raise ValueError("compile=true needs a direct-force student (student.force_mode=direct): conservative forces "
                         "are differentiated twice in training, which torch.compile's graphs do not support")
    if energy_gradient:
        raise ValueError("compile=true cannot train the energy-gradient term (it differentiates the energy twice): "
                         "set weights.energy_grad=0")
    if row_strategy not in ("auto", "fd", "fd_central"):
        raise ValueError(f"compile=true trains with finite-difference rows (row_strategy=fd or fd_central), not "
                         f"{row_strategy!r}: reverse- and forward-mode rows differentiate the compiled graph twice")
    torch._functorch.config.donated_buffer = False
    student.representation.compile(dynamic=True)
    return "fd" if row_strategy == "auto" else row_strategy


def _plain(config) -> dict:
    return OmegaConf.to_container(config, resolve=True) if isinstance(config, DictConfig) else dict(config)


class DistillModule(L.LightningModule):
    """student: a config (``_target_`` …) of a ``ForceField``, built here so checkpoints are self-contained: the
    checkpoint records it as its registry key and plain keyword arguments (``hessdistill.registry``), which is all
    ``load_student`` builds from.

    terms: name → Hydra config of a ``LossTerm``. plugins: configs (``_target_``) of student plugins (a2a), recorded
    like the student and applied to it by ``prepare``, which a run calls once with its datamodule before training.
    optimizer / scheduler: Hydra configs with ``_partial_: true`` (the scheduler steps on ``monitor``); they, and the
    terms, are in the checkpoint for the record only: nothing is built from them there. row_strategy: how the
    student's training Hessian rows are computed (``hessian.student_rows``). compile: ``torch.compile`` the student's
    representation (``compile_student``).
    """

    def __init__(self, student: DictConfig | dict, terms: DictConfig | dict, plugins: list | None = None,
                 optimizer: DictConfig | dict | None = None, scheduler: DictConfig | dict | None = None,
                 monitor: str = "val/loss_ef", row_strategy: str = "auto", compile: bool = False) -> None:
        super().__init__()
        record, factory = STUDENTS.from_config(_plain(student))
        self._plugins = [PLUGINS.from_config(_plain(p)) for p in plugins or []]
        terms = _plain(terms)
        optimizer, scheduler = _plain(optimizer or DEFAULT_OPTIMIZER), _plain(scheduler or DEFAULT_SCHEDULER)
        self.save_hyperparameters({"student": record.as_dict(), "terms": terms,
                                   "plugins": [plugin.as_dict() for plugin, _ in self._plugins],
                                   "optimizer": optimizer, "scheduler": scheduler, "monitor": monitor,
                                   "row_strategy": row_strategy, "compile": compile})
        self.student = STUDENTS.build(record, factory)
        resolve_student_strategy(row_strategy, torch.device("cpu"), self.student.force_mode)  # a bad name fails here
        self.loss = Loss({name: hydra.utils.instantiate(term) for name, term in terms.items()})
        self.row_strategy = row_strategy
        if compile:
            self.row_strategy = compile_student(self.student, row_strategy,
                                                "energy_gradient_forces" in self.loss.predictions)
        self.last_rows = None  # the last training step's student rows (s, Ntot, 3), detached (RowResidualFeedback)
        self.last_forces = None  # and its forces (Ntot, 3) eV/Å, detached (training.feedback.ForceErrorFeedback)

    def prepare(self, datamodule) -> None:
        """Fit what depends on the data, once, before training (and before a checkpoint is restored into the module):
        the student's energy reference and scale from the training split, its plugins (teacher embeddings) and the
        terms' own layers (feature projections). Plugins record what they read in the hyper-parameters, so
        ``hessdistill.evaluation.checkpoint.load_student`` rebuilds the same student without the data."""
        self.student.set_energy_statistics(*datamodule.energy_statistics())
        for k, (record, factory) in enumerate(self._plugins):
            applied = Record(record.key, PLUGINS.build(record, factory).apply(self.student, datamodule))
            check_plain(applied.kwargs, f"what plugin {record.key} read from the data")  # the checkpoint keeps it
            self.hparams.plugins[k] = applied.as_dict()
        self.loss.setup(self.student, datamodule)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        """A checkpoint written before students recorded their training elements resumes with them derived from its
        reference energies (``models.elements.add_legacy_elements``), in the weights and in the EMA's copy."""
        for key in ("state_dict", "current_model_state"):
            if isinstance(checkpoint.get(key), dict):
                add_legacy_elements(checkpoint[key], "student.")

    # ---- loss ----------------------------------------------------------------------------------------
    def training_step(self, batch, batch_idx):
        n = batch.num_graphs
        pred = predict(self.student, batch, self.loss.predictions, create_graph=True,
                       strategy=self.row_strategy)
        loss, values = self.loss(pred, batch)
        if not bool(torch.isfinite(loss)):  # a non-finite step would poison the weights, the EMA and every metric
            raise FloatingPointError(
                f"training loss is {float(loss)} at epoch {self.current_epoch}, step {self.global_step} (terms: "
                f"{ {k: float(v) for k, v in values.items()} }; structures {batch.idx.tolist()}): check those "
                f"structures' labels, or lower the learning rate or a term's weight")
        self.log("train/loss", loss, batch_size=n, prog_bar=True)
        self.log("train/epoch_loss", loss, batch_size=n, on_step=False, on_epoch=True)  # the learning curve's
        for name, value in values.items():
            self.log(f"train/{name}", value, batch_size=n)
            self.log(f"train/weight_{name}", self.loss.weight(name), batch_size=n)
        rows = pred.get("force_jacobian_rows")
        self.last_rows = None if rows is None else rows.detach()  # for callbacks that learn from them
        self.last_forces = pred["forces"].detach()
        return loss

    # ---- evaluation ----------------------------------------------------------------------------------
    def _evaluate(self, batch, prefix: str) -> None:
        pred = predict(self.student, batch, {"force_jacobian_rows"}, create_graph=False,
                       strategy=self.row_strategy)
        metrics = batch_metrics(pred["energy"], pred["forces"], batch, pred.get("force_jacobian_rows"),
                                self._weight("energy"), self._weight("forces"))
        for name, (value, count) in metrics.items():
            self.log(f"{prefix}/{name}", value, batch_size=count, sync_dist=True)

    def _weight(self, name: str) -> float:
        """λ of term ``name`` as configured (0 if the run has no such term): loss_ef uses the run's own λ_U, λ_F."""
        return self.loss.initial_weights.get(name, 0.0)

    def validation_step(self, batch, batch_idx):
        self._evaluate(batch, "val")

    def test_step(self, batch, batch_idx):
        self._evaluate(batch, "test")

    def configure_optimizers(self):
        # the student and the terms' own parameters (n2n projection); an online teacher is not part of the module
        opt = hydra.utils.instantiate(self.hparams.optimizer)(self.parameters())
        sched = hydra.utils.instantiate(self.hparams.scheduler)(opt)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "monitor": self.hparams.monitor}}
