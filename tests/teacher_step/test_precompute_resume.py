"""Precompute killed (SIGKILL) at random points resumes with no structure lost, duplicated or half-written."""

from __future__ import annotations

import random
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import label_with, rattled
from hessdistill.data.store import HessianStore, write_structures
from hessdistill.teacher_step.run import precompute_teacher

CHILD = """
import sys, torch
torch.set_num_threads(1)
from hessdistill.data.store import HessianStore
from hessdistill.teacher_step.run import precompute_teacher
from hessdistill.teachers.ani import ANITeacher
teacher = ANITeacher()
print("ready", flush=True)
precompute_teacher(HessianStore(sys.argv[1], mode="a"), teacher, batch_size=2, progress=False)
"""


@pytest.mark.slow
def test_precompute_killed_at_random_points_resumes_exactly(tmp_path, ani_teacher):
    atoms = [rattled(n, seed=k) for k, n in enumerate(["CH3OH", "CH3CH2OH", "CH3CONH2", "HCOOH"] * 6)]
    path, reference, blank = tmp_path / "killed.h5", tmp_path / "reference.h5", tmp_path / "blank.h5"
    write_structures(blank, label_with(ani_teacher, atoms))
    shutil.copy(blank, reference)
    shutil.copy(blank, path)
    start = time.perf_counter()
    with HessianStore(reference, mode="a") as ref:
        precompute_teacher(ref, ani_teacher, batch_size=2, progress=False)
    scale = time.perf_counter() - start

    # kill at random delays after the child is ready; a child that finished everything teaches us to kill
    # sooner: start again from the blank store with half the delay range
    rng, done_counts, mid_run = random.Random(0), [], 0
    while mid_run < 3 and len(done_counts) < 16:
        child = subprocess.Popen([sys.executable, "-c", CHILD, str(path)], stdout=subprocess.PIPE, text=True)
        assert child.stdout.readline().strip() == "ready"
        time.sleep(rng.uniform(0.0, scale))
        child.kill()
        child.wait()
        with HessianStore(path) as store:  # must open and read cleanly after every kill
            done = int(store.teacher_done("ani1x").sum()) if store.teachers() else 0
        assert not done_counts or done >= done_counts[-1]  # completed structures are never lost
        done_counts.append(done)
        if done == len(atoms):
            shutil.copy(blank, path)
            done_counts, scale = [], scale / 2
        mid_run += 0 < done < len(atoms)
    assert mid_run == 3, f"kills did not land mid-run: {done_counts}"

    with HessianStore(path, mode="a") as store:
        precompute_teacher(store, ani_teacher, batch_size=2, progress=False)
    with HessianStore(path) as store, HessianStore(reference) as ref:
        assert store.teacher_done("ani1x").all()
        assert store.teachers() == ["ani1x"]
        for i in range(len(atoms)):
            np.testing.assert_allclose(store.hessian("ani1x", i), ref.hessian("ani1x", i), rtol=1e-5, atol=1e-5)
            e, f = store.teacher_labels("ani1x", i)
            e_ref, f_ref = ref.teacher_labels("ani1x", i)
            assert e == pytest.approx(e_ref, abs=1e-9)
            np.testing.assert_allclose(f, f_ref, atol=1e-9)
