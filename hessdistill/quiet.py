"""Known console noise of hessdistill's dependencies, silenced at our entry points (the commands, the Python API):
each filter names one message that tells a hessdistill user nothing they can act on. Everything else still shows.

- Lightning's tip to install litlogger (an info line on every training run);
- Lightning's use of torch's deprecated ``isinstance(treespec, LeafSpec)`` (a FutureWarning for Lightning's
  maintainers);
- torch's note that ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD`` is set: ``import mace`` sets it for the whole process (for
  its pickled models); hessdistill's own loads pass ``weights_only`` explicitly;
- Lightning's warning that an epoch has fewer batches than the logging interval: small data sets, whose metrics
  are logged per epoch as well;
- tqdm's ``IProgress not found`` in Jupyter without ipywidgets (its bars fall back to text);
- mace-torch's import-time line that NVIDIA's cuEquivariance kernels are not installed (``import_mace``): the
  Hessians here run on the e3nn model anyway (``teachers.mace.without_cuequivariance``).
"""

from __future__ import annotations

import contextlib
import io
import logging
import sys
import warnings

WARNINGS = (  # (message regex, category): warnings.filterwarnings("ignore", ...)
    (r"`isinstance\(treespec, LeafSpec\)` is deprecated", FutureWarning),
    (r"Environment variable TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD detected", UserWarning),
    (r"The number of training batches \(\d+\) is smaller than the logging interval", UserWarning),
    (r"IProgress not found", Warning),
)
LOG_LINES = {  # logger → text of the info lines dropped from it (Lightning's rank-zero loggers)
    "lightning.pytorch.utilities.rank_zero": ("litlogger",),
    "lightning.fabric.utilities.rank_zero": ("litlogger",),
}


class _DropLines(logging.Filter):
    """Drops the records of one logger whose message contains any of ``texts``."""

    def __init__(self, texts: tuple[str, ...]) -> None:
        super().__init__()
        self.texts = texts

    def filter(self, record: logging.LogRecord) -> bool:
        return not any(text in record.getMessage() for text in self.texts)


def quiet_dependencies() -> None:
    """Install the filters above (once per process; calling again adds nothing)."""
    for message, category in WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category)
    for name, texts in LOG_LINES.items():
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropLines) for f in logger.filters):
            logger.addFilter(_DropLines(texts))


def import_mace():
    """``mace.modules`` (mace-torch's models), imported without its stdout line about cuEquivariance; any other line
    it prints is passed on."""
    if "mace.tools.cg" not in sys.modules:
        with contextlib.redirect_stdout(io.StringIO()) as printed:
            import mace.modules  # noqa: F401
        for line in printed.getvalue().splitlines():
            if "cuequivariance" not in line.lower():
                print(line)
    from mace import modules

    return modules
