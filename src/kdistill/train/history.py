"""What a training run records: every optimizer step's loss parts, each epoch's means, each evaluation."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

__all__ = ["History", "StepRecorder"]


@dataclass
class History:
    """What happened during a run, for plots and reports.

    Attributes:
        steps: one record per optimizer step: ``step``, ``epoch``, ``loss`` (the objective's
            total), each term's unweighted value by name, and ``lr``.
        epochs: one record per epoch with the mean of each of those values.
        evals: one record per evaluation: ``step``, ``epoch`` and what ``eval_fn`` returned.
        skipped_steps: updates dropped for a non-finite loss (``on_nonfinite="skip"``).
        seconds: the wall time of training (evaluations included), over every resumption.
    """

    steps: list[dict[str, float]] = field(default_factory=list)
    epochs: list[dict[str, float]] = field(default_factory=list)
    evals: list[dict[str, float]] = field(default_factory=list)
    skipped_steps: int = 0
    seconds: float = 0.0

    def series(self, key: str) -> list[float]:
        """The values of ``key`` over the optimizer steps, e.g. ``history.series("kd")``."""
        return [record[key] for record in self.steps if key in record]

    def close_epoch(self, epoch: int, step: int) -> dict[str, float] | None:
        """Add the epoch's means (once); return them, or None when the epoch made no step."""
        records = [r for r in self.steps if r["epoch"] == epoch]
        if not records or any(e["epoch"] == epoch for e in self.epochs):
            return None
        summary = {"epoch": float(epoch), "step": float(step)}
        for key in records[0]:
            if key not in ("step", "epoch"):
                summary[key] = sum(r[key] for r in records) / len(records)
        self.epochs.append(summary)
        return summary

    def state(self) -> dict[str, list[dict[str, float]]]:
        """What a checkpoint keeps of the history."""
        return {"steps": self.steps, "epochs": self.epochs, "evals": self.evals}


class StepRecorder:
    """Optimizer steps' loss values wait on the device and reach the history in one sync every
    ``log_every`` steps: reading a value forces the device to finish, so it is not done each step.

    Args:
        history: where the records go.
        reduce: averages a ``(steps, parts)`` tensor over processes (identity for one process).
        bar: the progress bar to advance (or None).
    """

    def __init__(self, history: History, reduce: Any, bar: Any = None) -> None:
        self.history, self.reduce, self.bar = history, reduce, bar
        self.pending: list[tuple[int, int, float, dict[str, Tensor], Tensor]] = []

    def add(self, step: int, epoch: int, lr: float, parts: dict[str, Tensor], total: Tensor) -> None:
        self.pending.append((step, epoch, lr, parts, total))

    def flush(self) -> None:
        """Move pending step records (device tensors) into the history in one sync."""
        if not self.pending:
            return
        names = list(self.pending[0][3])
        values = torch.stack([torch.stack([record[4]] + [record[3][n] for n in names]) for record in self.pending])
        rows = self.reduce(values).tolist()
        for (step, epoch, lr, _, _), row in zip(self.pending, rows):
            record = {"step": float(step), "epoch": float(epoch), "loss": row[0], "lr": lr}
            record.update(zip(names, row[1:]))
            self.history.steps.append(record)
        if self.bar is not None:
            self.bar.update(len(self.pending))
            self.bar.set_postfix(loss=f"{sum(r[0] for r in rows) / len(rows):.4f}")
        self.pending.clear()
