"""``hessdistill-fetch``: download foundation-model weights into their caches now, e.g. on a cluster's login node
before jobs run offline on its compute nodes (or to copy the caches to a machine without network).

    hessdistill-fetch ani2x mace_off:large mace_mp:medium

Names: ani2x (into ``teachers.weights.cache_dir()/ani``), and ``<family>:<size>`` of the MACE foundation families
mace_off, mace_mp, mace_omol (into mace-torch's cache; the size as in ``teacher.size``, default in ``DEFAULT_SIZE``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

DEFAULT_SIZE = {"mace_off": "medium", "mace_mp": "medium", "mace_omol": "extra_large"}


def fetch(name: str) -> Path:
    """Download (unless cached) the weights named ``name`` and return the file they are in."""
    # imported here, not at the top: the hessdistill.teachers package imports torch, which --help does not need
    from hessdistill.teachers.weights import (
        ANI_INFO,
        MACE_FAMILIES,
        ani_info_file,
        load_mace_foundation,
        mace_cache_file,
    )

    family, _, size = name.partition(":")
    if family in ANI_INFO and not size:
        return ani_info_file(family)
    if family in MACE_FAMILIES:
        size = size or DEFAULT_SIZE[family]
        load_mace_foundation(family, size)
        return mace_cache_file(family, size)
    raise ValueError(f"unknown model {name!r}: choose ani2x or <family>:<size> with a family of "
                     f"{', '.join(MACE_FAMILIES)} (e.g. mace_off:large)")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="hessdistill-fetch", description=__doc__.split("\n")[0])
    p.add_argument("models", nargs="+", help="ani2x, mace_off:<size>, mace_mp:<size>, mace_omol:<size>")
    for name in p.parse_args(argv).models:
        print(f"{name}: {fetch(name)}")


if __name__ == "__main__":
    main()
