"""The Hessian math, free of Lightning and Hydra: sampled rows (``rows``), full batched Hessians (``full``), how many
VJP lanes fit in memory (``memory``) and finite differences (``finite_difference``).

Conventions. A batch of B structures is flat: positions ``pos`` (Ntot, 3) Å, ``ptr`` (B+1,) atom offsets. Hessian
row j of structure i (j = 3·atom + axis) is ∂²U/∂r_j∂r, i.e. minus the derivative of force component j with respect
to all 3N_i positions, eV/Å². Rows of a batch are laid out as *lanes*, (s, Ntot, 3): lane k holds, inside each
structure's block of atoms, that structure's k-th row. Every producer (store reads, teachers, students) and every
consumer (losses, metrics) uses this one layout.
"""
