"""Foundation-model weights by name: from the library's own cache, downloaded into it on first use, or from a local
file the user names.

* MACE foundation models (MACE-OFF23, MACE-MP, MACE-OMOL) load through mace-torch's own loaders (``mace_off``,
  ``mace_mp``, ``mace_omol`` with ``return_raw_model=True``), which keep models in mace-torch's cache
  (``$XDG_CACHE_HOME/mace``, else ``~/.cache/mace``) and download a missing one there.
* ANI-1x and ANI-1ccx ship inside the torchani 2.0 wheel. ANI-2x does not: its NeuroChem resources are the
  ani-model-zoo archive that newer torchani releases download (``ANI2X_URL``); ``ani_info_file`` fetches it once
  into our cache (``cache_dir()``: ``$HESSDISTILL_CACHE``, else ``$XDG_CACHE_HOME/hessdistill``, else
  ``~/.cache/hessdistill``), under ``ani/``.

Offline, a model missing from its cache raises ``MissingWeightsError``: one line naming the model, the file
expected and the command that downloads it (run it where the network is and copy the cache folder over, or name a
local file in the teacher's config).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import urllib.request
import zipfile
from importlib import resources
from pathlib import Path, PurePosixPath

import torch

ANI2X_URL = "https://github.com/aiqm/ani-model-zoo/archive/ani-2x.zip"
ANI_INFO = {"ani1x": "ani-1x_8x.info", "ani1ccx": "ani-1ccx_8x.info", "ani2x": "ani-2x_8x.info"}
BUNDLED_ANI = ("ani1x", "ani1ccx")  # inside the torchani==2.0 wheel
# mace-torch keeps the MACE-OMOL URL inside ``mace_omol()`` (no module-level table, unlike MACE-OFF and MACE-MP)
MACE_OMOL_URLS = {"extra_large": "https://github.com/ACEsuit/mace-foundations/releases/download/mace_omol_0/"
                                 "MACE-omol-0-extra-large-1024.model"}
MACE_FAMILIES = ("mace_off", "mace_mp", "mace_omol")
DOWNLOAD_TIMEOUT_S = 120


class MissingWeightsError(FileNotFoundError):
    """A model's weights are neither where they were expected nor downloadable; the message says how to get them."""


def cache_dir() -> Path:
    """Our cache folder: ``$HESSDISTILL_CACHE``, else ``$XDG_CACHE_HOME/hessdistill``, else ``~/.cache/hessdistill``."""
    if os.environ.get("HESSDISTILL_CACHE"):
        return Path(os.environ["HESSDISTILL_CACHE"]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser() / "hessdistill"


def download(url: str, path: Path) -> None:
    """Fetch ``url`` into ``path`` (urllib, ``DOWNLOAD_TIMEOUT_S`` per read)."""
    with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as response, open(path, "wb") as out:
        shutil.copyfileobj(response, out)


# ---- MACE ------------------------------------------------------------------------------------------------------
def mace_urls(family: str) -> dict[str, str]:
    """The model names of a MACE family and their download URLs, as the installed mace-torch knows them."""
    from mace.calculators import foundations_models

    tables = {"mace_off": foundations_models.mace_off_urls, "mace_mp": foundations_models.mace_mp_urls,
              "mace_omol": MACE_OMOL_URLS}
    if family not in tables:
        raise ValueError(f"unknown MACE foundation family {family!r}; choose one of {', '.join(MACE_FAMILIES)}")
    if not hasattr(foundations_models, family):
        raise ValueError(f"the installed mace-torch has no {family}() loader: upgrade mace-torch")
    return tables[family]


def mace_cache_file(family: str, size: str) -> Path:
    """Where mace-torch's loader keeps (or will download) model ``size`` of ``family`` (its own naming rule)."""
    from mace.calculators import foundations_models
    from mace.tools.utils import get_cache_dir

    url = mace_urls(family)[size]
    if family == "mace_mp":
        if size == "medium-mpa-0" and os.path.isfile(foundations_models.local_model_path):
            return Path(foundations_models.local_model_path)
        return Path(get_cache_dir()) / "".join(c for c in os.path.basename(url) if c.isalnum() or c == "_")
    return Path(get_cache_dir()) / os.path.basename(url).split("?")[0]


def mace_download_command(family: str, size: str) -> str:
    return f"python -c \"from mace.calculators import {family}; {family}('{size}')\""


def load_mace_foundation(family: str, size: str) -> torch.nn.Module:
    """MACE foundation model ``size`` of ``family`` (mace_off, mace_mp, mace_omol) by mace-torch's own loader, on the
    CPU: from mace-torch's cache, downloaded there first if missing. MissingWeightsError (one line) if it can be had
    neither way."""
    from mace.calculators import foundations_models

    urls = mace_urls(family)
    if size not in urls:
        raise ValueError(f"{family}: unknown model {size!r}; the installed mace-torch knows {', '.join(urls)}")
    path = mace_cache_file(family, size)
    try:
        return getattr(foundations_models, family)(model=size, device="cpu", return_raw_model=True)
    except Exception as exc:  # mace-torch wraps every failure in RuntimeError; the cause says what went wrong
        cause = exc.__cause__ or exc
        if path.is_file():
            raise MissingWeightsError(f"{family} {size!r}: cannot load {path} ({type(cause).__name__}: {cause}); "
                                      f"delete it and download again with: {mace_download_command(family, size)}") \
                from exc
        raise MissingWeightsError(
            f"{family} {size!r}: no weights at {path}, and downloading {urls[size]} failed "
            f"({type(cause).__name__}: {cause}); download them where the network is with: "
            f"{mace_download_command(family, size)} (then copy {path.parent}), or set teacher.model=<a .model file>"
        ) from exc


# ---- ANI ---------------------------------------------------------------------------------------------------------
def ani_info_file(model: str, info_file: str | Path | None = None) -> Path:
    """The NeuroChem ``.info`` file of ANI ``model``: ``info_file`` when given; ANI-1x/1ccx from the torchani wheel;
    ANI-2x from our cache, fetched there first if missing (``fetch_ani_resources``)."""
    if info_file is not None:
        path = Path(info_file).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"ANI info file not found: {path} (teacher.info_file; null: {model} from "
                                    f"{'the torchani wheel' if model in BUNDLED_ANI else 'the cache'})")
        return path
    if model not in ANI_INFO:
        raise ValueError(f"unknown ANI model {model!r}; choose one of {', '.join(ANI_INFO)} or pass info_file=")
    if model in BUNDLED_ANI:
        return Path(str(resources.files("torchani") / "resources" / ANI_INFO[model]))
    path = cache_dir() / "ani" / ANI_INFO[model]
    if not path.is_file():
        fetch_ani_resources(path.parent, model)
    return path


def fetch_ani_resources(folder: Path, model: str = "ani2x") -> Path:
    """Download the ani-model-zoo archive (``ANI2X_URL``, what torchani ≥ 2.2 downloads) and unpack its
    ``resources/`` into ``folder``, atomically (unpacked beside it, then renamed). MissingWeightsError if offline."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    try:
        with tempfile.TemporaryDirectory(dir=folder.parent, prefix=".ani-download-") as tmp:
            archive = Path(tmp) / "ani-model-zoo.zip"
            download(ANI2X_URL, archive)
            unpacked = unpack_resources(archive, Path(tmp) / "resources")
            if not (unpacked / ANI_INFO[model]).is_file():
                raise OSError(f"{ANI2X_URL} holds no resources/{ANI_INFO[model]}")
            if folder.exists():  # an earlier folder without this model: replace it with the complete one
                shutil.rmtree(folder)
            os.replace(unpacked, folder)
    except (OSError, zipfile.BadZipFile) as exc:
        raise MissingWeightsError(
            f"{model}: no weights at {folder / ANI_INFO[model]}, and downloading {ANI2X_URL} failed "
            f"({type(exc).__name__}: {exc}); download them where the network is with: hessdistill-fetch {model} "
            f"(then copy {folder}), or set teacher.info_file=<folder>/{ANI_INFO[model]}") from exc
    return folder


def unpack_resources(archive: Path, folder: Path) -> Path:
    """Extract the files under ``<top>/resources/`` of a torchani resources archive into ``folder``; a member whose
    path would leave ``folder`` is refused."""
    with zipfile.ZipFile(archive) as zf:
        for member in zf.infolist():
            parts = PurePosixPath(member.filename).parts
            if len(parts) < 3 or parts[1] != "resources" or member.is_dir():
                continue
            relative = PurePosixPath(*parts[2:])
            if relative.is_absolute() or ".." in relative.parts:
                raise zipfile.BadZipFile(f"{archive}: member {member.filename!r} leaves the resources folder")
            target = folder.joinpath(*relative.parts)
            target.parent.mkdir(parents=True, exist_ok=True)
            with zf.open(member) as src, open(target, "wb") as dst:
                shutil.copyfileobj(src, dst)
    return folder
