"""Evaluation figures: they leave the user's matplotlib backend alone (a notebook keeps showing its figures after
``hd.evaluate``), and the energy parity panel shows errors, not the per-element offsets of total energies."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from hessdistill.evaluation.plots import element_offsets, parity_plot, spectrum_plot


def test_importing_and_plotting_keeps_the_users_backend(tmp_path):
    script = f"""
import matplotlib
matplotlib.use("svg")
import numpy as np
from hessdistill.evaluation import plots
arrays = {{"e_ref": np.array([-1.0, -2.0]), "e_student": np.array([-1.1, -2.1]), "natoms": np.array([2.0, 3.0]),
          "composition": np.array([[2.0], [3.0]]), "f_ref": np.zeros(15), "f_student": np.ones(15)}}
plots.parity_plot({str(tmp_path / "p.png")!r}, arrays, {{"energy_mae": 1.0, "force_mae": 2.0}})
print(matplotlib.get_backend())
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert out.stdout.split()[-1] == "svg"
    assert (tmp_path / "p.png").stat().st_size > 0


def test_element_offsets_leave_only_what_the_elements_do_not_explain():
    rng = np.random.default_rng(0)
    composition = rng.integers(0, 6, size=(40, 4)).astype(float)
    references = np.array([-13.6, -1030.0, -2040.0, -12500.0])  # eV per atom of each element
    noise = rng.normal(0.0, 0.05, size=40)
    residual = composition @ references + noise - element_offsets(composition @ references + noise, composition)
    # the least-squares residual of the noise alone: per-element energies are gone, the spread is the noise's
    assert np.abs(residual).max() < 0.2
    assert residual.std() == pytest.approx(noise.std(), rel=0.2)


def test_one_molecule_reduces_to_its_mean_energy():
    energy = np.array([-100.0, -100.5, -99.5])
    assert element_offsets(energy, np.array([[3.0, 1.0]] * 3)) == pytest.approx(np.full(3, -100.0))


def test_figures_are_written(tmp_path):
    arrays = {"e_ref": np.array([-5.0, -4.0, -6.0]), "e_student": np.array([-5.01, -4.02, -6.0]),
              "e_teacher": None, "natoms": np.array([3.0, 2.0, 4.0]),
              "composition": np.array([[2.0, 1.0], [1.0, 1.0], [3.0, 1.0]]),
              "f_ref": np.zeros(27), "f_student": np.full(27, 0.01), "f_teacher": None}
    assert parity_plot(tmp_path / "parity.png", arrays, {"energy_mae": 1.0, "force_mae": 10.0}).stat().st_size > 0
    spectra = [{"name": "H2O", "teacher_cm1": np.array([-50.0, 1600.0]), "student_cm1": np.array([30.0, 1590.0])},
               {"name": "H2O", "teacher_cm1": np.array([1600.0]), "student_cm1": np.array([1610.0])}]
    assert spectrum_plot(tmp_path / "spectra.png", spectra).stat().st_size > 0
