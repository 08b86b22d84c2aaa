"""Frozen foundation-model teachers behind one small interface (``Teacher``)."""

from hessdistill.teachers.base import Teacher

__all__ = ["Teacher"]
