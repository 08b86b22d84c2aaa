"""Frozen foundation-model teachers behind one small interface (``Teacher``, returning ``TeacherOutput``)."""

from hessdistill.teachers.base import AutogradTeacher, Teacher, TeacherOutput

__all__ = ["AutogradTeacher", "Teacher", "TeacherOutput"]
