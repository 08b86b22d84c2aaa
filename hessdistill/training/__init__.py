"""Training: declared loss terms (``terms``), what a student predicts (``predictions``), the DistillModule that sums
the terms (``module``), schedules (``callbacks``) and data-dependent student plugins (``plugins``); the math lives in
``hessdistill.hessian``, ``hessdistill.losses`` and ``hessdistill.metrics``."""
