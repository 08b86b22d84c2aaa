"""The student zoo: self-contained representations (one per file) plus shared heads (``heads.py``)."""
