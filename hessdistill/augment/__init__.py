"""Students that reach their teacher: teacher-labelled configurations beyond the subset's reference structures.

``generators`` make configurations from a training structure (rattles, thermal normal modes, teacher MD),
``builder`` labels them with the teacher into a store added to training (resumable), ``run`` does so for the
``augment=`` config group, and ``onpolicy`` alternates training with the student's own MD, labelling where it
disagrees with the teacher most (``hessdistill-onpolicy``). How added structures enter a run: ``data.added``.
"""
