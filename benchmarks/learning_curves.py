"""Learning curves of several training runs in one figure (#28: "a reader sees both converged"): validation force
MAE (or any logged metric) against epoch, per label the mean of its runs (e.g. the seeds of a variant) with their
min–max band, and a table of each label's last and best values and the epoch of the best.

    # undistilled vs Hessian KD, 3 seeds each, from reach_teacher.py's output (globs are expanded)
    python benchmarks/learning_curves.py --out outputs/curves.png \\
        "undistilled=outputs/reach_teacher/painn_small/undistilled/seed*" \\
        "Hessian KD=outputs/reach_teacher/painn_small/hessian_s4/kd3-seed*"
"""

from __future__ import annotations

import argparse
import glob
import sys

import numpy as np

from hessdistill.evaluation.learning_curves import mean_curve, plot_learning_curves, read_curve


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", metavar="LABEL=RUN_DIR[,RUN_DIR…]", help="run directories (globs) per label")
    p.add_argument("--metric", default="val/force_mae")
    p.add_argument("--unit", default="meV/Å")
    p.add_argument("--linear", action="store_true", help="linear y axis (default: log)")
    p.add_argument("--title", default="")
    p.add_argument("--out", default="outputs/learning_curves.png")
    return p.parse_args(argv)


def labelled_runs(specs: list[str]) -> dict[str, list[str]]:
    out = {}
    for spec in specs:
        label, sep, paths = spec.partition("=")
        if not sep or not paths:
            sys.exit(f"{spec!r}: expected LABEL=RUN_DIR[,RUN_DIR…]")
        out[label] = sorted(d for pattern in paths.split(",") for d in (glob.glob(pattern) or [pattern]))
    return out


def main(argv=None) -> None:
    args = parse_args(argv)
    runs = {label: [read_curve(d, args.metric) for d in dirs] for label, dirs in labelled_runs(args.runs).items()}
    path = plot_learning_curves(args.out, runs, args.metric, args.unit, not args.linear, args.title)
    print(f"| label | runs | epochs | last {args.metric} | best | best epoch |\n|---|---|---|---|---|---|")
    for label, curves in runs.items():
        epochs, mean, _, _ = mean_curve(curves)
        best = int(np.argmin(mean))
        print(f"| {label} | {len(curves)} | {int(epochs[-1]) + 1} | {mean[-1]:.4g} | {mean[best]:.4g} | "
              f"{int(epochs[best]) + 1} |")
    print(f"figure: {path}")


if __name__ == "__main__":
    main()
