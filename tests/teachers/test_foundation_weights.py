"""Foundation-model teachers by name: mace-torch's loaders and cache (downloads faked by monkeypatch with a real small
MACE file), the ANI-2x resources fetched into our cache, the one-line offline errors, and shipped configs that point
at nothing outside the package."""

from __future__ import annotations

import os
import shutil
import urllib.error
import zipfile
from pathlib import Path

import pytest
import torch

from conftest import compose_config, make_batch, rattled, shared_file
from hessdistill.config import CONFIG_DIR
from hessdistill.teachers import instantiate_teacher, weights
from hessdistill.teachers.weights import MissingWeightsError

pytest.importorskip("mace")


@pytest.fixture
def mace_cache(tmp_path, monkeypatch) -> Path:
    """An empty mace-torch cache (mace-torch reads XDG_CACHE_HOME at each call)."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    return tmp_path / "xdg" / "mace"


def fake_mace_download(monkeypatch, source: Path | None) -> list[tuple[str, str]]:
    """Replace mace-torch's downloader: record (url, file) and copy ``source`` there, or fail as offline (None)."""
    from mace.calculators import foundations_models

    calls = []

    def download(url, filename, timeout=None):
        calls.append((url, filename))
        if source is None:
            raise urllib.error.URLError("[Errno -2] Name or service not known")
        shutil.copyfile(source, filename)
        return filename, "Content-Type: application/octet-stream"

    monkeypatch.setattr(foundations_models, "_urlretrieve_with_timeout", download)
    return calls


@pytest.mark.parametrize("family, size, cached_as", [
    ("mace_off", "large", "MACE-OFF23_large.model"),
    ("mace_mp", "medium", "20231203mace128L1_epoch199model"),  # mace_mp's own rule: the URL's name, alphanumerics
])
def test_mace_by_name_downloads_into_the_mace_cache_once_then_loads_from_it(family, size, cached_as, mace_cache,
                                                                            monkeypatch):
    model_file = shared_file("teachers/mace_spice_test.model")  # stands in for the foundation model's weights
    from mace.calculators import foundations_models

    from hessdistill.teachers.mace import MACEFoundationTeacher, MACETeacher

    calls = fake_mace_download(monkeypatch, model_file)
    url = getattr(foundations_models, f"{family}_urls")[size]
    cfg = compose_config("precompute", [f"teacher={family}", f"teacher.size={size}"])
    assert cfg.teacher.name == f"{family}_{size}"
    teacher = instantiate_teacher(cfg.teacher)
    assert isinstance(teacher, MACEFoundationTeacher)
    assert calls == [(url, str(mace_cache / cached_as))]
    assert weights.mace_cache_file(family, size) == mace_cache / cached_as
    batch = make_batch([rattled("CH3OH", seed=3)])
    reference = MACETeacher(str(model_file)).energy_forces(batch)
    for got, want in zip(teacher.energy_forces(batch), reference):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-10)
    MACEFoundationTeacher(family, size)  # second use: from the cache, no download
    assert len(calls) == 1


def test_paper_teacher_configs_resolve_by_name():
    off, mp = (compose_config("precompute", [f"teacher={t}"]).teacher for t in ("mace_off_large", "mace_mp0"))
    assert (off.family, off.size, off.name, off.model) == ("mace_off", "large", "mace_off_large", None)
    assert (mp.family, mp.size, mp.name, mp.model) == ("mace_mp", "medium", "mace_mp0", None)


def test_mace_offline_is_one_line_naming_model_file_and_download_call(mace_cache, monkeypatch):
    calls = fake_mace_download(monkeypatch, None)
    cfg = compose_config("precompute", ["teacher=mace_off", "teacher.size=large"])
    with pytest.raises(MissingWeightsError) as info:
        instantiate_teacher(cfg.teacher)  # Hydra's wrapper is taken off: the user sees the one line
    message = str(info.value)
    assert "\n" not in message and calls and not (mace_cache / "MACE-OFF23_large.model").exists()
    assert f"no weights at {mace_cache / 'MACE-OFF23_large.model'}" in message
    assert "python -c \"from mace.calculators import mace_off; mace_off('large')\"" in message
    assert "Name or service not known" in message and "teacher.model=" in message
    with pytest.raises(ValueError, match="mace_mp: unknown model 'huge'; the installed mace-torch knows small, "):
        weights.load_mace_foundation("mace_mp", "huge")


def test_a_local_model_file_is_used_instead_of_the_cache(mace_cache, monkeypatch):
    model_file = shared_file("teachers/mace_spice_test.model")
    calls = fake_mace_download(monkeypatch, None)
    cfg = compose_config("precompute", ["teacher=mace_off", f"teacher.model={model_file}"])
    teacher = instantiate_teacher(cfg.teacher)
    assert not calls and teacher.name == "mace_off_medium" and {1, 6, 8} <= set(teacher.elements)


# ---- ANI-2x ------------------------------------------------------------------------------------------------------
def model_zoo_archive(resources: Path, path: Path) -> Path:
    """An archive laid out like ani-model-zoo's (``ani-model-zoo-ani-2x/resources/...``), holding ANI-2x's constants,
    self energies and its first ensemble member (``train0``) from the real resources folder."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        for file in sorted(resources.rglob("*")):
            relative = file.relative_to(resources)
            if file.is_file() and (len(relative.parts) < 3 or relative.parts[1] == "train0"):
                zf.write(file, f"ani-model-zoo-ani-2x/resources/{relative.as_posix()}")
    return path


def test_ani2x_resources_are_fetched_into_the_cache_once(tmp_path, monkeypatch):
    resources = shared_file("teachers/torchani_resources")
    from hessdistill.teachers.ani import ANITeacher

    archive = model_zoo_archive(resources, tmp_path / "zoo.zip")
    calls = []
    monkeypatch.setenv("HESSDISTILL_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(weights, "download", lambda url, path: calls.append(url) or shutil.copyfile(archive, path))
    teacher = ANITeacher("ani2x", ensemble_size=1)
    assert calls == [weights.ANI2X_URL]
    assert (tmp_path / "cache" / "ani" / "ani-2x_8x.info").is_file()
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == ["ani"]  # no partial download left beside it
    assert teacher.elements == frozenset({1, 6, 7, 8, 9, 16, 17})
    local = ANITeacher("ani2x", info_file=str(resources / "ani-2x_8x.info"), ensemble_size=1)
    batch = make_batch([rattled("CH3SH", seed=1)])
    torch.testing.assert_close(teacher.energy_forces(batch)[1], local.energy_forces(batch)[1], rtol=0, atol=0)
    ANITeacher("ani2x", ensemble_size=1)
    assert len(calls) == 1  # from the cache


def test_ani2x_offline_is_one_line_and_leaves_nothing(tmp_path, monkeypatch):
    from hessdistill.teachers.ani import ANITeacher

    def offline(url, path):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setenv("HESSDISTILL_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(weights, "download", offline)
    cfg = compose_config("precompute", ["teacher=ani2x"])
    assert cfg.teacher.info_file is None or "HESSDISTILL_ANI2X_INFO" in os.environ
    with pytest.raises(MissingWeightsError) as info:
        ANITeacher("ani2x")
    message = str(info.value)
    assert "\n" not in message and f"no weights at {tmp_path / 'cache' / 'ani' / 'ani-2x_8x.info'}" in message
    assert "hessdistill-fetch ani2x" in message and weights.ANI2X_URL in message and "teacher.info_file=" in message
    assert [p.name for p in (tmp_path / "cache").iterdir()] == []


def test_archive_members_outside_resources_are_refused(tmp_path):
    archive = tmp_path / "evil.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("ani-model-zoo-ani-2x/resources/../../escaped.txt", "x")
    with pytest.raises(zipfile.BadZipFile, match="leaves the resources folder"):
        weights.unpack_resources(archive, tmp_path / "out")
    assert not list(tmp_path.rglob("escaped.txt"))


def test_fetch_command_names_the_files(tmp_path, monkeypatch, capsys):
    from hessdistill.cli.fetch import main

    model_file = shared_file("teachers/mace_spice_test.model")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    fake_mace_download(monkeypatch, model_file)
    main(["mace_off:small"])
    out = capsys.readouterr().out.strip().splitlines()  # mace-torch's own lines (the model's license) come first
    assert "Academic Software License" in "".join(out)
    assert out[-1] == f"mace_off:small: {tmp_path / 'mace' / 'MACE-OFF23_small.model'}"
    with pytest.raises(ValueError, match="unknown model 'orb'"):
        main(["orb"])


def test_no_shipped_config_points_outside_the_package():
    """Defaults resolve inside the package, the user's cache or the working directory: nothing names ../ (a folder
    that exists only beside a developer's checkout)."""
    offenders = [f"{path.relative_to(CONFIG_DIR)}: {line.strip()}" for path in sorted(Path(CONFIG_DIR).rglob("*.yaml"))
                 for line in path.read_text().splitlines()
                 if "../" in line.split("#")[0] or "shared/" in line.split("#")[0]]
    assert offenders == []
