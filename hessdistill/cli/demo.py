"""``hessdistill-demo``: the embedded end-to-end demo (offline, CPU, minutes).

1. builds the demo store from the demo data set shipped in the package and precomputes ANI-1x Hessians (resumable);
2. trains a small PaiNN undistilled and with Hessian distillation on the same budget;
3. prints test-split force and energy MAE of the teacher and both students.
Extra arguments are passed to both training runs as Hydra overrides (e.g. trainer.max_epochs=20).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path("outputs/demo")
RUNS = {"undistilled": "PaiNN, undistilled", "hessian": "PaiNN, Hessian KD"}


def _run(module: str, *overrides: str) -> None:
    cmd = [sys.executable, "-m", module, *overrides]
    print("+", " ".join(cmd[2:]), flush=True)
    subprocess.run(cmd, check=True)


def results_table(metrics: dict[str, dict]) -> str:
    """Markdown table of test-split MAEs: teacher row from the first run's teacher metrics, then each student."""
    first = next(iter(metrics.values()))["test"]
    lines = ["| model | force MAE (meV/Å) | energy MAE (meV/atom) | Hessian-row MAE (eV/Å²) |",
             "|---|---|---|---|",
             f"| teacher {next(iter(metrics.values()))['teacher']} | {first['test/teacher_force_mae']:.1f} | "
             f"{first['test/teacher_energy_mae']:.2f} | 0 (reference) |"]
    for name, m in metrics.items():
        t = m["test"]
        lines.append(f"| {RUNS[name]} | {t['test/force_mae']:.1f} | {t['test/energy_mae']:.2f} | "
                     f"{t.get('test/hessian_mae', float('nan')):.3f} |")
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> list[str]:
    """The Hydra overrides for both training runs; ``--help`` prints this command's own help and exits."""
    parser = argparse.ArgumentParser(prog="hessdistill-demo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="Hydra overrides passed to both training runs, e.g. trainer.max_epochs=20")
    return parser.parse_args(argv).overrides


def main(argv: list[str] | None = None) -> None:
    overrides = parse_args(sys.argv[1:] if argv is None else argv)
    _run("hessdistill.cli.precompute", "teacher=ani1x", "subset=demo_hcno")
    metrics = {}
    for distill in RUNS:
        out = ROOT / distill
        _run("hessdistill.cli.train", "experiment=demo", f"distill={distill}", f"hydra.run.dir={out}", *overrides)
        metrics[distill] = json.loads((out / "metrics.json").read_text())
    table = results_table(metrics)
    (ROOT / "results.md").write_text(table + "\n")
    print("\nTest split (ωB97X/6-31G(d) labels):\n" + table + f"\n\n(written to {ROOT / 'results.md'})")


if __name__ == "__main__":
    from hessdistill.cli.entry import run as run_command

    run_command("demo")
