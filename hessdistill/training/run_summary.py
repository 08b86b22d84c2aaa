"""The table a training run ends with: its test metrics with units, student beside teacher, how long it took, and
where its folder, checkpoints, deployed model and learning curves are."""

from __future__ import annotations

from hessdistill.metrics import metric_label
from hessdistill.tables import markdown_table

TABLE_METRICS = ("force_mae", "energy_mae", "hessian_mae")


def duration(seconds: float) -> str:
    """``12.3 s``, ``4 min 05 s``, ``2 h 03 min``."""
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    return f"{minutes // 60} h {minutes % 60:02d} min"


def _number(value) -> str:
    return "—" if value is None else f"{value:.4g}"


def summary_table(result: dict) -> str:
    """What ``hessdistill-train`` returns (``cli.train.run``) as text: a headline (run, epochs, wall time), the test
    metrics of the student (its final EMA weights) and the teacher (its labels against the reference; the teacher's
    Hessian rows are the reference), and the paths the run wrote."""
    lines = [f"{result['run_name']} ({result['distill']}, teacher {result['teacher']}): {result['epochs']} epochs in "
             f"{duration(result['wall_time_s'])}", ""]
    test = result.get("test")
    if test:
        rows = [[metric_label(name), _number(test.get(f"test/{name}")),
                 "reference" if name == "hessian_mae" else _number(test.get(f"test/teacher_{name}"))]
                for name in TABLE_METRICS if f"test/{name}" in test]
        lines += [markdown_table(["test split", "student", f"teacher {result['teacher']}"], rows), ""]
    else:
        lines += ["no test metrics (test=false)", ""]
    run_dir = result["run_dir"]
    deployed = result.get("deployed")
    lines += [f"run folder:      {run_dir}",
              f"checkpoints:     {result['checkpoint']} (final EMA weights: the test metrics), best.ckpt beside it "
              f"(lowest val/loss_ef)",
              f"deployed model:  {deployed if deployed else 'none (deploy.enabled=false, or see the warning above)'}"]
    if result.get("learning_curves"):
        lines.append(f"learning curves: {result['learning_curves']}")
    lines.append(f"metrics:         {run_dir}/metrics.json")
    return "\n".join(lines)
