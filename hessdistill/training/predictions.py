"""What a student predicts for a batch, computed only as far as asked: energy, forces and node features from its
forward, and on request the energy gradient of a direct-force student, its force-Jacobian rows at the batch's
sampled rows and its force-Jacobian–vector products J v with the batch's probe vectors (``hessian.probes``), by the
run's row strategy while training (``hessian.student_rows``) and by exact reverse mode otherwise.
Shared by training, validation and evaluation.

Rows and probes are both lanes (L, Ntot, 3): one-hot lanes for rows, the probes themselves for probes. Forward mode
and finite differences give J·lane for every lane at once (a direct student's rows are then columns, as documented in
``hessian.student_rows``); reverse mode gives rows by VJPs and probe products J v by ``probes.jacobian_vector_products``
(one VJP when J is symmetric, the double-VJP trick otherwise), so probe products are J v whatever the strategy."""

from __future__ import annotations

import logging

import torch
from torch import Tensor

from hessdistill.hessian.finite_difference import finite_difference_lanes, lane_offsets, lane_steps
from hessdistill.hessian.forward_mode import jvp_lanes
from hessdistill.hessian.probes import jacobian_vector_products
from hessdistill.hessian.rows import force_jacobian_rows, resolve_strategy, row_lanes
from hessdistill.hessian.student_rows import StudentRowStrategy, fd_step, resolve_student_strategy

log = logging.getLogger(__name__)
JVP_FALLBACKS = {"count": 0}  # how often a requested jvp fell back to VJP rows (an op without a forward-mode rule)
JVP_TRUSTED: dict[tuple[str, str], str | None] = {}  # (representation, force mode) → None, or why jvp is not used


def predict(student, batch, wanted: frozenset[str] | set[str], create_graph: bool,
            strategy: StudentRowStrategy = "auto") -> dict[str, Tensor]:
    """energy (B,) eV, forces (Ntot, 3) eV/Å, node_features (Ntot, F_s), pos (Ntot, 3) (the leaf they depend on) and,
    if ``wanted``, energy_gradient_forces −∇Û (Ntot, 3) eV/Å, force_jacobian_rows (s, Ntot, 3) eV/Å² at
    ``batch.sampled_rows`` and force_jacobian_probes (k, Ntot, 3) eV/Å², J v of ``batch.probe_vectors`` (each skipped
    when the batch has none). create_graph: keep every prediction differentiable w.r.t. the student's parameters
    (training, whose rows and products follow ``strategy``); otherwise they are computed without a graph beyond what
    they need, rows are exact VJPs and products exact J v whatever the strategy."""
    rows = "force_jacobian_rows" in wanted and hasattr(batch, "sampled_rows")
    probes = "force_jacobian_probes" in wanted and hasattr(batch, "probe_vectors")
    conservative = student.force_mode == "conservative"
    with torch.enable_grad():
        if (rows or probes) and create_graph:
            strategy = resolve_student_strategy(strategy, batch.pos.device, student.force_mode)
            out = _with_lanes(student, batch, strategy, "energy_gradient_forces" in wanted, rows, probes)
        else:
            out = student(batch, create_graph=create_graph or ((rows or probes) and conservative))
            if rows:
                out["force_jacobian_rows"] = force_jacobian_rows(out["forces"], out["pos"], batch.sampled_rows,
                                                                 batch.ptr, create_graph=False)
            if probes:
                out["force_jacobian_probes"] = jacobian_vector_products(
                    out["forces"], out["pos"], batch.probe_vectors.to(out["pos"].dtype), False,
                    resolve_strategy("auto", batch.pos.device), conservative)
        if "energy_gradient_forces" in wanted:
            (grad,) = torch.autograd.grad(out["energy"].sum(), out["pos"], create_graph=create_graph,
                                          retain_graph=True)
            out["energy_gradient_forces"] = -grad
    return out if create_graph else {k: v.detach() for k, v in out.items()}


def _with_lanes(student, batch, strategy: str, energy_gradient: bool, rows: bool, probes: bool) -> dict[str, Tensor]:
    """Training predictions with differentiable rows and/or probe products by ``strategy`` (resolved);
    ``energy_gradient``: the energy gradient is wanted too."""
    if strategy in ("fd", "fd_central"):
        lanes = _lanes(batch, rows, probes)
        return _split(_finite_difference_lanes(student, batch, lanes, strategy, energy_gradient), batch, rows, probes)
    if strategy == "jvp":
        try:
            return _split(_forward_mode_lanes(student, batch, _lanes(batch, rows, probes)), batch, rows, probes)
        except (NotImplementedError, RuntimeError) as exc:  # an op without a usable forward-mode rule: never silently
            JVP_FALLBACKS["count"] += 1
            (log.warning if JVP_FALLBACKS["count"] == 1 else log.debug)(
                "forward-mode rows of %s failed (%s); computing them by VJPs instead (fallback #%d)",
                _kind(student), str(exc).splitlines()[0][:200], JVP_FALLBACKS["count"])
            strategy = "loop"
    out = student(batch, create_graph=True)
    if rows:
        out["force_jacobian_rows"] = force_jacobian_rows(out["forces"], out["pos"], batch.sampled_rows, batch.ptr,
                                                         create_graph=True, strategy=strategy)
    if probes:
        out["force_jacobian_probes"] = jacobian_vector_products(
            out["forces"], out["pos"], batch.probe_vectors.to(out["pos"].dtype), True, strategy,
            student.force_mode == "conservative")
    return out


def _lanes(batch, rows: bool, probes: bool) -> Tensor:
    """The lanes a step differentiates along: the rows' one-hot lanes (s, Ntot, 3), then the probes (k, Ntot, 3)."""
    parts = [row_lanes(batch.sampled_rows, batch.ptr, dtype=batch.pos.dtype)] if rows else []
    return torch.cat(parts + ([batch.probe_vectors.to(batch.pos.dtype)] if probes else []))


def _split(out: dict[str, Tensor], batch, rows: bool, probes: bool) -> dict[str, Tensor]:
    """``out["lanes"]`` (J·lane of ``_lanes``) as force_jacobian_rows and force_jacobian_probes."""
    products = out.pop("lanes")
    n_rows = batch.sampled_rows.shape[1] if rows else 0
    if rows:
        out["force_jacobian_rows"] = products[:n_rows]
    if probes:
        out["force_jacobian_probes"] = products[n_rows:]
    return out


def _finite_difference_lanes(student, batch, lanes: Tensor, strategy: str, separate: bool) -> dict[str, Tensor]:
    """J·lane for every lane (L, Ntot, 3) from displaced copies of the batch (L forward, and L backward for
    ``fd_central``), run in one forward with the batch itself, or after it when ``separate``: a term on the energy
    gradient differentiates the batch's energy twice, and inside one forward with the copies that double backward
    would run through all of them."""
    batch = student.ensure_graph(batch)
    pos = batch.pos.detach().requires_grad_(True)
    step = fd_step(pos.dtype, strategy)
    offsets = [lane_offsets(pos, lanes, step)]
    if strategy == "fd_central":
        offsets.append(lane_offsets(pos, lanes, -step))
    if separate:
        energy, forces, scalars = student.outputs_at(pos[None], batch, create_graph=True)
        displaced = student.outputs_at(pos + torch.cat(offsets), batch, create_graph=True)[1]
    else:
        energy, forces, scalars = student.outputs_at(pos + torch.cat([pos.new_zeros(1, *pos.shape), *offsets]),
                                                     batch, create_graph=True)
        forces, displaced = forces[:1], forces[1:]
    s = lanes.shape[0]
    forward_steps = lane_steps(offsets[0], batch.batch, batch.num_graphs, lanes)
    if strategy == "fd":
        jacobian = finite_difference_lanes(displaced, forward_steps, forces)
    else:
        jacobian = finite_difference_lanes(displaced[:s], forward_steps, displaced[s:],
                                           lane_steps(offsets[1], batch.batch, batch.num_graphs, lanes))
    return {"energy": energy[0], "forces": forces[0], "pos": pos, "node_features": scalars[0], "lanes": jacobian}


def _forward_mode_lanes(student, batch, lanes: Tensor) -> dict[str, Tensor]:
    """J·lane for every lane (L, Ntot, 3) by one dual forward each (``hessian.forward_mode``); the first one's primal
    outputs are the batch's."""
    kind = _kind(student)
    if JVP_TRUSTED.get(kind) is not None:
        raise RuntimeError(JVP_TRUSTED[kind])
    batch = student.ensure_graph(batch)
    pos = batch.pos.detach().requires_grad_(True)

    def outputs(p: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        energy, forces, features = student.outputs(p, batch, create_graph=True)
        return energy, forces, features.scalars

    (energy, forces, scalars), jacobian = jvp_lanes(outputs, pos, lanes, output=1)
    if kind not in JVP_TRUSTED:
        again = jvp_lanes(outputs, pos, lanes, output=1)[1]  # a leak between dual forwards shows from the second
        JVP_TRUSTED[kind] = _forward_mode_fault(student, pos, forces, torch.cat([lanes, lanes]),
                                                torch.cat([jacobian, again]))
        if JVP_TRUSTED[kind] is not None:
            raise RuntimeError(JVP_TRUSTED[kind])
    return {"energy": energy, "forces": forces, "pos": pos, "node_features": scalars, "lanes": jacobian}


def _forward_mode_fault(student, pos: Tensor, forces: Tensor, lanes: Tensor, tangents: Tensor) -> str | None:
    """Checked once per kind of student, on its first batch: why its forward-mode rows cannot be used, or None.

    Two ways they fail without an error of their own: tangents that are wrong (found in mace-torch's direct-force
    student, where every dual forward after the first returns wrong tangents: the caller passes the lanes of two
    passes), caught by the adjoint test uᵀ(J v) = (uᵀJ) v of every lane v (L, Ntot, 3) against one VJP with a random
    u; and a backward through the tangents that fails (torch 2.13: vector_norm's formula under a conservative
    student).
    """
    u = torch.randn(forces.shape, generator=torch.Generator().manual_seed(0), dtype=forces.dtype).to(forces.device)
    (vjp,) = torch.autograd.grad(forces, pos, u, retain_graph=True)
    tangents_ = tangents.detach()
    forward = (u * tangents_).sum(dim=(1, 2))  # (L,)
    reverse = (vjp * lanes).sum(dim=(1, 2))
    bound = u.norm() * tangents_.flatten(1).norm(dim=1) + vjp.norm() * lanes.flatten(1).norm(dim=1)
    wrong = torch.nonzero((forward - reverse).abs() > 1e-4 * bound).flatten().tolist()
    if wrong:
        k = wrong[0]
        return (f"forward-mode tangents fail the adjoint test in {len(wrong)} of {len(lanes)} lanes (lane {k}: "
                f"uᵀ(Jv) = {float(forward[k]):.6g}, (uᵀJ)v = {float(reverse[k]):.6g})")
    leaves = [pos, *(p for p in student.parameters() if p.requires_grad)]  # what the loss backward reaches
    try:
        torch.autograd.grad(tangents.square().sum(), leaves, retain_graph=True, allow_unused=True)
    except RuntimeError as exc:
        return f"the backward of forward-mode rows fails: {str(exc).splitlines()[0]}"
    return None


def _kind(student) -> tuple[str, str]:
    return type(student.representation).__name__, student.force_mode
