"""The student zoo: self-contained representations (one per file) inside the student contract ``base.ForceField``,
with shared blocks (``heads.py``) and radial functions (``radial.py``)."""
