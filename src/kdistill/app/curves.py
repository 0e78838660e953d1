"""The training curves of a run: every loss part over the optimizer steps, and the validation score."""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from kdistill.files.writing import write_atomic

__all__ = ["TEACHER_STAGE", "plot_curves"]

#: the name the run gives the teacher's fine-tuning among its stages (its scores are the teacher's)
TEACHER_STAGE = "teacher fine-tuning"


def _draw_losses(axis: Any, stages: Sequence[tuple[str, Any]]) -> None:
    """Every stage's loss parts one after the other on ``axis``, a dotted line where a stage ends."""
    offset = 0.0
    for stage_index, (stage_name, history) in enumerate(stages):
        steps = [record["step"] + offset for record in history.steps]
        keys = [key for key in (history.steps[0] if history.steps else {}) if key not in ("step", "epoch", "lr")]
        for key in keys:
            label = key if len(stages) == 1 else f"{stage_name}: {key}"
            axis.plot(
                steps,
                [record[key] for record in history.steps],
                "-" if key == "loss" else "--",
                label=label,
                linewidth=1.2,
            )
        if history.steps:
            offset = steps[-1]
            if stage_index < len(stages) - 1:
                axis.axvline(offset, color="grey", linewidth=0.8, linestyle=":")


def _draw_scores(axis: Any, stages: Sequence[tuple[str, Any]], metric: str) -> None:
    """Each stage's validation points of ``metric`` at the steps of that stage, as report.md counts them."""
    scored = [(name, history) for name, history in stages if any(metric in r for r in history.evals)]
    students = [name for name, _ in scored if name != TEACHER_STAGE]
    for name, history in scored:
        points = [(record["step"], record[metric]) for record in history.evals if metric in record]
        if name == TEACHER_STAGE:
            axis.plot(*zip(*points), "o-", color="tab:blue", label=name)
        else:
            label = "student" if len(students) == 1 else f"student ({name})"
            axis.plot(*zip(*points), "o-", label=label, **({"color": "tab:green"} if len(students) == 1 else {}))


def plot_curves(
    stages: Sequence[tuple[str, Any]],
    path: str | Path,
    title: str = "kdistill training",
    *,
    metric: str = "accuracy",
    teacher: float | None = None,
) -> Path:
    """A PNG of every loss part over the optimizer steps, and the student's validation score.

    Args:
        stages: ``(name, History)`` per training stage, drawn one after the other.
        path: the PNG to write.
        title: the figure's title.
        metric: the validation metric drawn (the task's primary metric).
        teacher: the teacher's score on the same split, drawn as a line to compare with.
    """
    import matplotlib

    matplotlib.use("Agg")  # no display: write files only
    import matplotlib.pyplot as plt

    figure, (loss_axis, metric_axis) = plt.subplots(1, 2, figsize=(11, 4.2))
    _draw_losses(loss_axis, stages)
    _draw_scores(metric_axis, stages, metric)
    names = [name for name, history in stages if history.steps]
    loss_axis.set_xlabel("optimizer step" + (f" ({', then '.join(names)})" if len(names) > 1 else ""))
    loss_axis.set_ylabel("loss (each part unweighted)")
    loss_axis.set_title("training loss")
    if loss_axis.lines:
        loss_axis.legend(fontsize=8)
    if teacher is not None:
        metric_axis.axhline(teacher, color="tab:blue", linestyle="--", linewidth=1.0, label="teacher")
    if metric_axis.lines:
        # the axis follows the values (0.86-0.89 stays readable), with the teacher's line in view
        metric_axis.legend(fontsize=8)
        metric_axis.margins(y=0.15)
    metric_axis.set_xlabel("optimizer step of its stage")
    metric_axis.set_ylabel(f"validation {metric}")
    metric_axis.set_title("student (and teacher) on the validation split")
    figure.suptitle(title)
    figure.tight_layout()
    image = io.BytesIO()
    figure.savefig(image, format="png", dpi=110)
    plt.close(figure)
    return write_atomic(Path(path), image.getvalue())  # never through a link at the PNG's name
