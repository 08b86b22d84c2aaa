"""``hessdistill-summarize``: a sweep of training runs as one table.

    hessdistill-train --multirun experiment=demo seed=0,1,2 weights.hessian=1,3,10
    hessdistill-summarize multirun/<time>                  # one row per λ_KD: mean ± std over the 3 seeds, n
    hessdistill-summarize outputs/demo_hcno --csv runs.csv   # every run under a folder; the groups also as CSV

The columns are the settings that differ between the runs (their command-line overrides), then the test metrics with
units; runs that differ only in ``--over`` (default: seed) are one row. In Python: ``hd.summarize(folder)``.
"""

from __future__ import annotations

import argparse
import sys


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="hessdistill-summarize", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", help="a multirun folder (multirun/<time>) or any folder of training runs")
    parser.add_argument("--over", nargs="+", default=["seed"], metavar="KEY",
                        help="settings averaged over instead of tabled (default: seed)")
    parser.add_argument("--csv", metavar="FILE", help="also write the table's groups (means, stds, n) as CSV")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    from hessdistill.evaluation.run_folder import RunFolderError  # after --help: these import torch
    from hessdistill.evaluation.sweeps import summarize

    try:
        summary = summarize(args.folder, over=tuple(args.over))
    except (FileNotFoundError, RunFolderError) as exc:
        sys.exit(f"hessdistill-summarize: {exc}")
    print(summary.table())
    if args.csv:
        print(f"\n(groups written to {summary.write_csv(args.csv)})")


if __name__ == "__main__":
    main()
