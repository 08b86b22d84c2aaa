"""On-policy rounds: logged per round, selected where the student is most wrong, and resumed after a kill to the
same stores and log as an uninterrupted run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import compose_config
from hessdistill.augment.builder import Candidates
from hessdistill.augment.onpolicy import committee_scores, force_scores, run_rounds, top_scoring
from hessdistill.data.keys import ON_POLICY
from hessdistill.data.store import HessianStore

TIMINGS = ("sample_seconds", "train_seconds")


def overrides(store) -> list[str]:
    return ["experiment=demo", f"subset.store={store}", "trainer.max_epochs=1", "subset.batch_size=8",
            "subset.split=[0.5,0.25,0.25]", "rows=2", "student.hidden_channels=16", "student.num_layers=2",
            "student.num_rbf=8", "student.cutoff=4.0", "onpolicy.rounds=2", "onpolicy.epochs_per_round=1",
            "onpolicy.starts=2", "onpolicy.select=2", "onpolicy.md.steps=8", "onpolicy.md.interval=2",
            "onpolicy.progress=false", "onpolicy.device=cpu"]


def comparable(rounds: list[dict]) -> list[dict]:
    """The log without wall times and with store paths relative to their run directory."""
    return [{k: v.split("/")[-1] if k == "store" else v for k, v in r.items() if k not in TIMINGS} for r in rounds]


def store_content(path) -> dict:
    with HessianStore(path) as store:
        return {"positions": np.concatenate([s.positions for s in store.structures()]),
                "info": [s.info for s in store.structures()],
                "teacher": [store.teacher_labels("ani1x", i)[1] for i in range(len(store))],
                "hessian": [store.hessian("ani1x", i) for i in range(len(store))]}


def test_selection_scores():
    student, teacher = np.zeros((2, 3, 3)), np.zeros((2, 3, 3))
    student[0, 1] = [3.0, 4.0, 0.0]  # configuration 0: one atom 5 eV/Å off
    student[1, :, 0] = 1.0  # configuration 1: every atom 1 eV/Å off
    np.testing.assert_allclose(force_scores(student, teacher), [5.0, 1.0])
    members = np.stack([student, teacher])  # two members: spread = half the difference
    np.testing.assert_allclose(committee_scores(members), [2.5, 0.5])
    made = {p: Candidates(np.zeros((2, 1, 3)), np.zeros(2), np.zeros((2, 1, 3)), np.array(s), np.full(2, ON_POLICY), 2)
            for p, s in ((4, [0.1, 0.9]), (7, [0.9, 0.5]))}
    assert top_scoring(made, 3) == [(4, 1), (7, 0), (7, 1)]  # best first, ties in parent order


def test_committee_scores_need_checkpoints(tmp_path):
    cfg = compose_config("onpolicy", ["onpolicy.score=committee"])
    with pytest.raises(ValueError, match="onpolicy.score=committee needs checkpoints in onpolicy.committee"):
        run_rounds(cfg, tmp_path)
    with pytest.raises(ValueError, match="onpolicy.score must be one of"):
        run_rounds(compose_config("onpolicy", ["onpolicy.score=nope"]), tmp_path)


@pytest.mark.slow  # the real command in a subprocess (~25 s)
def test_onpolicy_rounds_resume_after_a_kill(labelled_store, tmp_path):
    """The real command, killed while it samples round 1, then run again on its directory: the same rounds.json
    (wall times aside), round stores and test metrics as an uninterrupted run; round 0 is not retrained."""
    straight = run_rounds(compose_config("onpolicy", overrides(labelled_store)), tmp_path / "straight")
    assert [r["round"] for r in straight] == [0, 1, 2] and all(r["trained"] for r in straight)
    assert [r["epochs"] for r in straight] == [1, 2, 3] and "test" in straight[2] and "test" not in straight[1]
    for r in straight[1:]:
        assert r["visited"] == 8 and r["selected"] == 2 and r["teacher_hessians"] == 2  # 2 starts × 8/2 snapshots
        assert r["score_eV_per_A"]["min"] > 0
        with HessianStore(r["store"]) as store:
            assert store.info_values("origin") == [ON_POLICY] * 2 and store.is_complete("ani1x")
            scores = store.info_values("score")
            assert scores == sorted(scores, reverse=True)  # best first

    killed = tmp_path / "killed"
    cmd = [sys.executable, "-m", "hessdistill.cli.onpolicy", *overrides(labelled_store), f"hydra.run.dir={killed}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    log = open(tmp_path / "killed.log", "w")
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT)
    parts = killed / "rounds" / "round-1.h5.parts"
    deadline = time.time() + 120
    while not parts.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=30) == -signal.SIGKILL, (tmp_path / "killed.log").read_text()[-2000:]
    log.close()
    before = json.loads((killed / "rounds.json").read_text())
    assert [r["round"] for r in before] == [0] and before[0]["trained"]  # killed inside round 1
    assert not (killed / "rounds" / "round-1.h5").exists()

    resumed = run_rounds(compose_config("onpolicy", overrides(labelled_store)), killed)
    assert resumed[0] == before[0]  # round 0 was not trained again
    assert comparable(resumed) == comparable(straight)
    for a, b in zip(straight[1:], resumed[1:]):
        content_a, content_b = store_content(a["store"]), store_content(b["store"])
        assert content_a["info"] == content_b["info"]
        for key in ("positions", "teacher", "hessian"):
            np.testing.assert_allclose(np.asarray(content_a[key]), np.asarray(content_b[key]), rtol=1e-6, atol=1e-9)
    assert not parts.exists()
