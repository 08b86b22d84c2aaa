"""Accuracy of a student, and of its teacher, on a split of a store: the metric set of validation and test
(``hessdistill.metrics``: energy MAE meV/atom, force MAE meV/Å, Hessian-row MAE eV/Å² over the split's fixed rows,
loss_ef), and the arrays behind them for parity plots."""

from __future__ import annotations

import torch
from torch_geometric.loader import DataLoader
from tqdm import tqdm

from hessdistill.data.datamodule import StoreDataset
from hessdistill.metrics import batch_metrics
from hessdistill.models.elements import check_elements
from hessdistill.training.predictions import predict


def evaluate_split(student, dataset: StoreDataset, batch_size: int = 32, lambda_energy: float = 1.0,
                   lambda_forces: float = 1.0, allow_unseen_elements: bool = False) -> dict:
    """The student's (and, where ``dataset`` has teacher labels, the teacher's) metrics on ``dataset``; a structure
    with an element the student was not trained on is refused (``models.elements``) unless ``allow_unseen_elements``.

    Returns ``metrics``: the metric set as means over the split (weighted per batch as validation logs them), plus
    ``structures`` and ``hessian_rows_per_structure``; and ``arrays``: per-structure energies per atom (reference,
    student, teacher) in eV/atom, atom counts ``natoms`` (M,) and element counts ``composition`` (M, E) of the E
    elements present, and force components (reference, student, teacher) in eV/Å.
    """
    device = next(student.parameters()).device
    sums: dict[str, float] = {}
    weights: dict[str, int] = {}
    out = {k: [] for k in ("e_ref", "e_student", "e_teacher", "f_ref", "f_student", "f_teacher", "natoms",
                           "composition")}
    for batch in tqdm(DataLoader(dataset, batch_size=batch_size), desc="accuracy", unit="batch"):
        batch = batch.to(device)
        check_elements(student, batch.z, lambda unseen: f"{getattr(dataset.store, 'path', 'the store')} structure(s) "
                       f"{batch.idx[torch.unique(batch.batch[unseen])].tolist()}", allow_unseen_elements)
        pred = predict(student, batch, {"force_jacobian_rows"}, create_graph=False)
        for name, (value, count) in batch_metrics(pred["energy"], pred["forces"], batch,
                                                  pred.get("force_jacobian_rows"), lambda_energy,
                                                  lambda_forces).items():
            sums[name] = sums.get(name, 0.0) + float(value) * count
            weights[name] = weights.get(name, 0) + count
        natoms = batch.natoms.to(pred["energy"].dtype)
        out["natoms"].append(batch.natoms)
        out["composition"].append(torch.zeros(batch.num_graphs, 119, dtype=torch.float64, device=device)
                                  .index_put_((batch.batch, batch.z), torch.ones_like(batch.z, dtype=torch.float64),
                                              accumulate=True))
        out["e_ref"].append(batch.energy / natoms)
        out["e_student"].append(pred["energy"] / natoms)
        out["f_ref"].append(batch.forces.reshape(-1))
        out["f_student"].append(pred["forces"].reshape(-1))
        if hasattr(batch, "teacher_energy"):
            out["e_teacher"].append(batch.teacher_energy / natoms)
            out["f_teacher"].append(batch.teacher_forces.reshape(-1))
    arrays = {k: torch.cat(v).cpu().double().numpy() if v else None for k, v in out.items()}
    arrays["composition"] = arrays["composition"][:, arrays["composition"].any(axis=0)]  # the elements present
    metrics = {"structures": len(dataset), **{name: sums[name] / weights[name] for name in sums}}
    if "hessian_mae" in metrics:
        metrics["hessian_rows_per_structure"] = dataset.rows
    return {"metrics": metrics, "arrays": arrays}

