"""A deployed model file (metatomic ``.pt``) handed to a user is data: one whose metadata lists a shared library is
refused before the library can run (a marker file its constructor would write stays absent) unless the user allows
that library, which then really runs; a truncated, bit-flipped or NaN-weighted file is refused with one line naming
the file."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest
import torch

from conftest import make_batch, rattled, tiny_painn
from hessdistill.integrations.deploy import DeployedModel, deploy_student
from hessdistill.integrations.deployed_file import DeployedFileError, import_metatomic, load_deployed

MARKER_LIBRARY = """
#include <stdio.h>
#include <stdlib.h>
__attribute__((constructor)) static void leave_marker(void) {
    FILE *f = fopen(getenv("HD_MARKER"), "w");
    if (f) { fputs("native code ran\\n", f); fclose(f); }
}
"""


@pytest.fixture(scope="module")
def deployed(tmp_path_factory) -> Path:
    return deploy_student(tiny_painn("conservative"), tmp_path_factory.mktemp("deployed") / "deployed.pt")


@pytest.fixture(scope="module")
def marker_library(tmp_path_factory) -> Path:
    """A shared library whose constructor writes the file named by $HD_MARKER the moment it is loaded."""
    if shutil.which("gcc") is None:
        pytest.skip("needs gcc to build a shared library that leaves a marker file when loaded")
    folder = tmp_path_factory.mktemp("library")
    (folder / "marker.c").write_text(MARKER_LIBRARY)
    library = folder / "libhd_marker.so"
    subprocess.run(["gcc", "-shared", "-fPIC", "-o", str(library), str(folder / "marker.c")], check=True)
    return library


def rewritten(source: Path, target: Path, edit) -> Path:
    """A copy of the archive ``source`` with ``edit(name, data) -> data`` applied to every entry (CRCs recomputed,
    as an attacker would)."""
    with zipfile.ZipFile(source) as old, zipfile.ZipFile(target, "w") as new:
        for info in old.infolist():
            new.writestr(info, edit(info.filename, old.read(info)))
    return target


def listing(source: Path, target: Path, library: Path, kind: str = "extensions") -> Path:
    """``source`` with ``library`` added to its metadata's ``extra/<kind>`` list (with a matching sha256)."""
    import hashlib

    record = {"name": "hd_marker", "sha256": hashlib.sha256(library.read_bytes()).hexdigest(), "path": str(library)}

    def edit(name: str, data: bytes) -> bytes:
        return json.dumps([*json.loads(data), record]).encode() if name.endswith(f"/extra/{kind}") else data

    return rewritten(source, target, edit)


@pytest.mark.parametrize("kind", ["extensions", "extensions-deps"])
def test_a_listed_shared_library_is_refused_before_it_can_run(kind, deployed, marker_library, tmp_path, monkeypatch):
    marker = tmp_path / "marker"
    monkeypatch.setenv("HD_MARKER", str(marker))
    hostile = listing(deployed, tmp_path / "hostile.pt", marker_library, kind)
    import hessdistill as hd

    for load in (load_deployed, DeployedModel, hd.deployed_calculator):
        with pytest.raises(DeployedFileError, match=rf"hostile.pt: lists the shared library 'hd_marker' "
                                                    rf"\({marker_library}\) in extra/{kind}, native code .*refused"):
            load(hostile)
        assert not marker.exists()
    assert str(marker_library) not in torch.ops.loaded_libraries


ALLOWED = textwrap.dedent("""
    import os, sys
    sys.path.insert(0, {tests!r})
    import torch
    from conftest import make_batch, rattled
    from hessdistill.integrations.deploy import DeployedModel
    for path, allow in {cases!r}:
        model = DeployedModel(path, allow_extensions=[allow])
        energy, _ = model.energy_forces(make_batch([rattled("CH4")]))
        print(os.path.exists({marker!r}), float(energy[0]))
        os.remove({marker!r})
""")


def test_a_library_the_user_allows_is_loaded(deployed, marker_library, tmp_path):
    """The marker library really runs when loaded (so the refusal above proves something), allowed by name, or by
    the path of the user's own copy (another library: one loaded stays loaded); the model then gives the deployed
    student's energy. In a fresh process, which the libraries do not outlive."""
    marker = tmp_path / "marker"
    copy = tmp_path / "libhd_marker_copy.so"
    shutil.copy(marker_library, copy)
    by_name = listing(deployed, tmp_path / "by_name.pt", marker_library)
    by_path = rewritten(by_name, tmp_path / "by_path.pt",
                        lambda name, data: data.replace(b'"hd_marker"', b'"hd_marker_copy"')
                        if name.endswith("/extra/extensions") else data)
    cases = [(str(by_name), "hd_marker"), (str(by_path), str(copy))]
    script = ALLOWED.format(tests=str(Path(__file__).parents[1]), marker=str(marker), cases=cases)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "HD_MARKER": str(marker)})
    assert out.returncode == 0, out.stderr[-2000:]
    (expected, _) = DeployedModel(deployed).energy_forces(make_batch([rattled("CH4")]))
    lines = out.stdout.split("\n")[-3:-1]
    assert [line.split()[0] for line in lines] == ["True", "True"]
    for line in lines:
        assert float(line.split()[1]) == pytest.approx(float(expected[0]), rel=1e-12)


def test_a_truncated_file_is_refused_in_one_line_naming_it(deployed, tmp_path):
    data = deployed.read_bytes()
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(DeployedFileError, match=r"truncated.pt: not a complete deployed model file") as err:
        DeployedModel(truncated)
    assert "\n" not in str(err.value)


def test_a_flipped_bit_is_refused_naming_the_damaged_entry(deployed, tmp_path):
    """torch.jit.load itself does not check the archive's CRC-32s: a flipped weight bit would load and predict."""
    flipped = tmp_path / "flipped.pt"
    shutil.copy(deployed, flipped)
    with zipfile.ZipFile(deployed) as archive:
        info = max((i for i in archive.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
        assert info.compress_type == zipfile.ZIP_STORED  # torch stores weights uncompressed
        name_length = len(info.filename.encode())
    with open(flipped, "r+b") as f:
        f.seek(info.header_offset + 26)
        extra_length = int.from_bytes(f.read(4)[2:], "little")
        f.seek(info.header_offset + 30 + name_length + extra_length + info.file_size // 2)
        byte = f.read(1)[0]
        f.seek(-1, 1)
        f.write(bytes([byte ^ 0x10]))
    import_metatomic()  # its TorchScript classes, which the file uses
    torch.jit.load(str(flipped))  # what the check adds: torch alone takes the damaged file
    with pytest.raises(DeployedFileError, match=rf"flipped.pt: entry {info.filename} is damaged"):
        load_deployed(flipped)


def test_non_finite_weights_are_refused_naming_the_weight(deployed, tmp_path):
    """A file whose archive is intact but whose weights hold a NaN (written as torch writes it, CRCs right)."""
    import_metatomic()
    scripted = torch.jit.load(str(deployed))
    name, weight = next((n, p) for n, p in scripted.named_parameters() if n.endswith("embedding.weight"))
    with torch.no_grad():
        weight[6, 3] = float("nan")
    with zipfile.ZipFile(deployed) as archive:
        extra = {n.split("/extra/", 1)[1]: archive.read(n) for n in archive.namelist() if "/extra/" in n}
    nan = tmp_path / "nan.pt"
    torch.jit.save(scripted, str(nan), _extra_files=extra)
    with pytest.raises(DeployedFileError, match=rf"nan.pt: weight {name} has 1 non-finite value\(s\)"):
        DeployedModel(nan)


def test_an_archive_with_a_second_metadata_entry_is_refused(deployed, tmp_path):
    """Two entries of one name: which one a reader takes is the reader's choice, so the file is not taken at all."""
    import warnings

    doubled = tmp_path / "doubled.pt"
    shutil.copy(deployed, doubled)
    with warnings.catch_warnings(), zipfile.ZipFile(doubled, "a") as archive:
        warnings.simplefilter("ignore")  # zipfile warns about the duplicate name it is asked to write
        archive.writestr("deployed/extra/extensions", json.dumps([{"name": "x", "sha256": "", "path": "/x.so"}]))
    with pytest.raises(DeployedFileError, match=r"doubled.pt: an archive with duplicate entries or several roots"):
        load_deployed(doubled)
