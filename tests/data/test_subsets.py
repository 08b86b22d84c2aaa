"""Subset selectors, group/count splits, split files, building a store from a subset config, and the subset and
experiment configs (the paper's eight subsets, the S/Cl organics set) composing with the values of the paper."""

from __future__ import annotations

import json

import ase.io
import numpy as np
import pytest
from ase.build import bulk, molecule
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from conftest import rattled, shared_file
from hessdistill.config import CONFIG_DIR
from hessdistill.data import selectors as sel
from hessdistill.data.datamodule import StoreDataModule
from hessdistill.data.splits import read_split_file, split_counts, split_indices, write_split_file
from hessdistill.data.store import HessianStore, StoreError, write_structures
from hessdistill.data.structures import Structure
from hessdistill.data.subset import build_store


def structure(atoms, **info) -> Structure:
    s = Structure.from_atoms(atoms)
    s.info.update(info)
    return s


# ---- selectors -----------------------------------------------------------------------------------------------
def test_element_atom_count_and_formula_selectors():
    ch3cl, ch3sh, ch4 = (structure(molecule(n)) for n in ("CH3Cl", "CH3SH", "CH4"))
    assert sel.ContainsElements(["Cl"])(ch3cl) and not sel.ContainsElements(["Cl"])(ch3sh)
    assert sel.ContainsElements(["S", "Cl"])(ch3sh)  # any
    assert not sel.ContainsElements(["S", "Cl"], mode="all")(ch3sh)
    assert sel.ContainsElements([17, 6], mode="all")(ch3cl)  # atomic numbers work too
    assert sel.WithinElements(["H", "C"])(ch4) and not sel.WithinElements(["H", "C"])(ch3cl)
    assert sel.AtomCount(5, 5)(ch4) and not sel.AtomCount(max_atoms=4)(ch4) and sel.AtomCount(min_atoms=6)(ch3sh)
    assert sel.Formula(["CH4S"])(ch3sh) and sel.Formula(["SCH3H"])(ch3sh) and not sel.Formula(["CH4"])(ch3sh)
    doubled = structure(bulk("NaCl", "rocksalt", a=5.6, cubic=True))  # Na4Cl4
    assert sel.Formula(["NaCl"], reduced=True)(doubled) and not sel.Formula(["NaCl"])(doubled)
    with pytest.raises(ValueError, match="unknown element 'Xx'"):
        sel.ContainsElements(["Xx"])


def test_info_selectors_match_patterns_and_ranges_and_reject_missing_keys():
    a = structure(molecule("H2O"), subset="SPICE DES Monomers Single Points Dataset v1.1", bandgap=0.004)
    b = structure(molecule("H2O"), subset="SPICE Solvated Amino Acids Single Points Dataset v1.1", bandgap=1.2)
    bare = structure(molecule("H2O"))
    monomers = sel.InfoMatches("subset", ["DES Monomers"])
    assert monomers(a) and not monomers(b) and not monomers(bare)
    gap = sel.InfoRange("bandgap", min_value=0.005)
    assert not gap(a) and gap(b) and not gap(bare)
    assert sel.InfoRange("bandgap", max_value=0.005)(a)


def test_space_group_selector_finds_pm3m_and_rejects_molecules():
    cscl = structure(bulk("CsCl", "cesiumchloride", a=4.12))  # Pm-3m, 221
    nacl = structure(bulk("NaCl", "rocksalt", a=5.64))  # Fm-3m, 225
    pm3m = sel.SpaceGroup(["Pm-3m"])
    assert pm3m.space_group(cscl) == ("Pm-3m", 221) and pm3m.space_group(nacl) == ("Fm-3m", 225)
    assert pm3m(cscl) and not pm3m(nacl) and sel.SpaceGroup([225])(nacl)
    assert not pm3m(structure(molecule("CH4")))  # not periodic
    rattled_cscl = bulk("CsCl", "cesiumchloride", a=4.12).repeat(2)
    rattled_cscl.rattle(0.01, seed=0)
    assert pm3m(structure(rattled_cscl))  # within symprec 0.1 Å
    assert not sel.SpaceGroup(["Pm-3m"], symprec=1e-4)(structure(rattled_cscl))


def test_any_of_not_and_select_compose_in_order():
    structures = [structure(molecule(n), molecule=n) for n in ("CH3Cl", "CH3SH", "CH4", "H2O", "C4H4S")]
    halogen_or_sulfur = sel.AnyOf([sel.ContainsElements(["Cl"]), sel.ContainsElements(["S"])])
    kept = sel.select(structures, [halogen_or_sulfur, sel.Not(sel.AtomCount(min_atoms=9))])
    assert [s.info["molecule"] for s in kept] == ["CH3Cl", "CH3SH"]
    assert sel.select(structures, []) == structures


# ---- splits --------------------------------------------------------------------------------------------------
def test_split_counts_fractions_counts_and_rest():
    assert split_counts(100, (0.6, 0.1, 0.3)) == (60, 10, 30)
    assert split_counts(100, (0.5, 0.2, None)) == (50, 20, 30)
    assert split_counts(100, (0.5, 0.2, 0.1)) == (50, 20, 10)
    assert split_counts(6102, (600, 100, None)) == (600, 100, 5402)
    assert split_counts(1000, (600, 100, 50)) == (600, 100, 50)
    with pytest.raises(ValueError, match="more than the 10 structures"):
        split_counts(10, (8, 5, None))
    with pytest.raises(ValueError, match="integer structure counts"):
        split_counts(10, (2.5, 1, 1))
    with pytest.raises(ValueError, match="three sizes"):
        split_counts(10, (0.5, 0.5))


def test_count_split_is_deterministic_and_disjoint():
    a, b = split_indices(300, (60, 20, None), seed=1), split_indices(300, (60, 20, None), seed=1)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert [len(a[k]) for k in ("train", "val", "test")] == [60, 20, 220]
    assert len(np.unique(np.concatenate(list(a.values())))) == 300


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_group_split_keeps_each_group_in_one_split(seed):
    sizes = [30] * 10 + [5, 12, 40]
    groups = np.repeat([f"mol{k}" for k in range(len(sizes))], sizes)
    n = len(groups)
    parts = split_indices(n, (0.6, 0.1, 0.3), seed, groups=groups)
    owner = {}
    for name, idx in parts.items():
        for g in set(groups[idx]):
            assert owner.setdefault(g, name) == name, f"group {g} in {owner[g]} and {name}"
    every = np.concatenate(list(parts.values()))
    assert sorted(every) == list(range(n))  # test takes the rest: all structures used once
    assert all(len(parts[k]) for k in parts)
    assert abs(len(parts["train"]) - 0.6 * n) <= 40 and abs(len(parts["val"]) - 0.1 * n) <= 40
    again = split_indices(n, (0.6, 0.1, 0.3), seed, groups=list(groups))
    assert all(np.array_equal(parts[k], again[k]) for k in parts)


def test_split_file_round_trip_and_foreign_store(tmp_path):
    parts = split_indices(20, (0.5, 0.25, 0.25), seed=0)
    path = tmp_path / "split.json"
    write_split_file(path, parts, "abc", seed=0, split=[0.5, 0.25, 0.25])
    back = read_split_file(path, "abc", 20)
    assert all(np.array_equal(parts[k], back[k]) for k in parts)
    assert json.loads(path.read_text())["seed"] == 0
    with pytest.raises(ValueError, match="another store"):
        read_split_file(path, "other", 20)
    with pytest.raises(ValueError, match="out of range"):
        read_split_file(path, "abc", 10)
    path.write_text("{not json")
    with pytest.raises(ValueError, match="not a split file"):
        read_split_file(path, "abc", 20)


def molecule_store(path, names=("CH3Cl", "CH3SH", "H2O", "CH4"), per_molecule=5):
    structures = []
    for name in names:
        for k in range(per_molecule):
            s = structure(rattled(name, seed=k), molecule=name)
            s.energy, s.forces = -100.0 - k, np.zeros((s.n_atoms, 3))
            structures.append(s)
    write_structures(path, structures)
    return path


def test_datamodule_group_split_and_split_file_reuse(tmp_path):
    store = molecule_store(tmp_path / "s.h5")
    split_file = tmp_path / "splits" / "s.json"
    dm = StoreDataModule(str(store), split=(0.5, 0.25, 0.25), split_seed=3, cutoff=4.0, split_by="molecule",
                         split_file=str(split_file))
    molecules = HessianStore(store).info_values("molecule")
    by_split = {k: {molecules[i] for i in v} for k, v in dm.splits.items()}
    assert sorted(set().union(*by_split.values())) == ["CH3Cl", "CH3SH", "CH4", "H2O"]
    assert sum(len(v) for v in by_split.values()) == 4  # each molecule in exactly one split
    assert not (by_split["train"] & by_split["val"]) and not (by_split["train"] & by_split["test"])
    assert split_file.is_file()
    # another seed and sizes, same file: the recorded split wins (reproducible across runs)
    again = StoreDataModule(str(store), split=(0.9, 0.1, 0.0), split_seed=99, cutoff=4.0, split_file=str(split_file))
    assert all(np.array_equal(dm.splits[k], again.splits[k]) for k in dm.splits)
    other = molecule_store(tmp_path / "t.h5", names=("H2O", "CH4"))
    with pytest.raises(ValueError, match="another store"):
        StoreDataModule(str(other), cutoff=4.0, split_file=str(split_file))
    with pytest.raises(StoreError, match=r"\[0\]: structure has no info key 'mp_id'"):
        StoreDataModule(str(store), cutoff=4.0, split_by="mp_id")


# ---- building a subset store from its config --------------------------------------------------------------------
def subset_config(tmp_path, extxyz, select):
    return OmegaConf.create({"name": "t", "store": str(tmp_path / "t.h5"), "select": select,
                             "source": {"_target_": "hessdistill.data.sources.ase_files.read_ase",
                                        "path": str(extxyz)}})


def test_build_store_applies_selectors_records_them_and_refuses_a_stale_store(tmp_path):
    frames = []
    for name in ("CH3Cl", "CH3SH", "H2O"):
        for k in range(2):
            s = structure(rattled(name, seed=k), molecule=name)
            s.energy, s.forces = -1.0, np.zeros((s.n_atoms, 3))
            frames.append(s.to_atoms())
    extxyz = tmp_path / "frames.extxyz"
    ase.io.write(extxyz, frames)
    chlorine = [{"_target_": "hessdistill.data.selectors.ContainsElements", "elements": ["Cl"]}]
    path = build_store(subset_config(tmp_path, extxyz, chlorine))
    with HessianStore(path) as store:
        assert store.info_values("molecule") == ["CH3Cl", "CH3Cl"]
        assert json.loads(store.file.attrs["subset_select"]) == chlorine
        assert store.file.attrs["subset_name"] == "t"
    assert build_store(subset_config(tmp_path, extxyz, chlorine)) == path  # reused as is
    with pytest.raises(StoreError, match="built with selection"):
        build_store(subset_config(tmp_path, extxyz, []))
    nothing = [{"_target_": "hessdistill.data.selectors.ContainsElements", "elements": ["I"]}]
    cfg = subset_config(tmp_path, extxyz, nothing)
    cfg.store = str(tmp_path / "none.h5")
    with pytest.raises(StoreError, match="no structures of 6"):
        build_store(cfg)


# ---- configs -----------------------------------------------------------------------------------------------------
PAPER = {  # subset: (teacher, λ_U, λ_F, λ_KD, λ_∇U, PaiNN batch, PaiNN rows, student cutoff) — paper Tables 7, 9–11
    "spice_monomers": ("mace_off_large", 5, 100, 400, 5, 8, 4, 12.0),
    "spice_solvated_amino_acids": ("mace_off_large", 5, 100, 400, 5, 8, 1, 12.0),
    "spice_iodine": ("mace_off_large", 5, 100, 400, 5, 8, 4, 12.0),
    "mptrj_pm3m": ("mace_mp0", 0, 100, 200, 0, 16, 4, 6.0),
    "mptrj_yttrium": ("mace_mp0", 0, 100, 200, 0, 16, 4, 6.0),
    "mptrj_bandgap": ("mace_mp0", 0, 100, 200, 0, 32, 4, 6.0),
    "md22_buckyball_catcher": ("jmp", 5, 100, 400, 5, 4, 1, 6.0),
    "md22_dw_nanotube": ("jmp", 5, 100, 400, 5, 4, 1, 6.0),
}


@pytest.mark.parametrize("name", sorted(PAPER))
def test_paper_experiments_compose_with_the_papers_values(name):
    teacher, w_u, w_f, w_kd, w_grad, batch, rows, cutoff = PAPER[name]
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("train", overrides=[f"experiment=paper_{name}"])
        baseline = compose("train", overrides=[f"experiment=paper_{name}", "distill=undistilled"])
        pre = compose("precompute", overrides=[f"teacher={teacher}", f"subset={name}"])
    assert cfg.teacher.name == teacher and cfg.subset.name == name and cfg.distill.name == "hessian"
    t = cfg.distill.terms
    assert (t.energy.weight, t.forces.weight, t.hessian.weight, t.energy_grad.weight) == (w_u, w_f, w_kd, w_grad)
    assert cfg.subset.batch_size == batch and t.hessian.rows == rows and cfg.student.cutoff == cutoff
    assert cfg.trainer.accelerator == "gpu" and cfg.run_name.startswith(f"{name}/paper-")
    assert cfg.run_name.endswith("-hessian") and cfg.callbacks.ema.decay == 0.999  # paper Table 8
    assert cfg.student._target_.endswith("GemNet" if name.startswith("md22") else "PaiNN")  # the paper's students
    assert "hessian" not in baseline.distill.terms and baseline.distill.terms.forces.weight == w_f
    assert pre.subset.store == cfg.subset.store == f"stores/{name}.h5"
    assert cfg.subset.source._target_.startswith("hessdistill.data.sources.")
    for spec in cfg.subset.select:  # every selector resolves to a real class with these arguments
        selector = __import__("hydra").utils.instantiate(spec)
        assert callable(selector)


def test_scl_organics_precomputes_with_ani2x_in_one_command(tmp_path):
    """``hessdistill-precompute teacher=ani2x subset=scl_organics`` on the committed frames (first 16 here)."""
    from hessdistill.cli.precompute import run
    from hessdistill.config import dataset_path

    info = shared_file("teachers/torchani_resources/ani-2x_8x.info")
    data = dataset_path("scl_organics/scl_wb97x_631gd.extxyz")
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("precompute", overrides=["teacher=ani2x", "subset=scl_organics", f"teacher.info_file={info}",
                                               f"subset.source.path={data}", "+subset.source.index=':16'",
                                               f"subset.store={tmp_path / 'scl.h5'}"])
    result = run(cfg)
    assert result["computed"] == result["total"] == 16 and result["max_asymmetry"] < 1e-3
    with HessianStore(tmp_path / "scl.h5") as store:
        assert store.teacher_done("ani2x").all()
        s = store.structure(0)
        assert {16, 17} & set(s.z.tolist())
        h = store.hessian("ani2x", 0)
        assert h.shape == (3 * s.n_atoms, 3 * s.n_atoms) and np.allclose(h, h.T, atol=1e-3)
        _, teacher_forces = store.teacher_labels("ani2x", 0)
        assert np.abs(teacher_forces - s.forces).mean() < 0.5  # ANI-2x is trained at this level of theory


def test_scl_organics_data_file_matches_its_recipe():
    from hessdistill.config import dataset_path

    frames = ase.io.read(dataset_path("scl_organics/scl_wb97x_631gd.extxyz"), ":")
    allowed = {"CH3SH", "CH3CH2SH", "CH3SCH3", "C4H4S", "C2H6SO", "CH2SCH2", "CH3Cl", "H2CCl2", "HCCl3",
               "H2CCHCl", "CH3CH2Cl", "CH3COCl", "C3H7Cl"}
    assert len(frames) >= 240
    keys = set()
    for atoms in frames:
        info = atoms.info
        assert info["molecule"] in allowed and 1 <= int(info["seed"]) <= 999
        assert info["xc"] == "wb97x" and info["basis"] == "6-31g*"
        assert sorted(atoms.get_chemical_symbols()) == sorted(molecule(info["molecule"]).get_chemical_symbols())
        assert {"S", "Cl"} & set(atoms.get_chemical_symbols())
        keys.add((info["molecule"], int(info["seed"]), int(info["frame"])))
        assert np.isfinite(atoms.get_forces()).all() and abs(atoms.get_forces()).max() < 20
    assert len(keys) == len(frames)  # no frame labelled twice


def test_scl_organics_390_is_the_first_three_seeds_split_as_before():
    """The grown set keeps its earlier 390 frames first: subset=scl_organics_390 reads exactly seeds 1–3 and splits
    them 234/39/117 as the earlier results did; subset=scl_organics reads every frame."""
    from conftest import compose_config
    from hessdistill.data.sources.ase_files import read_ase

    old = compose_config("train", ["subset=scl_organics_390"]).subset
    grown = compose_config("train", ["subset=scl_organics"]).subset
    assert old.store == "stores/scl_organics_390.h5" and grown.store == "stores/scl_organics.h5"
    source = OmegaConf.to_container(old.source, resolve=True)
    source.pop("_target_")
    seeds = {int(s.info["seed"]) for s in read_ase(**source)}
    assert seeds == {1, 2, 3}
    assert len(list(read_ase(**source))) == 390
    assert split_counts(390, tuple(old.split)) == (234, 39, 117)
    assert sum(1 for _ in ase.io.iread(grown.source.path)) > 390
