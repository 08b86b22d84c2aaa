"""DistillModule: trains any student on energies, forces and sampled teacher Hessian rows.

The loss is a list of weighted terms (``LossWeights``); a zero weight switches a term off, so undistilled,
Hessian-KD, force-KD and energy-gradient runs are configs of the same module. Validation and test need
forces (and Hessian rows), so the Trainer must run with ``inference_mode=False``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import hydra
import lightning as L
import torch
from omegaconf import DictConfig, OmegaConf

from hessdistill import losses
from hessdistill.hessian import force_jacobian_rows

log = logging.getLogger(__name__)


@dataclass
class LossWeights:
    """λ_U (energy), λ_F (forces), λ_KD (Hessian rows), λ_∇U (energy gradient, direct-force students only),
    λ_FKD (teacher forces, the paper's force-KD ablation), λ_n2n (teacher node features, the n2n baseline)."""

    energy: float = 5.0
    forces: float = 100.0
    hessian: float = 400.0
    energy_grad: float = 0.0
    force_kd: float = 0.0
    n2n: float = 0.0


class DistillModule(L.LightningModule):
    """student: a Hydra config (``_target_`` …) of a ``ForceField``, built here so checkpoints are self-contained.

    teacher: a frozen ``Teacher`` for online mode — it computes teacher energies, forces and the sampled Hessian
    rows of each batch during training instead of reading them from the store. It is kept out of the module's
    parameters and checkpoints.
    n2n_features: the teacher's node-feature width F_t, for the n2n baseline (weights.n2n > 0): a learned
    projection P (F_s → F_t, trained with the student, not part of it) maps the student's final atom scalars.
    a2a_embeddings: {"z": (E,), "table": (E, F_t)} teacher element embeddings for the a2a baseline: the student's
    element embedding becomes a learned projection of them (kept in the checkpoint's hyper-parameters).
    """

    def __init__(self, student: DictConfig | dict, weights: dict | None = None, kd_norm: str = "squared",
                 row_strategy: str = "auto", lr: float = 1e-3, weight_decay: float = 2e-6, amsgrad: bool = True,
                 eps: float = 1e-7, plateau_factor: float = 0.8, plateau_patience: int = 10, min_lr: float = 5e-6,
                 teacher=None, n2n_features: int | None = None, a2a_embeddings: dict | None = None) -> None:
        super().__init__()
        student = OmegaConf.to_container(student, resolve=True) if isinstance(student, DictConfig) else dict(student)
        self.save_hyperparameters({"student": student, "weights": dict(weights or {}), "kd_norm": kd_norm,
                                   "row_strategy": row_strategy, "lr": lr, "weight_decay": weight_decay,
                                   "amsgrad": amsgrad, "eps": eps, "plateau_factor": plateau_factor,
                                   "plateau_patience": plateau_patience, "min_lr": min_lr,
                                   "n2n_features": n2n_features, "a2a_embeddings": a2a_embeddings})
        self.student = hydra.utils.instantiate(student)
        self.weights = LossWeights(**(weights or {}))
        if a2a_embeddings is not None:
            self.student.use_teacher_embeddings(torch.as_tensor(a2a_embeddings["z"]),
                                                torch.as_tensor(a2a_embeddings["table"], dtype=torch.float32))
        if self.weights.n2n > 0:
            if not n2n_features:
                raise ValueError("weights.n2n > 0 needs n2n_features: the teacher's node-feature width")
            self.n2n_projection = torch.nn.Linear(self.student.representation.hidden_channels, n2n_features,
                                                  bias=False)
        self.__dict__["teacher"] = teacher.freeze() if teacher is not None else None  # not a registered submodule
        if self.weights.energy_grad > 0 and self.student.force_mode != "direct":
            # F = −∇U already holds exactly for a conservative student: the term would duplicate the force term.
            log.warning("energy-gradient term switched off: it applies to direct-force students only")
            self.weights.energy_grad = 0.0

    # ---- loss ----------------------------------------------------------------------------------------
    def _attach_online_teacher(self, batch) -> None:
        """Online mode: the teacher's energy (B,), forces (Ntot, 3) and, if rows are sampled, rows (Ntot, s, 3)."""
        if self.teacher is None:
            return
        if self.teacher.device != self.device:
            self.teacher.to(self.device)
        if hasattr(batch, "hess_row"):
            energy, forces, lanes = self.teacher.hessian_rows(batch, batch.hess_row, self.hparams.row_strategy)
            batch.hess_rows = lanes.permute(1, 0, 2).to(batch.pos.dtype)
        else:
            energy, forces = self.teacher.energy_forces(batch)
        batch.teacher_energy, batch.teacher_forces = energy.to(batch.pos.dtype), forces.detach().to(batch.pos.dtype)

    def _student_rows(self, out, batch, create_graph: bool):
        return force_jacobian_rows(out["forces"], out["pos"], batch.hess_row, batch.ptr, create_graph=create_graph,
                                   strategy=self.hparams.row_strategy)

    def training_step(self, batch, batch_idx):
        w, n = self.weights, batch.num_graphs
        self._attach_online_teacher(batch)
        out = self.student(batch, create_graph=True)
        terms = {"energy": losses.energy_loss(out["energy"], batch.energy),
                 "forces": losses.force_loss(out["forces"], batch.forces, batch.batch, n)}
        if w.energy_grad > 0:
            (grad,) = torch.autograd.grad(out["energy"].sum(), out["pos"], create_graph=True)
            terms["energy_grad"] = losses.force_loss(-grad, batch.forces, batch.batch, n)
        if w.force_kd > 0:
            terms["force_kd"] = losses.force_loss(out["forces"], batch.teacher_forces, batch.batch, n)
        if w.n2n > 0:
            terms["n2n"] = losses.node_feature_loss(self.n2n_projection(out["node_features"]),
                                                    batch.teacher_node_features, batch.batch, n)
        if w.hessian > 0:
            rows = self._student_rows(out, batch, create_graph=True)
            terms["hessian"] = losses.hessian_kd_loss(rows, batch.hess_rows.permute(1, 0, 2), batch.batch, n,
                                                      self.hparams.kd_norm)
        loss = sum(getattr(w, k) * v for k, v in terms.items())
        self.log("train/loss", loss, batch_size=n, prog_bar=True)
        for k, v in terms.items():
            self.log(f"train/{k}", v, batch_size=n)
        self.log("train/lambda_kd", w.hessian, batch_size=n)
        return loss

    # ---- evaluation ----------------------------------------------------------------------------------
    def _evaluate(self, batch, prefix: str) -> None:
        n, n_atoms = batch.num_graphs, batch.pos.shape[0]
        self._attach_online_teacher(batch)
        with torch.enable_grad():
            has_rows = hasattr(batch, "hess_row")
            out = self.student(batch, create_graph=has_rows and self.student.force_mode == "conservative")
            rows = self._student_rows(out, batch, create_graph=False) if has_rows else None
        energy, forces = out["energy"].detach(), out["forces"].detach()
        loss_ef = self.weights.energy * losses.energy_loss(energy, batch.energy) + \
            self.weights.forces * losses.force_loss(forces, batch.forces, batch.batch, n)
        self.log(f"{prefix}/loss_ef", loss_ef, batch_size=n, sync_dist=True)
        self.log(f"{prefix}/energy_mae", 1e3 * ((energy - batch.energy).abs() / batch.natoms).mean(), batch_size=n,
                 sync_dist=True)  # meV/atom
        self.log(f"{prefix}/force_mae", 1e3 * (forces - batch.forces).abs().mean(), batch_size=n_atoms,
                 sync_dist=True)  # meV/Å
        if has_rows:
            self.log(f"{prefix}/hessian_mae", losses.hessian_row_mae(rows.detach(), batch.hess_rows.permute(1, 0, 2)),
                     batch_size=n_atoms, sync_dist=True)  # eV/Å²
        if hasattr(batch, "teacher_energy"):  # the frozen teacher on the same split, for the KD scheduler
            t_loss = self.weights.energy * losses.energy_loss(batch.teacher_energy, batch.energy) + \
                self.weights.forces * losses.force_loss(batch.teacher_forces, batch.forces, batch.batch, n)
            self.log(f"{prefix}/teacher_loss_ef", t_loss, batch_size=n, sync_dist=True)
            self.log(f"{prefix}/teacher_energy_mae", 1e3 * ((batch.teacher_energy - batch.energy).abs()
                                                            / batch.natoms).mean(), batch_size=n, sync_dist=True)
            self.log(f"{prefix}/teacher_force_mae", 1e3 * (batch.teacher_forces - batch.forces).abs().mean(),
                     batch_size=n_atoms, sync_dist=True)

    def validation_step(self, batch, batch_idx):
        self._evaluate(batch, "val")

    def test_step(self, batch, batch_idx):
        self._evaluate(batch, "test")

    def configure_optimizers(self):
        hp = self.hparams
        # the student and, for n2n, its projection (the online teacher is not a registered submodule)
        opt = torch.optim.AdamW(self.parameters(), lr=hp.lr, weight_decay=hp.weight_decay, amsgrad=hp.amsgrad, eps=hp.eps)
        sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=hp.plateau_factor, patience=hp.plateau_patience,
                                                           min_lr=hp.min_lr)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "monitor": "val/loss_ef"}}
