"""hessdistill: distil machine-learning force-field foundation models into small, fast students
by matching sampled rows of the teacher's energy Hessian (Amin, Raja, Krishnapriyan, ICLR 2025).

Units everywhere: energy eV, length Å, force eV/Å, Hessian eV/Å². Hessian row index j = 3·atom + axis.

    import hessdistill as hd     # the commands as functions: hd.precompute, hd.train, hd.onpolicy, hd.evaluate,
                                 # hd.predict, hd.summarize, hd.load_calculator, hd.compose; hd.HessianStore
                                 # (see hessdistill.api)
    hd.register_student("mynet", MyNet)   # your own classes, by key (hessdistill.registry): files name keys only
"""

from hessdistill import config as _config  # noqa: F401  (registers the configs' resolvers)
from hessdistill.registry import register_plugin, register_student, register_teacher

__version__ = "0.1.0"
__all__ = ["HessianStore", "compose", "deploy", "deployed_calculator", "evaluate", "load_calculator", "onpolicy",
           "precompute", "predict", "register_plugin", "register_student", "register_teacher", "summarize", "train"]



def __getattr__(name: str):
    """The API on first use: ``import hessdistill`` stays light for code that only needs a submodule."""
    if name == "HessianStore":
        from hessdistill.data.store import HessianStore

        return HessianStore
    if name in __all__:
        from hessdistill import api

        return getattr(api, name)
    raise AttributeError(f"module 'hessdistill' has no attribute {name!r}")
