"""Frozen foundation-model teachers behind one small interface (``Teacher``, returning ``TeacherOutput``)."""

from hydra.errors import InstantiationException

from hessdistill.teachers.base import AutogradTeacher, Teacher, TeacherOutput

__all__ = ["AutogradTeacher", "Teacher", "TeacherOutput", "instantiate_teacher"]


def instantiate_teacher(config) -> Teacher:
    """The teacher a Hydra config describes. Weights that cannot be had (a missing file, no network: the teacher's
    own one-line FileNotFoundError, e.g. ``weights.MissingWeightsError``) are raised as they are, not inside Hydra's
    multi-line "Error in call to target" wrapper."""
    import hydra

    try:
        return hydra.utils.instantiate(config)
    except InstantiationException as exc:
        if isinstance(exc.__cause__, FileNotFoundError):
            raise exc.__cause__ from None
        raise
