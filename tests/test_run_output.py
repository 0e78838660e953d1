"""What a run shows: its progress bars' labels and its training curves, in the words and steps the
report uses."""

from __future__ import annotations

import sys
from types import SimpleNamespace
from typing import Any
from unittest import mock

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from kdistill.app import curves
from kdistill.train.loop import distill


class Axis:
    """Records what is drawn on it."""

    def __init__(self) -> None:
        self.lines: list[tuple[list[float], list[float], str]] = []

    def plot(self, xs: Any, ys: Any, style: str, label: str = "", **options: Any) -> None:
        self.lines.append((list(xs), list(ys), label))

    def axvline(self, x: float, **options: Any) -> None:
        self.lines.append(([x], [], "boundary"))


def _history(steps: int, evals: dict[int, float]) -> SimpleNamespace:
    return SimpleNamespace(
        steps=[{"step": float(s), "epoch": 0.0, "loss": 1.0 / s, "lr": 0.1} for s in range(1, steps + 1)],
        evals=[{"step": step, "accuracy": value} for step, value in evals.items()],
    )


def test_validation_points_sit_at_the_step_of_their_stage_as_the_report_counts_it() -> None:
    stages = [("teacher fine-tuning", _history(63, {})), ("distill", _history(63, {30: 0.7, 63: 0.8}))]
    losses, scores = Axis(), Axis()
    curves._draw_losses(losses, stages)
    curves._draw_scores(scores, stages, "accuracy")
    assert scores.lines == [([30, 63], [0.7, 0.8], "student")]  # not 93 and 126 (after the fine-tuning's 63)
    assert ([63.0], [], "boundary") in losses.lines  # the losses run on, with the stage boundary marked
    assert losses.lines[-1][0][-1] == 126.0


def test_a_teachers_scores_are_never_drawn_as_the_students() -> None:
    stages = [("teacher fine-tuning", _history(5, {5: 0.9})), ("distill", _history(5, {5: 0.6}))]
    scores = Axis()
    curves._draw_scores(scores, stages, "accuracy")
    assert [label for _, _, label in scores.lines] == ["teacher fine-tuning", "student"]


def test_two_student_stages_are_told_apart() -> None:
    stages = [("intermediate", _history(4, {4: 0.5})), ("prediction", _history(4, {4: 0.7}))]
    scores = Axis()
    curves._draw_scores(scores, stages, "accuracy")
    assert [label for _, _, label in scores.lines] == ["student (intermediate)", "student (prediction)"]


def test_a_progress_bar_takes_the_label_it_is_given(capsys: pytest.CaptureFixture[str]) -> None:
    torch.manual_seed(0)
    loader = DataLoader(TensorDataset(torch.randn(8, 4), torch.randint(0, 2, (8,))), batch_size=4)
    teacher, student = nn.Linear(4, 2), nn.Linear(4, 2)
    distill(teacher, student, loader, progress="teacher fine-tuning", log_every=1)
    bars = capsys.readouterr().err
    assert "teacher fine-tuning:" in bars and "distill:" not in bars
    distill(teacher, student, loader, progress=True, log_every=1)
    assert "distill:" in capsys.readouterr().err


def test_one_model_evaluated_alone_is_called_the_model_not_the_student() -> None:
    from kdistill.app.report import comparison_table
    from kdistill.tasks import get_task

    measured = {"perplexity": 12.5, "parameters": 1000, "size_bytes": 4000, "latency_ms": 2.0, "throughput": 50.0}
    alone = comparison_table({"student": measured}, get_task("causal_lm")).splitlines()
    assert [line.split()[0] for line in alone[1:] if line.strip() and not set(line) <= {"-", " "}] == ["model"]
    both = comparison_table({"teacher": measured, "student": measured}, get_task("causal_lm")).splitlines()
    assert [line.split()[0] for line in both[1:] if line.strip() and not set(line) <= {"-", " "}] == [
        "teacher",
        "student",
    ]


def test_an_exports_latency_table_warns_of_a_busy_machine_as_the_other_commands_do() -> None:
    from kdistill.app.export import latency_warning

    def latency(spread: float, load: float) -> dict[str, Any]:
        rows = [
            {"batch_size": 1, "backend": "pytorch", "median_ms": 2.0, "spread": 0.02, "speedup": 1.0},
            {"batch_size": 1, "backend": "onnxruntime", "median_ms": 1.0, "spread": 0.02, "speedup": 2.0},
        ]
        rows[0]["speedup_spread"], rows[1]["speedup_spread"] = None, spread
        return {"threads": 1, "load_average": load, "cpu_count": 2, "rows": rows}

    assert latency_warning(latency(0.05, 0.3)) is None
    assert "the speed-up varied by 60% between rounds" in latency_warning(latency(0.6, 0.3))
    assert "the load average was 5.0 on 2 CPUs" in latency_warning(latency(0.05, 5.0))


def test_the_runs_console_lines_go_above_the_progress_bars(tmp_path, capsys) -> None:
    """A log line written while a bar is drawn goes through tqdm.write, which clears the bar first."""
    import logging

    from tqdm import tqdm

    from kdistill.app.run_log import log_to

    with log_to(tmp_path / "run.log", console=True), tqdm(total=3, desc="distill", file=sys.stderr) as bar:
        bar.update(1)
        with mock.patch.object(tqdm, "write", wraps=tqdm.write) as written:
            logging.getLogger("kdistill.run").info("stage distill: loss = 1·ce")
    assert written.call_args.args[0] == "stage distill: loss = 1·ce"
    assert "stage distill: loss = 1·ce" in (tmp_path / "run.log").read_text(encoding="utf-8")
