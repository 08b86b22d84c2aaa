"""hessdistill: distil machine-learning force-field foundation models into small, fast students
by matching sampled rows of the teacher's energy Hessian (Amin, Raja, Krishnapriyan, ICLR 2025).

Units everywhere: energy eV, length Å, force eV/Å, Hessian eV/Å². Hessian row index j = 3·atom + axis.
"""

from hessdistill import config as _config  # noqa: F401  (registers the configs' resolvers)

__version__ = "0.1.0"
