"""Progress of the long passes over data (reading a source, writing a store, scanning one): tqdm bars on stderr
with counts, rates and, where the total is known, an ETA. Passes shorter than ``DELAY`` seconds print nothing."""

from __future__ import annotations

from tqdm import tqdm

DELAY = 2.0  # s before a bar appears: the small files of tests and demos stay quiet


def progress(iterable=None, *, desc: str, unit: str, total: float | None = None, **options) -> tqdm:
    """A tqdm bar (or wrapped ``iterable``) named ``desc`` counting ``unit``s out of ``total`` (None: unknown)."""
    return tqdm(iterable, total=total, desc=desc, unit=unit, delay=DELAY, mininterval=DELAY, dynamic_ncols=True,
                **options)
