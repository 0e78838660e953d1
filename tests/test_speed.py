"""One definition of speed: models timed in alternating rounds on one batch, the speed-up the median of
the rounds' ratios with its spread, the conditions recorded, and a warning when the machine was busy."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from kdistill.app.report import _summary, measure_models, speed_lines, speed_note, write_report
from kdistill.models import speed
from kdistill.models.speed import (
    compare_speed,
    measure_speed,
    relative_spread,
    speed_record,
    speed_warning,
    time_rounds,
)
from kdistill.tasks import get_task


class FakeClock:
    """A clock that moves only when a fake model runs: timings are exactly what the test scripts."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Scripted(nn.Module):
    """A model whose forward pass records its name and advances the fake clock by its next scripted time."""

    def __init__(
        self, name: str, calls: list[str], clock: FakeClock | None = None, times: tuple[float, ...] | list[float] = ()
    ) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))
        self.name, self.calls, self.clock, self.times = name, calls, clock, list(times)

    def forward(self, x: torch.Tensor, **token_inputs: torch.Tensor) -> torch.Tensor:
        self.calls.append(self.name)
        if self.clock is not None:
            self.clock.now += self.times.pop(0)
        return x + self.weight


@pytest.fixture
def quiet_machine(monkeypatch: pytest.MonkeyPatch) -> None:
    """A load average of 0.1: only the timings can make a measurement untrustworthy."""
    monkeypatch.setattr(speed.os, "getloadavg", lambda: (0.1, 0.1, 0.1))


def _scripted_pair(
    monkeypatch: pytest.MonkeyPatch, teacher: list[float], student: list[float]
) -> tuple[dict[str, nn.Module], list[str]]:
    clock, calls = FakeClock(), []
    monkeypatch.setattr(speed, "_clock", clock)
    warm_up = [1.0, 1.0]  # compare_speed's two untimed passes of each model
    return {
        "teacher": Scripted("teacher", calls, clock, warm_up + teacher),
        "student": Scripted("student", calls, clock, warm_up + student),
    }, calls


def test_teacher_and_student_alternate_and_neither_always_runs_first() -> None:
    calls: list[str] = []
    models = {"teacher": Scripted("teacher", calls), "student": Scripted("student", calls)}
    batch = {"x": torch.zeros(4, 3)}
    timed = compare_speed(models, batch, min_rounds=4, max_rounds=4, min_seconds=0.0, min_call_seconds=0.0)
    warm_up, rounds = calls[:4], calls[4:]
    assert warm_up == ["teacher", "teacher", "student", "student"]
    assert rounds == ["teacher", "student", "student", "teacher", "teacher", "student", "student", "teacher"]
    assert timed["teacher"]["rounds"] == timed["student"]["rounds"] == 4


def test_three_workloads_rotate_so_that_each_runs_first_in_turn() -> None:
    calls: list[str] = []
    time_rounds({n: (lambda n=n: calls.append(n)) for n in "abc"}, min_rounds=3, max_rounds=3, min_seconds=0, warmup=0)
    assert calls == ["a", "b", "c", "b", "c", "a", "c", "a", "b"]


def test_a_fast_model_runs_back_to_back_in_each_round_and_its_mean_pass_is_kept(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock, calls = FakeClock(), []
    monkeypatch.setattr(speed, "_clock", clock)

    def fast() -> None:  # a millisecond a call: ten of them make the 10 ms a round needs
        calls.append("fast")
        clock.now += 0.001

    def slow() -> None:
        calls.append("slow")
        clock.now += 0.05

    times = time_rounds({"slow": slow, "fast": fast}, min_rounds=2, max_rounds=2, min_seconds=0, min_call_seconds=0.01)
    assert calls.count("slow") == 2 + 2 and calls.count("fast") == 2 + 2 * 10
    assert times["fast"] == pytest.approx([0.001, 0.001]) and times["slow"] == pytest.approx([0.05, 0.05])


def test_the_speed_up_is_the_median_of_the_rounds_ratios(monkeypatch: pytest.MonkeyPatch) -> None:
    teacher, student = [10.0, 20.0, 30.0, 40.0, 50.0], [10.0, 5.0, 30.0, 4.0, 25.0]
    models, _ = _scripted_pair(monkeypatch, teacher, student)
    timed = compare_speed(models, {"x": torch.zeros(8, 3)}, min_rounds=5, max_rounds=5, min_seconds=0.0)
    # ratios 1, 4, 1, 10, 2: their median is 2, where the ratio of the medians (30 / 10) would be 3
    assert timed["student"]["speedup"] == pytest.approx(2.0)
    assert timed["student"]["speedup_spread"] == pytest.approx((4 - 1) / 2)
    assert timed["teacher"]["speedup"] == 1.0 and timed["teacher"]["speedup_spread"] == 0.0
    assert timed["teacher"]["latency_ms"] == pytest.approx(30_000.0)
    assert timed["student"]["latency_ms"] == pytest.approx(10_000.0)
    assert timed["student"]["throughput"] == pytest.approx(8 / 10.0)
    assert timed["teacher"]["latency_spread"] == pytest.approx((40 - 20) / 30)


def test_a_slow_spell_that_hits_both_models_of_a_round_cancels_out(monkeypatch: pytest.MonkeyPatch) -> None:
    # rounds 1 and 2 run four times slower for both models (another job started): each round's ratio stays 3
    models, _ = _scripted_pair(monkeypatch, [3.0, 12.0, 12.0, 3.0, 3.0], [1.0, 4.0, 4.0, 1.0, 1.0])
    timed = compare_speed(models, {"x": torch.zeros(2, 3)}, min_rounds=5, max_rounds=5, min_seconds=0.0)
    assert timed["student"]["speedup"] == pytest.approx(3.0) and timed["student"]["speedup_spread"] == 0.0
    assert timed["student"]["latency_spread"] == pytest.approx(3.0)  # the latency itself was noisy


def test_noisy_timings_give_a_wide_spread_and_a_warning(monkeypatch: pytest.MonkeyPatch, quiet_machine: None) -> None:
    noisy, _ = _scripted_pair(monkeypatch, [10.0] * 5, [5.0, 2.0, 9.0, 3.0, 6.0])
    record = speed_record(compare_speed(noisy, {"x": torch.zeros(2, 3)}, min_rounds=5, max_rounds=5, min_seconds=0))
    assert record["warning"] is not None
    assert "busy" in record["warning"] and "speed-up varied by" in record["warning"]
    assert "re-run with nothing else running" in record["warning"]

    steady, _ = _scripted_pair(monkeypatch, [10.0] * 5, [5.0, 5.0, 5.1, 4.9, 5.0])
    record = speed_record(compare_speed(steady, {"x": torch.zeros(2, 3)}, min_rounds=5, max_rounds=5, min_seconds=0))
    assert record["warning"] is None


def test_a_loaded_machine_is_a_warning_even_with_steady_timings() -> None:
    steady = {"teacher": {"speedup": 1.0, "speedup_spread": 0.0}, "student": {"speedup": 2.0, "speedup_spread": 0.01}}
    busy = speed_warning(steady, {"load_average": 5.3, "cpu_count": 2, "threads": 2})
    assert busy is not None and "load average was 5.3 on 2 CPUs" in busy and "OMP_NUM_THREADS=1" in busy
    assert speed_warning(steady, {"load_average": 1.9, "cpu_count": 2, "threads": 1}) is None
    # one thread already: the advice is not to use one
    assert "OMP_NUM_THREADS" not in speed_warning(steady, {"load_average": 9.0, "cpu_count": 2, "threads": 1})


def test_the_conditions_are_recorded_once(quiet_machine: None) -> None:
    calls: list[str] = []
    models = {"teacher": Scripted("teacher", calls), "student": Scripted("student", calls)}
    batch = {"x": torch.zeros(6, 3), "input_ids": torch.zeros(6, 11, dtype=torch.long)}
    record = speed_record(compare_speed(models, batch, min_rounds=3, max_rounds=3, min_seconds=0))
    assert record["batch_size"] == 6 and record["sequence_length"] == 11 and record["rounds"] == 3
    assert record["threads"] == torch.get_num_threads() and record["load_average"] == 0.1
    assert record["cpu_count"] >= 1 and record["device"] == "cpu" and "warning" in record  # real timings: noisy or not


def test_measure_speed_keeps_its_one_model_answer() -> None:
    model = nn.Linear(4, 2)
    timed = measure_speed(model, {"input": torch.zeros(5, 4)}, min_seconds=0.0, min_repeats=3, max_repeats=3)
    assert timed["batch_size"] == 5 and timed["latency_ms"] > 0 and timed["throughput"] > 0
    assert timed["rounds"] == 3 and model.training  # put back in its mode


def test_relative_spread_is_the_interquartile_range_over_the_median() -> None:
    assert relative_spread([1.0, 1.0, 2.0, 4.0, 10.0]) == pytest.approx(1.5)
    assert relative_spread([3.0]) == 0.0 and relative_spread([]) == 0.0


def test_the_notes_count_threads_and_cpus_in_words_and_say_how_it_was_measured() -> None:
    task = get_task("text_classification")
    record = {"batch_size": 32, "sequence_length": 64, "rounds": 7, "threads": 1, "load_average": 0.5, "cpu_count": 1}
    note = speed_note(task, record)
    assert "one batch of 32 examples of 64 tokens (1 thread)" in note
    assert "7 alternating rounds" in note and "median of the rounds' ratios" in note
    assert "load average 0.5 on 1 CPU" in note
    assert "(2 threads)" in speed_note(task, {**record, "threads": 2})
    assert "on 2 CPUs" in speed_note(task, {**record, "cpu_count": 2})
    assert speed_lines(task, record) == [note]
    lines = speed_lines(task, {**record, "warning": "the machine was busy while timing: ..."})
    assert lines[1] == "Warning: the machine was busy while timing: ..."


def test_the_summary_says_smaller_and_fewer_in_words_that_read_right() -> None:
    summary = _summary({"run": {"teacher": "t", "compression": 1.5, "seconds": 3}, "student": {"parameters": 10}})
    assert "1.5x smaller than the teacher, 33% fewer parameters" in summary and "x fewer" not in summary


class _NoisyTask:
    """Just enough of a task for :func:`measure_models`: metrics, and a speed measurement on a busy machine."""

    metric_columns = (("mse", "MSE"),)
    throughput_unit = "examples/s"
    primary_metric = "mse"
    higher_is_better = False
    speed_note = "Latency is the median CPU time of one batch of {batch} examples ({threads})"

    def evaluate(self, models: Any, loader: Any, *, progress: bool, desc: str) -> dict[str, dict[str, float]]:
        return {name: {"mse": 0.1} for name in models}

    def measure_speed(self, models: Any, batch: Any) -> dict[str, dict[str, Any]]:
        conditions = {"batch_size": 32, "sequence_length": 16, "rounds": 7, "threads": 2}
        conditions.update(load_average=0.2, cpu_count=2)
        return {
            "teacher": {
                "latency_ms": 9.0,
                "latency_spread": 0.4,
                "throughput": 3.5,
                "speedup": 1.0,
                "speedup_spread": 0,
            }
            | conditions,
            "student": {
                "latency_ms": 3.0,
                "latency_spread": 0.5,
                "throughput": 10,
                "speedup": 3.0,
                "speedup_spread": 0.6,
            }
            | conditions,
        }

    def extra_measurements(self, models: Any, batch: Any, options: Any = None) -> dict[str, dict[str, Any]]:
        return {}

    def extra_lines(self, metrics: Any) -> list[str]:
        return []


def test_a_busy_measurement_is_logged_and_reported(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    models = {"teacher": nn.Linear(3, 3), "student": nn.Linear(3, 1)}
    with caplog.at_level(logging.WARNING, logger="kdistill"):
        measured, record = measure_models(
            _NoisyTask(), models, {}, loader=None, probe=None, progress=False, desc="test"
        )
    assert any(r.levelno == logging.WARNING and "speed-up varied by 60%" in r.getMessage() for r in caplog.records)
    assert measured["student"]["speedup"] == 3.0 and measured["student"]["speedup_spread"] == 0.6
    assert {"batch_size", "sequence_length", "rounds", "threads", "load_average", "cpu_count", "warning"} <= set(
        record
    )
    metrics = {"run": {"teacher": "t", "compression": 12 / 4}, "data": {}, **measured, "speed": record}
    report = write_report(tmp_path / "report.md", metrics, task=_NoisyTask()).read_text()
    assert "| student |" in report and "3.00x (IQR 60%)" in report and "9.0 ms (IQR 40%)" in report
    assert "**Warning: the machine was busy while timing" in report and "(2 threads)" in report


def test_generation_speed_alternates_and_reports_the_speed_up_with_its_spread(quiet_machine: None) -> None:
    from kdistill.tasks.causal_lm.evaluation import generation_speed

    calls: list[str] = []

    class Generator(nn.Module):
        def __init__(self, name: str) -> None:
            super().__init__()
            self.name, self.weight = name, nn.Parameter(torch.zeros(1))

        def generate(self, ids: torch.Tensor, max_new_tokens: int, **options: Any) -> torch.Tensor:
            calls.append(f"{self.name}:{max_new_tokens}")
            return torch.zeros(1, ids.shape[1] + max_new_tokens, dtype=torch.long)

    timed = generation_speed(
        {"teacher": Generator("teacher"), "student": Generator("student")}, torch.ones(1, 5, dtype=torch.long)
    )
    assert calls[:2] == ["teacher:2", "student:2"]  # the short warm-up
    assert [call.split(":")[0] for call in calls[2:6]] == ["teacher", "student", "student", "teacher"]
    student = timed["student"]
    assert {"latency_ms", "latency_spread", "throughput", "speedup", "speedup_spread"} <= set(student)
    assert student["batch_size"] == 1 and student["sequence_length"] == 5 and student["new_tokens"] == 32
    assert student["rounds"] == 5
