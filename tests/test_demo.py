"""``kdistill demo``: a shortened run prints the table, and distillation beats training alone."""

from __future__ import annotations

import re

import pytest

from kdistill.app.cli import main
from kdistill.app.demo import DemoResult, DemoRow, DemoSettings

# subprocesses or whole runs: left out of a quick `pytest -m "not slow"`
pytestmark = pytest.mark.slow


def test_quick_demo_prints_the_table_and_the_distilled_student_wins(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--quick", "--no-progress"]) == 0
    out = capsys.readouterr().out
    accuracy = {}
    for name in ("teacher", "student alone", "student distilled"):
        match = re.search(rf"^{name}\s+(\d\.\d+)\s+([\d,]+)\s+([\d.]+)x\s+[\d.]+ s$", out, re.MULTILINE)
        assert match, f"no row for {name} in:\n{out}"
        accuracy[name] = float(match.group(1))
    assert accuracy["teacher"] > 0.8
    assert accuracy["student distilled"] > accuracy["student alone"], out
    claim = r"The student is \d+x smaller( and (about )?[\d.]+x faster| \(its speed-up is not stated: .*\)) than"
    assert re.search(claim, out), out
    assert re.search(r"Total time \d+ s\.", out)


def test_the_student_is_several_times_smaller_than_the_teacher() -> None:
    from kdistill.app.demo import _vit

    settings = DemoSettings()
    teacher = _vit(settings.teacher_hidden, settings.teacher_layers, settings.teacher_heads, 0)
    student = _vit(settings.student_hidden, settings.student_layers, settings.student_heads, 0)
    count = lambda model: sum(p.numel() for p in model.parameters())  # noqa: E731
    assert count(teacher) > 5 * count(student)


def test_the_table_reports_the_gain() -> None:
    result = DemoResult(
        rows=[
            DemoRow("teacher", 0.95, 100_000, 4.0, 10.0, 1.0),
            DemoRow("student alone", 0.90, 10_000, 1.0, 2.0, 4.0),
            DemoRow("student distilled", 0.93, 10_000, 1.0, 3.0, 4.0),
        ],
        seconds=15.2,
        test_examples=540,
    )
    table = result.table()
    assert "540 held-out examples" in table and "+3.0 points" in table and "10x smaller and 4.0x faster" in table


@pytest.mark.parametrize(
    ("spread", "claim"),
    [
        (0.05, "10x smaller and 4.2x faster than the teacher"),
        (0.6, "10x smaller and about 4x faster than the teacher"),  # the warning says the spread is wide
        (2.37, "10x smaller (its speed-up is not stated: the timing rounds spread by 237%) than the teacher"),
    ],
)
def test_a_speed_up_is_claimed_only_as_far_as_its_spread_allows(spread: float, claim: str) -> None:
    result = DemoResult(
        rows=[
            DemoRow("teacher", 0.95, 100_000, 4.2, 10.0, 1.0),
            DemoRow("student alone", 0.90, 10_000, 1.0, 2.0, 4.2),
            DemoRow("student distilled", 0.93, 10_000, 1.0, 3.0, 4.2, speedup_spread=spread),
        ],
        seconds=15.2,
        test_examples=540,
    )
    assert claim in result.table()
